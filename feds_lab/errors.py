"""Errors a user can act on. The CLI prints their message alone, without a traceback."""


class FedsLabError(Exception):
    """Base of every error that carries a message meant for the user."""


class ImageReadError(FedsLabError):
    """An image file could not be read (named in the message)."""


class BitstreamError(FedsLabError):
    """A compressed file is truncated, corrupted, foreign, or from another model."""


class EntropyMismatchError(BitstreamError):
    """The decoder computed other entropy parameters than the encoder did: the image would be wrong."""


class CheckpointError(FedsLabError):
    """A checkpoint file is missing, unreadable or not one of ours."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's weights do not fit the model they are loaded into."""


class OutputError(FedsLabError):
    """An output file would replace an input, or exists and ``--force`` was not given."""


class CodingError(FedsLabError):
    """The model cannot code this image (non-finite or out-of-range latents)."""


class TrainingStateError(CheckpointError):
    """A training state (``state.pt``) is unreadable, damaged, or does not fit its run."""


def one_line(text: object, limit: int = 300) -> str:
    """A message squeezed onto one line (first non-empty line, whitespace collapsed, shortened)."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    s = " ".join(lines[0].split()) if lines else ""
    return s if len(s) <= limit else s[: limit - 3] + "..."
