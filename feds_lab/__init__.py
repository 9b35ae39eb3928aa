"""feds-lab: a workbench for FEDS, feature- and entropy-based distillation of learned image codecs."""

import warnings

from .threads import configure_threads as _configure_threads

# first thing, before anything imports torch: thread defaults that survive a busy machine (threads.py)
_configure_threads()

__version__ = "0.1.0"

# CompressAI 1.2.8 scripts a helper with torch.jit at import; torch 2.14 warns about it on every
# command. It is not ours to fix and says nothing about the user's work.
warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)

__all__ = ["__version__", "build_model"]


def __getattr__(name: str):
    # ``feds_lab.build_model`` on first use: importing the package loads no torch, so that
    # ``feds-lab --help`` and the light modules (presets, run_folder, pipeline) start at once
    if name == "build_model":
        from .models import build_model

        return build_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
