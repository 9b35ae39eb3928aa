"""The rate-distortion analysis of a pipeline run (notebook 04): every model and anchor, compared.

``analyse_run`` codes the evaluation images with every teacher and student checkpoint (real
bitstreams) and with the classical anchors, writes CompressAI-format results files, and builds
the comparisons a reader needs: student against teacher, the scratch baseline against the teacher
(is the teacher worth distilling from?), FEDS against the scratch baseline, each ablation against
FEDS, and each learned codec against JPEG, with bootstrap intervals over images; a variant trained
on several seeds is compared seed by seed and pooled in :mod:`.seeds`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from .anchors import run_anchors
from .bdrate import (
    BDRateError,
    _summarise,
    bd_quality,
    bd_rate,
    bootstrap_bd,
    pareto_front,
    quality_at_rate,
    quality_overlap,
)
from .cache import DIRNAME, EvalCache, resolve_cache
from .evaluate import (
    _quality_transform,
    load_results,
    make_results,
    paired_per_image,
    rd_curve,
    save_results,
)


#: a BD figure computed over less than this share of the test curve's quality range, or an interval
#: from which more than this share of resamples dropped out, gets a caution in its row's ``note``
COVERAGE_CAUTION = 0.5
FAILED_CAUTION = 0.05


def bd_table(anchor, tests, metric="psnr", method="pchip", bootstrap=0, confidence=0.95, seed=0,
             strict: bool = True) -> list[dict[str, Any]]:
    """One row per test curve: BD-rate (%), BD-quality (dB), and with ``bootstrap`` its interval.

    Each row also says over which quality range the BD-rate was taken (``overlap_low``/``overlap_high``,
    dB) and which share of the test curve's quality range that is (``coverage``): BD figures average
    over the overlap only, so two curves that barely overlap give a number about a sliver of either.
    ``note`` cautions when the coverage is below :data:`COVERAGE_CAUTION` or when more than
    :data:`FAILED_CAUTION` of the bootstrap resamples had no BD figure (their mean curves were not
    monotonic or did not overlap; the interval is over the rest, which biases it).
    With ``strict=False`` a pair that has no BD figure (too few points, no overlap, non-monotonic)
    gets a row whose ``note`` says why, instead of raising.
    """
    anchor = load_results(anchor)
    a_curve = rd_curve(anchor, metric)
    rows = []
    for test in tests:
        test = load_results(test)
        t_curve = rd_curve(test, metric)
        row: dict[str, Any] = {"anchor": anchor["name"], "test": test["name"], "metric": metric, "method": method}
        try:
            row.update(bd_rate=bd_rate(*a_curve, *t_curve, method), bd_quality=bd_quality(*a_curve, *t_curve, method))
            lo, hi = quality_overlap(a_curve[1], t_curve[1])
            row.update(overlap_low=lo, overlap_high=hi, coverage=(hi - lo) / np.ptp(t_curve[1]))
            cautions = []
            if row["coverage"] < COVERAGE_CAUTION:
                cautions.append(f"over {row['coverage']:.0%} of the test curve's quality range only "
                                f"({lo:.2f}-{hi:.2f} dB)")
            if bootstrap:
                _, ra, qa, rt, qt = paired_per_image(anchor, test, metric)
                result = bootstrap_bd(ra, qa, rt, qt, method=method, quality_transform=_quality_transform(metric),
                                      n_resamples=bootstrap, confidence=confidence, seed=seed)
                row.update({"ci_low": result.low, "ci_high": result.high, "resamples": result.n_resamples,
                            "failed": result.n_failed, "confidence": confidence})
                if result.n_failed > FAILED_CAUTION * result.n_resamples:
                    cautions.append(f"interval from {result.n_resamples - result.n_failed} of {result.n_resamples} "
                                    "resamples (the others had no BD figure)")
            row["note"] = "; ".join(cautions)
        except BDRateError as err:  # say which pair of curves
            if strict:
                raise BDRateError(f"{test['name']} against {anchor['name']}: {err}") from None
            row.update(bd_rate=np.nan, bd_quality=np.nan, note=f"not computable: {err}")
        rows.append(row)
    return rows


def matched_rate_gap(anchor, test, metric: str = "psnr", bootstrap: int = 0, confidence: float = 0.95,
                     seed: int = 0) -> dict[str, Any]:
    """The test curve's quality minus the anchor's at the same rate (dB), averaged over the test's points
    that lie inside the rate range of the anchor's Pareto front (none extrapolated), with a bootstrap
    over images (the points compared stay those of the full data).

    Where no BD figure exists because the anchor's curve folds back (a teacher whose top lambda is beaten
    by the one below it), this still says how far a student lies from it. Ours, not the paper's measure."""
    anchor, test = load_results(anchor), load_results(test)
    a_curve, t_curve = rd_curve(anchor, metric), rd_curve(test, metric)
    lambdas = [s.get("lmbda") for s in test.get("settings") or [{}] * len(t_curve[0])]
    row: dict[str, Any] = {"anchor": anchor["name"], "test": test["name"], "metric": metric}
    front = pareto_front(*a_curve)[0]
    inside = (t_curve[0] >= front.min()) & (t_curve[0] <= front.max()) if front.size >= 2 else np.zeros(len(t_curve[0]), bool)
    row.update(points=int(inside.sum()), of=int(inside.size),
               anchor_front=f"{front.size} of {len(a_curve[0])} points, {front.min():.3f}-{front.max():.3f} bpp")
    if not inside.any():
        row.update(gap_db=np.nan, note="not computable: no test point lies in the rate range of the anchor's front"
                   if front.size >= 2 else "not computable: the anchor's front has fewer than two points")
        return row
    gaps = t_curve[1][inside] - quality_at_rate(a_curve, t_curve[0][inside])
    row.update(gap_db=float(gaps.mean()),
               per_lambda=", ".join(f"{l:g}: {g:+.2f}" if l is not None else f"{g:+.2f}"
                                    for l, g in zip(np.asarray(lambdas, dtype=object)[inside], gaps)),
               note="" if inside.all() else f"{int((~inside).sum())} point(s) outside the anchor's rate range left out")
    if bootstrap:
        transform = _quality_transform(metric)
        _, ra, qa, rt, qt = paired_per_image(anchor, test, metric)  # points in rd_curve's order (by rate)

        def figure(rows: np.ndarray) -> float:
            a = ra[rows].mean(0), transform(qa[rows].mean(0))
            t_rate, t_quality = rt[rows].mean(0)[inside], transform(qt[rows].mean(0))[inside]
            return float(np.mean(t_quality - quality_at_rate(a, t_rate)))

        rng = np.random.default_rng(seed)
        result = _summarise(row["gap_db"], lambda: figure(rng.integers(0, ra.shape[0], ra.shape[0])), bootstrap, confidence)
        row.update(ci_low=result.low, ci_high=result.high, resamples=result.n_resamples, confidence=confidence)
    return row


def evaluate_curve(name: str, checkpoints: dict[float, Path], images, description: str = "",
                   cache: EvalCache | str | Path | None = None) -> dict[str, Any]:
    """One RD curve: each checkpoint (one per lambda) coded on every image.

    ``cache``: the evaluation cache (:mod:`.cache`: an ``EvalCache``, a folder or ``"off"``); None:
    ``FEDS_LAB_EVAL_CACHE`` if set, else off. ``meta["evaluation_cache"]`` says which points came from
    it and when their rows (encode/decode times included) were measured."""
    cache = resolve_cache(cache)
    items = sorted(checkpoints.items())
    points, records, evaluated = [], {}, []
    for (lmbda, path), point in zip(items, cache.points([p for _, p in items], images, name=name)):
        points.append({"rows": point.rows, "setting": {"lmbda": lmbda, "checkpoint": str(path)}})
        records[f"{lmbda:g}"] = point.record
        evaluated.append(point)
    params = evaluated[-1].params if evaluated else np.nan
    meta = {"threads": torch.get_num_threads(), "params": params, "records": records,
            "evaluation_cache": cache.meta(evaluated)}
    return make_results(name, points, description, meta)


@dataclass
class RDAnalysis:
    files: list[Path]  # every results file, learned codecs first
    names: dict[str, str]  # role -> curve name ("teacher", "feds", "scratch", ablations, "JPEG" ...)
    summary: pd.DataFrame
    params_speed: pd.DataFrame
    bootstrap: int = 1000
    reference: str = "feds"  # the role that stands for FEDS (PipelineConfig.reference)
    extra: list = field(default_factory=list)  # more (anchor role, test role) pairs (PipelineConfig.comparisons)
    #: {variant: {seed: role}} (PipelineConfig.seed_groups()): a variant's other seeds are compared in the
    #: seed table (evaluation.seeds), not here
    seed_groups: dict = field(default_factory=dict)
    #: how many checkpoint evaluations came from the evaluation cache (:mod:`.cache`), how many were computed
    evaluation_cache: dict = field(default_factory=dict)
    _bd: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def replicas(self) -> set[str]:
        """The roles that are another seed of a variant (``feds_s3``): the seed table's, not the BD table's."""
        return {role for base, seeds in self.seed_groups.items() for role in seeds.values() if role != base}

    def curve_files(self, budgets: bool = False) -> list[Path]:
        """The results files to draw: every curve but a variant's other seeds (the seed figure has those)
        and, unless ``budgets``, a learning curve's other budgets (``feds@600``: the learning-curve figure)."""
        hidden = {self.names[r] for r in self.replicas if r in self.names}
        if not budgets:
            hidden |= {name for role, name in self.names.items() if "@" in role}
        return [f for f in self.files if load_results(f)["name"] not in hidden]

    def comparisons(self) -> list[tuple[str, str]]:
        """(anchor, test) curve names: student vs teacher, FEDS (``reference``) vs scratch, ablations vs
        FEDS and vs scratch, the config's own pairs (``extra``), all vs JPEG.

        Scratch vs teacher is there to test the method's premise: distillation can only pass on what
        the teacher knows better than a student trained alone (at short budgets it may know less).
        """
        # a learning curve's ladders (``feds@600`` ...) have their own table (evaluation.learning_curve)
        n = {role: name for role, name in self.names.items() if "@" not in role and role not in self.replicas}
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
            if role not in ("teacher", ref, "scratch") and not role.startswith("anchor:") and ref in n:
                pairs.append((n[ref], name))
                if "scratch" in n:  # and against training alone: does the variant beat the baseline?
                    pairs.append((n["scratch"], name))
        for a, t in self.extra:
            if a in every and t in every and (every[a], every[t]) not in pairs:
                pairs.append((every[a], every[t]))
        if "anchor:jpeg" in n:
            for role, name in n.items():
                if not role.startswith("anchor:"):
                    pairs.append((n["anchor:jpeg"], name))
        return pairs

    def bd_table_for(self, metric: str = "psnr") -> pd.DataFrame:
        if metric not in self._bd:
            by_name = {load_results(f)["name"]: f for f in self.files}
            rows = []
            for anchor, test in self.comparisons():
                rows += bd_table(by_name[anchor], [by_name[test]], metric=metric, bootstrap=self.bootstrap, strict=False)
            df = pd.DataFrame(rows)
            if "note" not in df.columns:
                df["note"] = ""
            self._bd[metric] = df.fillna({"note": ""})
        return self._bd[metric]

    def teacher_gap(self, metric: str = "psnr") -> pd.DataFrame:
        """Every student against the teacher at matched rate (:func:`matched_rate_gap`): the figure to read
        where the BD table says "not computable" because the teacher's curve folds back; empty without one."""
        if "teacher" not in self.names:
            return pd.DataFrame()
        by_name = {load_results(f)["name"]: f for f in self.files}
        roles = [r for r in dict.fromkeys([self.reference, "scratch", *self.names]) if r in self.names
                 and r != "teacher" and not r.startswith("anchor:") and "@" not in r and r not in self.replicas]
        return pd.DataFrame([matched_rate_gap(by_name[self.names["teacher"]], by_name[self.names[r]], metric=metric,
                                              bootstrap=self.bootstrap) for r in roles])

    @property
    def bd_table(self) -> pd.DataFrame:
        return self.bd_table_for("psnr")

    def seed_table(self, metric: str = "psnr") -> pd.DataFrame:
        """Each seeded variant against scratch, seed by seed and pooled (evaluation.seeds), then each
        against the reference (the FEDS it changes) where the reference has seeds at its budget; empty
        without seeds. Column ``anchor_group`` says which."""
        from ..run_folder import split_curve_variant
        from .seeds import seed_table

        tables = [seed_table(self, self.seed_groups, metric=metric)]
        if self.reference != "scratch":
            changed = {v: s for v, s in self.seed_groups.items() if split_curve_variant(v)[0] != "scratch"}
            tables.append(seed_table(self, changed, anchor=self.reference, metric=metric))
        tables = [t for t in tables if len(t)]
        return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def analyse_run(cfg, teachers: dict[float, Path], students: dict[tuple[str, float], Path], images: Sequence,
                bootstrap: int = 1000, cache: EvalCache | str | Path | None = None) -> RDAnalysis:
    """Evaluate a pipeline run's checkpoints and the anchors on ``images``; write results files.

    Checkpoint evaluations go through the evaluation cache (:mod:`.cache`): ``cache`` when given (a
    folder, ``"off"`` or an ``EvalCache``), else ``FEDS_LAB_EVAL_CACHE``, else ``cfg.eval_cache`` (default
    ``<runs_dir>/.eval-cache``). How many points came from it is printed (stderr: the pipeline's log too)
    and kept in ``RDAnalysis.evaluation_cache``."""
    cache = resolve_cache(cache, default=_config_cache(cfg))
    layout = cfg.layout
    layout.results.mkdir(parents=True, exist_ok=True)
    budget = {role: cfg.budget_label(role) for role in ("teacher", "student")}
    files, names, speed = [], {}, []

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
            files.append(layout.anchor_results(res["name"]))
            names[f"anchor:{key}"] = res["name"]

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
                      seed_groups=cfg.seed_groups(),
                      evaluation_cache={"folder": str(cache.folder) if cache.enabled else None,
                                        "from_cache": cache.hits, "computed": cache.computed})


def _config_cache(cfg) -> str | Path:
    """The evaluation cache a pipeline config asks for: its ``eval_cache``, or ``<runs_dir>/.eval-cache``."""
    value = getattr(cfg, "eval_cache", None)
    return Path(cfg.runs_dir) / DIRNAME if value is None else value
