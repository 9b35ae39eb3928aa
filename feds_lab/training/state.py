"""The run folder and the training state: config, state, metrics and the final model, written so a
crash loses little; :class:`TrainingState` captures and restores everything a resumed run needs.

::

    <out>/
      config.yaml         the resolved TrainConfig (written at the start)
      state.pt            latest training state (torch.save; read back with weights_only=True)
      metrics.jsonl       one JSON object per line: {"step", "stage", "kind": "train"|"val", ...}
      model.safetensors   the final model and its record (feds_lab.checkpoint); present = finished

``state.pt`` and ``model.safetensors`` are replaced atomically (:func:`feds_lab.io.atomic_write`:
temporary file in the same folder, fsync, ``os.replace``): a kill at any moment leaves either the old
file or the new one, and at worst a stale temporary file, which :func:`clean_stale_temporaries`
removes on resume. :func:`load_state` checks a state before the trainer uses any of it.
The state holds tensors, dicts, lists, numbers and strings only, so ``torch.load(weights_only=True)``
reads it and a stranger's file cannot run code.
"""

from __future__ import annotations

import io
import json
import math
import statistics
import sys
import typing
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, TrainingStateError, one_line
from ..run_folder import CONFIG_FILE, METRICS_FILE, MODEL_FILE, STATE_FILE

if typing.TYPE_CHECKING:
    from .config import TrainConfig
    from .distributed import Distributed
    from .stages import DistillationWeights, Stage, TrainingObjective
from ..io import atomic_write, stale_temporaries

RUN_FILES = (CONFIG_FILE, STATE_FILE, METRICS_FILE, MODEL_FILE)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part
    (:func:`feds_lab.io.atomic_write`: fsynced, the umask's file mode)."""
    atomic_write(path, data)


def clean_stale_temporaries(run_dir: str | Path) -> list[Path]:
    """Remove the temporary files a killed write of a run file left in ``run_dir`` (``.state.pt.*.tmp``
    and the like: a kill during ``save_state`` leaves one the size of the whole state). Call it when
    a run resumes, before anything is written. Returns the files removed."""
    removed = []
    for tmp in stale_temporaries(run_dir, RUN_FILES):
        try:
            tmp.unlink()
            removed.append(tmp)
        except FileNotFoundError:
            pass
    return removed


def save_state(state: dict[str, Any], path: Path) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


#: The largest state file read at all (a tiny model's is a few MB, the paper teacher's about 0.5 GB).
MAX_STATE_BYTES = 8 << 30
#: The training state's schema, declared once: every key :meth:`TrainingState.capture` writes, its
#: types, and whether a state written by an older version may lack it (then :meth:`restore` has a default).
STATE_FORMAT = "feds-lab-train-state/1"
STATE_SCHEMA: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "format": (str, True), "step": (int, True), "stage": ((str, type(None)), True), "nonfinite": (int, True),
    "skipped": (int, True), "seconds": ((int, float), True), "window": (dict, True), "model": (dict, True),
    "adapters": (dict, True), "distillation_weights": (dict, False), "optimizer": (dict, True),
    "aux_optimizer": (dict, True), "scheduler": ((dict, type(None)), False), "rng": ((list, tuple), True),
    "cuda_rng": ((list, tuple, type(None)), False), "world_size": (int, False), "config": (dict, True),
    "rewinds": (int, False), "lr_scale": ((int, float), False), "clip_ratios": ((dict, type(None)), False),
}
_KEYS = {k: t for k, (t, required) in STATE_SCHEMA.items() if required and k != "stage"} | {"stage": str}
_OPTIONAL = {k: t for k, (t, required) in STATE_SCHEMA.items() if not required}


def _refusal(e: BaseException) -> str:
    """torch's several-line message for a refused pickle, as one line."""
    text = str(e)
    for line in text.splitlines():
        if "GLOBAL" in line or "WeightsUnpickler error:" in line:
            line = line.split("WeightsUnpickler error:", 1)[-1].split(". Please use")[0]
            return one_line(line) + " (the file holds Python objects that weights-only loading refuses to run)"
    return f"{type(e).__name__}: {one_line(text)}"


def load_state(path: Path, map_location: str | torch.device = "cpu", steps: int | None = None) -> dict[str, Any]:
    """Read and check a training state; only :class:`~feds_lab.errors.TrainingStateError` (a
    :class:`CheckpointError`) leaves it, with a one-line message.

    Read with ``torch.load(weights_only=True)`` (no code runs; torch's warnings are silenced).
    Checked: the keys and their types; ``step`` an integer in ``0..steps`` (``steps``: the run's
    configured step count, when given) and within the state's own config; the config a valid
    :class:`TrainConfig`; the model's tensors the names, shapes and dtypes of the model that config
    builds (checked on the ``meta`` device: nothing is allocated); every floating-point tensor
    (model, adapters, optimiser moments, loss window) finite; the stage a known stage; the RNG
    states byte tensors of the right size.
    """
    path = Path(path)
    try:
        return _load_state(path, map_location, steps)
    except TrainingStateError:
        raise
    except CheckpointError as e:
        raise TrainingStateError(f"training state {path}: {one_line(e)}{_ADVICE}") from None
    except Exception as e:
        raise TrainingStateError(f"cannot read the training state {path} ({_refusal(e)}){_ADVICE}") from None


_ADVICE = "; start over with --fresh (or resume=False) or choose another run folder"


def _load_state(path: Path, map_location, steps: int | None) -> dict[str, Any]:
    def bad(msg: str) -> TrainingStateError:
        return TrainingStateError(f"{path} is not a usable feds-lab training state: {msg}{_ADVICE}")

    if not path.is_file():
        raise bad("no such file")
    if path.stat().st_size > MAX_STATE_BYTES:
        raise bad(f"{path.stat().st_size} bytes, more than any state this package writes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle errors, truncated zips, disallowed globals
        raise TrainingStateError(f"cannot read the training state {path} ({_refusal(e)}){_ADVICE}") from None
    if not isinstance(state, dict):
        raise bad(f"it holds a {type(state).__name__}, not a dict")
    for key, kind in _KEYS.items():
        if key not in state:
            raise bad(f"no {key!r}")
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            raise bad(f"{key!r} is a {type(state[key]).__name__}")
    for key, kind in _OPTIONAL.items():
        if key in state and (not isinstance(state[key], kind) or isinstance(state[key], bool)):
            raise bad(f"{key!r} is a {type(state[key]).__name__}")
    if "format" in state and not state["format"].startswith("feds-lab-train-state/"):
        raise bad(f"unknown format {state['format'][:40]!r}")

    from .config import TrainConfig
    from .stages import Stage

    try:
        cfg = TrainConfig.from_dict(state["config"])
    except Exception as e:
        raise bad(f"its config is not valid ({one_line(e)})") from None
    step = state["step"]
    if step < 0:
        raise bad(f"step {step} is negative")
    own_steps = getattr(cfg, "steps", None)
    if isinstance(own_steps, int) and step > own_steps:
        raise bad(f"step {step} is beyond its own config's {own_steps} steps")
    if steps is not None and step > steps:
        raise bad(f"step {step} is beyond this run's {steps} steps")
    if "stage" in state and state["stage"] not in {s.value for s in Stage}:
        raise bad(f"unknown stage {state['stage'][:40]!r}")
    for key in ("nonfinite", "skipped"):
        if key in state and state[key] < 0:
            raise bad(f"{key!r} is negative")
    if "rewinds" in state and state["rewinds"] < 0:
        raise bad("'rewinds' is negative")
    if "lr_scale" in state and not (math.isfinite(state["lr_scale"]) and 0 < state["lr_scale"] <= 1):
        raise bad("'lr_scale' is not in (0, 1]")
    held = state.get("clip_ratios")
    if held is not None and not (isinstance(held.get("terms"), list) and all(isinstance(t, str) for t in held["terms"])
                                 and all(isinstance(held.get(k), (int, float)) and not isinstance(held.get(k), bool)
                                         and math.isfinite(held[k]) and held[k] > 0 for k in ("rho", "k"))):
        raise bad("the held clip ratios are malformed")
    if "seconds" in state and not (math.isfinite(state["seconds"]) and state["seconds"] >= 0):
        raise bad("'seconds' is not a finite, non-negative number")
    if "window" in state:
        w = state["window"]
        if not isinstance(w.get("n"), int) or isinstance(w.get("n"), bool) or w["n"] < 0 \
                or not isinstance(w.get("sums"), dict):
            raise bad("the loss window is malformed")
        if not all(isinstance(k, str) and isinstance(v, torch.Tensor) and v.numel() == 1 for k, v in w["sums"].items()):
            raise bad("the loss window's sums are not one number each")
    _check_tensors(state, bad)
    _check_model(state["model"], cfg, bad)
    _check_optimizers(state, bad)
    _check_rng(state, bad)
    return state


def _check_tensors(state: dict[str, Any], bad) -> None:
    """Every tensor anywhere in the state: finite when floating point, at most 2**31 elements."""
    stack: list[tuple[str, Any, int]] = [("", state, 0)]
    while stack:
        where, v, depth = stack.pop()
        if depth > 12:
            raise bad(f"{where or 'the state'} is nested too deep")
        if isinstance(v, torch.Tensor):
            if v.is_floating_point() and v.numel() and not bool(torch.isfinite(v).all()):
                raise bad(f"non-finite values in {where}")
        elif isinstance(v, dict):
            stack.extend((f"{where}.{k}" if where else str(k), x, depth + 1) for k, x in v.items())
        elif isinstance(v, (list, tuple)):
            stack.extend((f"{where}[{i}]", x, depth + 1) for i, x in enumerate(v))
        elif isinstance(v, float) and not math.isfinite(v) and where.split(".")[-1] not in ("best", "last_epoch"):
            raise bad(f"non-finite value in {where}")
        elif not isinstance(v, (str, int, float, bool, type(None), torch.dtype, torch.device, torch.Size)):
            raise bad(f"{where} holds a {type(v).__name__}")


def _check_model(model_state: dict[str, Any], cfg, bad) -> None:
    from ..checkpoint import MetaBuild, check_compatible
    from ..models import build_model

    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model_state.items()):
        raise bad("its model weights are not a dict of tensors")
    try:
        with MetaBuild():
            skeleton = build_model(cfg.role, preset=cfg.preset, family=cfg.family, **(cfg.model or {}))
    except Exception as e:
        raise bad(f"its config describes no model this package builds ({one_line(e)})") from None
    try:
        check_compatible(skeleton, model_state, source="training state")
    except CheckpointError as e:
        raise bad(one_line(e)) from None


def _check_optimizers(state: dict[str, Any], bad) -> None:
    for key in ("optimizer", "aux_optimizer"):
        opt = state.get(key)
        if opt is None:
            continue
        groups, per_param = opt.get("param_groups"), opt.get("state")
        if not isinstance(groups, list) or not all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                                   for g in groups) or not isinstance(per_param, dict):
            raise bad(f"the {key} state is malformed")
        ids = [p for g in groups for p in g["params"]]
        if not all(isinstance(p, int) and not isinstance(p, bool) for p in ids) or len(set(ids)) != len(ids):
            raise bad(f"the {key}'s parameter groups are malformed")
        if not set(per_param) <= set(ids):
            raise bad(f"the {key} holds moments of parameters it does not have")
        for g in groups:
            lr = g.get("lr")
            if isinstance(lr, torch.Tensor):
                lr = float(lr)
            if lr is not None and (not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0):
                raise bad(f"the {key}'s learning rate {lr!r} is not a finite, non-negative number")


def _check_rng(state: dict[str, Any], bad) -> None:
    size = torch.get_rng_state().numel()
    for i, t in enumerate(state.get("rng") or []):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.dim() != 1 or t.numel() != size:
            raise bad(f"RNG state {i} is not a {size}-byte tensor")
    for i, t in enumerate(state.get("cuda_rng") or []):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.dim() != 1:
            raise bad(f"CUDA RNG state {i} is not a byte tensor")


class MetricsLog:
    """``metrics.jsonl``: append one JSON object per line, flushed at once so a crash keeps what was logged."""

    def __init__(self, path: Path):
        self.path = path

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop records of steps after ``step`` (logged by a run killed after its last checkpoint)."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if _step_of(line) <= step]
        atomic_write_bytes(self.path, "".join(line + "\n" for line in kept).encode())

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def _step_of(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")  # a half-written last line: dropped


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    """All records of a run folder's ``metrics.jsonl`` (for notebooks and plots)."""
    return MetricsLog(Path(run) / METRICS_FILE).read()


def clear_run(out: Path) -> None:
    """Remove the files a run writes (and stale temporary files), nothing else."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for tmp in out.glob(".*.tmp"):
        if any(tmp.name.startswith(f".{name}.") for name in RUN_FILES):
            tmp.unlink(missing_ok=True)


# --- the training state: everything a resumed run needs, captured and restored in one place --------
SPIKE_WINDOW = 50  # steps whose median L_RD a spike is measured against
SPIKE_MIN_STEPS = 20  # no spike is called before this many finite steps (after a start or a rewind)
REWIND_NONFINITE = 3  # non-finite steps in a row that count as a divergence (one alone is only skipped)


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
    window: LossWindow = field(default_factory=lambda: LossWindow())
    rewinds: int = 0  # how many times the run went back to its last checkpoint after a divergence
    lr_scale: float = 1.0  # rewind_lr_factor ** rewinds
    spiked: bool = False  # the last step was skipped as a spike
    recent: deque = field(default_factory=lambda: deque(maxlen=SPIKE_WINDOW))  # last steps' L_RD (not saved)
    last_grads: dict = field(default_factory=dict)  # the last step's gradient norms, for its report (not saved)
    last_lr: float = 0.0  # the rate the last step used (not saved)
    #: separate clipping between measurements: (terms measured, rho, k) of the last measured step
    clip_ratios: tuple[tuple[str, ...], float, float] | None = None

    def is_spike(self, rd: float) -> bool:
        """L_RD above ``rewind_spike`` x the median of the last steps' (once there are enough of them)."""
        k = self.cfg.rewind_spike
        return bool(k) and len(self.recent) >= SPIKE_MIN_STEPS and rd > k * statistics.median(self.recent)

    def diverged(self) -> bool:
        return bool(self.cfg.rewind_spike) and (self.spiked or self.nonfinite >= REWIND_NONFINITE)

    @classmethod
    def start(cls, cfg: TrainConfig, objective: TrainingObjective, weights: DistillationWeights, dd: Distributed,
              saved: dict[str, Any] | None) -> TrainingState:
        from .optim import fresh_optimizers
        from .stages import Stage

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
            "clip_ratios": ({"terms": list(self.clip_ratios[0]), "rho": self.clip_ratios[1], "k": self.clip_ratios[2]}
                            if self.clip_ratios else None),
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
        from .stages import Stage

        self.step, self.stage = state["step"], Stage(state["stage"])
        restore_rng(state, self.dd, self.cfg.seed + self.step)
        self.nonfinite, self.skipped, self.seconds = state["nonfinite"], state["skipped"], state["seconds"]
        self.rewinds, self.lr_scale = int(state.get("rewinds", 0)), float(state.get("lr_scale", 1.0))
        self.spiked = False
        self.recent.clear()
        held = state.get("clip_ratios")
        self.clip_ratios = (tuple(held["terms"]), float(held["rho"]), float(held["k"])) if held else None
        self.window = LossWindow.from_state(state["window"], self.dd.device)  # a log line half-way through its steps



class LossWindow:
    """Sums of the loss terms since the last log line (tensors: no device sync until it is written)."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.n = 0

    def add(self, terms: dict[str, torch.Tensor], **extra: torch.Tensor) -> None:
        for k, v in {**terms, **extra}.items():
            self.sums[k] = self.sums.get(k, 0) + v.detach()
        self.n += 1

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> LossWindow:
        w = cls()
        w.n, w.sums = state["n"], {k: v.to(device) for k, v in state["sums"].items()}
        return w

    def means(self) -> dict[str, float]:
        return {k: float(v) / self.n for k, v in self.sums.items()} if self.n else {}



def restore_rng(state: dict[str, Any], dd: Distributed, fallback_seed: int) -> None:
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
