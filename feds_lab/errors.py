"""Errors a user can act on. The CLI prints their message alone, without a traceback."""


class FedsLabError(Exception):
    """Base of every error that carries a message meant for the user."""


class ImageReadError(FedsLabError):
    """An image file could not be read (named in the message)."""


class BitstreamError(FedsLabError):
    """A compressed file is truncated, corrupted, foreign, or from another model."""


class CheckpointError(FedsLabError):
    """A checkpoint file is missing, unreadable or not one of ours."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's weights do not fit the model they are loaded into."""
