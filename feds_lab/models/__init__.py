"""Models: one way to build every codec, ``build_model(role, preset, family=..., **overrides)``.

Families are registered by name (as timm's ``create_model`` does); a codec the project does not
define joins with :func:`register_family` (see ``feds_lab.models.wrappers``).
"""

from __future__ import annotations

from typing import Any, Callable

from ..presets import model_preset
from .base import ANALYSIS_TAPS, FEATURE_NAMES, SYNTHESIS_TAPS, FeatureCodec, check_input_size
from .cnn import CNNCodec
from .entropy import ENTROPY_MODELS, PAD_MULTIPLE

FamilyBuilder = Callable[..., FeatureCodec]
_FAMILIES: dict[str, FamilyBuilder] = {}


def register_family(name: str, presets: dict[str, dict[str, dict[str, Any]]] | None = None):
    """Register a model family: a callable ``(**sizes) -> FeatureCodec``.

    ``presets`` (``{preset: {role: sizes}}``) joins :data:`feds_lab.presets.MODEL_PRESETS` for
    families defined outside the package.
    """

    def deco(builder: FamilyBuilder) -> FamilyBuilder:
        from .. import presets as _p

        _FAMILIES[name] = builder
        if presets is not None:
            _p.MODEL_PRESETS[name] = presets
        return builder

    return deco


def list_families() -> list[str]:
    _load_builtin_families()
    return sorted(_FAMILIES)


def build_model(role: str = "student", preset: str = "tiny", family: str = "cnn", **overrides) -> FeatureCodec:
    """Build a codec from a named preset. ``overrides`` replace preset sizes (e.g. ``M=64``).

    >>> teacher = build_model("teacher", preset="tiny")
    >>> student = build_model("student", preset="tiny", entropy_model="hyperprior")
    """
    _load_builtin_families()
    if family not in _FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {sorted(_FAMILIES)}")
    sizes = model_preset(family, role, preset)
    sizes.update(overrides)
    model = _FAMILIES[family](**sizes)
    model.config = {"family": family, "role": role, "preset": preset, "overrides": dict(overrides), **model.config}
    return model


_BUILTINS_LOADED = False


def _load_builtin_families() -> None:
    # imported once, lazily, so that an optional family's import error never breaks the CNN one
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    from . import transformer, wrappers  # noqa: F401  (each registers itself)


register_family("cnn")(CNNCodec)

__all__ = [
    "ANALYSIS_TAPS", "ENTROPY_MODELS", "FEATURE_NAMES", "PAD_MULTIPLE", "SYNTHESIS_TAPS",
    "CNNCodec", "FeatureCodec", "build_model", "check_input_size", "list_families", "register_family",
]
