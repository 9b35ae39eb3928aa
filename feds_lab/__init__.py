"""feds-lab: a workbench for FEDS, feature- and entropy-based distillation of learned image codecs."""

import warnings

from .threads import configure_threads as _configure_threads

# first thing, before anything imports torch: thread defaults that survive a busy machine (threads.py)
_configure_threads()

__version__ = "0.1.0"

# CompressAI 1.2.8 scripts a helper with torch.jit at import; torch 2.14 warns about it on every
# command. It is not ours to fix and says nothing about the user's work.
warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)

from .models import build_model  # noqa: E402

__all__ = ["__version__", "build_model"]
