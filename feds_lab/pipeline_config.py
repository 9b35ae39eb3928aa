"""The parameters of a pipeline run: :class:`PipelineConfig`, read from YAML, resolved and checked.

The pipeline (:mod:`feds_lab.pipeline`) writes the resolved config to the run folder's
``pipeline.yaml`` and hands each notebook the run folder only; every notebook reads its parameters
from that file (:meth:`PipelineConfig.for_notebook`). So the fields of :class:`PipelineConfig` are
the one list of pipeline parameters, with their defaults: adding one is one edit here
(``docs/contributing.md``).

What each field must hold is checked in :mod:`feds_lab.pipeline_checks`; the student variants
(``variants``, ``learning_curve``, ``seeds``) expand into :class:`~feds_lab.variants.Variant` records
in :mod:`feds_lab.variants`; :meth:`PipelineConfig.train_config` maps the config onto each training run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import FedsLabError
from .pipeline_checks import (
    check_counts,
    check_mappings,
    check_learning_curve,
    check_notebooks,
    check_reference,
    check_run_name,
    check_teacher,
    check_threads,
    checked_comparisons,
    checked_lambdas,
    resolved_eval_cache,
    resolved_images,
    teacher_overrides,
    teacher_source,
)
from .presets import PRESET_NAMES, train_preset
from .run_folder import NOTEBOOKS, RunLayout
from .variants import Variant, checked_steps, expand_variants, seed_groups

#: Fields that say where a run goes and which notebooks run, not what a notebook computes: they are
#: not part of a notebook's --resume digest.
RUN_ONLY_FIELDS = ("name", "runs_dir", "figures_dir", "notebooks", "eval_cache")


@dataclass
class PipelineConfig:
    """Parameters of one pipeline run. ``None`` budget fields take the preset's value."""

    name: str = "demo"  #: run folder name under runs_dir
    preset: str = "tiny"  #: paper | small | tiny (model sizes and default budgets)
    family: str = "cnn"  #: teacher's model family
    #: where the teachers come from: ``zoo``, the long-trained ladder shipped with the package
    #: (``feds-lab zoo list``; every lambda must be one of its), or ``train``: trained here for
    #: ``teacher_steps`` (with ``teacher_ladder`` and ``teacher_overrides``)
    teacher: str = "zoo"
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
    #: the method (docs/method.md) suggests for short budgets: every model then says so in its record (warm_start)
    warm_start_ladder: bool = True
    #: where a teacher's warm start comes from: ``previous`` (the chain), ``first`` (every lambda
    #: from the smallest lambda's teacher, so that the later teachers can train side by side), or a
    #: mapping {lambda: lambda it starts from} for the lambdas that differ from the chain
    teacher_ladder: Any = "previous"
    #: TrainConfig overrides for single teachers, {lambda: {field: value}}, applied after ``train``
    #: (e.g. a lower lr for a teacher that diverged at the schedule's peak)
    teacher_overrides: dict[float, dict[str, Any]] = field(default_factory=dict)
    #: learning curves, a variant trained at several budgets: {variant: [student budgets]}; each budget
    #: other than ``student_steps`` adds the variant ``<variant>@<steps>`` (the same overrides, ``steps``
    #: replaced), trained and evaluated like any variant; notebook 04 draws FEDS against scratch by
    #: budget, at equal steps and at equal wall-clock (so give scratch budgets past FEDS's: a FEDS step
    #: costs more)
    learning_curve: dict[str, list[int]] = field(default_factory=dict)
    #: more seeds, a variant trained again on other draws: {variant: [seeds]}; each seed adds the variant
    #: ``<variant>_s<seed>`` (the same overrides, ``seed`` replaced: the student's initial weights, its
    #: crops, its quantisation noise; the teachers stay this config's), trained and evaluated like any
    #: variant. Notebook 04 compares each seed with the same seed of scratch and pools every seed of a
    #: variant against every seed of scratch (evaluation.seeds: a bootstrap over seeds and images); at
    #: short budgets one seed is not an answer. A learning curve's budget takes seeds too:
    #: ``feds@600: [1, 2]`` adds ``feds_s1@600``, ``feds_s2@600``, compared with ``scratch@600``'s seeds
    seeds: dict[str, list[int]] = field(default_factory=dict)
    anchors: list[str] = field(default_factory=lambda: ["jpeg", "webp", "avif", "jpeg2000"])
    entropy_images: int = 8  #: images for the channel-entropy notebook
    #: torch threads in every notebook kernel (evaluation, analysis) and in every training run whose
    #: ``train`` does not set its own; None = torch's default (all cores). Two runs side by side on
    #: two cores: 1 each, or both crawl (oversubscribed threads are 10-100x slower, measured)
    threads: int | None = None
    #: where the key figures and tables are copied at the end; None (the default) = nowhere: a run writes
    #: to its run folder only, and the repository's figures/ change only when asked (``make figures``)
    figures_dir: str | None = None
    notebooks: list[str] = field(default_factory=lambda: list(NOTEBOOKS))

    # --- reading -----------------------------------------------------------------------------------
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
        """Every default filled in and every field checked (a FedsLabError names the field): what
        pipeline.yaml holds, with the variants expanded. Resolving it again changes nothing."""
        if self.preset not in PRESET_NAMES:
            raise FedsLabError(f"unknown preset {self.preset!r}; known: {list(PRESET_NAMES)}")
        budget = train_preset(self.preset)
        check_run_name(self.name, self.runs_dir)
        new = dataclasses.replace(self)
        new.lambdas = checked_lambdas(budget["lambdas"] if self.lambdas is None else self.lambdas)
        check_teacher(self.teacher, self.family, self.preset, new.lambdas,
                      {"teacher_steps": self.teacher_steps is not None, "teacher_ladder": self.teacher_ladder != "previous",
                       "teacher_overrides": bool(self.teacher_overrides)})
        # None is "the preset's"; 0 is not None (a zero or negative budget is an error, not a default)
        for key in ("teacher_steps", "student_steps"):
            if key == "teacher_steps" and self.teacher == "zoo":
                continue  # the zoo's teachers say their own budget (teacher_budget)
            setattr(new, key, checked_steps(key, budget["steps"] if getattr(self, key) is None else getattr(self, key)))
        check_counts(self.seed, self.entropy_images)
        check_mappings(train=self.train, variants=self.variants)
        check_reference(self.reference, self.variants)
        check_learning_curve(self.learning_curve, self.reference)
        new.variants = {name: v.entry for name, v in new.variant_records().items()}  # a bad teacher_for fails here
        new.comparisons = checked_comparisons(self.comparisons, new.variants)
        new.student_family = self.student_family or self.family
        new.data, new.eval_data, new.eval_split = resolved_images(new.data, new.eval_data, new.eval_split)
        new.eval_cache = resolved_eval_cache(self.eval_cache)
        check_threads(self.threads)
        check_notebooks(new.notebooks, new.lambdas)
        return new

    @classmethod
    def for_notebook(cls, run_dir: str | Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
        """The config a notebook runs with: the run folder's ``pipeline.yaml`` (the defaults when there
        is none, e.g. a notebook opened by hand before any pipeline run), then ``overrides`` (values of
        this notebook run only; they replace the resolved values of ``pipeline.yaml`` as written
        there, e.g. ``{"teacher_steps": 100}``). Gives this process's torch the config's ``threads``."""
        from .threads import configure

        configure()  # the kernel's thread defaults, before its first torch work
        layout = RunLayout(run_dir)
        cfg = cls.from_yaml(layout.pipeline_file) if layout.pipeline_file.is_file() else cls()
        where = {"name": layout.root.name, "runs_dir": str(layout.root.parent)}  # the folder, wherever it moved
        cfg = cfg.updated({**(overrides or {}), **where}).resolved()
        if cfg.threads:
            import torch

            torch.set_num_threads(cfg.threads)
        return cfg

    # --- the variants ------------------------------------------------------------------------------
    def variant_records(self) -> dict[str, Variant]:
        """{name: Variant} of every student variant of this (resolved) config, in the order of
        ``variants``: ladder, budget, seed, kind and teacher pairing as fields (:mod:`feds_lab.variants`)."""
        return expand_variants(self.variants, self.learning_curve, self.seeds, student_steps=self.student_steps,
                               seed=self.seed, lambdas=self.lambdas)

    def seed_groups(self) -> dict[str, dict[int, str]]:
        """{variant: {seed: variant name}} of every variant in ``seeds``, its own seed first (a learning
        curve's budget too: ``feds@600: [1, 2]`` gives ``{"feds@600": {0: "feds@600", 1: "feds_s1@600", ...}}``)."""
        return seed_groups(self.variant_records())

    # --- where and how much ------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.run_dir)

    def describe(self) -> str:
        """What a notebook prints first: its run folder and the budget."""
        teachers = (f"zoo teachers ({self.teacher_budget()})" if self.teacher == "zoo"
                    else f"teacher steps {self.teacher_steps}")
        return (f"run folder: {self.run_dir}\npreset {self.preset}, lambdas {self.lambdas}, "
                f"{teachers}, student steps {self.student_steps}"
                + (", each lambda warm-started from the previous one" if self.warm_start_ladder else ""))

    def teacher_budget(self) -> str:
        """The teachers' training in words: "400 steps per λ", or the zoo's budgets ("20,000 steps; 5,000
        steps fine-tuned from λ 0.013 (20,000 steps)")."""
        if self.teacher != "zoo":
            return f"{self.teacher_steps} steps per λ"
        from .zoo import budget_text, find

        return "; ".join(dict.fromkeys(budget_text(find(self.family, self.preset, l)) for l in self.lambdas))

    def budget_label(self, role: str = "teacher") -> str:
        """How much training a result had, for figure titles: every result names its budget.

        ``role``: "teacher", "student", or "all" for figures holding both (their budgets named apart
        when they differ)."""
        if role not in ("teacher", "student", "all"):
            raise FedsLabError(f"budget_label: role must be teacher, student or all, got {role!r}")
        if self.teacher == "zoo" and role != "student":
            steps = (f"zoo teachers, students {self.student_steps} steps per λ" if role == "all"
                     else f"zoo teachers ({self.teacher_budget()})")
        elif role == "all" and self.teacher_steps != self.student_steps:
            steps = f"teacher {self.teacher_steps}, students {self.student_steps} steps per λ"
        else:
            steps = f"{self.student_steps if role == 'student' else self.teacher_steps} steps per λ"
        # the chain is how this pipeline trains its own models: not the zoo's (fine-tuned from a long λ)
        ladder = (", each λ warm-started from the previous"
                  if self.warm_start_ladder and not (self.teacher == "zoo" and role == "teacher") else "")
        return f"{self.preset} preset, {steps}{ladder}"

    # --- the training runs -------------------------------------------------------------------------
    def teacher_model(self, lmbda: float) -> Path:
        """The teacher at ``lmbda``, ready: the zoo's, put into the run folder (verified), or trained here
        (with the smaller lambdas a warm-started ladder starts from; a finished run returns at once)."""
        if self.teacher == "zoo":
            from .zoo import install

            return install(self.family, self.preset, lmbda, self.layout.teacher(lmbda))
        from .training import train

        for l in [x for x in self.lambdas if x < lmbda] if self.warm_start_ladder else []:
            train(self.train_config("teacher", l))
        return train(self.train_config("teacher", lmbda))

    def train_config(self, role: str, lmbda: float, variant: str | None = None):
        """The TrainConfig of one run of this pipeline: the one place pipeline values map to training.

        ``role`` is "teacher" or "student"; a student ``variant`` names one of :meth:`variant_records`
        (its overrides are applied last, so an ablation can change anything).
        """
        from .training import TrainConfig

        values = dict(preset=self.preset, lmbda=float(lmbda), data=self.data, seed=self.seed, device=self.device)
        if role == "teacher":
            if self.teacher == "zoo":
                raise FedsLabError("this pipeline's teachers come from the zoo (teacher: zoo): nothing to train; "
                                   "set teacher: train to train them here")
            values.update(role="teacher", family=self.family, steps=self.teacher_steps,
                          out=str(self.layout.teacher(lmbda)))
            values.update(self.train)
            values.update(teacher_overrides(self.teacher_overrides, self.lambdas, lmbda))
        else:
            v = self._student(variant)
            values.update(role="student", family=self.student_family or self.family, steps=self.student_steps,
                          out=str(self.layout.student(variant, lmbda)),
                          teacher=None if v.kind == "scratch" else str(self.layout.teacher_model(v.teacher_lambda(lmbda))))
            values.update(self.train)
            values.update(v.overrides)
        if self.threads and values.get("threads") is None:
            values["threads"] = self.threads
        previous = [l for l in self.lambdas if l < lmbda]
        if self.warm_start_ladder and previous and "warm_start" not in values:
            values["warm_start"] = str(self.layout.teacher_model(teacher_source(self.teacher_ladder, lmbda, previous))
                                       if role == "teacher" else self.layout.student_model(variant, previous[-1]))
        return TrainConfig().updated(values)

    def _student(self, variant: str | None) -> Variant:
        records = self.variant_records()
        if variant not in records:
            raise FedsLabError(f"unknown student variant {variant!r}; known: {list(records)}")
        return records[variant]

    # --- what pipeline.yaml and the --resume digest hold ---------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def notebook_parameters(self) -> dict[str, Any]:
        """What every notebook's ``parameters`` cell receives: the run folder, nothing else (the
        notebook reads the rest from its ``pipeline.yaml``)."""
        return {"run_dir": str(self.run_dir.resolve())}

    def resume_key(self) -> dict[str, Any]:
        """What a notebook's result depends on, besides its source: the run folder and every value
        of ``pipeline.yaml`` but those that only say where things go (--resume compares it)."""
        d = {k: v for k, v in self.to_dict().items() if k not in RUN_ONLY_FIELDS}
        d["run_dir"] = str(self.run_dir.resolve())
        return d
