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
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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
from ..models.attention import compile_stages, compiled_stages
from ..models.base import transform_precision
from ..threads import ThreadGovernor
from . import distributed
from .config import TRAIN_SPLITS, ConfigError, TrainConfig
from .distributed import Distributed
from .init import init_from_teacher
from .stages import DistillationWeights, Stage, StagePlan, TrainingObjective
from .optim import enter_fine_tuning, fresh_optimizers
from .state import (CONFIG_FILE, METRICS_FILE, MODEL_FILE, STATE_FILE, LossWindow, MetricsLog, TrainingState,
                    atomic_write_bytes, clean_stale_temporaries, clear_run, load_state, save_state)

KILL_HOOK_ENV = "FEDS_LAB_TEST_KILL_AT_STEP"
SPIKE_HOOK_ENV = "FEDS_LAB_TEST_SPIKE_AT_STEP"  # tests: this step's loss x 1e4, once per process
_spikes_fired: set[int] = set()


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
    say = _printer(dd)
    opened = _open_run(cfg, dd, say)
    if isinstance(opened, Path):
        return opened  # finished already
    saved, metrics = opened
    parts = _build(cfg, dd, saved, say)
    t0 = time.perf_counter() - parts.run.seconds
    _loop(cfg, dd, parts, metrics, saved, t0, say)
    return _finish(cfg, dd, parts, metrics, t0, say)


@dataclass
class _Parts:
    """What :func:`_build` makes for the loop and the finish."""

    model: nn.Module
    teacher: nn.Module | None
    objective: TrainingObjective
    plan: StagePlan
    weights: DistillationWeights
    run: TrainingState
    step_fn: nn.Module
    separate_clip: bool
    dataset: Any
    rows: slice
    val_set: list
    transform_dtype: torch.dtype | None = None  # the transforms' autocast dtype in training steps (``precision``)


def _open_run(cfg: TrainConfig, dd: Distributed, say):
    """The run folder: finished (its model's path), resumable (the saved state), or new (None);
    with the metrics log, truncated to the saved step."""
    out = Path(cfg.out)
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
    return saved, metrics


def _build(cfg: TrainConfig, dd: Distributed, saved: dict[str, Any] | None, say) -> _Parts:
    """Models (the one trained, the frozen teacher, the adapters), optimisers and the data."""
    device = dd.device
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.role, preset=cfg.preset, family=cfg.family, **cfg.model)
    teacher = load_teacher(cfg.teacher, device) if cfg.distills else None
    if saved is None and cfg.warm_start:
        load_weights(model, cfg.warm_start)
        say(f"warm start from {cfg.warm_start}")
    elif saved is None and cfg.init_from_teacher:
        copied = init_from_teacher(model, teacher, cfg.init_scope)
        say(f"initialised from the teacher (beyond FEDS, {cfg.init_scope}): {copied['tensors']} tensors, "
            f"{copied['fraction']:.0%} of the student's weights, channel-sliced")
    objective = TrainingObjective.for_config(cfg, model, teacher).to(device)
    plan = StagePlan.from_config(cfg)
    weights = DistillationWeights(objective.base_weights(), plan, cfg.ramp, cfg.balance)
    if dd.active:
        torch.manual_seed(cfg.seed + dd.rank)  # each rank draws its own quantisation noise

    # Adam on the weights (and adapters), Adam on the quantiles (aux loss)
    run = TrainingState.start(cfg, objective, weights, dd, saved)
    if saved:
        say(f"{cfg.out}: resuming at step {run.step} of {cfg.steps} ({run.stage.value})")
    objective.train()
    if cfg.compiles:
        compile_stages(model)
        if teacher is not None:
            compile_stages(teacher)
        if objective.feature_alignment is not None:
            objective.feature_alignment.compile_loss()
    step_fn: nn.Module = objective if not dd.active else _data_parallel(objective, device)
    separate_clip = cfg.clip_mode == "separate" and not dd.active
    if cfg.clip_mode == "separate" and dd.active:
        say("note: clip_mode=separate needs one process; under torchrun the summed gradient is clipped (total)")

    # batch `step` is a function of (seed, step); ranks take slices of it
    dataset = load_dataset(cfg.data, cfg.train_split, cfg.crop, seed=cfg.seed)
    val_set = (eval_images(cfg.data, TRAIN_SPLITS[cfg.train_split])[: cfg.val_images]
               if dd.is_main and cfg.val_every else [])
    dtype = transform_dtype(cfg.precision, device)
    if dtype is not None and saved is None:
        say("transforms in bfloat16 (precision: " + cfg.precision + "); the entropy model in float32")
    return _Parts(model, teacher, objective, plan, weights, run, step_fn, separate_clip, dataset,
                  dd.batch_slice(cfg.batch_size), val_set, dtype)


def _loop(cfg: TrainConfig, dd: Distributed, parts: _Parts, metrics: MetricsLog, saved, t0: float, say) -> None:
    """Steps until ``cfg.steps``: stage changes, one step, reporting, checkpoints, rewinds, stops."""
    out, run, plan = Path(cfg.out), parts.run, parts.plan
    show = dd.is_main and cfg.progress and not os.environ.get("TQDM_DISABLE")
    bar = tqdm(total=cfg.steps, initial=run.step, desc=cfg.run_name(), disable=not show, dynamic_ncols=True,
               file=sys.stderr)
    # threads chosen automatically follow the free cores while the run trains (feds_lab.threads)
    governor = ThreadGovernor(log=say) if dd.device.type == "cpu" and not cfg.threads else None
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
            _enter_stage(cfg, run, plan, step, say)
            done = _one_step(cfg, dd, parts, step, stop)
            bar.update(1)
            _report(cfg, dd, parts, metrics, done, t0, bar)

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


def _enter_stage(cfg: TrainConfig, run: TrainingState, plan: StagePlan, step: int, say) -> None:
    if plan.stage_at(step) is not run.stage:
        run.stage = plan.stage_at(step)
        if run.stage is Stage.FINE_TUNING:
            enter_fine_tuning(run.optimizer, cfg.finetune_lr_factor)
        end = next(e for _, b, e in plan.spans() if b <= step < e)
        say(f"{run.stage.value}: steps {step + 1}-{end}")


def _one_step(cfg: TrainConfig, dd: Distributed, parts: _Parts, step: int, stop: _StopFlag) -> int:
    """The batch, the teacher's forward pass when the stage needs it, and :func:`train_step`."""
    run, objective = parts.run, parts.objective
    x = parts.dataset.sample_batch(step, cfg.batch_size, cfg.seed)[parts.rows].to(dd.device, non_blocking=True)
    teacher_out = None
    with compiled_stages(cfg.compiles), transform_precision(parts.transform_dtype):
        if objective.uses_teacher(run.stage):
            with torch.no_grad():
                teacher_out = parts.teacher(x, return_features=True)
        active = objective.active_terms(run.stage)
        balance = bool(active) and parts.weights.needs_measurement(step, active, cfg.balance_every)
        log_grads = bool(active) and bool(cfg.grad_log_every) and step % cfg.grad_log_every == 0
        # separate clipping takes the gradients apart when its held ratios are stale or were measured on other terms
        clip_apart = (parts.separate_clip and bool(active)
                      and (step % cfg.clip_measure_every == 0 or run.clip_ratios is None
                           or run.clip_ratios[0] != tuple(active)))
        _, grads, lr = train_step(run, parts.step_fn, x, teacher_out, step, measure=balance or log_grads or clip_apart,
                                  balance=balance, separate_clip=parts.separate_clip, stopping=stop.requested)
    run.last_grads, run.last_lr = grads, lr
    return step + 1


def _report(cfg: TrainConfig, dd: Distributed, parts: _Parts, metrics: MetricsLog, done: int, t0: float,
            bar) -> None:
    """metrics.jsonl, the progress bar's figures and validation (rank 0 only)."""
    run = parts.run
    if not dd.is_main:
        return
    if run.last_grads:
        metrics.append({"step": done, "stage": run.stage.value, "kind": "grad", **run.last_grads})
    if done % cfg.log_every == 0 or done == cfg.steps:
        active = parts.objective.active_terms(run.stage)
        record = {"step": done, "stage": run.stage.value, "kind": "train", **run.window.means(),
                  **{f"w_{t}": w for t, w in parts.weights.at(done - 1).items() if t in active},
                  "lr": run.last_lr, "skipped": run.skipped, "seconds": _since(t0)}
        metrics.append(record)
        bar.set_postfix(_postfix(record), refresh=False)
        run.window = LossWindow()
    if cfg.val_every and done % cfg.val_every == 0 and done < cfg.steps:
        _log_validation(metrics, validate(parts.model, parts.val_set, parts.objective.rd_loss), done, run.stage, t0)


def _finish(cfg: TrainConfig, dd: Distributed, parts: _Parts, metrics: MetricsLog, t0: float, say) -> Path:
    """The final model: CDF tables updated, validated, saved with its record (written last: its
    presence marks a finished run)."""
    out, run, model = Path(cfg.out), parts.run, parts.model
    model.update(force=True)
    run.stage = run.stage or parts.plan.stage_at(cfg.steps - 1)
    val = validate(model, parts.val_set, parts.objective.rd_loss) if parts.val_set else None
    if dd.is_main and val is not None:
        _log_validation(metrics, val, cfg.steps, run.stage, t0)
    run.step, run.seconds = cfg.steps, _since(t0)
    state = run.capture()
    if dd.is_main:
        save_state(state, out / STATE_FILE)  # kept, so that a run can be extended by hand
        record = training_record(cfg, dd, parts.teacher, seconds=run.seconds, skipped=run.skipped, val=val,
                                 rewinds=run.rewinds)
        save_model(model, out / MODEL_FILE, record)
        say(f"{out / MODEL_FILE}: {cfg.steps} steps in {run.seconds:.0f} s"
            + (f", {run.skipped} skipped" if run.skipped else "")
            + (f"; val {val['psnr']:.2f} dB at {val['bpp']:.3f} bpp" if val else ""))
    dd.barrier()
    return out / MODEL_FILE


# --- one step ------------------------------------------------------------------------------------
def train_step(run: TrainingState, step_fn: nn.Module, x: torch.Tensor, teacher_out: dict[str, Any] | None,
               step: int, measure: bool = False, separate_clip: bool = False, stopping: bool = False,
               balance: bool | None = None):
    """One optimiser step of ``run``; returns (loss terms, gradient norms measured or {}, lr used).

    ``measure``: also compute each loss term's gradient on the student's weights (one backward per
    term through the same graph) and log their norms; with ``balance`` (default: ``measure``),
    balancing updates its factors from them. ``separate_clip``: clip L_RD's gradient as the scratch
    baseline's is clipped, and the distillation terms' gradient on its own, so that distillation
    never shrinks the RD step; on a measured step it is built from the measured gradients (no further
    backward) and its ratios are kept in ``run.clip_ratios``; on the other steps one backward pass is
    clipped with them (:func:`_held_clip_backward`). A non-finite loss or gradient skips the update
    (every rank alike) and counts in ``run.nonfinite``.
    """
    cfg, objective, weights, dd = run.cfg, run.objective, run.weights, run.dd
    run.optimizer.zero_grad(set_to_none=True)
    run.aux_optimizer.zero_grad(set_to_none=True)
    terms = step_fn(x, run.stage, teacher_out, weights.at(step))
    if os.environ.get(SPIKE_HOOK_ENV) == str(step + 1) and step not in _spikes_fired:
        _spikes_fired.add(step)
        terms = {**terms, "rd_loss": terms["rd_loss"] * 1e4, "loss": terms["loss"] * 1e4}

    grads: dict[str, float] = {}
    coefficients = weights.at(step)  # the ones this step's kd_loss was summed with
    max_norm = cfg.clip_max_norm if cfg.clip_max_norm > 0 else math.inf  # inf: measure the norm, clip nothing
    params = [p for p in objective.parameters() if p.requires_grad]
    reuse = separate_clip and measure and terms["kd_loss"].requires_grad
    if measure:
        grads, per_term = term_gradients(terms, objective, run.stage, coefficients, dd, keep=params if reuse else None)
        if balance is None or balance:
            weights.update(grads)
    if reuse:
        grad_norm, rho, k = _clip_and_set(params, *_rd_and_kd_gradients(per_term, coefficients, params), max_norm,
                                          ratios=True)
        if all(math.isfinite(v) and v > 0 for v in (rho, k)):  # a non-finite step is skipped: keep the last good ratios
            run.clip_ratios = (tuple(objective.active_terms(run.stage)), rho, k)
    elif separate_clip and terms["kd_loss"].requires_grad and run.clip_ratios is not None:
        grad_norm = _held_clip_backward(terms["rd_loss"], terms["kd_loss"], params, max_norm, *run.clip_ratios[1:])
    elif separate_clip and terms["kd_loss"].requires_grad:
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
    return term_gradients(terms, objective, stage, coefficients, dd)[0]


def term_gradients(terms: dict[str, torch.Tensor], objective: TrainingObjective, stage: Stage,
                   coefficients: dict[str, float], dd: Distributed, keep: list[nn.Parameter] | None = None):
    """(:func:`term_gradient_norms`, {term: gradients on ``keep``} or {}): with ``keep``, each term's
    gradient is taken on those weights (a superset of the student's) and returned, so that the
    step's own gradient can be built from them without another backward."""
    params = student_weights(objective)
    on = keep if keep is not None else params
    index = {id(p): i for i, p in enumerate(on)}
    names = ["rd"] + objective.active_terms(stage)
    values, kept = [], {}
    for name in names:
        loss = terms["rd_loss" if name == "rd" else f"{name}_loss"]
        g = torch.autograd.grad(loss, on, retain_graph=True, allow_unused=True)
        shared = [g[index[id(p)]] for p in params]
        values.append(float(_norm(shared)))
        if keep is not None:
            kept[name] = g
    values = dd.mean(values)
    out = dict(zip(names, values))
    out.update({f"w_{n}": coefficients.get(n, 0.0) * out[n] for n in names if n != "rd"})
    return out, kept


def _rd_and_kd_gradients(per_term: dict[str, tuple], coefficients: dict[str, float], params: list[nn.Parameter]):
    """grad L_RD and grad L_kd = sum_t w_t grad L_t, from the measured per-term gradients."""
    g_rd = per_term["rd"]
    g_kd: list[torch.Tensor | None] = [None] * len(params)
    for name, g in per_term.items():
        if name == "rd":
            continue
        w = coefficients.get(name, 0.0)
        for i, v in enumerate(g):
            if v is not None:
                g_kd[i] = w * v if g_kd[i] is None else g_kd[i] + w * v
    return g_rd, g_kd


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
    return _clip_and_set(params, g_rd, g_kd, max_norm)


def _clip_and_set(params: list[nn.Parameter], g_rd, g_kd, max_norm: float, ratios: bool = False):
    """Sets ``p.grad`` as :func:`_separately_clipped_backward` says; returns |grad L_RD| and, with
    ``ratios``, what :func:`_held_clip_backward` needs until the next measurement: ``rho = c' / c``
    and ``k = |grad L_RD + rho grad L_kd| / |grad L_RD|``."""
    norms = [_norm(g) for g in (g_rd, g_kd)]
    c = torch.clamp(max_norm / (norms[0] + 1e-6), max=1.0)
    scale = [c, torch.minimum(c, max_norm / (norms[1] + 1e-6))]
    rho = scale[1] / c
    combined = []
    for p, a, b in zip(params, g_rd, g_kd):
        if a is None and b is None:
            continue
        total = (a * scale[0] if a is not None else 0) + (b * scale[1] if b is not None else 0)
        p.grad = total.detach()
        combined.append(p.grad)
    if not ratios:
        return norms[0]
    k = _norm(combined) / (c * norms[0]).clamp_min(1e-12)
    return norms[0], float(rho), float(k)


def _held_clip_backward(rd: torch.Tensor, kd: torch.Tensor, params: list[nn.Parameter], max_norm: float,
                        rho: float, k: float) -> torch.Tensor:
    """Separate clipping with one backward pass: ``p.grad = c * grad(L_RD + rho L_kd)`` with ``rho`` and
    ``k`` held from the last step that took the gradients apart, and ``c`` the scratch baseline's clip
    factor for |grad L_RD| estimated as ``|grad(L_RD + rho L_kd)| / k`` (exact when the ratios have not
    moved since). Returns that estimate."""
    (rd + rho * kd).backward()
    total = _norm([p.grad for p in params])
    rd_norm = total / k
    c = torch.clamp(max_norm / (rd_norm + 1e-6), max=1.0)
    for p in params:
        if p.grad is not None:
            p.grad.mul_(c)
    return rd_norm


def _norm(grads) -> torch.Tensor:
    present = [v for v in grads if v is not None]
    return torch.linalg.vector_norm(torch.stack([v.norm() for v in present])) if present else torch.zeros(())


def transform_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype ``precision`` asks for on ``device``: bfloat16, or None (float32)."""
    if precision == "fp32":
        return None
    if precision == "bf16" or bf16_arithmetic(device):
        return torch.bfloat16
    return None


def bf16_arithmetic(device: torch.device) -> bool:
    """Whether ``device`` does bfloat16 arithmetic in hardware: a CUDA GPU that supports it, or a CPU
    with AVX512-BF16 or AMX (elsewhere bf16 is emulated, and slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


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
        "init_from_teacher": cfg.init_scope if cfg.init_from_teacher else False,
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
