"""Bring your own codec: distil a CompressAI model that this package does not define.

Any CompressAI ``CompressionModel`` with an analysis ``g_a`` and a synthesis ``g_s`` (and the usual
``forward``/``compress``/``decompress``) becomes a :class:`~feds_lab.models.base.FeatureCodec` once
we say where its named features are: which layer's output is ``ga1`` (x/2), ``ga2`` (x/4), ``ga3``
(x/8) and ``y`` (x/16) in ``g_a``, and ``gs1`` (x/8), ``gs2`` (x/4), ``gs3`` (x/2) in ``g_s``::

              ga1   ga2   ga3    y                          gs1   gs2   gs3
               ┆     ┆     ┆     ┆                           ┆     ┆     ┆
    x ──► model.g_a ─────────────┴─► y ─► [model's entropy ─► y_hat ─► model.g_s ─────► x_hat
                                           model, unchanged]

The wrapped model runs its own ``forward``: the taps are forward hooks that live for one call only
(added on entry, removed in a ``finally``), writing into a dict local to that call, so nothing
persists between calls and nothing is computed twice. ``y`` is what ``g_a`` returns and ``y_hat``
what ``g_s`` receives, whatever the model does in between; note that CompressAI's own models feed
``g_s`` with ``y`` plus uniform noise in training (rounded values in eval), where this package's
families use a straight-through rounding.

Families are registered by name and built like every other one (timm's ``create_model`` idea)::

    build_model("student", preset="tiny", family="compressai:mbt2018-mean")

Registered here, from ``compressai.models`` (random initialisation: pretrained weights are never
loaded): ``compressai:mbt2018-mean`` (``MeanScaleHyperprior``, Minnen et al. 2018) and
``compressai:bmshj2018-hyperprior`` (``ScaleHyperprior``, Ballé et al. 2018). Your own model joins
with :func:`register_compressai_family`, or with :func:`wrap_compressai_model` and
:func:`feds_lab.models.register_family`; ``docs/bring_your_own_codec.md`` walks through both. Their sizes
per preset are ``GOOGLE_PRESETS`` in :mod:`feds_lab.presets`, the one place every preset lives.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Mapping, Union

import torch
import torch.nn as nn
from compressai.models import MeanScaleHyperprior, ScaleHyperprior
from compressai.models.base import CompressionModel

from ..presets import GOOGLE_PRESETS  # noqa: F401  (the sizes of the families registered below)
from .base import ANALYSIS_TAPS, FEATURE_NAMES, FeatureCodec, check_input_size
from .registry import register_family

#: A tap: an index into ``g_a``/``g_s`` (an ``nn.Sequential``), or a dotted submodule path inside
#: the wrapped model (``"g_a.3"``, ``"g_s.body.2"``) for transforms that are not sequences.
Tap = Union[int, str]

#: Downsampling factor of each named feature, relative to the input image.
FEATURE_STRIDES = {"ga1": 2, "ga2": 4, "ga3": 8, "y": 16, "gs1": 8, "gs2": 4, "gs3": 2}

#: Where the features are in CompressAI's Ballé/Minnen transforms, whose ``g_a`` is
#: conv,GDN,conv,GDN,conv,GDN,conv and ``g_s`` deconv,IGDN,deconv,IGDN,deconv,IGDN,deconv:
#: each feature is the output of a (inverse) GDN, and y the last convolution's.
GOOGLE_GA_TAPS: dict[str, Tap] = {"ga1": 1, "ga2": 3, "ga3": 5, "y": 6}
GOOGLE_GS_TAPS: dict[str, Tap] = {"gs1": 1, "gs2": 3, "gs3": 5}


class CompressAIFeatureWrapper(FeatureCodec):
    """A CompressAI model that hands out the named features, behind this package's contract.

    Args:
        model: a ``CompressionModel`` with ``g_a`` and ``g_s`` submodules, whose ``forward(x)``
            returns ``x_hat`` and ``likelihoods``, and whose ``compress``/``decompress`` code.
        ga_taps: ``{"ga1": tap, "ga2": tap, "ga3": tap}`` and optionally ``"y"`` (default: what
            ``g_a`` returns); a tap is an index into ``g_a`` or a dotted path inside ``model``.
        gs_taps: ``{"gs1": tap, "gs2": tap, "gs3": tap}``, taps into ``g_s`` likewise.
        feature_channels: width of each named feature; by default measured once, here, by running
            ``g_a`` and ``g_s`` on a 64x64 black image, which also checks that every tap sits at
            the right scale (a wrong index fails now, not in the middle of a training run).

    The wrapped model is ``self.model``: its weights are saved under ``model.*``. The hooks of a
    call are on the model's own modules, so one wrapped model must not run in several threads at
    once (data-parallel replicas are separate modules and are fine).
    """

    def __init__(
        self,
        model: CompressionModel,
        ga_taps: Mapping[str, Tap],
        gs_taps: Mapping[str, Tap],
        feature_channels: Mapping[str, int] | None = None,
    ):
        super().__init__()
        for part in ("g_a", "g_s"):
            if not isinstance(getattr(model, part, None), nn.Module):
                raise TypeError(f"{type(model).__name__} has no {part} module to tap")
        _check_names(ga_taps, required=ANALYSIS_TAPS[:3], allowed=ANALYSIS_TAPS, part="ga_taps")
        _check_names(gs_taps, required=("gs1", "gs2", "gs3"), allowed=("gs1", "gs2", "gs3"), part="gs_taps")
        self.model = model
        # feature name -> submodule path inside self.model; resolved again at each call (cheap), so
        # that no module reference other than self.model is held
        self._tap_paths = {
            **{name: _tap_path(model, "g_a", tap) for name, tap in ga_taps.items()},
            **{name: _tap_path(model, "g_s", tap) for name, tap in gs_taps.items()},
        }
        if feature_channels is None:
            channels = self._probe_channels()
        else:
            missing = set(FEATURE_NAMES) - set(feature_channels)
            if missing:
                raise ValueError(f"feature_channels lacks {sorted(missing)}")
            channels = {name: int(feature_channels[name]) for name in FEATURE_NAMES}
        cls = type(model)
        self.config = dict(
            model_class=f"{cls.__module__}.{cls.__qualname__}",
            ga_taps=dict(ga_taps),
            gs_taps=dict(gs_taps),
            feature_channels=channels,
        )

    def forward(self, x: torch.Tensor, return_features: bool = False) -> dict[str, Any]:
        """x: (B, 3, H, W) in [0, 1], H and W multiples of 64.

        Returns ``x_hat`` (B, 3, H, W), ``likelihoods`` as the wrapped model gives them ({``y``,
        ``z``} for hyperprior models), ``y`` (B, M, H/16, W/16) as ``g_a`` returns it, ``y_hat``
        as ``g_s`` receives it and, with ``return_features``, ``features`` {ga1 ... gs3}.
        """
        check_input_size(x)
        latents: dict[str, torch.Tensor] = {}
        feats: dict[str, torch.Tensor] | None = {} if return_features else None
        with self._tapped(latents, feats):
            out = self.model(x)
        result = {
            "x_hat": out["x_hat"], "likelihoods": out["likelihoods"], "y": latents["y"], "y_hat": latents["y_hat"],
        }
        if feats is not None:
            feats.setdefault("y", latents["y"])
            result["features"] = {name: feats[name] for name in FEATURE_NAMES}
        return result

    def compress(self, x: torch.Tensor) -> dict[str, Any]:
        """The wrapped model's ``compress``: ``strings`` (lists of bytes) and ``shape``."""
        check_input_size(x)
        out = self.model.compress(x)
        return {"strings": out["strings"], "shape": out["shape"]}

    def decompress(self, strings, shape, **kwargs) -> dict[str, Any]:
        return {"x_hat": self.model.decompress(strings, shape, **kwargs)["x_hat"].clamp_(0, 1)}

    # --- the rest of the contract (feds_lab.models.base.Codec): the wrapped model's own parts --------
    def analysis(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.g_a(x)

    def synthesis(self, y_hat: torch.Tensor) -> torch.Tensor:
        return self.model.g_s(y_hat)

    def compress_latent(self, y: torch.Tensor) -> dict[str, Any]:
        """The wrapped model's own ``compress`` with ``y`` in place of what its ``g_a`` computes.

        CompressAI models have no separate latent coder: ``compress(x)`` starts with ``g_a(x)``. A
        forward hook on ``g_a`` replaces its output by ``y`` for this one call; ``g_a`` runs on a black
        image of the matching size (x16), and the model codes ``y`` exactly as it would its own.
        """
        b, _, h, w = y.shape
        stride = FEATURE_STRIDES["y"]
        handle = self.model.g_a.register_forward_hook(lambda _m, _args, _out: y)
        try:
            out = self.model.compress(y.new_zeros(b, 3, h * stride, w * stride))
        finally:
            handle.remove()
        return {"strings": out["strings"], "shape": out["shape"]}

    def decompress_latent(self, strings, shape, **kwargs) -> torch.Tensor:
        """``y_hat``: the wrapped model's own ``decompress``, up to what its ``g_s`` receives."""
        got: dict[str, torch.Tensor] = {}
        handle = self.model.g_s.register_forward_pre_hook(lambda _m, args: got.__setitem__("y_hat", args[0]))
        try:
            self.model.decompress(strings, shape, **kwargs)
        finally:
            handle.remove()
        return got["y_hat"]

    def update(self, scale_table=None, force: bool = False, **kwargs) -> bool:
        return self.model.update(scale_table=scale_table, force=force, **kwargs)

    def aux_loss(self) -> torch.Tensor:
        return self.model.aux_loss()

    @contextlib.contextmanager
    def _tapped(
        self, latents: dict[str, torch.Tensor], feats: dict[str, torch.Tensor] | None
    ) -> Iterator[None]:
        """Hooks for one call: ``latents`` gets ``y`` and ``y_hat``, ``feats`` the named taps."""
        handles = [
            self.model.g_a.register_forward_hook(_store(latents, "y")),
            self.model.g_s.register_forward_pre_hook(lambda _m, args: latents.__setitem__("y_hat", args[0])),
        ]
        try:
            if feats is not None:
                for name, path in self._tap_paths.items():
                    handles.append(self.model.get_submodule(path).register_forward_hook(_store(feats, name)))
            yield
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def _probe_channels(self, size: int = 64) -> dict[str, int]:
        """Run g_a and g_s once on a black image: the width of each tap, and a check of its scale."""
        param = next(self.model.parameters(), None)
        x = torch.zeros(1, 3, size, size, device=param.device if param is not None else None)
        latents: dict[str, torch.Tensor] = {}
        feats: dict[str, torch.Tensor] = {}
        was_training = self.model.training
        self.model.eval()  # no batch statistics may move
        try:
            with self._tapped(latents, feats):
                self.model.g_s(self.model.g_a(x))
        finally:
            self.model.train(was_training)
        feats.setdefault("y", latents["y"])
        for name in FEATURE_NAMES:
            got = tuple(feats[name].shape[-2:])
            want = (size // FEATURE_STRIDES[name],) * 2
            if got != want:
                where = self._tap_paths.get(name, "the output of g_a")
                raise ValueError(
                    f"feature {name!r} (at {where}) is {got[0]}x{got[1]} on a {size}x{size} image; "
                    f"it must be at x/{FEATURE_STRIDES[name]}, {want[0]}x{want[1]}: check the tap index"
                )
        return {name: int(feats[name].shape[1]) for name in FEATURE_NAMES}


def wrap_compressai_model(
    model: CompressionModel,
    ga_taps: Mapping[str, Tap],
    gs_taps: Mapping[str, Tap],
    feature_channels: Mapping[str, int] | None = None,
) -> CompressAIFeatureWrapper:
    """Wrap a CompressAI model so that FEDS can distil it (or distil into it).

    >>> from compressai.models import MeanScaleHyperprior
    >>> net = wrap_compressai_model(MeanScaleHyperprior(N=16, M=32),
    ...                             ga_taps={"ga1": 1, "ga2": 3, "ga3": 5, "y": 6},
    ...                             gs_taps={"gs1": 1, "gs2": 3, "gs3": 5})
    >>> net.feature_channels()["y"]
    32
    """
    return CompressAIFeatureWrapper(model, ga_taps, gs_taps, feature_channels)


def register_compressai_family(
    name: str,
    model_factory: Callable[..., CompressionModel],
    ga_taps: Mapping[str, Tap],
    gs_taps: Mapping[str, Tap],
    presets: dict[str, dict[str, dict[str, Any]]] | None = None,
) -> Callable[..., CompressAIFeatureWrapper]:
    """Register ``name`` as a family: ``model_factory(**sizes)``, wrapped with these taps.

    ``presets`` is ``{preset: {role: sizes}}``, e.g. ``{"tiny": {"teacher": {"N": 32, "M": 48},
    "student": {"N": 16, "M": 32}}}``; afterwards ``build_model(role, preset, family=name)`` works.
    """

    def build(**sizes) -> CompressAIFeatureWrapper:
        wrapped = CompressAIFeatureWrapper(model_factory(**sizes), ga_taps, gs_taps)
        wrapped.config = {**sizes, **wrapped.config}  # the sizes rebuild the model
        return wrapped

    build.__name__ = build.__qualname__ = f"build_{name.replace(':', '_').replace('-', '_')}"
    build.__doc__ = f"Builder of the {name!r} family: {getattr(model_factory, '__name__', model_factory)} wrapped."
    return register_family(name, presets=presets)(build)


def _check_names(taps: Mapping[str, Tap], required: tuple[str, ...], allowed: tuple[str, ...], part: str) -> None:
    missing = [n for n in required if n not in taps]
    unknown = [n for n in taps if n not in allowed]
    if missing or unknown:
        raise ValueError(
            f"{part} must name {list(required)} (allowed: {list(allowed)}); missing {missing}, unknown {unknown}"
        )


def _tap_path(model: nn.Module, part: str, tap: Tap) -> str:
    """The dotted path of a tap inside ``model``; checks that it exists."""
    if isinstance(tap, bool) or not isinstance(tap, (int, str)):
        raise TypeError(f"a tap is an index or a dotted module path, got {tap!r}")
    if isinstance(tap, int):
        seq = getattr(model, part)
        if not isinstance(seq, nn.Sequential):
            raise TypeError(
                f"{part} is a {type(seq).__name__}, not an nn.Sequential: give a dotted path, e.g. '{part}.body.1'"
            )
        if not -len(seq) <= tap < len(seq):
            raise IndexError(f"tap {tap} is out of range for {part} ({len(seq)} layers)")
        path = f"{part}.{tap % len(seq)}"
    else:
        path = tap
    try:
        model.get_submodule(path)
    except AttributeError:
        raise ValueError(f"{type(model).__name__} has no submodule {path!r}") from None
    return path


def _store(into: dict[str, torch.Tensor], key: str):
    def hook(_module, _args, output):
        into[key] = output

    return hook


for _name, _cls in (
    ("compressai:mbt2018-mean", MeanScaleHyperprior),
    ("compressai:bmshj2018-hyperprior", ScaleHyperprior),
):
    register_compressai_family(_name, _cls, GOOGLE_GA_TAPS, GOOGLE_GS_TAPS)  # sizes: presets.GOOGLE_PRESETS

__all__ = [
    "FEATURE_STRIDES", "GOOGLE_GA_TAPS", "GOOGLE_GS_TAPS", "GOOGLE_PRESETS", "CompressAIFeatureWrapper",
    "Tap", "register_compressai_family", "wrap_compressai_model",
]
