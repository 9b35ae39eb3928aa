"""Seed studies: does a variant beat scratch across training seeds, not on one draw?

At short budgets two scratch students that differ only in their seed (initial weights, crops,
quantisation noise) can lie 20 % apart in BD-rate: far more than the bootstrap over images says of
one pair. A pipeline with ``seeds: {feds: [1, 2, ...], scratch: [1, 2, ...]}`` trains each listed
variant again with each seed (variants ``feds_s1`` ...; the variant itself is the config's seed), and
:func:`seed_table` compares them with the anchor (scratch) two ways:

- ``seed k``: the variant's seed k against the anchor's seed k, with the bootstrap over images of that
  one pair (as the BD table does for every pair);
- ``pooled``: the variant's mean curve over all its seeds against the anchor's over all its seeds,
  with a bootstrap over seeds (each arm's own, drawn with replacement) and images (shared):
  :func:`feds_lab.evaluation.bdrate.bootstrap_bd_pooled`. This is the row that answers the question.

The pooled row also says on how many seed pairs (``pairs``) the variant won (``wins``: BD-rate below 0 against the same seed
of the anchor) and the mean and spread of the per-seed figures.
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np
import pandas as pd

from ..variants import at_budget
from .bdrate import BDRateError, bd_table, bootstrap_bd_pooled
from .results import load_results, paired_per_image, quality_transform


def seed_table(analysis, groups: dict[str, dict[int, str]], anchor: str = "scratch", metric: str = "psnr",
               bootstrap: int | None = None, confidence: float = 0.95) -> pd.DataFrame:
    """One ``pooled`` row and one row per shared seed for every group of ``groups`` but ``anchor``.

    ``analysis``: an :class:`~feds_lab.evaluation.rd_analysis.RDAnalysis` (its results files, its
    role -> curve name mapping and its variant records); ``groups``: {variant: {seed: role}}
    (:attr:`~feds_lab.evaluation.rd_analysis.RDAnalysis.seed_groups`, or some of them).
    A variant or an anchor with one seed still gets its rows (the pooled interval is then over images
    alone for that arm, and the row's ``note`` says so). A learning curve's budget (``feds@600``) is
    compared with the anchor's seeds at the same budget (``scratch@600``), when it has them.
    """
    n_boot = analysis.bootstrap if bootstrap is None else bootstrap
    by_name = {load_results(f)["name"]: f for f in analysis.files}

    def path(role: str):
        if role not in analysis.names:
            raise BDRateError(f"no results for {role!r} (was it evaluated?)")
        return by_name[analysis.names[role]]

    rows: list[dict[str, Any]] = []
    for variant, seeds in groups.items():
        record = analysis.variant(variant)
        if record.base == anchor:
            continue
        # a learning curve's budget against the anchor's seeds at that budget (feds@600 vs scratch@600)
        anchor_group = at_budget(analysis.variants, anchor, record.budget)
        if anchor_group not in groups:
            continue
        anchor_seeds = groups[anchor_group]
        shared = sorted(set(seeds) & set(anchor_seeds))
        per_seed = []
        for seed in shared:
            row = bd_table(path(anchor_seeds[seed]), [path(seeds[seed])], metric=metric, bootstrap=n_boot,
                           confidence=confidence, strict=False)[0]
            row.update(variant=variant, anchor_group=anchor_group, comparison=f"seed {seed}", seed=seed, n_anchor=1, n_test=1)
            rows.append(row)
            per_seed.append(row["bd_rate"])
        rows.append(_pooled_row(variant, anchor_group, seeds, anchor_seeds, path, metric, n_boot, confidence, per_seed))
    if not rows:
        return pd.DataFrame()
    columns = ["variant", "anchor_group", "comparison", "seed", "anchor", "test", "n_anchor", "n_test", "bd_rate", "ci_low",
               "ci_high", "bd_quality", "pairs", "wins", "seed_mean", "seed_sd", "note"]
    df = pd.DataFrame(rows)
    return df[[c for c in columns if c in df.columns] + [c for c in df.columns if c not in columns]]


def _pooled_row(variant, anchor, seeds, anchor_seeds, path, metric, n_boot, confidence, per_seed) -> dict[str, Any]:
    # every run's per-image points in one image order (paired_per_image sorts by name, and checks
    # that each run covers the same images as the anchor's first seed)
    first = load_results(path(next(iter(anchor_seeds.values()))))
    runs = {arm: [paired_per_image(first, load_results(path(role)), metric)[3:] for role in group.values()]
            for arm, group in (("anchor", anchor_seeds), ("test", seeds))}
    row: dict[str, Any] = {"variant": variant, "anchor_group": anchor, "comparison": "pooled", "seed": "all",
                           "anchor": f"{anchor} ({len(anchor_seeds)} seeds)", "test": f"{variant} ({len(seeds)} seeds)",
                           "n_anchor": len(anchor_seeds), "n_test": len(seeds), "metric": metric}
    finite = [b for b in per_seed if np.isfinite(b)]
    row.update(pairs=len(per_seed), wins=sum(b < 0 for b in finite), seed_mean=statistics.fmean(finite) if finite else np.nan,
               seed_sd=statistics.stdev(finite) if len(finite) > 1 else np.nan)
    cautions = []
    if min(len(anchor_seeds), len(seeds)) < 2:
        cautions.append("one seed in an arm: its training noise is not in the interval")
    if len(finite) < len(per_seed):
        cautions.append(f"{len(per_seed) - len(finite)} seed pair(s) not computable")
    try:
        result = bootstrap_bd_pooled(runs["anchor"], runs["test"], quality_transform=quality_transform(metric),
                                     n_resamples=n_boot, confidence=confidence)
        quality = bootstrap_bd_pooled(runs["anchor"], runs["test"], statistic="quality",
                                      quality_transform=quality_transform(metric), n_resamples=1)
        row.update(bd_rate=result.estimate, ci_low=result.low, ci_high=result.high, bd_quality=quality.estimate,
                   resamples=result.n_resamples, failed=result.n_failed, confidence=confidence)
        if result.n_failed > 0.05 * result.n_resamples:
            cautions.append(f"interval from {result.n_resamples - result.n_failed} of {result.n_resamples} resamples")
    except BDRateError as err:
        row.update(bd_rate=np.nan, bd_quality=np.nan)
        cautions.append(f"not computable: {err}")
    row["note"] = "; ".join(cautions)
    return row
