"""Rate-distortion evaluation of learned codecs with real bitstreams, and the results files.

One RD point is a model (one lambda) coded on a set of images::

    x ─ coding.encode ─► bytes ─ coding.decode ─► x_hat      bpp = 8 * len(bytes) / (H * W)
    x ─ pad ─ model.forward (eval) ─► likelihoods               bpp-estimate = sum(-log2 p) / (H * W)

H, W are the original image size (before padding to 64). The estimate sits beside the real rate,
never in its place; ``bpp-gap-percent`` = 100 * (bpp - estimate) / estimate is what coding for real
costs beyond the estimate: the file header, and the entropy coder's departures from -log2 p
(quantised CDF and scale tables, escape-coded tails). It can come out negative.

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
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import checkpoint, coding
from ..errors import FedsLabError
from ..models.entropy import PAD_MULTIPLE
from .metrics import image_quality, ms_ssim_db

Image = tuple[str, torch.Tensor]  # (name, (1, 3, H, W) float in [0, 1])

# --- results files: the one schema ---------------------------------------------------------------


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


def _quality_transform(metric: str) -> Callable[[np.ndarray], np.ndarray]:
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
    return np.asarray(res["bpp"], dtype=float), _quality_transform(metric)(res[key])


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


# --- images ------------------------------------------------------------------------------------------

def load_folder_images(folder: str | Path) -> list[Image]:
    """Every image under ``folder`` (sorted by name): an evaluation set such as Kodak."""
    from ..data import eval_images

    if not Path(folder).is_dir():
        raise ResultsError(f"not a folder: {folder}")
    return eval_images(folder, "all")


# --- learned codecs ---------------------------------------------------------------------------------


def likelihood_bpp(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Rate the entropy model predicts for x: sum of -log2 likelihoods of y and z over H*W of x
    (unpadded size), from one eval-mode forward pass of the padded image."""
    h, w = x.shape[-2:]
    x_padded, _ = coding.pad_image(x, PAD_MULTIPLE)
    with torch.no_grad():
        out = model(x_padded)
    bits = sum(float((-torch.log2(lik)).sum()) for lik in out["likelihoods"].values())
    return bits / (h * w)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def evaluate_model(
    model: torch.nn.Module,
    images: Sequence[Image],
    name: str | None = None,
    description: str = "",
    progress: bool = False,
    warmup: bool = True,
) -> dict[str, Any]:
    """Code every image through ``feds_lab.coding`` and measure it.

    images: [(name, (1, 3, H, W) float in [0, 1])]. model: ready to code (``update()`` done).
    Returns ``{"name", "description", "rows", "mean", "meta"}``: one row per image with ``image``,
    ``height``, ``width``, ``bytes``, ``bpp``, ``bpp-estimate``, ``bpp-gap-percent``,
    ``bpp-streams`` (the streams without the ``.feds`` header), ``psnr-rgb``, ``ms-ssim-rgb``,
    ``ms-ssim-rgb-db``, ``encoding_time`` and ``decoding_time`` (seconds); ``mean`` as
    :func:`summarize` computes it. Times are measured after one untimed warm-up coding
    of the first image (first calls pay for allocations and lazy set-up; ``warmup=False`` skips
    it, e.g. for validation during training, where the times are not read).
    """
    if not images:
        raise ResultsError("no images to evaluate")
    model.eval()
    device = _device(model)
    config = dict(getattr(model, "config", {}) or {})
    if name is None:
        name = "-".join(str(config[k]) for k in ("family", "role", "preset") if k in config) or type(model).__name__

    if warmup:
        with torch.no_grad():
            x0 = images[0][1].to(device)
            coding.decode(model, coding.encode(model, x0).data)  # warm-up, untimed

    rows = []
    for img_name, x in tqdm(images, desc=f"eval {name}", disable=not progress, leave=False):
        x = x.to(device)
        with torch.no_grad():
            enc = coding.encode(model, x)
            dec = coding.decode(model, enc.data)
        estimate = likelihood_bpp(model, x)
        h, w = x.shape[-2:]
        row = {"image": img_name, "height": int(h), "width": int(w), "bytes": len(enc.data),
               "bpp": float(enc.bpp), "bpp-estimate": estimate,
               "bpp-gap-percent": 100 * (enc.bpp - estimate) / estimate}
        if hasattr(enc, "stream_bpp"):  # the entropy-coded streams alone, without the file header
            row["bpp-streams"] = float(enc.stream_bpp)
        row.update(image_quality(x.cpu(), dec.x_hat.cpu()))
        row.update({"encoding_time": float(enc.seconds), "decoding_time": float(dec.seconds)})
        rows.append(row)
    meta = {"threads": torch.get_num_threads(), "device": str(device), "model": config}
    return {"name": name, "description": description, "rows": rows, "mean": summarize(rows), "meta": meta}


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
    from .cache import resolve_cache

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
