"""The workbench's main job: the four notebooks, run headless with papermill, one after another.

::

    01_teacher_training ─► 02_channel_entropy ─► 03_distillation ─► 04_rd_analysis ─► report/index.html

A run folder ``runs/<name>/`` holds everything one pipeline run made (its layout:
``feds_lab.run_folder``). The pipeline writes the resolved :class:`PipelineConfig` to the run's
``pipeline.yaml`` and hands each notebook the run folder only; every notebook reads its parameters
from that file (:meth:`PipelineConfig.for_notebook`). So the fields of :class:`PipelineConfig` are
the one list of pipeline parameters, with their defaults: adding one is one edit there
(``docs/contributing.md``).

The key figures are also copied to the repository's ``figures/`` when ``figures_dir`` is set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import FedsLabError
from .presets import PRESET_NAMES, train_preset
from .report import write_report
from .run_folder import KEY_FIGURES, KEY_TABLES, NOTEBOOKS, RunLayout, curve_variant, seed_variant, split_curve_variant

#: The notebooks' committed sources (NN_name.py, jupytext percent format) and their .ipynb.
NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"

#: Fields that say where a run goes and which notebooks run, not what a notebook computes: they are
#: not part of a notebook's --resume digest.
_RUN_ONLY_FIELDS = ("name", "runs_dir", "figures_dir", "notebooks", "eval_cache")


class PipelineError(FedsLabError):
    """A notebook failed; the message names it and the failing cell's error."""


def check_run_name(name: Any, runs_dir: Any = "runs") -> str:
    """A run name is one plain folder name inside ``runs_dir``: no separators, no ``..``, not hidden."""
    if not isinstance(name, str) or not name or name in (".", "..") or name.startswith(".") \
            or any(c in name for c in "/\\\0") or len(name) > 200:
        raise FedsLabError(f"run name {name!r} must be one folder name (letters, digits, '-', '_', '.'), "
                           "without path separators or a leading '.'")
    if not isinstance(runs_dir, str) or not runs_dir:
        raise FedsLabError(f"runs_dir must be a folder name, got {runs_dir!r}")
    root = Path(runs_dir).resolve()
    if root not in (Path(runs_dir) / name).resolve().parents:
        raise FedsLabError(f"run name {name!r} leads outside the runs folder {runs_dir}")
    return name


def _checked_steps(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 1:
        raise FedsLabError(f"{key} must be a positive whole number of steps (or left out for the preset's), got {value!r}")
    return int(value)


def _checked_lambdas(values: Any) -> list[float]:
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]
    if not isinstance(values, (list, tuple)) or not values:
        raise FedsLabError(f"lambdas must be a non-empty list of positive numbers, got {values!r}")
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise FedsLabError(f"lambdas: {v!r} is not a number") from None
        if isinstance(v, bool) or not math.isfinite(f) or f <= 0:
            raise FedsLabError(f"lambdas must be positive and finite, got {v!r}")
        out.append(f)
    if len(set(out)) != len(out):
        raise FedsLabError(f"lambdas holds a value twice: {values!r}")
    return sorted(out)


@dataclass
class PipelineConfig:
    """Parameters of one pipeline run. ``None`` budget fields take the preset's value."""

    name: str = "demo"  #: run folder name under runs_dir
    preset: str = "tiny"  #: paper | small | tiny (model sizes and default budgets)
    family: str = "cnn"  #: teacher's model family
    student_family: str | None = None  #: student's family (None = the teacher's): cross-family distillation
    lambdas: list[float] | None = None  #: one teacher and one student per lambda; None = the preset's ladder
    teacher_steps: int | None = None  #: None = the preset's steps
    student_steps: int | None = None  #: all three stages together; the scratch baseline gets the same
    data: str | None = None  #: training images: a folder, or None for scikit-image's bundled photographs
    #: evaluation images (e.g. Kodak); None = the validation split of `data`, or for the built-in photographs
    #: their evaluation set "builtin-eval" (feds_lab.data.BUILTIN_EVAL, 6 images)
    eval_data: str | None = None
    eval_split: str = "val"  #: split of eval_data to evaluate on: val | all
    runs_dir: str = "runs"
    #: notebook 04's evaluation cache (feds_lab.evaluation.cache): a folder, "off", or None for
    #: <runs_dir>/.eval-cache; the environment variable FEDS_LAB_EVAL_CACHE (off | folder) wins over it
    eval_cache: str | None = None
    seed: int = 0
    device: str = "auto"  #: auto | cpu | cuda
    train: dict[str, Any] = field(default_factory=dict)  #: TrainConfig overrides for every run (crop, lr, ...)
    variants: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"feds": {}, "scratch": {"baseline": "scratch"}}
    )  #: student variants: name -> TrainConfig overrides (ablations go here); one more key, ``teacher_for``
    #: {student lambda: teacher lambda}, lets a student distil another lambda's teacher (default: its own)
    #: the variant that stands for FEDS in notebook 04: student vs teacher and vs scratch, every other
    #: variant (ablations) against it, and its learning curve against scratch's
    reference: str = "feds"
    #: more (anchor, test) pairs for notebook 04's BD table, as variant names or "teacher": e.g. a
    #: cross-family student (a variant with its own ``family``) against its own scratch baseline
    comparisons: list[list[str]] = field(default_factory=list)
    #: warm-start each lambda's run from the previous (smaller) lambda's model of the same kind, as
    #: METHOD.md suggests for short budgets: every model then says so in its record (warm_start)
    warm_start_ladder: bool = True
    #: where a teacher's warm start comes from: ``previous`` (the chain), ``first`` (every lambda
    #: from the smallest lambda's teacher, so that the later teachers can train side by side), or a
    #: mapping {lambda: lambda it starts from} for the lambdas that differ from the chain
    teacher_ladder: Any = "previous"
    #: TrainConfig overrides for single teachers, {lambda: {field: value}}, applied after ``train``
    #: (e.g. a lower lr for a teacher that diverged at the schedule's peak)
    teacher_overrides: dict[float, dict[str, Any]] = field(default_factory=dict)
    #: learning curves (issue 16): {variant: [student budgets]}; each budget other than ``student_steps``
    #: adds the variant ``<variant>@<steps>`` (the same overrides, ``steps`` replaced), trained and
    #: evaluated like any variant; notebook 04 draws FEDS against scratch by budget, at equal steps
    #: and at equal wall-clock (so give scratch budgets past FEDS's: a FEDS step costs more)
    learning_curve: dict[str, list[int]] = field(default_factory=dict)
    #: more seeds (issue 13): {variant: [seeds]}; each seed adds the variant ``<variant>_s<seed>`` (the same
    #: overrides, ``seed`` replaced: the student's initial weights, its crops, its quantisation noise; the
    #: teachers stay this config's), trained and evaluated like any variant. Notebook 04 compares each
    #: seed with the same seed of scratch and pools every seed of a variant against every seed of scratch
    #: (evaluation.seeds: a bootstrap over seeds and images); at short budgets one seed is not an answer.
    #: A learning curve's budget takes seeds too: ``feds@600: [1, 2]`` adds ``feds_s1@600``, ``feds_s2@600``,
    #: compared with ``scratch@600``'s seeds
    seeds: dict[str, list[int]] = field(default_factory=dict)
    anchors: list[str] = field(default_factory=lambda: ["jpeg", "webp", "avif", "jpeg2000"])
    entropy_images: int = 8  #: images for the channel-entropy notebook
    #: torch threads in every notebook kernel (evaluation, analysis) and in every training run whose
    #: ``train`` does not set its own; None = torch's default (all cores). Two runs side by side on
    #: two cores: 1 each, or both crawl (oversubscribed threads are 10-100x slower, measured)
    threads: int | None = None
    figures_dir: str | None = "figures"  #: where key figures are copied; None = nowhere
    notebooks: list[str] = field(default_factory=lambda: list(NOTEBOOKS))

    @classmethod
    def from_yaml(cls, path: str | Path) -> PipelineConfig:
        values = yaml.safe_load(Path(path).read_text()) or {}
        return cls().updated(values)

    def updated(self, values: dict[str, Any]) -> PipelineConfig:
        if not isinstance(values, dict):
            raise FedsLabError(f"pipeline parameters must be a mapping of name: value, got {type(values).__name__}")
        names = {f.name for f in dataclasses.fields(self)}
        bad = sorted(set(values) - names)
        if bad:
            raise FedsLabError(f"unknown pipeline parameter(s) {bad}; known: {sorted(names)}")
        return dataclasses.replace(self, **values)

    def resolved(self) -> PipelineConfig:
        if self.preset not in PRESET_NAMES:
            raise FedsLabError(f"unknown preset {self.preset!r}; known: {list(PRESET_NAMES)}")
        budget = train_preset(self.preset)
        new = dataclasses.replace(self)
        check_run_name(self.name, self.runs_dir)
        new.lambdas = _checked_lambdas(budget["lambdas"] if self.lambdas is None else self.lambdas)
        # None is "the preset's"; 0 is not None (a zero or negative budget is an error, not a default)
        new.teacher_steps = _checked_steps("teacher_steps", budget["steps"] if self.teacher_steps is None else self.teacher_steps)
        new.student_steps = _checked_steps("student_steps", budget["steps"] if self.student_steps is None else self.student_steps)
        for key in ("seed", "entropy_images"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < (1 if key == "entropy_images" else 0):
                raise FedsLabError(f"{key} must be {'a positive' if key == 'entropy_images' else 'a non-negative'} "
                                   f"integer, got {v!r}")
        for key in ("train", "variants"):
            if not isinstance(getattr(self, key), dict):
                raise FedsLabError(f"{key} must be a mapping, got {getattr(self, key)!r}")
        if self.reference not in self.variants:
            raise FedsLabError(f"reference: {self.reference!r} is not a variant; the variants are {sorted(self.variants)}")
        new.variants = self._seed_variants(self._curve_variants(new.student_steps))
        for name, overrides in new.variants.items():  # a bad teacher_for fails here, not when its run starts
            for lmbda in new.lambdas:
                new._paired_teacher(name, lmbda, (overrides or {}).get("teacher_for"),
                                    (overrides or {}).get("baseline") == "scratch")
        for pair in self.comparisons or []:
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise FedsLabError(f"comparisons: each entry is [anchor, test], got {pair!r}")
            unknown = [v for v in pair if v != "teacher" and v not in new.variants]
            if unknown:
                raise FedsLabError(f"comparisons: {unknown} not variants (or 'teacher'); the variants are "
                                   f"{sorted(new.variants)}")
        new.comparisons = [list(pair) for pair in self.comparisons or []]
        new.student_family = self.student_family or self.family
        if new.eval_data is None and new.data in (None, "builtin") and new.eval_split == "val":
            # the built-in default evaluates on its evaluation set (data.BUILTIN_EVAL: 6 photographs none of
            # the training images shows), not on its 2 validation images: a bootstrap needs more than 2
            new.eval_data, new.eval_split = "builtin-eval", "all"  # = data.BUILTIN_EVAL_SET (no torch import here)
        for key in ("data", "eval_data"):
            path = getattr(new, key)
            if path in (None, "builtin") or (key == "eval_data" and path == "builtin-eval"):
                continue
            if not Path(path).is_dir():
                raise FedsLabError(f"{key}: no such folder {path!r} (give a folder of images, or leave it out "
                                   "for the built-in photographs)")
            setattr(new, key, str(Path(path).resolve()))  # notebooks run in notebooks/: paths must not be relative
        if self.eval_cache is False:  # YAML reads a bare ``off`` as False
            new.eval_cache = "off"
        elif self.eval_cache is not None:
            if not isinstance(self.eval_cache, str) or not self.eval_cache.strip():
                raise FedsLabError(f"eval_cache must be a folder, 'off' or None, got {self.eval_cache!r}")
            if self.eval_cache.strip().lower() != "off":  # notebooks run in notebooks/: not relative
                new.eval_cache = str(Path(self.eval_cache).expanduser().resolve())
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise FedsLabError(f"threads must be a positive integer or None, got {self.threads!r}")
        unknown = [n for n in new.notebooks if n not in NOTEBOOKS]
        if unknown:
            raise FedsLabError(f"unknown notebook(s) {unknown}; known: {list(NOTEBOOKS)}")
        if len(new.lambdas) < 4 and "04_rd_analysis" in new.notebooks:
            print("note: fewer than four lambdas: BD-rates need four RD points and will be reported as not computable",
                  file=sys.stderr)
        return new

    @classmethod
    def for_notebook(cls, run_dir: str | Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
        """The config a notebook runs with: the run folder's ``pipeline.yaml`` (the defaults when there
        is none, e.g. a notebook opened by hand before any pipeline run), then ``overrides`` (values of
        this notebook run only; they replace the resolved values of ``pipeline.yaml`` as written
        there, e.g. ``{"teacher_steps": 100}``). Gives this process's torch the config's ``threads``."""
        layout = RunLayout(run_dir)
        cfg = cls.from_yaml(layout.pipeline_file) if layout.pipeline_file.is_file() else cls()
        where = {"name": layout.root.name, "runs_dir": str(layout.root.parent)}  # the folder, wherever it moved
        cfg = cfg.updated({**(overrides or {}), **where}).resolved()
        if cfg.threads:
            import torch

            torch.set_num_threads(cfg.threads)
        return cfg

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    def describe(self) -> str:
        """What a notebook prints first: its run folder and the budget."""
        return (f"run folder: {self.run_dir}\npreset {self.preset}, lambdas {self.lambdas}, "
                f"teacher steps {self.teacher_steps}, student steps {self.student_steps}"
                + (", each lambda warm-started from the previous one" if self.warm_start_ladder else ""))

    def budget_label(self, role: str = "teacher") -> str:
        """How much training a result had, for figure titles: every result names its budget.

        ``role``: "teacher", "student", or "all" for figures holding both (their budgets named apart
        when they differ)."""
        if role not in ("teacher", "student", "all"):
            raise FedsLabError(f"budget_label: role must be teacher, student or all, got {role!r}")
        if role == "all" and self.teacher_steps != self.student_steps:
            steps = f"teacher {self.teacher_steps}, students {self.student_steps} steps per λ"
        else:
            steps = f"{self.student_steps if role == 'student' else self.teacher_steps} steps per λ"
        ladder = ", each λ warm-started from the previous" if self.warm_start_ladder else ""
        return f"{self.preset} preset, {steps}{ladder}"

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.run_dir)

    def train_config(self, role: str, lmbda: float, variant: str | None = None):
        """The TrainConfig of one run of this pipeline: the one place pipeline values map to training.

        ``role`` is "teacher" or "student"; a student ``variant`` names an entry of ``variants``
        (its overrides are applied last, so an ablation can change anything).
        """
        from .training import TrainConfig

        base = dict(preset=self.preset, lmbda=float(lmbda), data=self.data, seed=self.seed, device=self.device)
        if role == "teacher":
            values = {**base, "role": "teacher", "family": self.family, "steps": self.teacher_steps,
                      "out": str(self.layout.teacher(lmbda))}
            values.update(self.train)
            values.update(self._teacher_overrides(lmbda))
        else:
            if variant not in self.variants:
                raise FedsLabError(f"unknown student variant {variant!r}; known: {list(self.variants)}")
            overrides = dict(self.variants[variant] or {})
            scratch = overrides.get("baseline") == "scratch"
            teacher = self._paired_teacher(variant, lmbda, overrides.pop("teacher_for", None), scratch)
            values = {**base, "role": "student", "family": self.student_family or self.family,
                      "steps": self.student_steps, "out": str(self.layout.student(variant, lmbda)),
                      "teacher": None if scratch else str(self.layout.teacher_model(teacher))}
            values.update(self.train)
            values.update(overrides)
        if self.threads and values.get("threads") is None:
            values["threads"] = self.threads
        previous = [l for l in self.lambdas if l < lmbda]
        if self.warm_start_ladder and previous and "warm_start" not in values:
            source = previous[-1]
            if role == "teacher":
                source = self._teacher_source(lmbda, previous)
            prev = (self.layout.teacher_model(source) if role == "teacher"
                    else self.layout.student_model(variant, source))
            values["warm_start"] = str(prev)
        return TrainConfig().updated(values)

    def _curve_variants(self, student_steps: int) -> dict[str, dict[str, Any]]:
        """``variants`` with the learning curve's ``<variant>@<steps>`` entries added (idempotent)."""
        curve = self.learning_curve or {}
        if not isinstance(curve, dict):
            raise FedsLabError(f"learning_curve must be a mapping {{variant: [steps, ...]}}, got {curve!r}")
        variants = dict(self.variants)
        for name, overrides in self.variants.items():  # a variant named for its budget (``x@600``) trains at it
            steps = split_curve_variant(name)[1]
            if steps is not None and (overrides or {}).get("steps", steps) != steps:
                raise FedsLabError(f"variant {name!r} is named for {steps} steps but sets steps: {overrides['steps']!r}")
            if steps is not None:
                variants[name] = {**(overrides or {}), "steps": steps}
        for base, budgets in curve.items():
            if base not in self.variants or "@" in base:
                raise FedsLabError(f"learning_curve names {base!r}, which is not a variant; known: {list(self.variants)}")
            if not isinstance(budgets, list) or not budgets:
                raise FedsLabError(f"learning_curve[{base!r}] must be a list of step budgets, got {budgets!r}")
            for steps in budgets:
                _checked_steps(f"learning_curve[{base!r}]", steps)
                if steps != student_steps:
                    variants[curve_variant(base, steps)] = {**(self.variants[base] or {}), "steps": steps}
        return variants

    def _seed_variants(self, variants: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """``variants`` with the ``<variant>_s<seed>`` entries of ``seeds`` added (idempotent)."""
        if not isinstance(self.seeds or {}, dict):
            raise FedsLabError(f"seeds must be a mapping {{variant: [seed, ...]}}, got {self.seeds!r}")
        variants = dict(variants)
        for base, seeds in self.seed_groups(variants).items():
            for seed, name in seeds.items():
                if name == base:
                    continue
                entry = {**(variants[base] or {}), "seed": seed}
                if name in self.variants and self.variants[name] != entry:
                    raise FedsLabError(f"seeds: {base!r} seed {seed} makes the variant {name!r}, which the config "
                                       f"already has with other overrides ({self.variants[name]!r})")
                variants[name] = entry
        return variants

    def seed_groups(self, variants: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[int, str]]:
        """{variant: {seed: variant name}} of every variant in ``seeds``, its own seed included.

        A learning curve's variant may have seeds too (``feds@600: [1, 2]`` adds ``feds_s1@600`` ...), so
        that a budget other than ``student_steps`` can be pooled over seeds. ``variants``: the variants to
        check against (default: this config's; resolved() passes them with the learning curve's added)."""
        known = self.variants if variants is None else variants
        groups: dict[str, dict[int, str]] = {}
        for base, seeds in (self.seeds or {}).items():
            if base not in known:
                hint = (" (a budget needs its learning_curve entry)" if split_curve_variant(base)[1] is not None else "")
                raise FedsLabError(f"seeds names {base!r}, which is not a variant{hint}; known: {list(known)}")
            if not isinstance(seeds, list) or not seeds:
                raise FedsLabError(f"seeds[{base!r}] must be a list of seeds, got {seeds!r}")
            own = (known[base] or {}).get("seed", self.seed)
            groups[base] = {own: base}
            for seed in seeds:
                if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
                    raise FedsLabError(f"seeds[{base!r}]: each seed is a non-negative integer, got {seed!r}")
                if seed in groups[base]:
                    raise FedsLabError(f"seeds[{base!r}] repeats seed {seed} (the variant's own seed is {own})")
                groups[base][seed] = seed_variant(base, seed)
        return groups

    def _teacher_overrides(self, lmbda: float) -> dict[str, Any]:
        given = {float(k): v for k, v in (self.teacher_overrides or {}).items()}
        unknown = sorted(set(given) - {float(l) for l in self.lambdas})
        if unknown:
            raise FedsLabError(f"teacher_overrides names lambdas {unknown} that are not in the ladder {self.lambdas}")
        return dict(given.get(float(lmbda)) or {})

    def _paired_teacher(self, variant: str, lmbda: float, pairing: Any, scratch: bool) -> float:
        """The lambda of the teacher that a student at ``lmbda`` distils: its own lambda, or the one its
        variant's ``teacher_for`` {student lambda: teacher lambda} names (ours: a rate-matched teacher)."""
        if pairing is None:
            return lmbda
        if scratch:
            raise FedsLabError(f"variant {variant!r}: teacher_for names teachers for a scratch baseline, which has none")
        if not isinstance(pairing, dict):
            raise FedsLabError(f"variant {variant!r}: teacher_for must be a mapping {{student lambda: teacher lambda}}, "
                               f"got {pairing!r}")
        ladder = {float(l) for l in self.lambdas}
        given = {float(k): float(v) for k, v in pairing.items()}
        bad = sorted(l for pair in given.items() for l in pair if l not in ladder)
        if bad:
            raise FedsLabError(f"variant {variant!r}: teacher_for names lambdas {bad} that are not in the ladder {self.lambdas}")
        return given.get(float(lmbda), float(lmbda))

    def _teacher_source(self, lmbda: float, previous: list[float]) -> float:
        ladder = self.teacher_ladder
        if ladder == "previous":
            return previous[-1]
        if ladder == "first":
            return previous[0]
        if isinstance(ladder, dict):
            given = {float(k): float(v) for k, v in ladder.items()}
            source = given.get(float(lmbda), previous[-1])
            if source not in previous:
                raise FedsLabError(f"teacher_ladder: lambda {lmbda:g} can start only from a smaller lambda of "
                                   f"the ladder {previous}, got {source:g}")
            return source
        raise FedsLabError(f"teacher_ladder must be 'previous', 'first' or a mapping {{lambda: lambda}}, got {ladder!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def notebook_parameters(self) -> dict[str, Any]:
        """What every notebook's ``parameters`` cell receives: the run folder, nothing else (the
        notebook reads the rest from its ``pipeline.yaml``)."""
        return {"run_dir": str(self.run_dir.resolve())}

    def resume_key(self) -> dict[str, Any]:
        """What a notebook's result depends on, besides its source: the run folder and every value
        of ``pipeline.yaml`` but those that only say where things go (--resume compares it)."""
        d = {k: v for k, v in self.to_dict().items() if k not in _RUN_ONLY_FIELDS}
        d["run_dir"] = str(self.run_dir.resolve())
        return d


# --- running -------------------------------------------------------------------------------------

def _digest(params: dict[str, Any], notebook: Path) -> str:
    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    h.update(notebook.read_bytes())
    return h.hexdigest()[:16]


def _failure_message(name: str, err: Exception) -> str:
    ename = getattr(err, "ename", type(err).__name__)
    evalue = getattr(err, "evalue", str(err))
    cell = getattr(err, "exec_count", None)
    where = f" in cell [{cell}]" if cell else ""
    return f"notebook {name} failed{where}: {ename}: {evalue}"


def run_pipeline(config: PipelineConfig, resume: bool = False, log=print, progress_every: float = 15.0) -> Path:
    """Run the notebooks in order; returns the run folder. Stops at the first failing notebook.

    While a notebook runs, ``log`` gets a progress line every ``progress_every`` seconds (cell, training
    run, step, loss, time left; :mod:`feds_lab.progress`), the kernel's stderr lines, and a final line
    with the notebook's time."""
    import papermill as pm

    from .progress import NotebookMonitor, code_cell_count, fmt_seconds, kernel_environment, pipeline_runs

    cfg = config.resolved()
    layout = RunLayout(cfg.run_dir)
    layout.notebooks.mkdir(parents=True, exist_ok=True)
    layout.pipeline_file.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))  # what the notebooks read
    state_path = layout.state_file
    state = json.loads(state_path.read_text()) if resume and state_path.exists() else {}
    params = cfg.notebook_parameters()
    t_all = time.perf_counter()
    for name in cfg.notebooks:
        src = NOTEBOOK_DIR / f"{name}.ipynb"
        if not src.is_file():
            raise PipelineError(f"notebook {src} is missing")
        digest = _digest(cfg.resume_key(), src)
        out = layout.notebook(name)
        if resume and state.get(name, {}).get("digest") == digest and out.exists():
            log(f"[pipeline] {name}: already completed with the same parameters, skipped (--resume)")
            continue
        log(f"[pipeline] {name}: running ...")
        t0 = time.perf_counter()
        try:
            with kernel_environment(cfg.threads), NotebookMonitor(
                    name, pipeline_runs(cfg), log, every=progress_every, code_cells=code_cell_count(src)) as monitor:
                pm.execute_notebook(str(src), str(out), parameters=params, kernel_name="python3",
                                    cwd=str(NOTEBOOK_DIR), progress_bar=False, log_output=False,
                                    stderr_file=monitor.stderr(), on_cell_start=monitor.on_cell_start)
        except Exception as e:  # papermill's PapermillExecutionError carries the cell's error
            state.pop(name, None)
            state_path.write_text(json.dumps(state, indent=2))
            raise PipelineError(_failure_message(name, e) + f" (executed copy: {out})") from None
        seconds = time.perf_counter() - t0
        state[name] = {"digest": digest, "seconds": round(seconds, 1), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        state_path.write_text(json.dumps(state, indent=2))
        log(f"[pipeline] {name}: done in {fmt_seconds(seconds)}")
    index = write_report(layout.root)
    log(f"[pipeline] report: {index}")
    if config.figures_dir:
        copied = copy_key_figures(layout, Path(config.figures_dir))
        log(f"[pipeline] {len(copied)} key figures and tables copied to {config.figures_dir}/")
    total = time.perf_counter() - t_all
    log(f"[pipeline] finished in {total / 60:.1f} min: {layout.root}")
    return layout.root


def copy_key_figures(layout: RunLayout, dest: Path) -> list[Path]:
    """The key figures, and the tables they were drawn from (bd_rate.csv, params_speed.csv,
    learning_curve.csv), so that a README's numbers can be checked against files in git."""
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    sources = [layout.figures / n for n in KEY_FIGURES] + [layout.results / n for n in KEY_TABLES]
    for src in sources:
        if src.exists():
            copied.append(Path(shutil.copy2(src, dest / src.name)))
    return copied


# --- CLI -----------------------------------------------------------------------------------------

def _cmd_pipeline(args) -> None:
    cfg = PipelineConfig.from_yaml(args.config) if args.config else PipelineConfig()
    values: dict[str, Any] = {}
    for item in args.set or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise FedsLabError(f"--set expects key=value, got {item!r}")
        values[key.strip()] = yaml.safe_load(raw)
    for key in ("name", "preset", "family", "data", "eval_data", "device", "runs_dir"):
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    if args.lambdas:
        values["lambdas"] = [float(v) for v in args.lambdas.split(",")]
    cfg = cfg.updated(values)
    if args.train_only:
        train_runs(cfg, [v.strip() for v in args.train_only.split(",") if v.strip()])
        return
    run_pipeline(cfg, resume=args.resume)


def train_runs(config: PipelineConfig, variants: list[str], log=print) -> list[Path]:
    """Train the teachers and the ladders of ``variants`` of a pipeline run, without its notebooks.

    For sharing work: several such processes (one thread each on a small machine, or one per GPU) can
    fill one run folder side by side, each with other variants, and the pipeline then finds every
    finished run (a finished run with the same config returns at once; a killed one resumes). The
    teachers come first in every process: start the processes after the teachers, or give the first
    process the teachers alone (``--train-only teacher``)."""
    from .training import train

    cfg = config.resolved()
    unknown = [v for v in variants if v != "teacher" and v not in cfg.variants]
    if unknown:
        raise FedsLabError(f"--train-only: unknown variant(s) {unknown}; known: teacher, {', '.join(cfg.variants)}")
    done = [train(cfg.train_config("teacher", l)) for l in cfg.lambdas]
    for v in variants:
        if v != "teacher":
            done += [train(cfg.train_config("student", l, variant=v)) for l in cfg.lambdas]
    log(f"[pipeline] {len(done)} training runs finished in {cfg.run_dir}")
    return done


def add_pipeline_parser(sub) -> None:
    p = sub.add_parser("pipeline", help="run the four notebooks headless, in order (the main job)")
    p.add_argument("--config", help="pipeline YAML (e.g. configs/pipelines/tiny.yaml, configs/pipelines/study.yaml)")
    p.add_argument("--name", help="run folder name under runs/ (default: demo)")
    p.add_argument("--preset", choices=PRESET_NAMES)
    p.add_argument("--family")
    p.add_argument("--data", help="training images folder (default: scikit-image's bundled photographs)")
    p.add_argument("--eval-data", dest="eval_data", help="evaluation images folder, e.g. Kodak")
    p.add_argument("--lambdas", help="comma-separated, e.g. 0.0035,0.0067,0.013,0.025")
    p.add_argument("--device")
    p.add_argument("--runs-dir", dest="runs_dir")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any PipelineConfig field (YAML value)")
    p.add_argument("--resume", action="store_true", help="skip notebooks that completed with the same parameters")
    p.add_argument("--train-only", dest="train_only", metavar="VARIANTS",
                   help="train the teachers and these student variants' ladders (comma-separated; 'teacher' for "
                        "the teachers alone) and stop: several processes can fill one run folder side by side")
    p.set_defaults(func=_cmd_pipeline)


def _cmd_lab(args) -> None:
    import os
    import subprocess

    # register this environment as the "feds-lab" kernel, so notebooks never meet a kernel
    # that cannot import feds_lab
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", "feds-lab",
                    "--display-name", "feds-lab (.venv)"], check=True, capture_output=True)
    cmd = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={NOTEBOOK_DIR}", "--ip", args.ip,
           "--port", str(args.port)]
    if args.no_browser:
        cmd.append("--no-browser")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # containers and CI run as root; the server refuses root without it
    os.execv(sys.executable, cmd)


def add_lab_parser(sub) -> None:
    p = sub.add_parser("lab", help="open JupyterLab on notebooks/ with the project's own kernel")
    p.add_argument("--ip", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8888)
    p.add_argument("--no-browser", action="store_true")
    p.set_defaults(func=_cmd_lab)
