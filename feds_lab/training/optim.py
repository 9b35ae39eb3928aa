"""Optimisers and learning-rate schedules, as CompressAI trains: Adam on the weights (and the
distillation adapters, in their own group), a second Adam on the entropy bottleneck's quantiles
(``model.aux_loss()``), and an optional one-cycle schedule over all steps."""

from __future__ import annotations

import torch

from .config import TrainConfig
from .stages import Stage, TrainingObjective


def fresh_optimizers(objective: TrainingObjective, cfg: TrainConfig, stage: Stage | None):
    """(optimizer, aux_optimizer, scheduler) as a run in ``stage`` has them before its state is restored
    into them: fine-tuning has no adapter group. For a new run, a resumed one and a rewind alike."""
    optimizer, aux_optimizer = configure_optimizers(objective, cfg, adapters=stage is not Stage.FINE_TUNING)
    return optimizer, aux_optimizer, make_scheduler(optimizer, cfg)


def configure_optimizers(objective: TrainingObjective, cfg: TrainConfig, adapters: bool = True):
    """CompressAI's split: Adam over every parameter except the entropy bottleneck's quantiles
    (``*.quantiles``), and a second Adam over the quantiles, driven by ``model.aux_loss()``.

    The adapters form their own parameter group (named ``adapters``), so that fine-tuning can drop them.
    """
    main = [p for n, p in objective.model.named_parameters() if not n.endswith(".quantiles") and p.requires_grad]
    aux = [p for n, p in objective.model.named_parameters() if n.endswith(".quantiles") and p.requires_grad]
    groups = [{"params": main, "name": "model"}]
    if adapters and objective.adapter_parameters():
        groups.append({"params": objective.adapter_parameters(), "name": "adapters"})
    return torch.optim.Adam(groups, lr=cfg.lr), torch.optim.Adam(aux, lr=cfg.aux_lr)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    """``onecycle``: torch's OneCycleLR over all steps with peak ``lr`` and ``warmup`` as its
    ``pct_start`` (its defaults otherwise: cosine, beta1 cycled); ``constant``: None."""
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=cfg.steps,
                                                   pct_start=cfg.warmup)
    return None


def enter_fine_tuning(optimizer: torch.optim.Optimizer, lr_factor: float) -> None:
    """Stage 3: drop the adapters (group and Adam state) and scale the learning rate by ``lr_factor``.

    Scaling the one-cycle bookkeeping (``initial_lr``/``max_lr``/``min_lr``) as well keeps the
    schedule's shape: fine-tuning follows the same curve, ``lr_factor`` lower.
    """
    for group in optimizer.param_groups:
        if group.get("name") == "adapters":
            for p in group["params"]:
                optimizer.state.pop(p, None)
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if g.get("name") != "adapters"]
    for group in optimizer.param_groups:
        for key in ("lr", "initial_lr", "max_lr", "min_lr"):
            if key in group:
                group[key] *= lr_factor
