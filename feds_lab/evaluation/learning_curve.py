"""Learning curves (issue 16): FEDS against scratch as the student trains longer, at equal steps and at
equal wall-clock.

A pipeline with ``learning_curve: {feds: [...], scratch: [...]}`` trains each listed variant at each
budget (variants ``feds@600`` ...; ``feds`` itself is the ``student_steps`` budget). Each row here is
one BD-rate of a FEDS ladder against a scratch ladder on the evaluation images, with its bootstrap
interval:

- ``equal steps``: FEDS at B steps per lambda against scratch at B;
- ``equal wall-clock``: FEDS at B against the scratch ladder whose training took the wall-clock time
  nearest to FEDS's (in log time). A FEDS step runs the teacher forward and the distillation terms, so
  it costs more than a scratch step; scratch budgets past FEDS's longest make this row possible.

Wall-clock is each ladder's training time summed over lambdas, from the checkpoints' records
(``budget.wall_seconds``): it is only as fair as the conditions the runs trained in, so the study
configs train every run alike (one thread each, side by side); the rows name both times.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from ..run_folder import split_curve_variant


def ladders(names: dict[str, str], student_steps: int) -> dict[str, dict[int, str]]:
    """{base variant: {steps: curve name}} of every variant in an analysis' ``names`` (role -> curve name)."""
    out: dict[str, dict[int, str]] = {}
    for role, curve in names.items():
        if role == "teacher" or role.startswith("anchor:"):
            continue
        base, steps = split_curve_variant(role)
        out.setdefault(base, {})[steps or student_steps] = curve
    return out


def ladder_seconds(records: dict[str, Any]) -> float:
    """Training wall-clock of one ladder (seconds, summed over lambdas) from a results file's meta records."""
    total = 0.0
    for rec in records.values():
        seconds = ((rec or {}).get("budget") or {}).get("wall_seconds")
        if seconds is None:
            return math.nan
        total += float(seconds)
    return total


def learning_curve_table(analysis, student_steps: int, test: str = "feds", anchor: str = "scratch",
                         metric: str = "psnr") -> pd.DataFrame:
    """One row per (comparison, FEDS budget): BD-rate (%) of ``test`` against ``anchor``, interval, times."""
    from .evaluate import load_results
    from .rd_analysis import bd_table

    by_name = {load_results(f)["name"]: f for f in analysis.files}
    lad = ladders(analysis.names, student_steps)
    if test not in lad or anchor not in lad:
        raise ValueError(f"a learning curve needs the variants {test!r} and {anchor!r}; the run has {sorted(lad)}")
    seconds = {kind: {steps: ladder_seconds(load_results(by_name[name]).get("meta", {}).get("records", {}))
                      for steps, name in lad[kind].items()} for kind in (test, anchor)}
    rows = []
    for steps, name in sorted(lad[test].items()):
        t_sec = seconds[test][steps]
        matches = {"equal steps": steps if steps in lad[anchor] else None}
        timed = {s: v for s, v in seconds[anchor].items() if v > 0 and not math.isnan(v)}
        matches["equal wall-clock"] = (min(timed, key=lambda s: abs(math.log(timed[s] / t_sec)))
                                       if timed and t_sec > 0 and not math.isnan(t_sec) else None)
        for kind, a_steps in matches.items():
            row = {"comparison": kind, "steps": steps, "anchor_steps": a_steps, "seconds": t_sec,
                   "anchor_seconds": seconds[anchor].get(a_steps, math.nan) if a_steps else math.nan}
            if a_steps is None:
                row.update(bd_rate=math.nan, note="no scratch ladder to match")
            else:
                r = bd_table(by_name[lad[anchor][a_steps]], [by_name[name]], metric=metric,
                             bootstrap=analysis.bootstrap, strict=False)[0]
                row.update({k: r.get(k, math.nan) for k in ("bd_rate", "ci_low", "ci_high", "coverage")},
                           note=r.get("note", ""), test=r["test"], anchor=r["anchor"])
            rows.append(row)
    return pd.DataFrame(rows)
