"""One run, one :class:`TrainConfig`: plain values, loadable from YAML, overridable from the command line.

Precedence, lowest first: the dataclass defaults (budget fields ``None`` = "the preset's value",
read from :func:`feds_lab.presets.train_preset` when the config is resolved), a YAML file, the
individual CLI flags, then ``--set key=value`` (``model.M=64`` sets one model override).

The resolved config (every ``None`` budget field filled in) is saved as ``config.yaml`` in the run
folder; it is what a resumed run is checked against.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import FedsLabError
from ..losses import DEFAULT_TAPS, DISTILLATION_WEIGHTINGS, FEATURE_NORMS, FEATURE_WEIGHTINGS, METRICS, MS_SSIM_MIN_SIDE
from ..presets import LAMBDAS, PRESET_NAMES, ROLES, train_preset
from .init import INIT_SCOPES

SCHEDULES = ("constant", "onecycle")
CLIP_MODES = ("total", "separate")
COMPILE_MODES = ("auto", "attention", "none")
#: ``compile: auto`` compiles runs of at least this many steps (ours: the first compile takes about a
#: minute on a two-core CPU, paid back after about 400 steps at the measured saving)
COMPILE_MIN_STEPS = 1000
PRECISIONS = ("auto", "fp32", "bf16")
# the stage weights' vocabularies live with the stages (feds_lab.training.stages)
OUTPUT_SCALES = ("raw", "distortion")
RAMPS = ("constant", "linear", "cosine")
BALANCES = ("none", "grad")
#: training split -> the held-out split its runs validate on (feds_lab.data)
TRAIN_SPLITS = {"train": "val", "tune-train": "tune-val"}
BASELINES = ("none", "scratch")
DEVICES = ("auto", "cpu", "cuda")



def setting(default=dataclasses.MISSING, *, default_factory=dataclasses.MISSING, groups: tuple[str, ...] = (),
            choices=None, bound: str | None = None):
    """A :class:`TrainConfig` field with what the rest of the package needs to know of it, declared once:

    ``groups``: ``runtime`` (how a run executes or reports, not the weights it ends with: a run resumes
    with other values for these), ``distillation`` (read by a FEDS student only: left out of a
    teacher's or the scratch baseline's identity), ``student`` (a student's stages), ``path`` (files or
    folders, compared as real paths), ``preset`` (``None`` = the preset's budget value).
    ``choices``: the allowed values (checked by :meth:`TrainConfig.check`); ``bound``: ``">0"``,
    ``">=0"`` or ``">=1"`` (checked likewise, when the value is not None)."""
    meta = {"groups": tuple(groups), "choices": choices, "bound": bound}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


class ConfigError(FedsLabError, ValueError):
    """A training config value is unknown, malformed or inconsistent (the message says which)."""


@dataclass
class TrainConfig:
    """Everything one training run needs. Units: steps are optimiser steps, crop is px, lr is per step.

    Defaults marked "ours" are this project's choices where the method (docs/method.md) or the paper is silent.
    """

    # --- what is trained -------------------------------------------------------------------------
    role: str = setting("teacher", choices=ROLES)  #: teacher | student
    family: str = "cnn"  #: model family (feds_lab.models.list_families())
    preset: str = "tiny"  #: paper | small | tiny: model sizes and, by default, the budget
    model: dict[str, Any] = field(default_factory=dict)  #: build_model overrides, e.g. {"M": 64}
    lmbda: float = setting(LAMBDAS[2], bound=">=0")  #: L_RD = bpp + lmbda * 255^2 * MSE (MS-SSIM: bpp + lmbda * (1 - MS-SSIM))
    metric: str = setting("mse", choices=METRICS)  #: mse | ms-ssim
    baseline: str = setting("none", choices=BASELINES)  #: student only: none (FEDS) | scratch (same student, L_RD only, no teacher)
    teacher: str | None = setting(None, groups=('distillation', 'path'))  #: teacher checkpoint (.safetensors), needed by a FEDS student
    warm_start: str | None = setting(None, groups=('path',))  #: checkpoint whose weights initialise the model (e.g. a neighbouring lambda's)

    # --- budget: None = the preset's value (feds_lab.presets.train_preset) -------------------------
    steps: int | None = setting(None, groups=('preset',), bound=">=1")  #: total optimiser steps (all stages together)
    batch_size: int | None = setting(None, groups=('preset',), bound=">=1")  #: global batch (split across ranks under torchrun)
    crop: int | None = setting(None, groups=('preset',))  #: square training crops, px (a multiple of 64)
    lr: float | None = setting(None, groups=('preset',), bound=">0")  #: Adam learning rate; the peak of the one-cycle schedule
    schedule: str | None = setting(None, groups=('preset',), choices=SCHEDULES)  #: constant | onecycle (torch OneCycleLR over all steps, peak lr)
    aux_lr: float = setting(1e-3, bound=">0")  #: Adam on the entropy bottleneck's quantiles (CompressAI's default)
    clip_max_norm: float = setting(1.0, bound=">=0")  #: gradient clipping (CompressAI's example uses 1.0); 0 = off

    # --- FEDS stages (student) -------------------------------------------------------------------
    #: fractions of ``steps`` for feature alignment / channel distillation / fine-tuning (docs/method.md)
    #: Defaults of the distillation (ours): the best of a search on tune-val (`feds-lab tune`, study
    #: ``study-feds-b``, trial 8 of 12, README "Tuned FEDS against training alone"): channel distillation
    #: at a share 0.1 of the RD gradient, feature alignment and output distillation almost off (0.01).
    #: Its prior (the previous defaults) had alpha = gamma = 0.1. The first build's values, for
    #: comparison: split (0.3, 0.5, 0.2), fine-tuning 0.1, alpha = beta = 1, gamma 0, tau 1, raw MSE
    #: losses, no balancing, constant weights, total clipping.
    stage_split: tuple[float, float, float] = setting((0.28, 0.42, 0.3), groups=('student',))
    #: fine-tuning runs at lr * this (ours): 1 = the schedule's own rate, so that stage 3 recovers at a
    #: useful rate and the scratch baseline's schedule is one plain one-cycle
    finetune_lr_factor: float = setting(1.0, groups=('student',), bound=">0")
    alpha: float = setting(0.01, groups=('distillation',), bound=">=0")  #: weight of L_feat in stages 1-2 (ours; with balance=grad a share of L_RD's gradient); 0 = off
    beta: float = setting(0.1, groups=('distillation',), bound=">=0")  #: weight of L_ent in stage 2 (ours; likewise); 0 = no channel distillation
    gamma: float = setting(0.01, groups=('distillation',), bound=">=0")  #: weight of output distillation in stages 1-2 (ours; likewise); 0 = off
    weighting: str = setting("softmax", groups=('distillation',), choices=DISTILLATION_WEIGHTINGS)  #: channel weights: softmax | linear | uniform | topk
    tau: float = setting(2.0, groups=('distillation',), bound=">0")  #: softmax temperature of the channel weights, bits (ours)
    taps: tuple[str, ...] = setting(DEFAULT_TAPS, groups=('distillation',))  #: features aligned in L_feat
    feature_weighting: str = setting("attention", groups=('distillation',), choices=FEATURE_WEIGHTINGS)  #: attention | plain
    #: scale-free losses (ours): ``channel`` standardises teacher and lifted student per
    #: image and channel (1 - Pearson, as PKD); ``none`` is the method's raw MSE
    feature_norm: str = setting("channel", groups=('distillation',), choices=FEATURE_NORMS)  #: L_feat: none | channel
    latent_norm: str = setting("channel", groups=('distillation',), choices=FEATURE_NORMS)  #: L_ent: none | channel
    #: output distillation: ``raw`` gamma * MSE(x_hat_S, x_hat_T); ``distortion`` gamma * lmbda * 255^2 *
    #: MSE(x_hat_S, x_hat_T), i.e. gamma is a share of the distortion term
    output_scale: str = setting("distortion", groups=('distillation',), choices=OUTPUT_SCALES)
    ramp: str = setting("cosine", groups=('distillation',), choices=RAMPS)  #: distillation weights over stages 1-2: constant | linear | cosine (down to 0)
    #: ``grad``: alpha, beta, gamma become each term's gradient norm as a share of L_RD's, on the
    #: student's weights, measured every ``balance_every`` steps (ours); ``none``: plain weights
    balance: str = setting("grad", groups=('distillation',), choices=BALANCES)
    balance_every: int = setting(10, groups=('distillation',), bound=">=1")
    #: ``total``: one clip over the summed gradient (CompressAI's); ``separate``: L_RD's gradient is
    #: clipped exactly as the scratch baseline's, the distillation gradient on its own, so that
    #: distillation never shrinks the RD step (single process; under torchrun it falls back to total)
    clip_mode: str = setting("separate", groups=('distillation',), choices=CLIP_MODES)
    #: with ``clip_mode: separate``: both gradients are taken apart (their norms fix the two clip
    #: factors) every this many steps, and between those steps one backward pass of
    #: ``L_RD + rho * L_kd`` is clipped with the ratios last measured (ours: a second backward pass
    #: each step cost about a fifth of a distillation step); 1 = apart on every step
    clip_measure_every: int = setting(10, groups=('runtime',), bound=">=1")
    #: beyond FEDS, reported apart: start the student from the teacher's weights, channel-sliced
    #: where the shapes allow (as EVC- and KDIC-style students are built); FEDS students only
    init_from_teacher: bool = setting(False, groups=('distillation',))
    #: which of the student's weights ``init_from_teacher`` copies: ``all`` (every weight whose shape
    #: fits) or ``entropy`` (the entropy model alone: hyperprior, context model, entropy parameters;
    #: the transforms stay random), as RS-LLIC-style students reuse the teacher's entropy model (ours)
    init_scope: str = setting("all", groups=('distillation',), choices=INIT_SCOPES)
    warmup: float = 0.3  #: one-cycle warm-up share of the steps (torch's pct_start)

    # --- data ------------------------------------------------------------------------------------
    data: str | None = setting(None, groups=('path',))  #: image folder; None = the built-in photographs
    #: split of ``data`` to train on: ``train`` (validating on ``val``) or ``tune-train`` (validating on
    #: ``tune-val``: what ``feds-lab tune`` uses, so that a search never sees the reported images)
    train_split: str = setting("train", choices=TRAIN_SPLITS)
    seed: int = 0  #: model initialisation, batches and quantisation noise

    # --- running and reporting -------------------------------------------------------------------
    out: str | None = setting(None, groups=('runtime',))  #: run folder; None = runs/<run name>
    device: str = setting("auto", groups=('runtime',))  #: auto | cpu | cuda
    #: ``attention``: training steps run the Swin-V2 stages (the model's and the teacher's), and the
    #: feature alignment loss's elementwise work, through torch.compile (measured: the step's largest
    #: savings on CPU; float rounding differs, results do not);
    #: ``none``: eager; ``auto``: ``attention`` for runs of at least COMPILE_MIN_STEPS steps. Validation
    #: and coding are always eager.
    compile: str = setting("auto", groups=('runtime',), choices=COMPILE_MODES)
    #: the transforms' arithmetic in training steps: ``bf16`` runs the analysis and synthesis
    #: transforms (the model's and the teacher's) under bfloat16 autocast, the entropy model and the
    #: losses in float32; ``fp32``: float32 throughout; ``auto``: ``bf16`` where the processor has
    #: bfloat16 arithmetic (AVX512-BF16 or AMX on CPU, a bf16-capable GPU). Validation and coding are
    #: always float32 (ours; measured in docs/benchmarks.md)
    precision: str = setting("fp32", groups=('runtime',), choices=PRECISIONS)
    threads: int | None = setting(None, groups=('runtime',))  #: CPU threads for this run (torch.set_num_threads); None = torch's default
    val_every: int | None = setting(None, groups=('runtime', 'preset'), bound=">=0")  #: validate (real bitstreams) every this many steps and at the end; 0 = never
    val_images: int | None = setting(None, groups=('runtime',))  #: validate on at most this many held-out images; None = all
    ckpt_every: int | None = setting(None, groups=('runtime', 'preset'), bound=">=0")  #: write the training state every this many steps
    log_every: int = setting(1, groups=('runtime',), bound=">=1")  #: a "train" line in metrics.jsonl every this many steps (mean over them)
    #: a "grad" line every this many steps: each loss term's gradient norm on the student's weights
    #: (L_RD, alpha L_feat, beta L_ent, gamma L_out); 0 = never. Costs one extra backward per term.
    grad_log_every: int = setting(100, groups=('runtime',), bound=">=0")
    max_nonfinite: int = setting(20, groups=('runtime',), bound=">=0")  #: stop after more than this many non-finite steps in a row
    #: divergence (ours): a step whose L_RD exceeds ``rewind_spike`` x the median of the last 50 steps'
    #: (or 3 non-finite steps in a row) is skipped, and the run goes back to its last checkpoint and
    #: continues at ``rewind_lr_factor`` x the learning rate, at most ``max_rewinds`` times (then it stops,
    #: the last good checkpoint kept). Measured: the demo's 0.0932 teacher went from L_RD 60 to 20,000 in
    #: one step just after the one-cycle peak. 0 = off (then only ``max_nonfinite`` stops a run).
    rewind_spike: float = 10.0
    rewind_lr_factor: float = 0.5
    max_rewinds: int = setting(3, bound=">=0")
    resume: bool = setting(True, groups=('runtime',))  #: continue from the state in the run folder, if any (False: start over)
    progress: bool = setting(True, groups=('runtime',))  #: tqdm progress bar (rank 0 only)

    # --- construction ----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from plain values (e.g. parsed YAML), coercing each to its field's type."""
        return cls().updated(values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"no config file at {path}")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: a config file must hold a mapping of field: value")
        return cls.from_dict(values)

    def updated(self, values: dict[str, Any]) -> TrainConfig:
        """A copy with ``values`` applied; keys ``model.X`` set one model override."""
        new = dataclasses.replace(self, model=dict(self.model))
        hints = _hints()
        for key, value in values.items():
            if key.startswith("model.") and len(key) > 6:
                new.model[key[6:]] = value
                continue
            if key not in hints:
                near = difflib.get_close_matches(key, list(hints), n=1)
                hint = f"did you mean {near[0]!r}?" if near else f"known: {', '.join(hints)}"
                raise ConfigError(f"unknown config field {key!r}; {hint}")
            setattr(new, key, _coerce(key, value, hints[key]))
        return new

    def with_overrides(self, assignments: list[str]) -> TrainConfig:
        """Apply ``key=value`` strings (``--set``); values are read as YAML (``null``, ``[1, 2]``, ``true``)."""
        values = {}
        for item in assignments:
            key, sep, raw = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--set expects key=value, got {item!r}")
            values[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        return self.updated(values)

    # --- resolution and checks -------------------------------------------------------------------
    def resolved(self) -> TrainConfig:
        """A copy with the preset's budget filled in, a default run folder, and every value checked."""
        if self.preset not in PRESET_NAMES:
            raise ConfigError(f"unknown preset {self.preset!r}; known: {list(PRESET_NAMES)}")
        budget = train_preset(self.preset)
        new = self.updated({k: budget[k] for k in _PRESET_FIELDS if getattr(self, k) is None})
        if new.out is None:
            new.out = str(Path("runs") / new.run_name())
        for key in PATH_FIELDS:  # saved configs must not depend on the working folder
            if getattr(new, key) not in (None, "builtin"):
                setattr(new, key, os.path.abspath(getattr(new, key)))
        new.check()
        return new

    def run_name(self) -> str:
        """teacher-cnn-tiny-l0.0067, student-..., scratch-... (the scratch baseline)."""
        kind = "scratch" if self.role == "student" and self.baseline == "scratch" else self.role
        return f"{kind}-{self.family}-{self.preset}-l{self.lmbda:g}"

    @property
    def distills(self) -> bool:
        """True for a FEDS student (a teacher, three stages); False for a teacher or the scratch baseline."""
        return self.role == "student" and self.baseline == "none"

    @property
    def compiles(self) -> bool:
        """Whether this run's training steps run the attention stages compiled (``compile``)."""
        return self.compile == "attention" or (self.compile == "auto" and (self.steps or 0) >= COMPILE_MIN_STEPS)

    def check(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        for f in dataclasses.fields(self):  # the choices and bounds each field declares (see setting())
            value, choices, bound = getattr(self, f.name), f.metadata.get("choices"), f.metadata.get("bound")
            if choices is not None and value not in choices:
                need(False, f"{f.name} must be one of {list(choices)}, got {value!r}")
            if bound is not None and value is not None:
                ok = {">0": value > 0, ">=0": value >= 0, ">=1": value >= 1}[bound]
                words = {">0": "positive", ">=0": "non-negative", ">=1": "at least 1"}[bound]
                need(ok, f"{f.name} must be {words}, got {value}")
        need(self.role == "student" or self.baseline == "none", "baseline applies to students only")
        if self.distills:
            need(self.teacher is not None, "a FEDS student needs a teacher checkpoint (--teacher CKPT), "
                 "or --baseline scratch for the baseline")
        else:
            need(self.teacher is None, f"a {self.run_name().split('-')[0]} run takes no teacher (got {self.teacher!r})")
        need(self.device in DEVICES or self.device.startswith("cuda:"),
             f"device must be one of {list(DEVICES)} or cuda:N, got {self.device!r}")
        need(0 < self.warmup < 1, f"warmup must be a share of the steps between 0 and 1, got {self.warmup}")
        need(not self.init_from_teacher or self.distills,
             "init_from_teacher needs a FEDS student with a teacher (it copies the teacher's weights)")
        need(self.init_from_teacher or self.init_scope == "all",
             f"init_scope {self.init_scope!r} needs init_from_teacher: true (it says which weights it copies)")
        need(self.crop >= 64 and self.crop % 64 == 0, f"crop must be a positive multiple of 64 px, got {self.crop}")
        need(self.metric != "ms-ssim" or self.crop >= MS_SSIM_MIN_SIDE,
             f"metric ms-ssim needs crops of at least {MS_SSIM_MIN_SIDE} px (five scales), got {self.crop}; "
             "use crop=192 or more")
        need(len(self.stage_split) == 3 and all(f >= 0 for f in self.stage_split)
             and math.isclose(sum(self.stage_split), 1.0, abs_tol=1e-6),
             f"stage_split must be three non-negative fractions summing to 1, got {list(self.stage_split)}")
        need(len(self.taps) > 0 or self.alpha == 0, "taps is empty: give at least one tap, or alpha=0")
        need(self.rewind_spike == 0 or self.rewind_spike > 1,
             f"rewind_spike must be 0 (off) or above 1 (a multiple of the recent median), got {self.rewind_spike}")
        need(0 < self.rewind_lr_factor <= 1, f"rewind_lr_factor must be in (0, 1], got {self.rewind_lr_factor}")
        need(self.threads is None or self.threads >= 1, f"threads must be at least 1, got {self.threads}")
        need(self.val_images is None or self.val_images >= 1, f"val_images must be at least 1, got {self.val_images}")

    # --- saving and comparing --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON values (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else (dict(v) if isinstance(v, dict) else v)
                for k, v in dataclasses.asdict(self).items()}

    def identity(self) -> dict[str, Any]:
        """The values that decide the trained weights: everything but :data:`RUNTIME_FIELDS`, and
        for runs that do not distil, everything but the fields they never read."""
        unused = set() if self.distills else set(DISTILLATION_FIELDS - {"teacher"})
        if self.role != "student":
            unused |= STUDENT_FIELDS
        elif not self.distills and self.finetune_lr_factor == 1.0:
            unused.add("stage_split")  # a scratch run meets its stage boundaries only through the lr drop
        out = {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS and k not in unused}
        for k in PATH_FIELDS:  # the same file, named relatively or absolutely, is the same run
            if out.get(k) not in (None, "builtin"):
                out[k] = os.path.realpath(out[k])
        return out

    def differences(self, other: TrainConfig) -> list[str]:
        """``field: mine -> theirs`` for every identity field that differs."""
        a, b = self.identity(), other.identity()
        return [f"{k}: {a[k]!r} -> {b.get(k)!r}" for k in a if a[k] != b.get(k)]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save_yaml(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_yaml())
        return path


def fields_in(group: str) -> frozenset[str]:
    """The names of the :class:`TrainConfig` fields declared in ``group`` (see :func:`setting`)."""
    return frozenset(f.name for f in dataclasses.fields(TrainConfig) if group in f.metadata.get("groups", ()))


#: how a run executes or reports, not the weights it ends with (a run may resume with other values)
RUNTIME_FIELDS = fields_in("runtime")
#: read by a FEDS student only: a teacher's or the scratch baseline's identity leaves them out
DISTILLATION_FIELDS = fields_in("distillation")
#: files or folders: compared as real paths (relative to the working folder)
PATH_FIELDS = tuple(sorted(fields_in("path")))
#: a student's stages and fine-tuning rate: left out of a teacher's identity
STUDENT_FIELDS = fields_in("student")
#: the fields train_preset() supplies when they are left at None
_PRESET_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig) if "preset" in f.metadata.get("groups", ()))


# --- coercion -----------------------------------------------------------------------------------
def _hints() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


_NONE_WORDS = ("none", "null", "~", "")
_TRUE_WORDS = ("true", "yes", "on", "1")
_FALSE_WORDS = ("false", "no", "off", "0")


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """``value`` as field ``name`` of type ``tp`` wants it; strings from the command line are parsed."""
    if tp is Any:
        return value
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS):
            if type(None) in args:
                return None
        if value is None:
            raise ConfigError(f"config field {name!r} cannot be empty")
        return _coerce(name, value, next(a for a in args if a is not type(None)))
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            word = str(value).strip().lower()
            if word in _TRUE_WORDS + _FALSE_WORDS:
                return word in _TRUE_WORDS
            raise ValueError
        if tp is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                return int(value)
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            if value is None or isinstance(value, (dict, list, tuple)):
                raise ValueError
            return str(value)
        origin = typing.get_origin(tp)
        if origin is tuple:
            items = [s.strip() for s in value.split(",") if s.strip()] if isinstance(value, str) else list(value)
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_coerce(name, v, args[0]) for v in items)
            if len(items) != len(args):
                raise ValueError
            return tuple(_coerce(name, v, a) for v, a in zip(items, args))
        if origin is dict:
            if value is None:
                return {}
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"config field {name!r} expects {_type_name(tp)}, got {value!r}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
