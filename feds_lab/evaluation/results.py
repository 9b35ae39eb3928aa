"""The results files: one schema for every RD curve (learned codecs, classical anchors), CompressAI's.

Results files follow CompressAI's JSON format, so ``python -m compressai.utils.plot -f a.json``
reads them as they are::

    {"name": "cnn-student-tiny", "description": "...",
     "results": {"bpp": [...], "psnr-rgb": [...], "ms-ssim-rgb": [...], "ms-ssim-rgb-db": [...],
                 "encoding_time": [...], "decoding_time": [...], ...},   # one entry per RD point
     "per_image": [[row, ...], ...],   # per point, one row per image (the same keys, plus image)
     "settings": [{...}, ...],         # per point: lambda and checkpoint, or a codec's quality
     "meta": {...}}                    # thread count, budgets and checkpoint records, versions

Points are sorted by bpp. Every value in ``results`` is the mean over images of the per-image
value, except ``ms-ssim-rgb-db`` = dB of the mean MS-SSIM (what CompressAI's plot shows) and
``bpp-gap-percent`` = gap between mean bpp and mean estimate. Times are in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import FedsLabError
from .metrics import ms_ssim_db


class ResultsError(FedsLabError, ValueError):
    """A results file (or a set of them, or the images behind them) cannot be used as asked."""


#: ``--metric`` name -> the key of the results holding it.
METRIC_KEYS = {"psnr": "psnr-rgb", "ms-ssim": "ms-ssim-rgb"}
#: Axis label and unit of each metric as BD-rate and plots use it (MS-SSIM in dB).
METRIC_LABELS = {"psnr": "PSNR (dB)", "ms-ssim": "MS-SSIM (dB)"}


def ms_ssim_db_array(ms: np.ndarray) -> np.ndarray:
    """Vectorised :func:`feds_lab.evaluation.metrics.ms_ssim_db`."""
    with np.errstate(divide="ignore"):
        return -10 * np.log10(1 - np.asarray(ms, dtype=float))


def quality_transform(metric: str) -> Callable[[np.ndarray], np.ndarray]:
    """Mean quality -> the BD axis: MS-SSIM to dB (after averaging, as CompressAI's plots do), PSNR as it is."""
    _check_metric(metric)
    return ms_ssim_db_array if metric == "ms-ssim" else (lambda q: np.asarray(q, dtype=float))


def _check_metric(metric: str) -> None:
    if metric not in METRIC_KEYS:
        raise ResultsError(f"unknown metric {metric!r}; known: {list(METRIC_KEYS)}")


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Means over images of every numeric key the rows share (see module docstring for the two
    derived keys)."""
    if not rows:
        raise ResultsError("no rows to summarise")
    keys = [k for k, v in rows[0].items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("height", "width")]
    keys = [k for k in keys if all(k in r for r in rows)]
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    if "ms-ssim-rgb" in mean:
        mean["ms-ssim-rgb-db"] = ms_ssim_db(mean["ms-ssim-rgb"])
    if "bpp-estimate" in mean:
        mean["bpp-gap-percent"] = 100 * (mean["bpp"] - mean["bpp-estimate"]) / mean["bpp-estimate"]
    return mean


def make_results(
    name: str,
    points: Sequence[dict[str, Any]],
    description: str = "",
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble a results dict from RD points, sorted by bpp.

    points: dicts with ``rows`` (one dict per image, numeric metric keys and ``image``) and
    optionally ``setting`` (what produced the point: lambda, quality ...).
    """
    if not points:
        raise ResultsError("a results file needs at least one RD point")
    means = [summarize(p["rows"]) for p in points]
    order = sorted(range(len(points)), key=lambda i: means[i]["bpp"])
    keys = [k for k in means[0] if all(k in m for m in means)]
    return {
        "name": name,
        "description": description,
        "results": {k: [means[i][k] for i in order] for k in keys},
        "per_image": [list(points[i]["rows"]) for i in order],
        "settings": [dict(points[i].get("setting", {})) for i in order],
        "meta": dict(meta or {}),
    }


def save_results(results: dict[str, Any], path: str | Path) -> Path:
    """Write a results dict as JSON (NaN and inf are written as JSON's NaN/Infinity, which
    Python's ``json`` and CompressAI's plot read back)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str))
    return path


def load_results(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    """Read and check a results file (or pass a dict through the same checks).

    Accepts CompressAI's own files too (``results`` holding ``bpp`` and a metric; ``name``
    defaults to the file name, as CompressAI's plot does).
    """
    if isinstance(source, dict):
        data, label = source, source.get("name", "<dict>")
    else:
        path = Path(source)
        label = str(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ResultsError(f"results file not found: {path}") from None
        except json.JSONDecodeError as err:
            raise ResultsError(f"{path} is not valid JSON ({err})") from None
        if isinstance(data, dict):
            data.setdefault("name", path.name.split(".")[0])
    results = data.get("results", data) if isinstance(data, dict) else None
    if not isinstance(results, dict) or "bpp" not in results:
        raise ResultsError(f"{label}: not a results file (no 'results' with 'bpp')")
    if not any(k in results for k in METRIC_KEYS.values()):
        raise ResultsError(f"{label}: no quality metric in results (expected one of {list(METRIC_KEYS.values())})")
    lengths = {k: len(v) for k, v in results.items() if isinstance(v, list)}
    if len(set(lengths.values())) > 1:
        raise ResultsError(f"{label}: result lists differ in length {lengths}")
    return data


def rd_curve(results: dict[str, Any], metric: str = "psnr") -> tuple[np.ndarray, np.ndarray]:
    """(bpp, quality in dB) of a results dict; MS-SSIM is converted to dB from the mean MS-SSIM."""
    _check_metric(metric)
    key = METRIC_KEYS[metric]
    res = results.get("results", results)
    if key not in res:
        raise ResultsError(f"{results.get('name', 'results')}: metric {key!r} not available; has {sorted(res)}")
    return np.asarray(res["bpp"], dtype=float), quality_transform(metric)(res[key])


def paired_per_image(
    anchor: dict[str, Any], test: dict[str, Any], metric: str = "psnr"
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-image RD points of two results, on the images both share, for a paired bootstrap.

    Returns (image names, bpp_anchor, quality_anchor, bpp_test, quality_test), arrays of shape
    (n_images, n_points). Quality is the raw per-image value (MS-SSIM not in dB: the bootstrap
    averages first, then converts, like :func:`rd_curve`).
    """
    _check_metric(metric)
    key = METRIC_KEYS[metric]
    tables = []
    for res in (anchor, test):
        if "per_image" not in res:
            raise ResultsError(f"{res.get('name', 'results')}: no per-image rows; the bootstrap needs them")
        tables.append([{row["image"]: row for row in point} for point in res["per_image"]])
    images = [set().union(*(t.keys() for t in table)) for table in tables]
    names = sorted(set.intersection(*images))
    if set.union(*images) != set(names):
        only_one = sorted(set.union(*images) - set(names))
        raise ResultsError(f"the two results cover different images; in one only: {only_one}")
    for table in tables:
        if any(set(point) != set(names) for point in table):
            raise ResultsError("a results file has RD points over different image sets")
    out: list[Any] = [names]
    for table in tables:
        out.append(np.array([[point[n]["bpp"] for point in table] for n in names], dtype=float))
        out.append(np.array([[point[n][key] for point in table] for n in names], dtype=float))
    return tuple(out)  # type: ignore[return-value]
