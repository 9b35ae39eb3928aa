"""The FEDS training stages and the loss each one minimises (METHOD.md "Training").

A student's step budget is cut into three stages (default 30 / 50 / 20 %)::

    step 0 ──── FEATURE_ALIGNMENT ────┬──── CHANNEL_DISTILLATION ────┬── FINE_TUNING ──► steps
             L_RD + a*L_feat          │  L_RD + a*L_feat + b*L_ent   │  L_RD, lr * factor,
             (+ g*L_out)              │  (+ g*L_out)                 │  adapters dropped

A teacher trains on ``L_RD`` alone (``RATE_DISTORTION``) for all its steps. The scratch baseline
(ours): the same student with no teacher, ``L_RD`` alone, and the *same* stage boundaries for its
learning rate (``RATE_DISTORTION`` then ``FINE_TUNING`` at the lower rate), so that the only
difference from a FEDS run is the distillation terms.

Losses meet models only through ``model(x, return_features=True)`` (``x_hat``, ``likelihoods``,
``y``, ``features``) and ``model.feature_channels()``: nothing here knows a model family.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
import torch.nn as nn

from ..losses import EntropyWeightedChannelDistillation, FeatureAlignment, RateDistortionLoss, output_distillation_loss


class Stage(str, Enum):
    RATE_DISTORTION = "rate_distortion"  # L_RD alone: teachers, and the scratch baseline before fine-tuning
    FEATURE_ALIGNMENT = "feature_alignment"  # stage 1
    CHANNEL_DISTILLATION = "channel_distillation"  # stage 2
    FINE_TUNING = "fine_tuning"  # stage 3


DISTILLATION_STAGES = (Stage.FEATURE_ALIGNMENT, Stage.CHANNEL_DISTILLATION)


@dataclass(frozen=True)
class StagePlan:
    """Where each stage starts and ends, in steps: [0, alignment_end) stage 1,
    [alignment_end, distillation_end) stage 2, [distillation_end, steps) stage 3."""

    steps: int
    alignment_end: int
    distillation_end: int
    distills: bool  # False: teacher or scratch baseline (no teacher, L_RD only)
    fine_tunes: bool  # False: a teacher (no stage 3)

    @classmethod
    def from_config(cls, cfg: Any) -> StagePlan:
        f1, f2, _ = cfg.stage_split
        a = round(f1 * cfg.steps)
        b = max(a, round((f1 + f2) * cfg.steps))
        is_student = cfg.role == "student"
        return cls(cfg.steps, a, b if is_student else cfg.steps, cfg.distills, is_student)

    def stage_at(self, step: int) -> Stage:
        """The stage of 0-based step ``step``."""
        if self.fine_tunes and step >= self.distillation_end:
            return Stage.FINE_TUNING
        if not self.distills:
            return Stage.RATE_DISTORTION
        return Stage.FEATURE_ALIGNMENT if step < self.alignment_end else Stage.CHANNEL_DISTILLATION

    def spans(self) -> list[tuple[Stage, int, int]]:
        """Non-empty stages as (stage, first step, end step)."""
        cuts = [0, self.alignment_end, self.distillation_end, self.steps]
        out: list[tuple[Stage, int, int]] = []
        for start, end in zip(cuts, cuts[1:]):
            if end > start:
                stage = self.stage_at(start)
                if out and out[-1][0] == stage:
                    out[-1] = (stage, out[-1][1], end)
                else:
                    out.append((stage, start, end))
        return out


class TrainingObjective(nn.Module):
    """The model being trained, its distillation adapters, and the loss of one step in any stage.

    One module, so that DistributedDataParallel wraps everything that gets gradients at once. The
    teacher is *not* a submodule: it is frozen, and its outputs come in as an argument.

    forward(x (B,3,H,W) in [0,1], stage, teacher_out) -> dict of scalar tensors: ``loss`` (the total),
    ``rd_loss``, ``bpp_loss`` (bpp), ``mse_loss`` or ``ms_ssim_loss``, and when active ``feat_loss``,
    ``feat_<tap>``, ``ent_loss``, ``out_loss`` (unweighted; the total applies alpha, beta, gamma).
    """

    def __init__(
        self,
        model: nn.Module,
        rd_loss: RateDistortionLoss,
        feature_alignment: FeatureAlignment | None = None,
        channel_distillation: EntropyWeightedChannelDistillation | None = None,
        alpha: float = 0.0,
        beta: float = 0.0,
        gamma: float = 0.0,
    ):
        super().__init__()
        self.model = model
        self.rd_loss = rd_loss
        self.feature_alignment = feature_alignment
        self.channel_distillation = channel_distillation
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)

    @classmethod
    def for_config(cls, cfg: Any, model: nn.Module, teacher: nn.Module | None) -> TrainingObjective:
        """Build the objective a config asks for; adapters only for terms with a non-zero weight."""
        rd = RateDistortionLoss(cfg.lmbda, cfg.metric)
        if teacher is None:
            return cls(model, rd)
        s_ch, t_ch = model.feature_channels(), teacher.feature_channels()
        feat = ent = None
        if cfg.alpha > 0:
            feat = FeatureAlignment(s_ch, t_ch, taps=cfg.taps, weighting=cfg.feature_weighting)
        if cfg.beta > 0 and cfg.stage_split[1] > 0:
            ent = EntropyWeightedChannelDistillation(s_ch["y"], t_ch["y"], weighting=cfg.weighting, tau=cfg.tau)
        return cls(model, rd, feat, ent, cfg.alpha, cfg.beta, cfg.gamma)

    def adapters(self) -> dict[str, nn.Module]:
        """The distillation adapters present ({} for a teacher or the scratch baseline)."""
        return {name: m for name, m in (("feature_alignment", self.feature_alignment),
                                        ("channel_distillation", self.channel_distillation)) if m is not None}

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.adapters().values() for p in m.parameters()]

    def uses_teacher(self, stage: Stage) -> bool:
        """Whether a step of ``stage`` needs the teacher's forward pass (none in fine-tuning)."""
        if stage is Stage.FEATURE_ALIGNMENT:
            return self.feature_alignment is not None or self.gamma > 0
        if stage is Stage.CHANNEL_DISTILLATION:
            return self.feature_alignment is not None or self.channel_distillation is not None or self.gamma > 0
        return False

    def forward(
        self, x: torch.Tensor, stage: Stage, teacher_out: dict[str, Any] | None = None
    ) -> dict[str, torch.Tensor]:
        use_feat = stage in DISTILLATION_STAGES and self.feature_alignment is not None
        out = self.model(x, return_features=use_feat)
        terms = self.rd_loss(out, x)
        terms["rd_loss"] = terms["loss"]
        loss = terms["loss"]
        if use_feat:
            feat, per_tap = self.feature_alignment(out["features"], teacher_out["features"])
            terms["feat_loss"] = feat
            terms.update({f"feat_{tap}": v for tap, v in per_tap.items()})
            loss = loss + self.alpha * feat
        if stage is Stage.CHANNEL_DISTILLATION and self.channel_distillation is not None:
            ent = self.channel_distillation(out["y"], teacher_out["y"], teacher_out["likelihoods"]["y"])
            terms["ent_loss"] = ent["loss"]
            loss = loss + self.beta * ent["loss"]
        if stage in DISTILLATION_STAGES and self.gamma > 0:
            terms["out_loss"] = output_distillation_loss(out["x_hat"], teacher_out["x_hat"])
            loss = loss + self.gamma * terms["out_loss"]
        terms["loss"] = loss
        terms.pop("ms_ssim", None)  # MS-SSIM itself; ms_ssim_loss = 1 - it is kept
        return terms
