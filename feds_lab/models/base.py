"""The contract every distillable codec meets.

A :class:`FeatureCodec` is a CompressAI ``SimpleVAECompressionModel`` whose analysis ``g_a`` and
synthesis ``g_s`` are made of four stages each, so that one forward pass can hand out the named
intermediate features the FEDS losses align::

    x ─ga1─► x/2 ─ga2─► x/4 ─ga3─► x/8 ──► y (x/16) ─► [latent codec] ─► y_hat
    x_hat ◄──── x/2 ◄─gs3── x/4 ◄─gs2── x/8 ◄─gs1─────────────────────────┘

Teacher and student features of the same name have the same spatial size (their widths differ;
the losses bridge them with 1x1 adapters). Losses and stages meet a model only through
``forward(x, return_features=True)``: ``x_hat``, ``likelihoods``, ``y`` (the latent before
quantisation) and ``features``. Nothing checks which family a model belongs to.

The whole contract is :class:`Codec`: features (``forward``, ``feature_channels``), the analysis
and the synthesis transforms on their own (``analysis``, ``synthesis``), coding of a latent
(``compress_latent``, ``decompress_latent``) and of an image (``compress``, ``decompress``). The
channel-entropy analysis, notebook 02 and its explorer use the first three parts, so they work on
any codec that meets it: both families here (through :class:`FeatureCodec`) and a wrapped
CompressAI model (:class:`~feds_lab.models.wrappers.CompressAIFeatureWrapper`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn as nn
from compressai.models.base import SimpleVAECompressionModel

FEATURE_NAMES = ("ga1", "ga2", "ga3", "y", "gs1", "gs2", "gs3")
ANALYSIS_TAPS = ("ga1", "ga2", "ga3", "y")
SYNTHESIS_TAPS = ("gs1", "gs2", "gs3", "x_hat")

#: autocast dtype of the transforms inside :func:`transform_precision` (training steps); None: float32
_TRANSFORM_DTYPE: torch.dtype | None = None


@contextmanager
def transform_precision(dtype: torch.dtype | None) -> Iterator[None]:
    """Inside: a :class:`FeatureCodec`'s analysis and synthesis transforms run under autocast to
    ``dtype`` (``torch.bfloat16``); the latent codec (hyperprior, likelihoods) and everything the
    forward pass returns stay float32. ``None``, and outside (validation, coding): float32 throughout."""
    global _TRANSFORM_DTYPE
    old, _TRANSFORM_DTYPE = _TRANSFORM_DTYPE, dtype
    try:
        yield
    finally:
        _TRANSFORM_DTYPE = old


def _transforms_autocast(x: torch.Tensor):
    return nullcontext() if _TRANSFORM_DTYPE is None else torch.autocast(x.device.type, dtype=_TRANSFORM_DTYPE)


@runtime_checkable
class Codec(Protocol):
    """What every codec of this package offers; shapes for x of (B, 3, H, W), H and W multiples of 64."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> dict[str, Any]:
        """``x_hat``, ``likelihoods``, ``y``, ``y_hat`` and, when asked, ``features`` (FEATURE_NAMES)."""

    def feature_channels(self) -> dict[str, int]:
        """Width of each named feature."""

    def analysis(self, x: torch.Tensor) -> torch.Tensor:
        """``y`` (B, M, H/16, W/16): the latent before quantisation."""

    def synthesis(self, y_hat: torch.Tensor) -> torch.Tensor:
        """``x_hat`` (B, 3, H, W) from a quantised latent, not clamped."""

    def compress_latent(self, y: torch.Tensor) -> dict[str, Any]:
        """Entropy-code a latent: ``strings`` (lists of bytes, one list per stream) and ``shape``."""

    def decompress_latent(self, strings, shape) -> torch.Tensor:
        """``y_hat`` from what :meth:`compress_latent` wrote."""

    def compress(self, x: torch.Tensor) -> dict[str, Any]:
        """Code an image: ``strings`` and ``shape``, the streams ``compress_latent(analysis(x))`` writes."""

    def decompress(self, strings, shape) -> dict[str, Any]:
        """``{"x_hat"}``: ``synthesis(decompress_latent(...))``, clamped to [0, 1]."""


class StagedTransform(nn.Module):
    """A sequence of stages whose outputs can be collected by name in the same pass."""

    def __init__(self, stages: list[nn.Module], names: tuple[str, ...]):
        super().__init__()
        if len(stages) != len(names):
            raise ValueError("one name per stage")
        self.stages = nn.ModuleList(stages)
        self.names = names

    def forward(self, x: torch.Tensor, features: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        for name, stage in zip(self.names, self.stages):
            x = stage(x)
            if features is not None and name in FEATURE_NAMES:
                features[name] = x
        return x


class FeatureCodec(SimpleVAECompressionModel):
    """Base of the codecs in this package. Subclasses build ``g_a``, ``g_s``, ``latent_codec``.

    ``config`` records how the model was built (family, role, preset and sizes): it is written into
    checkpoints and is enough to rebuild the model with :func:`feds_lab.models.build_model`.
    """

    g_a: StagedTransform
    g_s: StagedTransform
    config: dict[str, Any]

    def forward(self, x: torch.Tensor, return_features: bool = False) -> dict[str, Any]:
        """x: (B, 3, H, W) in [0, 1], H and W multiples of 64.

        Returns ``x_hat``, ``likelihoods`` {``y``, ``z``}, ``y`` (before quantisation), ``y_hat``
        and, with ``return_features``, ``features`` {ga1 ga2 ga3 y gs1 gs2 gs3}. The features are
        collected in a local dict: nothing persists between calls.
        """
        check_input_size(x)
        feats: dict[str, torch.Tensor] | None = {} if return_features else None
        with _transforms_autocast(x):
            y = self.g_a(x, feats)
        y = y.float()  # the entropy model trains in float32 whatever the transforms' precision
        y_out = self.latent_codec(y)
        with _transforms_autocast(x):
            x_hat = self.g_s(y_out["y_hat"], feats)
        out = {"x_hat": x_hat.float(), "likelihoods": y_out["likelihoods"], "y": y, "y_hat": y_out["y_hat"]}
        if feats is not None:
            out["features"] = {name: feats[name].float() for name in FEATURE_NAMES}
        return out

    def analysis(self, x: torch.Tensor) -> torch.Tensor:
        return self.g_a(x)

    def synthesis(self, y_hat: torch.Tensor) -> torch.Tensor:
        return self.g_s(y_hat)

    def compress_latent(self, y: torch.Tensor) -> dict[str, Any]:
        out = self.latent_codec.compress(y)
        return {"strings": out["strings"], "shape": out["shape"]}

    def decompress_latent(self, strings, shape, **kwargs) -> torch.Tensor:
        return self.latent_codec.decompress(strings, shape, **kwargs)["y_hat"]

    def compress(self, x: torch.Tensor) -> dict[str, Any]:
        check_input_size(x)
        return self.compress_latent(self.analysis(x))

    def decompress(self, strings, shape, **kwargs) -> dict[str, Any]:
        return {"x_hat": self.synthesis(self.decompress_latent(strings, shape, **kwargs)).clamp_(0, 1)}

    def feature_channels(self) -> dict[str, int]:
        """Width of each named feature, for building 1x1 adapters without a forward pass."""
        return dict(self.config["feature_channels"])


def check_input_size(x: torch.Tensor, multiple: int = 64) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a (B, 3, H, W) image batch, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % multiple or w % multiple:
        raise ValueError(
            f"image size {h}x{w} is not a multiple of {multiple}; pad it first "
            "(feds_lab.coding.pad_image does, and compress/decompress of feds_lab.coding do it for you)"
        )
