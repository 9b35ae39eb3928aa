"""The rate-distortion analysis of a pipeline run (notebook 04): every model and anchor, compared.

``analyse_run`` codes the evaluation images with every teacher and student checkpoint (real
bitstreams) and with the classical anchors, writes CompressAI-format results files, and builds
the comparisons a reader needs: student against teacher, the scratch baseline against the teacher
(is the teacher worth distilling from?), FEDS against the scratch baseline, each ablation against
FEDS, and each learned codec against JPEG, with bootstrap intervals over images; a variant trained
on several seeds is compared seed by seed and pooled in :mod:`.seeds`, a learning curve's budgets in
:mod:`.learning_curve`.

Every curve has a role (the teacher ``teacher``, a student variant by its name, an anchor ``anchor:jpeg``)
and a :class:`~feds_lab.variants.Variant` record: what a curve is (kind, ladder, budget, seed) is read
from its record, never from its name.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ..variants import Variant
from ..variants import seed_groups as seed_groups_of
from .anchors import run_anchors
from .bdrate import bd_table, matched_rate_gap
from .cache import DIRNAME, EvalCache, resolve_cache
from .curves import evaluate_curve
from .results import load_results, save_results
from .seeds import seed_table


#: the note of a BD row between students where one was trained on one seed
ONE_DRAW = "one seed: one draw of the training's noise (the interval is over images only)"


@dataclass
class RDAnalysis:
    files: list[Path]  # every results file, learned codecs first
    names: dict[str, str]  # role -> curve name ("teacher", "feds", "scratch", ablations, "anchor:jpeg" ...)
    summary: pd.DataFrame
    params_speed: pd.DataFrame
    bootstrap: int = 1000
    reference: str = "feds"  # the role that stands for FEDS (PipelineConfig.reference)
    extra: list = field(default_factory=list)  # more (anchor role, test role) pairs (PipelineConfig.comparisons)
    #: role -> what its curve is (feds_lab.variants.Variant): the teacher, every student variant of the
    #: config (PipelineConfig.variant_records()), the anchors; a role of ``names`` must have one
    variants: dict[str, Variant] = field(default_factory=dict)
    #: how many checkpoint evaluations came from the evaluation cache (:mod:`.cache`), how many were computed
    evaluation_cache: dict = field(default_factory=dict)
    _bd: dict[str, pd.DataFrame] = field(default_factory=dict)

    def variant(self, role: str) -> Variant:
        if role not in self.variants:
            raise KeyError(f"no variant record for the role {role!r}; the analysis has {sorted(self.variants)}")
        return self.variants[role]

    @property
    def seed_groups(self) -> dict[str, dict[int, str]]:
        """{variant: {seed: role}} of every variant trained on several seeds (the seed table's)."""
        return seed_groups_of(self.variants)

    @property
    def replicas(self) -> set[str]:
        """The roles that are another seed of a variant (``feds_s3``): the seed table's, not the BD table's."""
        return {role for role, v in self.variants.items() if v.replica_of is not None}

    def primary(self) -> dict[str, str]:
        """role -> curve name of the curves at the study's own budget and seed: the BD table's and the RD
        figure's (a learning curve's other budgets and a variant's other seeds have their own)."""
        return {role: name for role, name in self.names.items() if self.variant(role).primary}

    def curve_files(self, budgets: bool = False) -> list[Path]:
        """The results files to draw: every curve but a variant's other seeds (the seed figure has those)
        and, unless ``budgets``, a learning curve's other budgets (``feds@600``: the learning-curve figure)."""
        hidden = {name for role, name in self.names.items()
                  if self.variant(role).replica_of is not None or (not budgets and self.variant(role).budget is not None)}
        return [f for f in self.files if load_results(f)["name"] not in hidden]

    def comparisons(self) -> list[tuple[str, str]]:
        """(anchor, test) curve names: student vs teacher, FEDS (``reference``) vs scratch, ablations vs
        FEDS and vs scratch, the config's own pairs (``extra``), all vs JPEG.

        Scratch vs teacher is there to test the method's premise: distillation can only pass on what
        the teacher knows better than a student trained alone (at short budgets it may know less).
        """
        n = self.primary()  # a learning curve's ladders (``feds@600`` ...): their own table (evaluation.learning_curve)
        every = dict(self.names)  # the config's own pairs may name any role
        ref = self.reference
        pairs = []
        if ref in n and "teacher" in n:
            pairs.append((n["teacher"], n[ref]))
        if "scratch" in n and "teacher" in n:
            pairs.append((n["teacher"], n["scratch"]))
        if ref in n and "scratch" in n:
            pairs.append((n["scratch"], n[ref]))
        for role, name in n.items():
            if self.variant(role).is_student and role not in (ref, "scratch") and ref in n:
                pairs.append((n[ref], name))
                if "scratch" in n:  # and against training alone: does the variant beat the baseline?
                    pairs.append((n["scratch"], name))
        for a, t in self.extra:
            if a in every and t in every and (every[a], every[t]) not in pairs:
                pairs.append((every[a], every[t]))
        jpeg = next((r for r in n if self.variant(r).kind == "anchor" and self.variant(r).base == "jpeg"), None)
        if jpeg is not None:
            for role, name in n.items():
                if self.variant(role).kind != "anchor":
                    pairs.append((n[jpeg], name))
        # with scratch as the reference (a study of the teachers alone) the pairs above repeat or meet themselves
        return [p for p in dict.fromkeys(pairs) if p[0] != p[1]]

    def bd_table_for(self, metric: str = "psnr") -> pd.DataFrame:
        if metric not in self._bd:
            by_name = {load_results(f)["name"]: f for f in self.files}
            role_of = {name: role for role, name in self.names.items()}
            seeded = self.seed_groups
            rows = []
            for anchor, test in self.comparisons():
                found = bd_table(by_name[anchor], [by_name[test]], metric=metric, bootstrap=self.bootstrap, strict=False)
                if self._one_draw(seeded, role_of.get(anchor), role_of.get(test)):
                    for row in found:
                        row["note"] = "; ".join(n for n in (row.get("note"), ONE_DRAW) if n)
                rows += found
            df = pd.DataFrame(rows)
            if "note" not in df.columns:
                df["note"] = ""
            self._bd[metric] = df.fillna({"note": ""})
        return self._bd[metric]

    def _one_draw(self, seeded: dict[str, dict[int, str]], *roles: str | None) -> bool:
        """Whether a row compares two students of which one or both were trained on one seed only: its
        interval covers the images, not the training's own noise (two machines' draws have differed in sign)."""
        if not all(r in self.variants and self.variant(r).is_student for r in roles):
            return False
        return any(len(seeded.get(r, {})) < 2 for r in roles)

    def teacher_gap(self, metric: str = "psnr") -> pd.DataFrame:
        """Every student against the teacher at matched rate (:func:`~.bdrate.matched_rate_gap`): the figure
        to read where the BD table says "not computable" because the teacher's curve folds back; empty without one."""
        if "teacher" not in self.names:
            return pd.DataFrame()
        by_name = {load_results(f)["name"]: f for f in self.files}
        shown = self.primary()
        roles = [r for r in dict.fromkeys([self.reference, "scratch", *shown]) if r in shown and self.variant(r).is_student]
        # and each learning-curve budget on its own seed: how far the teacher is ahead at each budget
        roles += sorted((r for r, v in self.variants.items() if r in self.names and v.is_student
                         and v.budget is not None and v.replica_of is None), key=lambda r: (self.variant(r).base, self.variant(r).budget))
        return pd.DataFrame([matched_rate_gap(by_name[self.names["teacher"]], by_name[self.names[r]], metric=metric,
                                              bootstrap=self.bootstrap) for r in roles])

    @property
    def bd_table(self) -> pd.DataFrame:
        return self.bd_table_for("psnr")

    def seed_table(self, metric: str = "psnr") -> pd.DataFrame:
        """Each seeded variant against scratch, seed by seed and pooled (evaluation.seeds), then each
        against the reference (the FEDS it changes) where the reference has seeds at its budget; empty
        without seeds. Column ``anchor_group`` says which."""
        groups = self.seed_groups
        tables = [seed_table(self, groups, metric=metric)]
        if self.reference != "scratch":
            changed = {v: s for v, s in groups.items() if self.variant(v).base != "scratch"}
            tables.append(seed_table(self, changed, anchor=self.reference, metric=metric))
        for anchor, test in self.extra:  # the config's own pairs (a cross-family student against its own scratch)
            if anchor in groups and test in groups and anchor != "scratch":
                tables.append(seed_table(self, {anchor: groups[anchor], test: groups[test]}, anchor=anchor, metric=metric))
        tables = [t for t in tables if len(t)]
        return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def analyse_run(cfg, teachers: dict[float, Path], students: dict[tuple[str, float], Path], images: Sequence,
                bootstrap: int = 1000, cache: EvalCache | str | Path | None = None) -> RDAnalysis:
    """Evaluate a pipeline run's checkpoints and the anchors on ``images``; write results files.

    Checkpoint evaluations go through the evaluation cache (:mod:`.cache`): ``cache`` when given (a
    folder, ``"off"`` or an ``EvalCache``), else ``FEDS_LAB_EVAL_CACHE``, else ``cfg.eval_cache`` (default
    ``<runs_dir>/.eval-cache``). How many points came from it is printed (stderr: the pipeline's log too)
    and kept in ``RDAnalysis.evaluation_cache``."""
    cache = resolve_cache(cache, default=config_cache(cfg))
    layout = cfg.layout
    layout.results.mkdir(parents=True, exist_ok=True)
    budget = {role: cfg.budget_label(role) for role in ("teacher", "student")}
    files, names, speed = [], {}, []
    variants = {"teacher": Variant.teacher(cfg.teacher_steps, cfg.seed), **cfg.variant_records()}

    def add(role: str, res: dict[str, Any], path: Path) -> None:
        files.append(save_results(res, path))
        names[role] = res["name"]
        r = res["results"]
        speed.append({"model": res["name"], "params (M)": res.get("meta", {}).get("params", np.nan) / 1e6,
                      "encode (ms)": 1e3 * float(np.mean(r["encoding_time"])),
                      "decode (ms)": 1e3 * float(np.mean(r["decoding_time"]))})

    add("teacher", evaluate_curve(f"teacher ({cfg.family})", teachers, images, f"teacher, {budget['teacher']}", cache),
        layout.teacher_results)
    for variant in dict.fromkeys(v for v, _ in students):
        ckpts = {l: p for (v, l), p in students.items() if v == variant}
        family = cfg.train_config("student", cfg.lambdas[0], variant=variant).family  # a variant may set its own
        label = f"student {variant} ({family})"
        add(variant, evaluate_curve(label, ckpts, images, f"student variant {variant!r}, {budget['student']}", cache),
            layout.student_results(variant))
    print(cache.summary(), file=sys.stderr)
    if cfg.anchors:
        for key, res in run_anchors(images, codecs=cfg.anchors, out_dir=layout.anchors, progress=False).items():
            anchor = Variant.anchor(key)
            files.append(layout.anchor_results(res["name"]))
            names[anchor.name], variants[anchor.name] = res["name"], anchor

    rows = []
    for f in files:
        res = load_results(f)
        for i, bpp in enumerate(res["results"]["bpp"]):
            rows.append({"model": res["name"], "point": i, "bpp": bpp,
                         "bpp (likelihood)": res["results"].get("bpp-estimate", [np.nan] * (i + 1))[i],
                         "PSNR (dB)": res["results"]["psnr-rgb"][i],
                         "MS-SSIM (dB)": res["results"].get("ms-ssim-rgb-db", [np.nan] * (i + 1))[i]})
    ps = pd.DataFrame(speed)
    if len(ps):
        ref = ps.iloc[0]
        ps["params ratio"] = ps["params (M)"] / ref["params (M)"]
        ps["enc+dec ratio"] = (ps["encode (ms)"] + ps["decode (ms)"]) / (ref["encode (ms)"] + ref["decode (ms)"])
        ps["threads"] = torch.get_num_threads()
    return RDAnalysis(files=files, names=names, summary=pd.DataFrame(rows), params_speed=ps, bootstrap=bootstrap,
                      reference=cfg.reference, extra=[tuple(p) for p in cfg.comparisons],
                      variants=variants,
                      evaluation_cache={"folder": str(cache.folder) if cache.enabled else None,
                                        "from_cache": cache.hits, "computed": cache.computed})


def config_cache(cfg) -> str | Path:
    """The evaluation cache a pipeline config asks for: its ``eval_cache``, or ``<runs_dir>/.eval-cache``."""
    value = getattr(cfg, "eval_cache", None)
    return Path(cfg.runs_dir) / DIRNAME if value is None else value
