"""Entropy-weighted channel distillation, and output distillation (FEDS stage 2; docs/method.md "Losses").

A 1x1 adapter ``P`` lifts the student latent y_S (before quantisation) to the teacher's M_T
channels, and each channel's squared error is weighted by how informative the teacher finds it::

    y_S (B,M_S,h,w) ─P─► (B,M_T,h,w) ─┐
                                       ├─ per-channel MSE ─► mean_c w_c * MSE_c = L_ent
    y_T (B,M_T,h,w) ───────────────────┘                        ▲
    p_T(y_hat_T) ─► channel_entropy ─► channel_weights ─────────┘

``norm="channel"`` (ours) standardises both latents per image and channel first and
halves the error, so ``MSE_c`` becomes ``1 - Pearson`` of channel c: the loss then asks the
student latent for the teacher's *structure*, not for its magnitudes. On raw latents (``none``,
the method's form) the loss pulls the student toward the teacher's largest, most expensive
channels and buys bits (measured: the first build's FEDS students spent more bits at every lambda).

Output distillation is here too: ``MSE(x_hat_S, x_hat_T)``; the objective can express its weight as
a share of the distortion term (``output_scale``, feds_lab.training.stages).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .channel_entropy import WEIGHT_MODES, channel_entropy, channel_weights, topk_pairing
from .feature_alignment import FEATURE_NORMS, standardize

DISTILLATION_WEIGHTINGS = WEIGHT_MODES + ("topk",)


class EntropyWeightedChannelDistillation(nn.Module):
    """``L_ent = mean_c w_c * mean((P(y_S)_c - y_T,c)^2)``.

    weighting: ``softmax`` (default), ``linear`` or ``uniform`` weights over the teacher's channels,
    with the adapter ``P`` (M_S -> M_T); or ``topk``, with no adapter: student channel j is paired
    with the teacher's j-th most informative channel (by entropy on the current batch) and
    ``L_ent = mean_j w_j * mean((y_S,j - y_T,idx_j)^2)``, ``w = channel_weights(H[idx], "softmax", tau)``.
    The topk weighting (softmax over the paired channels' entropies, mean 1 over the student's
    channels) is our choice; the method only says that topk needs no adapter.

    forward(y_s (B,M_S,h,w), y_t (B,M_T,h,w), teacher_y_likelihoods (B,M_T,h,w)) returns
    ``loss`` (scalar), ``entropy`` (M_T,) bits per element, ``weights`` ((M_T,), or (M_S,) for topk)
    and, for topk, ``pairing`` (M_S,) teacher channel indices. The teacher side gets no gradient.
    """

    def __init__(self, student_channels: int, teacher_channels: int, weighting: str = "softmax", tau: float = 1.0,
                 norm: str = "none"):
        super().__init__()
        if norm not in FEATURE_NORMS:
            raise ValueError(f"unknown latent normalisation {norm!r}; known: {list(FEATURE_NORMS)}")
        self.norm = norm
        if weighting not in DISTILLATION_WEIGHTINGS:
            raise ValueError(f"unknown channel weighting {weighting!r}; known: {list(DISTILLATION_WEIGHTINGS)}")
        if weighting == "topk" and student_channels > teacher_channels:
            raise ValueError(
                f"topk pairing needs student channels ({student_channels}) <= teacher channels ({teacher_channels})"
            )
        if not tau > 0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.student_channels = student_channels
        self.teacher_channels = teacher_channels
        self.weighting = weighting
        self.tau = float(tau)
        self.P = None if weighting == "topk" else nn.Conv2d(student_channels, teacher_channels, kernel_size=1)

    def forward(
        self, y_s: torch.Tensor, y_t: torch.Tensor, teacher_y_likelihoods: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        self._check_shapes(y_s, y_t, teacher_y_likelihoods)
        y_t = y_t.detach()
        entropy = channel_entropy(teacher_y_likelihoods)
        out = {"entropy": entropy}
        if self.P is None:
            idx = topk_pairing(entropy, self.student_channels)
            weights = channel_weights(entropy[idx], "softmax", self.tau)
            per_channel = self._error(y_s, y_t[:, idx])
            out["pairing"] = idx
        else:
            weights = channel_weights(entropy, self.weighting, self.tau)
            per_channel = self._error(self.P(y_s), y_t)
        out["weights"] = weights
        out["loss"] = (weights * per_channel).mean()
        return out

    def _error(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Per-channel error (C,): MSE, or with ``norm="channel"`` 1 - Pearson (mean over images)."""
        if self.norm == "channel":
            return 0.5 * (standardize(s) - standardize(t)).pow(2).mean(dim=(0, 2, 3))
        return (s - t).pow(2).mean(dim=(0, 2, 3))

    def _check_shapes(self, y_s: torch.Tensor, y_t: torch.Tensor, lik: torch.Tensor) -> None:
        if y_s.dim() != 4 or y_s.shape[1] != self.student_channels:
            raise ValueError(f"student latent should be (B, {self.student_channels}, h, w), got {tuple(y_s.shape)}")
        if y_t.dim() != 4 or y_t.shape[1] != self.teacher_channels:
            raise ValueError(f"teacher latent should be (B, {self.teacher_channels}, h, w), got {tuple(y_t.shape)}")
        if lik.shape != y_t.shape:
            raise ValueError(f"teacher likelihoods {tuple(lik.shape)} and latent {tuple(y_t.shape)} differ in shape")
        if y_s.shape[0] != y_t.shape[0] or y_s.shape[-2:] != y_t.shape[-2:]:
            raise ValueError(f"student latent {tuple(y_s.shape)} and teacher latent {tuple(y_t.shape)} do not line up")


def output_distillation_loss(x_hat_s: torch.Tensor, x_hat_t: torch.Tensor) -> torch.Tensor:
    """Optional output distillation: ``MSE(x_hat_S, x_hat_T)`` on (B,3,H,W), the teacher's detached."""
    if x_hat_s.shape != x_hat_t.shape:
        raise ValueError(f"student output {tuple(x_hat_s.shape)} and teacher output {tuple(x_hat_t.shape)} differ")
    return F.mse_loss(x_hat_s, x_hat_t.detach())
