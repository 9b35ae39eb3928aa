"""The registry of model families: one way to build every codec, ``build_model(role, preset, family)``.

Families are registered by name (as timm's ``create_model`` does). Three kinds join it:

- the package's own (``cnn``, ``transformer``, ``compressai:mbt2018-mean``,
  ``compressai:bmshj2018-hyperprior``), imported on first use;
- families of other installed packages, through the entry-point group ``feds_lab.families``: each
  entry point names a module that registers its families when imported (or a callable, called once
  with no arguments), e.g. in that package's ``pyproject.toml``::

      [project.entry-points."feds_lab.families"]
      mylab = "mylab.codecs"

- families registered in the user's own code with :func:`register_family` (for the ``feds-lab``
  command: ``feds-lab --plugin mylab.codecs ...`` imports that module first).

Sizes per preset live in :mod:`feds_lab.presets`; a family from outside may bring its own there
(``register_family(name, presets=...)``).
"""

from __future__ import annotations

import importlib
import sys
from importlib.metadata import entry_points
from typing import Any, Callable

from ..presets import model_preset

#: The entry-point group that makes another package's families visible to feds-lab.
ENTRY_POINT_GROUP = "feds_lab.families"

#: The package's own families, by module: each registers itself when imported, as a plugin's does
#: (so the registry depends on no family, and an optional family's import error breaks no other).
BUILTIN_MODULES = ("feds_lab.models.cnn", "feds_lab.models.transformer", "feds_lab.models.wrappers")

FamilyBuilder = Callable[..., Any]  # (**sizes) -> FeatureCodec
_FAMILIES: dict[str, FamilyBuilder] = {}
_BUILTINS_LOADED = False
_PLUGINS_LOADED = False


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
    _load_families()
    return sorted(_FAMILIES)


def build_model(role: str = "student", preset: str = "tiny", family: str = "cnn", **overrides):
    """Build a codec from a named preset. ``overrides`` replace preset sizes (e.g. ``M=64``). Trained
    teachers come from the zoo instead (``feds_lab.zoo.load(family, preset, lmbda)``).

    >>> teacher = build_model("teacher", preset="tiny")
    >>> student = build_model("student", preset="tiny", entropy_model="hyperprior")
    """
    _load_families()
    if family not in _FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {sorted(_FAMILIES)}")
    sizes = model_preset(family, role, preset)
    sizes.update(overrides)
    model = _FAMILIES[family](**sizes)
    model.config = {"family": family, "role": role, "preset": preset, "overrides": dict(overrides), **model.config}
    return model


def load_plugin(module: str) -> None:
    """Import ``module`` so that the families it registers join (what ``feds-lab --plugin`` does)."""
    try:
        importlib.import_module(module)
    except ImportError as e:
        from ..errors import FedsLabError

        raise FedsLabError(f"plugin {module!r} cannot be imported: {e}") from None


def _load_families() -> None:
    # imported once, lazily: a package that only asks for presets or the registry pays for no model code
    global _BUILTINS_LOADED, _PLUGINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
    if not _PLUGINS_LOADED:
        _PLUGINS_LOADED = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                loaded = ep.load()
                if callable(loaded):
                    loaded()
            except Exception as e:  # one broken plugin must not cost the others, nor the built-in families
                print(f"feds-lab: note: model families of entry point {ep.name!r} ({ep.value}) not loaded: "
                      f"{type(e).__name__}: {e}", file=sys.stderr)


__all__ = ["BUILTIN_MODULES", "ENTRY_POINT_GROUP", "build_model", "list_families", "load_plugin", "register_family"]
