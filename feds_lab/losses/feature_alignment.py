"""Attention-aware feature alignment (FEDS stage 1; docs/method.md "Losses").

For each tapped stage l a 1x1 convolution ``A_l`` lifts the student feature to the teacher's
width, and the loss is an attention-weighted MSE::

    L_feat,l = mean( a_T * (A_l(f_S) - f_T)^2 ),    a_T = channel-mean of f_T^2, mean 1 per image

The paper calls the alignment "attention-aware" without giving the formula; this attention map
(activation-based spatial attention in the manner of Zagoruyko & Komodakis 2017) and its
normalisation are ours. ``L_feat`` is the mean of ``L_feat,l`` over the taps.

Scale (``norm``, ours): on raw activations the per-tap errors span about 100x and the
loss has no fixed ratio to ``L_RD``. ``norm="channel"`` standardises the teacher feature and the
lifted student feature per image and channel over positions before the error (PKD, Cao et al.
2022), so that ``L_feat,l = mean(a_T * (z(A_l f_S) - z(f_T))^2) / 2``; with ``plain`` weighting
that is ``1 - Pearson`` averaged over images and channels: 0 for a perfect (affine) match, 1 for
unrelated features, 2 for opposite ones, whatever the activations' scale.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..compiling import compile_for_training, is_compiler_error

FEATURE_WEIGHTINGS = ("attention", "plain")
FEATURE_NORMS = ("none", "channel")
#: added to a standard deviation before dividing by it (a constant channel standardises to 0)
STD_EPS = 1e-5


def standardize(f: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> the same, zero mean and unit (population) variance per image and channel:
    ``(f - mean) / sqrt(var + STD_EPS^2)``.

    That is instance normalisation without affine parameters; torch's fused kernel computes it (and
    its backward) about 3x faster on CPU than the same formula written out (benchmarks/train_throughput.py
    ``--profile``), to float rounding. A map of one position has no spread: it standardises to 0."""
    if f.dim() != 4:
        raise ValueError(f"expected a (B, C, H, W) feature map, got shape {tuple(f.shape)}")
    if f.shape[-1] * f.shape[-2] == 1:
        return f - f  # instance_norm refuses a single position in training mode
    return F.instance_norm(f, eps=STD_EPS**2)
DEFAULT_TAPS = ("ga1", "ga2", "ga3", "gs1", "gs2", "gs3")


@torch.no_grad()
def spatial_attention(f_t: torch.Tensor) -> torch.Tensor:
    """Teacher spatial attention map, (B, C, H, W) -> (B, 1, H, W), mean 1 over positions per image.

    Computed without gradient: it only says where the teacher's activations are strong. An image
    whose feature map is all zero gets uniform weights (nothing marks any position as important).
    """
    if f_t.dim() != 4:
        raise ValueError(f"expected a (B, C, H, W) feature map, got shape {tuple(f_t.shape)}")
    a = f_t.detach().pow(2).mean(dim=1, keepdim=True)
    mean = a.mean(dim=(2, 3), keepdim=True)
    return torch.where(mean > 0, a / mean.clamp_min(torch.finfo(a.dtype).tiny), torch.ones_like(a))


def feature_alignment_loss(
    f_s_lifted: torch.Tensor, f_t: torch.Tensor, weighting: str = "attention", norm: str = "none"
) -> torch.Tensor:
    """Scalar alignment loss between a lifted student feature and the teacher's, both (B, C_T, H, W).

    ``attention``: ``mean(a_T * (f_s_lifted - f_t)^2)`` over batch, channels and positions;
    ``plain``: ``mean((f_s_lifted - f_t)^2)``. With ``norm="channel"`` both sides are
    standardised first (:func:`standardize`) and the mean is halved (plain: ``1 - Pearson``).
    The teacher side is detached; the attention map is always the raw teacher feature's.
    """
    if weighting not in FEATURE_WEIGHTINGS:
        raise ValueError(f"unknown feature weighting {weighting!r}; known: {list(FEATURE_WEIGHTINGS)}")
    if norm not in FEATURE_NORMS:
        raise ValueError(f"unknown feature normalisation {norm!r}; known: {list(FEATURE_NORMS)}")
    if f_s_lifted.shape != f_t.shape:
        raise ValueError(
            f"student feature {tuple(f_s_lifted.shape)} and teacher feature {tuple(f_t.shape)} differ in shape"
        )
    f_t = f_t.detach()
    a_t = spatial_attention(f_t) if weighting == "attention" else None
    scale = 1.0
    if norm == "channel":
        f_s_lifted, f_t, scale = standardize(f_s_lifted), standardize(f_t), 0.5
    if a_t is None:
        return scale * F.mse_loss(f_s_lifted, f_t)
    return scale * (a_t * (f_s_lifted - f_t).pow(2)).mean()


class FeatureAlignment(nn.Module):
    """The adapters ``A_l`` and the alignment loss over a set of taps.

    student_channels / teacher_channels: width of each named feature (``model.feature_channels()``).
    forward(f_s, f_t): the ``features`` dicts of student and teacher forward passes. Returns
    ``(L_feat, {tap: L_feat,l detached})``; ``L_feat`` is the mean over taps.
    """

    def __init__(
        self,
        student_channels: dict[str, int],
        teacher_channels: dict[str, int],
        taps: Iterable[str] = DEFAULT_TAPS,
        weighting: str = "attention",
        norm: str = "none",
    ):
        super().__init__()
        if weighting not in FEATURE_WEIGHTINGS:
            raise ValueError(f"unknown feature weighting {weighting!r}; known: {list(FEATURE_WEIGHTINGS)}")
        if norm not in FEATURE_NORMS:
            raise ValueError(f"unknown feature normalisation {norm!r}; known: {list(FEATURE_NORMS)}")
        self.norm = norm
        self.taps = tuple(taps)
        if not self.taps:
            raise ValueError("at least one tap is needed")
        for tap in self.taps:
            for side, channels in (("student", student_channels), ("teacher", teacher_channels)):
                if tap not in channels:
                    raise ValueError(f"tap {tap!r} has no {side} width; {side} features: {sorted(channels)}")
        self.weighting = weighting
        self.adapters = nn.ModuleDict(
            {tap: nn.Conv2d(student_channels[tap], teacher_channels[tap], kernel_size=1) for tap in self.taps}
        )
        self._loss: Callable[..., torch.Tensor] = feature_alignment_loss

    def compile_loss(self) -> None:
        """Run the per-tap loss (standardisation, attention weighting, error: elementwise work on the
        largest maps of the step) through torch.compile, fixed shapes; the adapters stay eager.

        Measured on CPU (benchmarks/train_throughput.py): the loss's forward and backward about 2x faster,
        the same values to float rounding (``tests/test_compiled_stages.py``). Training steps only: call it
        where the shapes are the training crop's. A compiler failure warns once and falls back to eager."""
        self._loss = compile_for_training(feature_alignment_loss)

    def forward(
        self, f_s: dict[str, torch.Tensor], f_t: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        per_tap: dict[str, torch.Tensor] = {}
        for tap in self.taps:
            for side, feats in (("student", f_s), ("teacher", f_t)):
                if tap not in feats:
                    raise ValueError(f"tap {tap!r} missing from the {side} features (have {sorted(feats)})")
            s, t = f_s[tap], f_t[tap]
            if s.shape[-2:] != t.shape[-2:]:
                raise ValueError(
                    f"tap {tap!r}: student feature is {tuple(s.shape[-2:])} and teacher feature "
                    f"{tuple(t.shape[-2:])} in space; both models must see the same input size"
                )
            per_tap[tap] = self._tap_loss(self.adapters[tap](s), t)
        loss = torch.stack(list(per_tap.values())).mean()
        return loss, {tap: v.detach() for tap, v in per_tap.items()}

    def _tap_loss(self, lifted: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self._loss is feature_alignment_loss:
            return feature_alignment_loss(lifted, t, self.weighting, self.norm)
        try:
            # one graph per tap shape; a layout of its own (the transformer's permuted maps) would add one
            # per stride pattern and pass torch's limit of 8 graphs a function, after which taps run eager
            return self._loss(lifted.contiguous(), t.contiguous(), self.weighting, self.norm)
        except Exception as e:  # the compiler's own failures only; anything else is the caller's
            if not is_compiler_error(e):
                raise
            warnings.warn(f"compiling the feature alignment loss failed ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]}); it runs eager", RuntimeWarning, stacklevel=2)
            self._loss = feature_alignment_loss
            return feature_alignment_loss(lifted, t, self.weighting, self.norm)
