"""Models: one way to build every codec, ``build_model(role, preset, family=..., **overrides)``.

- :mod:`.base`: the contract every codec meets (:class:`Codec`; :class:`FeatureCodec`, the base of
  the package's families);
- :mod:`.cnn`, :mod:`.transformer`: the two families; :mod:`.wrappers`: CompressAI models, brought;
- :mod:`.entropy`: the entropy models; :mod:`.attention`: the Swin-V2 stages;
- :mod:`.registry`: families by name (:func:`build_model`, :func:`register_family`, plugins).
"""

from __future__ import annotations

from .base import ANALYSIS_TAPS, FEATURE_NAMES, SYNTHESIS_TAPS, Codec, FeatureCodec, check_input_size
from .cnn import CNNCodec
from .entropy import ENTROPY_MODELS, PAD_MULTIPLE
from .registry import ENTRY_POINT_GROUP, build_model, list_families, load_plugin, register_family

__all__ = [
    "ANALYSIS_TAPS", "ENTROPY_MODELS", "ENTRY_POINT_GROUP", "FEATURE_NAMES", "PAD_MULTIPLE", "SYNTHESIS_TAPS",
    "CNNCodec", "Codec", "FeatureCodec", "build_model", "check_input_size", "list_families", "load_plugin",
    "register_family",
]
