"""Figures and tables of results: RD curves, BD-rate tables, parameters and speed.

Every function returns a :class:`matplotlib.figure.Figure` (tables: a pandas DataFrame and its
figure). Figures are built without ``pyplot``, so nothing accumulates in global state and a
notebook shows each figure once, where it is returned; :func:`save_figure` writes one to disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .evaluation.evaluate import METRIC_LABELS, load_results, rd_curve

#: Names drawn dashed, as classical codecs (CompressAI's plot does the same).
CLASSICAL = ("JPEG", "WebP", "AVIF", "JPEG2000", "BPG", "VTM", "HM", "AV1")
RATE_LABEL = "bpp (bits per pixel)"


def _axes(ax: Axes | None, figsize=(7, 5)) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def rd_curves(
    results: Iterable[str | Path | dict[str, Any]],
    metric: str = "psnr",
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """Rate-distortion curves, one line per results file (or dict), points sorted by bpp.

    metric: ``"psnr"`` (PSNR, dB) or ``"ms-ssim"`` (MS-SSIM in dB, from the mean MS-SSIM).
    Classical codecs are dashed.
    """
    fig, ax = _axes(ax)
    loaded = [load_results(r) for r in results]
    if not loaded:
        raise ValueError("rd_curves needs at least one results file")
    colors = sns.color_palette("tab10", n_colors=max(len(loaded), 1))
    for color, res in zip(colors, loaded):
        bpp, quality = rd_curve(res, metric)
        order = np.argsort(bpp)
        dashed = any(res["name"].startswith(c) for c in CLASSICAL)
        ax.plot(bpp[order], quality[order], marker="o", markersize=4, linewidth=1.5,
                linestyle="--" if dashed else "-", color=color, label=res["name"])
    ax.set_xlabel(RATE_LABEL)
    ax.set_ylabel(METRIC_LABELS[metric])
    ax.set_title(title or f"Rate-distortion: {METRIC_LABELS[metric].split(' (')[0]} against rate")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    return fig


def _table_figure(df: pd.DataFrame, title: str) -> Figure:
    """A figure holding nothing but ``df`` as a table (for reports and slides)."""
    fig = Figure(figsize=(min(2 + 1.6 * len(df.columns), 16), 0.9 + 0.35 * (len(df) + 1)), layout="constrained")
    ax = fig.add_subplot()
    ax.axis("off")
    text = [[_cell(v) for v in row] for row in df.itertuples(index=False)]
    text = text or [[""] * len(df.columns)]
    table = ax.table(cellText=text, colLabels=list(df.columns), loc="center", cellLoc="right")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1, 1.3)
    ax.set_title(title)
    return fig


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.2f}"
    return str(value)


def bd_rate_table(
    rows: Sequence[dict[str, Any]], title: str = "BD-rate against the anchor"
) -> tuple[pd.DataFrame, Figure]:
    """BD figures as a DataFrame and a table figure.

    rows: dicts with ``test``, ``anchor``, ``bd_rate`` (%), ``bd_quality`` (dB) and optionally
    ``ci_low``/``ci_high`` (%), ``failed``, ``metric`` (as ``feds_lab.evaluation.cli.bd_table``
    returns them).
    """
    names = {"test": "test", "anchor": "anchor", "metric": "metric", "bd_rate": "BD-rate (%)",
             "bd_quality": "BD-quality (dB)", "ci_low": "CI low (%)", "ci_high": "CI high (%)",
             "failed": "failed resamples"}
    df = pd.DataFrame(list(rows))
    df = df[[k for k in names if k in df.columns]].rename(columns=names)
    if "metric" in df.columns and df["metric"].nunique() == 1:
        metric = df.pop("metric").iloc[0]
        df = df.rename(columns={"BD-quality (dB)": "BD-PSNR (dB)" if metric == "psnr" else "BD-MS-SSIM (dB)"})
    return df, _table_figure(df, title)


def count_parameters(model) -> int:
    """Number of parameters of a torch module (entropy-coder tables are buffers, not counted)."""
    return int(sum(p.numel() for p in model.parameters()))


def params_speed_table(
    entries: Sequence[dict[str, Any]],
    reference: str | None = None,
    title: str = "Parameters and coding time",
) -> tuple[pd.DataFrame, Figure]:
    """Parameters and coding speed per model, with ratios to ``reference`` (e.g. the teacher).

    entries: dicts with ``name``, ``params`` (count) and optionally ``encoding_time`` and
    ``decoding_time`` (seconds per image), or ``results`` (a results dict or file, whose mean
    times over all points are used). Ratios below 1 mean smaller or faster than the reference.
    """
    rows = []
    for e in entries:
        row = {"model": e["name"], "params (M)": e["params"] / 1e6}
        enc, dec = e.get("encoding_time"), e.get("decoding_time")
        if "results" in e:
            res = load_results(e["results"])["results"]
            enc, dec = float(np.mean(res["encoding_time"])), float(np.mean(res["decoding_time"]))
        row["encode (ms)"] = np.nan if enc is None else enc * 1e3
        row["decode (ms)"] = np.nan if dec is None else dec * 1e3
        rows.append(row)
    df = pd.DataFrame(rows)
    if reference is not None:
        if reference not in set(df["model"]):
            raise ValueError(f"reference {reference!r} is not among the models {list(df['model'])}")
        ref = df.set_index("model").loc[reference]
        df["params ratio"] = df["params (M)"] / ref["params (M)"]
        df["enc+dec ratio"] = (df["encode (ms)"] + df["decode (ms)"]) / (ref["encode (ms)"] + ref["decode (ms)"])
    return df, _table_figure(df, title)


def save_figure(fig: Figure, path: str | Path, dpi: int = 150) -> Path:
    """Write ``fig`` (format from the suffix: .png, .pdf, .svg), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path
