"""Learning curves: FEDS against scratch as the student trains longer, at equal steps and at
equal wall-clock.

A pipeline with ``learning_curve: {feds: [...], scratch: [...]}`` trains each listed variant at each
budget (variants ``feds@600`` ...; ``feds`` itself is the ``student_steps`` budget): one ladder of
curves, each at its budget (its :class:`~feds_lab.variants.Variant`'s ``base`` and ``steps``). Each row
here is one BD-rate of a FEDS ladder against a scratch ladder on the evaluation images, with its
bootstrap interval:

- ``equal steps``: FEDS at B steps per lambda against scratch at B;
- ``equal wall-clock``: FEDS at B against the scratch ladder whose training took the wall-clock time
  nearest to FEDS's (in log time), if it is within ``WALL_CLOCK_TOLERANCE`` of it (else no figure).
  A FEDS step runs the teacher forward and the distillation terms, so
  it costs more than a scratch step; scratch budgets past FEDS's longest make this row possible.

Wall-clock: a ladder's steps (summed over lambdas) times the cost of one step of its kind, the median
over every run of that kind of ``budget.wall_seconds / steps`` from the checkpoints' records. The
median over runs, rather than each ladder's own time, keeps one run trained on a busier machine from
moving its ladder along the time axis; it is still only as fair as the conditions the runs trained in
(the study configs train every run alike: one thread each, side by side). The rows name both times.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import pandas as pd

from .bdrate import bd_table
from .results import load_results


#: an equal wall-clock row needs a scratch ladder whose time is within this factor of FEDS's
WALL_CLOCK_TOLERANCE = 1.5


def ladders(analysis) -> dict[str, dict[int, str]]:
    """{ladder: {steps: curve name}} of the students an analysis evaluated (on their own seeds: another
    seed is the seed table's), each at its training steps per lambda: ``{"feds": {300: ..., 600: ...}}``."""
    out: dict[str, dict[int, str]] = {}
    for role, curve in analysis.names.items():
        v = analysis.variant(role)
        if v.is_student and v.replica_of is None:
            out.setdefault(v.base, {})[v.steps] = curve
    return out


def step_costs(records: dict[str, Any]) -> tuple[list[float], int]:
    """(seconds per step of each run, steps summed over lambdas) of one ladder, from a results file's records."""
    costs, steps = [], 0
    for rec in records.values():
        budget = (rec or {}).get("budget") or {}
        if budget.get("wall_seconds") and budget.get("steps"):
            costs.append(float(budget["wall_seconds"]) / int(budget["steps"]))
        steps += int(budget.get("steps") or 0)
    return costs, steps


def learning_curve_table(analysis, test: str | Sequence[str] = "feds", anchor: str = "scratch",
                         metric: str = "psnr") -> pd.DataFrame:
    """One row per (FEDS variant, comparison, budget): BD-rate (%) of ``test`` against ``anchor``, its
    interval and both times. ``analysis``: an :class:`~feds_lab.evaluation.rd_analysis.RDAnalysis`;
    ``test``: one variant, or several (e.g. the tuned FEDS and the search's prior), each with its own
    rows (column ``variant``)."""
    tests = [test] if isinstance(test, str) else list(test)
    by_name = {load_results(f)["name"]: f for f in analysis.files}
    lad = ladders(analysis)
    missing = [v for v in (*tests, anchor) if v not in lad]
    if missing:
        raise ValueError(f"a learning curve needs the variants {missing}; the run has {sorted(lad)}")

    def ladder_seconds(kind: str) -> dict[int, float]:
        ladder = {steps: step_costs(load_results(by_name[name]).get("meta", {}).get("records", {}))
                  for steps, name in lad[kind].items()}
        costs = [c for per_run, _ in ladder.values() for c in per_run]
        cost = statistics.median(costs) if costs else math.nan
        return {steps: total * cost for steps, (_, total) in ladder.items()}

    anchor_seconds = ladder_seconds(anchor)
    timed = {s: v for s, v in anchor_seconds.items() if v > 0 and not math.isnan(v)}
    rows = []
    for variant in tests:
        for steps, t_sec in sorted(ladder_seconds(variant).items()):
            matches = {"equal steps": steps if steps in lad[anchor] else None}
            nearest = (min(timed, key=lambda s: abs(math.log(timed[s] / t_sec)))
                       if timed and t_sec > 0 and not math.isnan(t_sec) else None)
            # the nearest only if it is near: otherwise the row would repeat an unequal comparison
            matches["equal wall-clock"] = (nearest if nearest is not None
                                           and abs(math.log(timed[nearest] / t_sec)) <= math.log(WALL_CLOCK_TOLERANCE)
                                           else None)
            for kind, a_steps in matches.items():
                row = {"variant": variant, "comparison": kind, "steps": steps, "anchor_steps": a_steps,
                       "seconds": t_sec, "anchor_seconds": anchor_seconds.get(a_steps, math.nan) if a_steps else math.nan}
                if a_steps is None:
                    row.update(bd_rate=math.nan, note=f"no {anchor} ladder within {WALL_CLOCK_TOLERANCE:g}x of its time"
                               if kind == "equal wall-clock" else f"no {anchor} ladder at {steps} steps")
                else:
                    r = bd_table(by_name[lad[anchor][a_steps]], [by_name[lad[variant][steps]]], metric=metric,
                                 bootstrap=analysis.bootstrap, strict=False)[0]
                    row.update({k: r.get(k, math.nan) for k in ("bd_rate", "ci_low", "ci_high", "coverage")},
                               note=r.get("note", ""), test=r["test"], anchor=r["anchor"])
                rows.append(row)
    return pd.DataFrame(rows)


def pooled_by_budget(analysis, seeds: pd.DataFrame, anchor: str = "scratch") -> pd.DataFrame:
    """The pooled rows of a seed table (:func:`~feds_lab.evaluation.seeds.seed_table`) against ``anchor``'s
    seeds, placed on the learning curve: ``variant`` (the ladder), ``steps`` (its budget), the pooled
    BD-rate with its interval and the seed counts (what :func:`feds_lab.plots.learning_curve` draws
    beside the one-seed points)."""
    columns = ["variant", "steps", "bd_rate", "ci_low", "ci_high", "n_test", "n_anchor"]
    if seeds is None or not len(seeds):
        return pd.DataFrame(columns=columns)
    rows = []
    for _, r in seeds[seeds["comparison"] == "pooled"].iterrows():
        if analysis.variant(r["anchor_group"]).base != anchor:
            continue
        v = analysis.variant(r["variant"])
        rows.append({"variant": v.base, "steps": v.steps, **{k: r[k] for k in columns[2:]}})
    return pd.DataFrame(rows, columns=columns)
