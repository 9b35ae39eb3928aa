"""The training loop: teachers on L_RD, FEDS students in three stages, and the scratch baseline.

:func:`train` reads top to bottom: run folder, models, optimisers, data, the loop, the final model.
One step (:func:`train_step`), in CompressAI's practice (its ``examples/train.py``)::

    x = batch(step) ─► [teacher, no_grad] ─► teacher_out
                  └──► objective(x, stage, teacher_out, weights(step)) ─► L_RD + distillation terms
                        ─► backward ─► clip (one norm, or L_RD and distillation apart) ─► Adam
                           model.aux_loss() ─► backward ─► Adam (quantiles)

The stage of a step comes from :class:`~feds_lab.training.stages.StagePlan`, the loss of each stage
from :class:`~feds_lab.training.stages.TrainingObjective`, and the coefficient of each distillation
term from :class:`~feds_lab.training.stages.DistillationWeights`. Every few steps (``grad_log_every``,
and whenever balancing needs it) the step also measures each term's gradient norm on the student's
weights and logs it (a ``"grad"`` line in ``metrics.jsonl``): the balance a reader checks before
trusting any distillation result.

Batch ``step`` is a function of ``(seed, step)`` alone (``dataset.sample_batch``), and the state saved
at a checkpoint (:class:`TrainingState`) holds torch's RNG (the quantisation noise), so a run killed
at any moment resumes from its last checkpoint and ends with the same weights as one that never stopped.

Test hook: with the environment variable ``FEDS_LAB_TEST_KILL_AT_STEP=k`` the process SIGKILLs
itself right after writing the checkpoint of step ``k`` (used by ``tests/test_resume.py``).
"""

from __future__ import annotations

import inspect
import math
import os
import signal
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..checkpoint import load_model, load_weights, save_model
from ..data import eval_images, load_dataset
from ..errors import CheckpointError, FedsLabError
from ..losses import RateDistortionLoss
from ..models import build_model
from ..threads import ThreadGovernor
from . import distributed
from .config import TRAIN_SPLITS, ConfigError, TrainConfig
from .distributed import Distributed
from .init import init_from_teacher
from .stages import DistillationWeights, Stage, StagePlan, TrainingObjective
from .state import (CONFIG_FILE, METRICS_FILE, MODEL_FILE, STATE_FILE, MetricsLog, atomic_write_bytes,
                    clean_stale_temporaries, clear_run, load_state, save_state)

KILL_HOOK_ENV = "FEDS_LAB_TEST_KILL_AT_STEP"
SPIKE_HOOK_ENV = "FEDS_LAB_TEST_SPIKE_AT_STEP"  # tests: this step's loss x 1e4, once per process
SPIKE_WINDOW = 50  # steps whose median L_RD a spike is measured against
SPIKE_MIN_STEPS = 20  # no spike is called before this many finite steps (after a start or a rewind)
REWIND_NONFINITE = 3  # non-finite steps in a row that count as a divergence (one alone is only skipped)
_spikes_fired: set[int] = set()
STATE_FORMAT = "feds-lab-train-state/1"


class TrainingInterrupted(FedsLabError):
    """SIGINT/SIGTERM stopped the run after saving its state; the same command resumes it."""


class NonFiniteLossError(FedsLabError):
    """Too many non-finite steps in a row; the last good checkpoint is kept."""


def train(config: TrainConfig) -> Path:
    """Train the model ``config`` describes and return the final checkpoint (``<out>/model.safetensors``).

    In-process (notebooks, pipelines) or under ``torchrun`` (data-parallel). With ``config.resume``
    (default) a run folder holding a finished run of the same config returns at once, and one
    holding a training state continues from it; ``resume=False`` starts over.
    """
    cfg = config.resolved()
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dd = distributed.setup(cfg.device)
    try:
        return _train(cfg, dd)
    finally:
        distributed.teardown(dd)
        torch.set_num_threads(threads)


def _train(cfg: TrainConfig, dd: Distributed) -> Path:
    out = Path(cfg.out)
    device = dd.device
    say = _printer(dd)

    # --- 0. the run folder: finished, resumable, or new ------------------------------------------
    if cfg.resume and (out / MODEL_FILE).exists():
        diffs = _saved_config_differences(out, cfg)
        if not diffs:
            say(f"{out}: finished run with this config; nothing to do")
            return out / MODEL_FILE
        raise ConfigError(f"{out} holds a finished run with another config ({'; '.join(diffs)}); "
                          "use --fresh (resume=False) to overwrite it, or another --out")
    saved = None
    if cfg.resume and dd.is_main:
        clean_stale_temporaries(out)  # what a kill during a state write left behind
    if cfg.resume and (out / STATE_FILE).exists():
        saved = load_state(out / STATE_FILE, steps=cfg.steps)
        diffs = TrainConfig.from_dict(saved["config"]).differences(cfg)
        if diffs:
            raise ConfigError(f"{out} holds a run with another config ({'; '.join(diffs)}); "
                              "use --fresh (resume=False) to start over, or another --out")
    dd.barrier()  # every rank has read the state before rank 0 may clear the folder
    metrics = MetricsLog(out / METRICS_FILE)
    if dd.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if saved is None:
            clear_run(out)
        else:
            metrics.truncate_after(saved["step"])  # lines a killed run logged after its last checkpoint
        atomic_write_bytes(out / CONFIG_FILE, cfg.to_yaml().encode())
    dd.barrier()

    # --- 1. models: the one we train, the frozen teacher, the adapters ---------------------------
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.role, preset=cfg.preset, family=cfg.family, **cfg.model)
    teacher = load_teacher(cfg.teacher, device) if cfg.distills else None
    if saved is None and cfg.warm_start:
        load_weights(model, cfg.warm_start)
        say(f"warm start from {cfg.warm_start}")
    elif saved is None and cfg.init_from_teacher:
        copied = init_from_teacher(model, teacher)
        say(f"initialised from the teacher (beyond FEDS): {copied['tensors']} tensors, "
            f"{copied['fraction']:.0%} of the student's weights, channel-sliced")
    objective = TrainingObjective.for_config(cfg, model, teacher).to(device)
    plan = StagePlan.from_config(cfg)
    weights = DistillationWeights(objective.base_weights(), plan, cfg.ramp, cfg.balance)
    if dd.active:
        torch.manual_seed(cfg.seed + dd.rank)  # each rank draws its own quantisation noise

    # --- 2. optimisers: Adam on the weights (and adapters), Adam on the quantiles (aux loss) ------
    run = TrainingState.start(cfg, objective, weights, dd, saved)
    if saved:
        say(f"{out}: resuming at step {run.step} of {cfg.steps} ({run.stage.value})")
    objective.train()
    step_fn: nn.Module = objective if not dd.active else _data_parallel(objective, device)
    separate_clip = cfg.clip_mode == "separate" and not dd.active
    if cfg.clip_mode == "separate" and dd.active:
        say("note: clip_mode=separate needs one process; under torchrun the summed gradient is clipped (total)")

    # --- 3. data: batch `step` is a function of (seed, step); ranks take slices of it -------------
    dataset = load_dataset(cfg.data, cfg.train_split, cfg.crop, seed=cfg.seed)
    rows = dd.batch_slice(cfg.batch_size)
    val_set = (eval_images(cfg.data, TRAIN_SPLITS[cfg.train_split])[: cfg.val_images]
               if dd.is_main and cfg.val_every else [])

    # --- 4. the loop -------------------------------------------------------------------------------
    show = dd.is_main and cfg.progress and not os.environ.get("TQDM_DISABLE")
    bar = tqdm(total=cfg.steps, initial=run.step, desc=cfg.run_name(), disable=not show, dynamic_ncols=True,
               file=sys.stderr)
    t0 = time.perf_counter() - run.seconds
    # threads chosen automatically follow the free cores while the run trains (feds_lab.threads)
    governor = ThreadGovernor(log=say) if device.type == "cpu" and not cfg.threads else None
    if saved is None and cfg.rewind_spike and cfg.ckpt_every:
        state = run.capture()  # step 0: a divergence before the first checkpoint has somewhere to go back to
        state["stage"] = plan.stage_at(0).value
        if dd.is_main:
            save_state(state, out / STATE_FILE)
    with _stop_on_signals() as stop:
        while run.step < cfg.steps:  # a while, not a for: a rewind sets run.step back
            step = run.step
            if governor:
                governor.tick()
            if plan.stage_at(step) is not run.stage:
                run.stage = plan.stage_at(step)
                if run.stage is Stage.FINE_TUNING:
                    enter_fine_tuning(run.optimizer, cfg.finetune_lr_factor)
                end = next(e for _, b, e in plan.spans() if b <= step < e)
                say(f"{run.stage.value}: steps {step + 1}-{end}")

            x = dataset.sample_batch(step, cfg.batch_size, cfg.seed)[rows].to(device, non_blocking=True)
            teacher_out = None
            if objective.uses_teacher(run.stage):
                with torch.no_grad():
                    teacher_out = teacher(x, return_features=True)
            active = objective.active_terms(run.stage)
            measure = bool(active) and (weights.needs_measurement(step, active, cfg.balance_every)
                                        or (cfg.grad_log_every and step % cfg.grad_log_every == 0))
            terms, grads, lr = train_step(run, step_fn, x, teacher_out, step, measure=measure,
                                          separate_clip=separate_clip, stopping=stop.requested)
            done = step + 1
            bar.update(1)

            # reporting: metrics.jsonl, progress bar, validation (rank 0 only)
            if dd.is_main and grads:
                metrics.append({"step": done, "stage": run.stage.value, "kind": "grad", **grads})
            if dd.is_main and (done % cfg.log_every == 0 or done == cfg.steps):
                record = {"step": done, "stage": run.stage.value, "kind": "train", **run.window.means(),
                          **{f"w_{t}": w for t, w in weights.at(step).items() if t in active},
                          "lr": lr, "skipped": run.skipped, "seconds": _since(t0)}
                metrics.append(record)
                bar.set_postfix(_postfix(record), refresh=False)
                run.window = _Window()
            if dd.is_main and cfg.val_every and done % cfg.val_every == 0 and done < cfg.steps:
                _log_validation(metrics, validate(model, val_set, objective.rd_loss), done, run.stage, t0)

            # checkpoint at intervals, and on SIGINT/SIGTERM after finishing the step
            # (not during a run of non-finite steps: the last checkpoint stays the last good one)
            run.step, run.seconds = done, _since(t0)
            if run.stopping or (cfg.ckpt_every and done % cfg.ckpt_every == 0 and done < cfg.steps
                                and not run.nonfinite):
                state = run.capture()
                if dd.is_main:
                    save_state(state, out / STATE_FILE)
                    _test_kill_hook(done)
            if run.stopping:
                bar.close()
                raise TrainingInterrupted(f"stopped by signal after step {done}; state saved in {out / STATE_FILE}. "
                                          "Run the same command again to resume.")
            if run.diverged() and not run.stopping:
                _rewind(run, out, metrics, done, say)
                bar.n = run.step
                continue
            if run.nonfinite > cfg.max_nonfinite:
                bar.close()
                raise _too_many_nonfinite(cfg, out, run.nonfinite, done)
    bar.close()

    # --- 5. the final model: update the CDF tables, validate, save ----------------------------------
    model.update(force=True)
    run.stage = run.stage or plan.stage_at(cfg.steps - 1)
    val = validate(model, val_set, objective.rd_loss) if val_set else None
    if dd.is_main and val is not None:
        _log_validation(metrics, val, cfg.steps, run.stage, t0)
    run.step, run.seconds = cfg.steps, _since(t0)
    state = run.capture()
    if dd.is_main:
        save_state(state, out / STATE_FILE)  # kept, so that a run can be extended by hand
        record = training_record(cfg, dd, teacher, seconds=run.seconds, skipped=run.skipped, val=val,
                                 rewinds=run.rewinds)
        save_model(model, out / MODEL_FILE, record)  # written last: its presence marks a finished run
        say(f"{out / MODEL_FILE}: {cfg.steps} steps in {run.seconds:.0f} s"
            + (f", {run.skipped} skipped" if run.skipped else "")
            + (f"; val {val['psnr']:.2f} dB at {val['bpp']:.3f} bpp" if val else ""))
    dd.barrier()
    return out / MODEL_FILE


# --- one step ------------------------------------------------------------------------------------
def train_step(run: TrainingState, step_fn: nn.Module, x: torch.Tensor, teacher_out: dict[str, Any] | None,
               step: int, measure: bool = False, separate_clip: bool = False, stopping: bool = False):
    """One optimiser step of ``run``; returns (loss terms, gradient norms measured or {}, lr used).

    ``measure``: also compute each loss term's gradient norm on the student's weights (one extra
    backward per term through the same graph); balancing then updates its factors from them.
    ``separate_clip``: clip L_RD's gradient as the scratch baseline's is clipped, and the
    distillation terms' gradient on its own, so that distillation never shrinks the RD step.
    A non-finite loss or gradient skips the update (every rank alike) and counts in ``run.nonfinite``.
    """
    cfg, objective, weights, dd = run.cfg, run.objective, run.weights, run.dd
    run.optimizer.zero_grad(set_to_none=True)
    run.aux_optimizer.zero_grad(set_to_none=True)
    terms = step_fn(x, run.stage, teacher_out, weights.at(step))
    if os.environ.get(SPIKE_HOOK_ENV) == str(step + 1) and step not in _spikes_fired:
        _spikes_fired.add(step)
        terms = {**terms, "rd_loss": terms["rd_loss"] * 1e4, "loss": terms["loss"] * 1e4}

    grads: dict[str, float] = {}
    if measure:
        grads = term_gradient_norms(terms, objective, run.stage, weights.at(step), dd)
        weights.update(grads)
    max_norm = cfg.clip_max_norm if cfg.clip_max_norm > 0 else math.inf  # inf: measure the norm, clip nothing
    params = [p for p in objective.parameters() if p.requires_grad]
    if separate_clip and terms["kd_loss"].requires_grad:
        grad_norm = _separately_clipped_backward(terms["rd_loss"], terms["kd_loss"], params, max_norm)
    else:
        terms["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    # one device sync per step: the loss and the norm for the finiteness check, L_RD for the spike check
    loss_value, norm_value, rd = torch.stack([terms["loss"].detach(), grad_norm.detach().to(terms["loss"].dtype),
                                              terms["rd_loss"].detach()]).tolist()
    finite = math.isfinite(loss_value) and math.isfinite(norm_value)
    spike = finite and run.is_spike(rd)
    bad, run.spiked, run.stopping = dd.any(not finite, spike, stopping)  # every rank takes the same branch
    if bad or run.spiked:  # skip the update: the weights stay as the last good step left them
        run.nonfinite, run.skipped = run.nonfinite + 1, run.skipped + 1
        if run.nonfinite == 1 and dd.is_main:
            what = "non-finite loss or gradient" if bad else f"L_RD {rd:.4g}, over {cfg.rewind_spike:g}x the recent median"
            tqdm.write(f"step {step + 1}: {what}, step skipped", file=sys.stderr)
    else:
        run.recent.append(rd)
        run.nonfinite = 0
        run.optimizer.step()
        aux_loss = objective.model.aux_loss()  # on the unwrapped model: it only touches the quantiles
        aux_loss.backward()
        run.aux_optimizer.step()
        run.window.add(terms, aux_loss=aux_loss, grad_norm=grad_norm)
    lr = run.optimizer.param_groups[0]["lr"]  # the rate this step used
    if run.scheduler is not None and step + 1 < cfg.steps:
        run.scheduler.step()  # even after a skipped step: the schedule is a function of the step
        if run.lr_scale != 1.0:  # after a rewind (the scheduler computes each rate afresh from its peak)
            for group in run.optimizer.param_groups:
                group["lr"] *= run.lr_scale
    return terms, grads, lr


def student_weights(objective: TrainingObjective) -> list[nn.Parameter]:
    """The weights every loss term shares: the model's, without the quantiles and the adapters."""
    return [p for n, p in objective.model.named_parameters() if p.requires_grad and not n.endswith(".quantiles")]


def term_gradient_norms(terms: dict[str, torch.Tensor], objective: TrainingObjective, stage: Stage,
                        coefficients: dict[str, float], dd: Distributed) -> dict[str, float]:
    """Gradient norms on :func:`student_weights`: ``rd`` (L_RD), each active term unweighted
    (``feat``, ``ent``, ``out``) and as weighted this step (``w_feat`` = its coefficient x norm).
    Averaged over ranks under torchrun, so that balancing gives every rank the same weights."""
    params = student_weights(objective)
    names = ["rd"] + objective.active_terms(stage)
    values = []
    for name in names:
        loss = terms["rd_loss" if name == "rd" else f"{name}_loss"]
        g = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        values.append(float(torch.linalg.vector_norm(torch.stack([v.norm() for v in g if v is not None]))))
    values = dd.mean(values)
    out = dict(zip(names, values))
    out.update({f"w_{n}": coefficients.get(n, 0.0) * out[n] for n in names if n != "rd"})
    return out


def _separately_clipped_backward(rd: torch.Tensor, kd: torch.Tensor, params: list[nn.Parameter],
                                 max_norm: float) -> torch.Tensor:
    """``p.grad = c * grad L_RD + c' * grad L_kd``: ``c`` is the factor the scratch baseline's clip
    would apply to L_RD's gradient alone (so distillation never shrinks the RD step), and the
    distillation gradient gets the same factor, keeping its share of the step, but never more
    than ``max_norm`` (``c' = min(c, max_norm / |grad L_kd|)``). Returns the norm of the unclipped
    L_RD gradient.

    (A first version clipped each gradient to ``max_norm`` on its own: with norms far above the
    threshold, as they are here, that gave the distillation gradient the same norm as L_RD's
    whatever its weight, and pulled the students' rate up by 40-100 %.)"""
    g_rd = torch.autograd.grad(rd, params, retain_graph=True, allow_unused=True)
    g_kd = torch.autograd.grad(kd, params, allow_unused=True)
    norms = []
    for g in (g_rd, g_kd):
        present = [v for v in g if v is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([v.norm() for v in present])) if present
                     else torch.zeros(()))
    c = torch.clamp(max_norm / (norms[0] + 1e-6), max=1.0)
    scale = [c, torch.minimum(c, max_norm / (norms[1] + 1e-6))]
    for p, a, b in zip(params, g_rd, g_kd):
        if a is None and b is None:
            continue
        total = (a * scale[0] if a is not None else 0) + (b * scale[1] if b is not None else 0)
        p.grad = total.detach()
    return norms[0]


# --- the training state: everything a resumed run needs, captured and restored in one place --------
@dataclass
class TrainingState:
    """The live objects of a run and its counters; :meth:`capture` and :meth:`restore` mirror each other."""

    cfg: TrainConfig
    objective: TrainingObjective
    weights: DistillationWeights
    dd: Distributed
    optimizer: torch.optim.Optimizer
    aux_optimizer: torch.optim.Optimizer
    scheduler: Any
    step: int = 0
    stage: Stage | None = None  # the stage of the last step done
    nonfinite: int = 0
    skipped: int = 0
    seconds: float = 0.0
    stopping: bool = False
    window: _Window = field(default_factory=lambda: _Window())
    rewinds: int = 0  # how many times the run went back to its last checkpoint after a divergence
    lr_scale: float = 1.0  # rewind_lr_factor ** rewinds
    spiked: bool = False  # the last step was skipped as a spike
    recent: deque = field(default_factory=lambda: deque(maxlen=SPIKE_WINDOW))  # last steps' L_RD (not saved)

    def is_spike(self, rd: float) -> bool:
        """L_RD above ``rewind_spike`` x the median of the last steps' (once there are enough of them)."""
        k = self.cfg.rewind_spike
        return bool(k) and len(self.recent) >= SPIKE_MIN_STEPS and rd > k * statistics.median(self.recent)

    def diverged(self) -> bool:
        return bool(self.cfg.rewind_spike) and (self.spiked or self.nonfinite >= REWIND_NONFINITE)

    @classmethod
    def start(cls, cfg: TrainConfig, objective: TrainingObjective, weights: DistillationWeights, dd: Distributed,
              saved: dict[str, Any] | None) -> TrainingState:
        run = cls(cfg, objective, weights, dd, *fresh_optimizers(objective, cfg, Stage(saved["stage"]) if saved else None))
        if saved:
            run.restore(saved)
        return run

    def capture(self) -> dict[str, Any]:
        """As tensors and plain values (``torch.load(weights_only=True)`` reads it back). A collective
        under torchrun (every rank's RNG state is gathered), so all ranks call it."""
        cuda = self.dd.device.type == "cuda"
        return {
            "format": STATE_FORMAT,
            "step": self.step,
            "stage": self.stage.value if self.stage else None,  # None only before the first step (the caller names it)
            "nonfinite": self.nonfinite,
            "skipped": self.skipped,
            "seconds": self.seconds,
            "window": {"n": self.window.n, "sums": self.window.sums},
            "model": self.objective.model.state_dict(),
            "adapters": {name: m.state_dict() for name, m in self.objective.adapters().items()},
            "distillation_weights": self.weights.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "aux_optimizer": self.aux_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "rng": self.dd.gather(torch.get_rng_state()),
            "cuda_rng": self.dd.gather(torch.cuda.get_rng_state(self.dd.device).cpu()) if cuda else None,
            "world_size": self.dd.world_size,
            "config": self.cfg.to_dict(),
            "rewinds": self.rewinds,
            "lr_scale": self.lr_scale,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.objective.model.load_state_dict(state["model"])
        for name, module in self.objective.adapters().items():
            module.load_state_dict(state["adapters"][name])
        if "distillation_weights" in state:
            self.weights.load_state_dict(state["distillation_weights"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.aux_optimizer.load_state_dict(state["aux_optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.stage = state["step"], Stage(state["stage"])
        _restore_rng(state, self.dd, self.cfg.seed + self.step)
        self.nonfinite, self.skipped, self.seconds = state["nonfinite"], state["skipped"], state["seconds"]
        self.rewinds, self.lr_scale = int(state.get("rewinds", 0)), float(state.get("lr_scale", 1.0))
        self.spiked = False
        self.recent.clear()
        self.window = _Window.from_state(state["window"], self.dd.device)  # a log line half-way through its steps


# --- optimisers and schedules -----------------------------------------------------------------------
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


def _data_parallel(objective: TrainingObjective, device: torch.device) -> DistributedDataParallel:
    """DDP over the model and its adapters. Adapters sit idle in some stages (hence
    ``find_unused_parameters``); the only buffers are CDF tables, which rank 0 alone refreshes to
    validate and training never reads, so they are not synchronised on each forward pass."""
    no_buffer_sync = ({"forward_sync_buffers": False}  # the newer name
                      if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                      else {"broadcast_buffers": False})
    return DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=bool(objective.adapters()), **no_buffer_sync)


# --- teacher -------------------------------------------------------------------------------------
def load_teacher(path: str | os.PathLike, device: torch.device) -> nn.Module:
    """The frozen teacher: eval mode (rounding, no noise), no gradients, on ``device``."""
    try:
        teacher = load_model(path, device=device)
    except CheckpointError as e:
        raise CheckpointError(f"cannot load the teacher: {e}") from None
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


# --- validation ----------------------------------------------------------------------------------
@torch.no_grad()
def validate(model: nn.Module, images: list[tuple[str, torch.Tensor]], rd_loss: RateDistortionLoss) -> dict[str, float]:
    """Real coding on held-out images with the live model (no copy), through
    :func:`feds_lab.evaluation.evaluate.evaluate_model`: mean ``psnr`` (dB, 8-bit RGB), ``bpp`` (the
    whole file's bytes), ``stream_bpp``, ``bpp_likelihood`` and ``loss`` (L_RD of the decoded images
    with the likelihood rate).

    ``update(force=True)`` rebuilds the CDF tables from the current weights; they are buffers that
    training never reads, so validating mid-run changes nothing in training. Train mode is restored.
    """
    from ..evaluation.evaluate import evaluate_model

    if not images:
        return {}
    was_training = model.training
    model.eval()
    model.update(force=True)
    rows = evaluate_model(model, images, warmup=False)["rows"]
    model.train(was_training)
    out = []
    for r in rows:
        if rd_loss.metric == "mse":
            loss = r["bpp-estimate"] + rd_loss.lmbda * 255**2 * 10 ** (-r["psnr-rgb"] / 10)
        else:
            loss = r["bpp-estimate"] + rd_loss.lmbda * (1 - r["ms-ssim-rgb"])
        out.append({"psnr": r["psnr-rgb"], "bpp": r["bpp"], "stream_bpp": r.get("bpp-streams", r["bpp"]),
                    "bpp_likelihood": r["bpp-estimate"], "loss": loss})
    return {k: sum(o[k] for o in out) / len(out) for k in out[0]}


def _log_validation(metrics: MetricsLog, val: dict[str, float], step: int, stage: Stage, t0: float) -> None:
    metrics.append({"step": step, "stage": stage.value, "kind": "val", **val, "seconds": _since(t0)})
    if val:
        tqdm.write(f"step {step}: val {val['psnr']:.2f} dB, {val['bpp']:.3f} bpp "
                   f"(likelihood {val['bpp_likelihood']:.3f}), loss {val['loss']:.4f}", file=sys.stderr)


# --- record --------------------------------------------------------------------------------------
def _restore_rng(state: dict[str, Any], dd: Distributed, fallback_seed: int) -> None:
    rng, cuda_rng = state.get("rng") or [], state.get("cuda_rng")
    if len(rng) == dd.world_size:
        torch.set_rng_state(rng[dd.rank])
        if cuda_rng and dd.device.type == "cuda":
            torch.cuda.set_rng_state(cuda_rng[dd.rank], dd.device)
    else:  # another number of processes than the run that saved it: still deterministic, no longer exact
        torch.manual_seed(fallback_seed + dd.rank)
        if dd.is_main:
            print(f"note: the state was saved by {len(rng)} process(es), this run has {dd.world_size}; "
                  "the quantisation noise restarts from a fresh seed", file=sys.stderr)


def run_kind(cfg: TrainConfig) -> str:
    """teacher | student (FEDS) | scratch (the baseline)."""
    return "scratch" if cfg.role == "student" and cfg.baseline == "scratch" else cfg.role


def training_record(cfg: TrainConfig, dd: Distributed, teacher: nn.Module | None, seconds: float, skipped: int,
                    val: dict[str, float] | None, rewinds: int = 0) -> dict[str, Any]:
    """The record embedded in ``model.safetensors``: what was trained, on which budget, how it did."""
    from ..checkpoint import fingerprint

    device_name = torch.cuda.get_device_name(dd.device) if dd.device.type == "cuda" else "cpu"
    return {
        "role": cfg.role,
        "run": run_kind(cfg),
        "baseline": cfg.baseline,
        "lmbda": cfg.lmbda,
        "metric": cfg.metric,
        "teacher": {"path": str(cfg.teacher), "fingerprint": fingerprint(teacher)} if teacher is not None else None,
        "warm_start": cfg.warm_start,
        "init_from_teacher": cfg.init_from_teacher,
        "budget": {
            "steps": cfg.steps, "batch_size": cfg.batch_size, "crop": cfg.crop, "schedule": cfg.schedule,
            "lr": cfg.lr, "aux_lr": cfg.aux_lr, "stage_split": list(cfg.stage_split) if cfg.role == "student" else None,
            "finetune_lr_factor": cfg.finetune_lr_factor if cfg.role == "student" else None,
            "train_split": cfg.train_split,
            "wall_seconds": round(seconds, 2), "device": str(dd.device), "device_name": device_name,
            "threads": torch.get_num_threads(), "world_size": dd.world_size, "skipped_steps": skipped,
            "rewinds": rewinds,
        },
        "val": val,
        "train_config": cfg.to_dict(),
    }


# --- small helpers -------------------------------------------------------------------------------
class _Window:
    """Sums of the loss terms since the last log line (tensors: no device sync until it is written)."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.n = 0

    def add(self, terms: dict[str, torch.Tensor], **extra: torch.Tensor) -> None:
        for k, v in {**terms, **extra}.items():
            self.sums[k] = self.sums.get(k, 0) + v.detach()
        self.n += 1

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> _Window:
        w = cls()
        w.n, w.sums = state["n"], {k: v.to(device) for k, v in state["sums"].items()}
        return w

    def means(self) -> dict[str, float]:
        return {k: float(v) / self.n for k, v in self.sums.items()} if self.n else {}


def _postfix(record: dict[str, Any]) -> dict[str, str]:
    keys = ("loss", "bpp_loss", "mse_loss", "ms_ssim_loss", "feat_loss", "ent_loss", "out_loss")
    out = {k.removesuffix("_loss"): f"{record[k]:.4g}" for k in keys if k in record}
    out["lr"] = f"{record['lr']:.2e}"
    return out


class _StopFlag:
    requested = False


@contextmanager
def _stop_on_signals() -> Iterator[_StopFlag]:
    """SIGINT/SIGTERM set a flag; the loop saves at the end of the step and stops cleanly.
    (Only in the main thread, where Python allows handlers; elsewhere signals act as usual.)"""
    flag = _StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        flag.requested = True
        print(f"\n{signal.Signals(signum).name}: stopping after this step and saving the state", file=sys.stderr)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _rewind(run: TrainingState, out: Path, metrics: MetricsLog, done: int, say) -> None:
    """Back to the last checkpoint after a divergence, at ``rewind_lr_factor`` x the learning rate from
    there on (rebuilding the optimisers for the checkpoint's stage); a "rewind" line in the metrics."""
    cfg, dd = run.cfg, run.dd
    if run.rewinds >= cfg.max_rewinds:
        raise NonFiniteLossError(
            f"the run diverged at step {done} after {run.rewinds} rewind(s) (max_rewinds={cfg.max_rewinds}): it "
            f"stopped; its last good checkpoint is {out / STATE_FILE}. Try a lower lr, or a smaller lambda first.")
    dd.barrier()
    state = load_state(out / STATE_FILE, steps=cfg.steps)
    stage = Stage(state["stage"])
    run.optimizer, run.aux_optimizer, run.scheduler = fresh_optimizers(run.objective, cfg, stage)
    rewinds, scale = run.rewinds + 1, run.lr_scale * cfg.rewind_lr_factor
    run.restore(state)
    run.rewinds, run.lr_scale = rewinds, scale
    for group in run.optimizer.param_groups:  # the checkpoint's rate carries the old scale; the new one from here
        group["lr"] *= cfg.rewind_lr_factor
    if dd.is_main:
        metrics.truncate_after(state["step"])
        metrics.append({"step": state["step"], "stage": stage.value, "kind": "rewind", "from_step": done,
                        "lr_scale": scale})
    say(f"step {done}: diverged; back to the checkpoint of step {state['step']}, learning rate x{scale:g} from "
        f"there (rewind {rewinds} of at most {cfg.max_rewinds})")


def _test_kill_hook(step: int) -> None:
    if os.environ.get(KILL_HOOK_ENV) == str(step):
        os.kill(os.getpid(), signal.SIGKILL)


def _saved_config_differences(out: Path, cfg: TrainConfig) -> list[str]:
    path = out / CONFIG_FILE
    if not path.exists():
        return ["no config.yaml beside the model"]
    return TrainConfig.from_yaml(path).differences(cfg)


def _too_many_nonfinite(cfg: TrainConfig, out: Path, count: int, step: int) -> NonFiniteLossError:
    last = "none"
    if (out / STATE_FILE).exists():
        try:
            last = f"{out / STATE_FILE} (step {load_state(out / STATE_FILE)['step']})"
        except CheckpointError:
            last = f"{out / STATE_FILE} (unreadable)"
    return NonFiniteLossError(
        f"{count} non-finite steps in a row (max_nonfinite={cfg.max_nonfinite}) at step {step}: the run stopped. "
        f"Last good checkpoint: {last}. Try a lower lr, check the data, or raise max_nonfinite.")


def _since(t0: float) -> float:
    return round(time.perf_counter() - t0, 4)


def _printer(dd: Distributed):
    def say(msg: str) -> None:
        if dd.is_main:
            tqdm.write(msg, file=sys.stderr)  # above the progress bar, not through it

    return say
