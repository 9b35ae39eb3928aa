"""RD curves of checkpoints, each checkpoint coded through the evaluation cache (:mod:`.cache`).

- :func:`evaluate_checkpoints` (``feds-lab eval``): any checkpoints, grouped into curves by their records;
- :func:`evaluate_curve` (notebook 04, :mod:`.rd_analysis`): one ladder of a pipeline run, one checkpoint
  per lambda.

Both write the results schema of :mod:`.results`; the numbers are :func:`.evaluate.evaluate_model`'s rows.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import checkpoint
from .cache import EvalCache, resolve_cache
from .evaluate import Image
from .results import ResultsError, make_results


def _curve_name(record: dict[str, Any]) -> str:
    """The RD curve a checkpoint belongs to: family-role-preset of its model, then what tells
    checkpoints of that model apart besides lambda: the training run when it is not named after the
    role (``scratch``, the baseline student) and the distortion metric when it is not MSE.

    >>> _curve_name({"model": {"family": "cnn", "role": "student", "preset": "tiny"}, "run": "scratch"})
    'cnn-student-tiny-scratch'
    """
    model = record.get("model", {})
    parts = [str(model.get(k, "?")) for k in ("family", "role", "preset")]
    if record.get("run") not in (None, model.get("role")):
        parts.append(str(record["run"]))
    if record.get("metric") not in (None, "mse"):
        parts.append(str(record["metric"]))
    return "-".join(parts)


def evaluate_checkpoints(
    paths: Iterable[str | Path],
    images: Sequence[Image],
    curve_name: Callable[[dict[str, Any]], str] = _curve_name,
    progress: bool = True,
    device: str | torch.device = "cpu",
    cache: Any = None,
) -> list[dict[str, Any]]:
    """Evaluate checkpoints and group them into RD curves, one results dict per curve.

    Checkpoints whose records give the same ``curve_name`` (default: family-role-preset, then the
    run if it is not the role, e.g. ``-scratch``, and the metric if not MSE) form one curve, one point per lambda, sorted by bpp; two checkpoints of one curve with the same lambda
    are an error. ``settings`` holds each point's lambda and checkpoint path; ``meta`` the thread
    count and each checkpoint's record (budget included).

    ``cache``: the evaluation cache (:mod:`.cache`: a folder, ``"off"``, or an ``EvalCache``); None:
    ``FEDS_LAB_EVAL_CACHE`` if set, else off. ``meta["evaluation_cache"]`` says which points came from it.
    """
    cache = resolve_cache(cache)
    groups: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    for path in map(Path, paths):
        if not path.exists():
            raise ResultsError(f"checkpoint not found: {path}")
        record = checkpoint.read_record(path)
        groups.setdefault(curve_name(record), []).append((path, record))

    curves = []
    for name, members in groups.items():
        lambdas = [rec.get("lmbda") for _, rec in members]
        dupes = {lm for lm in lambdas if lm is not None and lambdas.count(lm) > 1}
        if dupes:
            clash = [str(p) for p, rec in members if rec.get("lmbda") in dupes]
            raise ResultsError(f"curve {name!r} has two checkpoints with lambda {sorted(dupes)}: {clash}")
        points, records, evaluated = [], [], []
        coded = cache.points([p for p, _ in members], images, device=device, name=name, progress=progress)
        for (path, record), point in tqdm(zip(members, coded), total=len(members), desc=f"curve {name}",
                                          disable=not progress):
            points.append({"rows": point.rows, "setting": {"lmbda": record.get("lmbda"), "checkpoint": str(path)}})
            records.append({"checkpoint": str(path), "budget": record.get("budget"), "record": record})
            evaluated.append(point)
        meta = {"threads": torch.get_num_threads(), "images": [n for n, _ in images],
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "checkpoints": records,
                "evaluation_cache": cache.meta(evaluated)}
        curves.append(make_results(name, points, description=f"{len(points)} checkpoints of {name}", meta=meta))
    return curves


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
