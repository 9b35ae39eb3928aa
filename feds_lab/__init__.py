"""feds-lab: a workbench for FEDS, feature- and entropy-based distillation of learned image codecs."""

import warnings

# Importing the package changes nothing in the process's environment: the CPU thread defaults for busy
# machines are an explicit call, ``feds_lab.threads.configure()``, made by the command-line entry points
# and the pipeline's notebook kernels (feds_lab/threads.py).

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
