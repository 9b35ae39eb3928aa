"""The FEDS training stages and the loss each one minimises (docs/method.md "Training").

A student's step budget is cut into three stages (default 30 / 50 / 20 %)::

    step 0 ──── FEATURE_ALIGNMENT ────┬──── CHANNEL_DISTILLATION ────┬── FINE_TUNING ──► steps
             L_RD + a*L_feat          │  L_RD + a*L_feat + b*L_ent   │  L_RD, lr * factor,
             (+ g*L_out)              │  (+ g*L_out)                 │  adapters dropped

Each distillation term's coefficient at a step comes from :class:`DistillationWeights` (ours, issue
13): its base weight (alpha, beta, gamma), times a ramp over stages 1-2 (``constant``, or ``linear`` /
``cosine`` down to 0 at the end of stage 2, so that distillation hands over to ``L_RD`` smoothly),
times, with ``balance="grad"``, the ratio of ``L_RD``'s gradient norm to the term's on the student's
weights (the base weight is then the term's gradient as a share of the RD gradient, whatever the
term's scale). Output distillation can be written as a share of the distortion term
(``output_scale="distortion"``: ``gamma * lambda * 255^2 * MSE(x_hat_S, x_hat_T)``).

A teacher trains on ``L_RD`` alone (``RATE_DISTORTION``) for all its steps. The scratch baseline
(ours): the same student with no teacher, ``L_RD`` alone, and the *same* stage boundaries for its
learning rate (``RATE_DISTORTION`` then ``FINE_TUNING`` at the lower rate), so that the only
difference from a FEDS run is the distillation terms.

Losses meet models only through ``model(x, return_features=True)`` (``x_hat``, ``likelihoods``,
``y``, ``features``) and ``model.feature_channels()``: nothing here knows a model family.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
import torch.nn as nn

from .config import BALANCES, OUTPUT_SCALES, RAMPS
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


DISTILLATION_TERMS = ("feat", "ent", "out")  # alpha L_feat, beta L_ent, gamma L_out


class DistillationWeights:
    """The coefficient of each distillation term at each step (see the module docstring).

    ``base``: {term: weight} for the terms in use. ``scale``: the balance factors (1 without
    balancing); they are part of the training state, so a resumed run continues with them.
    """

    def __init__(self, base: dict[str, float], plan: StagePlan, ramp: str = "constant", balance: str = "none",
                 momentum: float = 0.8):
        if ramp not in RAMPS:
            raise ValueError(f"unknown ramp {ramp!r}; known: {list(RAMPS)}")
        if balance not in BALANCES:
            raise ValueError(f"unknown balance {balance!r}; known: {list(BALANCES)}")
        self.base = {t: float(w) for t, w in base.items() if w > 0}
        self.plan, self.ramp, self.balance, self.momentum = plan, ramp, balance, momentum
        self.scale = {t: 1.0 for t in self.base}
        self.measured: set[str] = set()

    def ramp_at(self, step: int) -> float:
        """1 at step 0, down to 0 at the end of stage 2 (``linear``/``cosine``); 1 throughout (``constant``)."""
        end = max(1, self.plan.distillation_end)
        progress = min(1.0, step / end)
        if self.ramp == "linear":
            return 1.0 - progress
        if self.ramp == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    def at(self, step: int) -> dict[str, float]:
        r = self.ramp_at(step)
        return {t: w * r * self.scale[t] for t, w in self.base.items()}

    def needs_measurement(self, step: int, active: list[str], every: int) -> bool:
        """Balancing measures gradient norms every ``every`` steps and whenever a term first appears."""
        if self.balance != "grad":
            return False
        return any(t not in self.measured for t in active) or (every > 0 and step % every == 0)

    def update(self, grad_norms: dict[str, float]) -> None:
        """Balance factors from measured gradient norms (``rd`` and unweighted terms), smoothed."""
        if self.balance != "grad":
            return
        for t in self.base:
            if t in grad_norms and grad_norms[t] > 0:
                new = grad_norms["rd"] / grad_norms[t]
                self.scale[t] = new if t not in self.measured else self.momentum * self.scale[t] + (1 - self.momentum) * new
                self.measured.add(t)

    def state_dict(self) -> dict[str, Any]:
        return {"scale": dict(self.scale), "measured": sorted(self.measured)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale.update({k: float(v) for k, v in state["scale"].items() if k in self.scale})
        self.measured = set(state["measured"])


class TrainingObjective(nn.Module):
    """The model being trained, its distillation adapters, and the loss of one step in any stage.

    One module, so that DistributedDataParallel wraps everything that gets gradients at once. The
    teacher is *not* a submodule: it is frozen, and its outputs come in as an argument.

    forward(x (B,3,H,W) in [0,1], stage, teacher_out, weights) -> dict of scalar tensors: ``loss``
    (the total), ``rd_loss``, ``bpp_loss`` (bpp), ``mse_loss`` or ``ms_ssim_loss``, and when active
    ``feat_loss``, ``feat_<tap>``, ``ent_loss``, ``out_loss`` (unweighted; ``out_loss`` already
    scaled by ``lambda * 255^2`` with ``output_scale="distortion"``) and ``kd_loss`` (the weighted
    sum of the distillation terms). ``weights``: {term: coefficient} (default: alpha, beta, gamma).
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
        output_scale: str = "raw",
    ):
        super().__init__()
        if output_scale not in OUTPUT_SCALES:
            raise ValueError(f"unknown output_scale {output_scale!r}; known: {list(OUTPUT_SCALES)}")
        self.model = model
        self.rd_loss = rd_loss
        self.feature_alignment = feature_alignment
        self.channel_distillation = channel_distillation
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        # a share of the distortion term: lambda * 255^2 * MSE(x_hat_S, x_hat_T) (the MSE metric's scale)
        self.output_factor = rd_loss.lmbda * 255**2 if output_scale == "distortion" else 1.0

    @classmethod
    def for_config(cls, cfg: Any, model: nn.Module, teacher: nn.Module | None) -> TrainingObjective:
        """Build the objective a config asks for; adapters only for terms with a non-zero weight."""
        rd = RateDistortionLoss(cfg.lmbda, cfg.metric)
        if teacher is None:
            return cls(model, rd)
        s_ch, t_ch = model.feature_channels(), teacher.feature_channels()
        feat = ent = None
        if cfg.alpha > 0:
            feat = FeatureAlignment(s_ch, t_ch, taps=cfg.taps, weighting=cfg.feature_weighting, norm=cfg.feature_norm)
        if cfg.beta > 0 and cfg.stage_split[1] > 0:
            ent = EntropyWeightedChannelDistillation(s_ch["y"], t_ch["y"], weighting=cfg.weighting, tau=cfg.tau,
                                                     norm=cfg.latent_norm)
        return cls(model, rd, feat, ent, cfg.alpha, cfg.beta, cfg.gamma, cfg.output_scale)

    def base_weights(self) -> dict[str, float]:
        """{term: base weight} of the terms this objective has."""
        return {"feat": self.alpha if self.feature_alignment is not None else 0.0,
                "ent": self.beta if self.channel_distillation is not None else 0.0, "out": self.gamma}

    def active_terms(self, stage: Stage) -> list[str]:
        """The distillation terms a step of ``stage`` computes."""
        if stage not in DISTILLATION_STAGES:
            return []
        out = []
        if self.feature_alignment is not None and self.alpha > 0:
            out.append("feat")
        if stage is Stage.CHANNEL_DISTILLATION and self.channel_distillation is not None and self.beta > 0:
            out.append("ent")
        if self.gamma > 0:
            out.append("out")
        return out

    def adapters(self) -> dict[str, nn.Module]:
        """The distillation adapters present ({} for a teacher or the scratch baseline)."""
        return {name: m for name, m in (("feature_alignment", self.feature_alignment),
                                        ("channel_distillation", self.channel_distillation)) if m is not None}

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.adapters().values() for p in m.parameters()]

    def uses_teacher(self, stage: Stage) -> bool:
        """Whether a step of ``stage`` needs the teacher's forward pass (none in fine-tuning)."""
        return bool(self.active_terms(stage))

    def forward(
        self, x: torch.Tensor, stage: Stage, teacher_out: dict[str, Any] | None = None,
        weights: dict[str, float] | None = None,
    ) -> dict[str, torch.Tensor]:
        active = self.active_terms(stage)
        weights = weights if weights is not None else {"feat": self.alpha, "ent": self.beta, "out": self.gamma}
        out = self.model(x, return_features="feat" in active)
        terms = self.rd_loss(out, x)
        terms["rd_loss"] = terms["loss"]
        if "feat" in active:
            feat, per_tap = self.feature_alignment(out["features"], teacher_out["features"])
            terms["feat_loss"] = feat
            terms.update({f"feat_{tap}": v for tap, v in per_tap.items()})
        if "ent" in active:
            ent = self.channel_distillation(out["y"], teacher_out["y"], teacher_out["likelihoods"]["y"])
            terms["ent_loss"] = ent["loss"]
        if "out" in active:
            terms["out_loss"] = self.output_factor * output_distillation_loss(out["x_hat"], teacher_out["x_hat"])
        loss, kd = terms["rd_loss"], None
        for t in active:  # summed in this order onto L_RD (the first build's order: same floats)
            loss = loss + weights.get(t, 0.0) * terms[f"{t}_loss"]
            kd = weights.get(t, 0.0) * terms[f"{t}_loss"] + (kd if kd is not None else 0.0)
        terms["kd_loss"] = kd if kd is not None else torch.zeros((), device=x.device)
        terms["loss"] = loss
        terms.pop("ms_ssim", None)  # MS-SSIM itself; ms_ssim_loss = 1 - it is kept
        return terms
