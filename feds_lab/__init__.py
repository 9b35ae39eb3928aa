"""feds-lab: a workbench for FEDS, feature- and entropy-based distillation of learned image codecs."""

__version__ = "0.1.0"

from .models import build_model  # noqa: E402

__all__ = ["__version__", "build_model"]
