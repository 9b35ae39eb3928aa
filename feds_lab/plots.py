"""Figures and tables of results: RD curves, BD-rate tables, parameters and speed.

Every function returns a :class:`matplotlib.figure.Figure` (tables: a pandas DataFrame and its
figure). Figures are built without ``pyplot``, so nothing accumulates in global state and a
notebook shows each figure once, where it is returned; :func:`save_figure` writes one to disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .evaluation.results import METRIC_LABELS, load_results, rd_curve

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
    xlim: tuple[float, float] | str | None = "auto",
) -> Figure:
    """Rate-distortion curves, one line per results file (or dict), points sorted by bpp.

    metric: ``"psnr"`` (PSNR, dB) or ``"ms-ssim"`` (MS-SSIM in dB, from the mean MS-SSIM).
    Classical codecs are dashed. ``xlim="auto"`` zooms on the learned codecs when the classical sweeps
    reach more than twice as far (short-budget models live at the bottom of JPEG's range, and a full
    axis would squash them into a corner); the axis then says that the anchors go on. ``None``: the
    full range; a tuple: that bpp range.
    """
    fig, ax = _axes(ax)
    loaded = [load_results(r) for r in results]
    if not loaded:
        raise ValueError("rd_curves needs at least one results file")
    # tab10 repeats after ten curves: past that, tab20's twenty (a study draws a dozen variants and more)
    colors = sns.color_palette("tab10" if len(loaded) <= 10 else "tab20", n_colors=max(len(loaded), 1))
    learned_max, classical_max, shown = 0.0, 0.0, []
    for i, (color, res) in enumerate(zip(colors, loaded)):
        bpp, quality = rd_curve(res, metric)
        order = np.argsort(bpp)
        name = str(res.get("name", f"curve {i + 1}"))
        dashed = any(name.startswith(c) for c in CLASSICAL)
        if dashed:
            classical_max = max(classical_max, float(bpp.max()))
        else:
            learned_max = max(learned_max, float(bpp.max()))
        shown.append((bpp, quality))
        ax.plot(bpp[order], quality[order], marker="o", markersize=4, linewidth=1.5,
                linestyle="--" if dashed else "-", color=color, label=name)
    xlabel = RATE_LABEL
    if isinstance(xlim, str):
        if xlim != "auto":
            raise ValueError(f"xlim must be 'auto', None or (low, high), got {xlim!r}")
        xlim = (0.0, 1.5 * learned_max) if learned_max and classical_max > 2 * learned_max else None
        if xlim:
            xlabel += f"; zoomed on the learned codecs, the anchors go on to {classical_max:.2g} bpp"
    if xlim:
        inside = np.concatenate([q[(b >= xlim[0]) & (b <= xlim[1])] for b, q in shown])
        ax.set_xlim(*xlim)
        if inside.size:
            pad = 0.05 * max(float(inside.max() - inside.min()), 1.0)
            ax.set_ylim(float(inside.min()) - pad, float(inside.max()) + pad)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(METRIC_LABELS[metric])
    ax.set_title(title or f"Rate-distortion: {METRIC_LABELS[metric].split(' (')[0]} against rate")
    ax.grid(True, alpha=0.3)
    if len(loaded) > 8:  # a long legend inside the axes hides the curves
        fig.set_figwidth(fig.get_figwidth() + 3.5)
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, borderaxespad=0)
    else:
        ax.legend(loc="best")
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
    ``ci_low``/``ci_high`` (%), ``failed``, ``coverage`` (share of the test curve's quality range the
    BD figure averages over), ``metric`` (as ``feds_lab.evaluation.bdrate.bd_table`` returns them).
    """
    names = {"test": "test", "anchor": "anchor", "metric": "metric", "bd_rate": "BD-rate (%)",
             "bd_quality": "BD-quality (dB)", "ci_low": "CI low (%)", "ci_high": "CI high (%)",
             "failed": "failed resamples", "coverage": "overlap (% of test)"}
    df = pd.DataFrame(list(rows))
    if "coverage" in df.columns:
        df["coverage"] = 100 * df["coverage"]
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


# --- training, entropy and distillation figures (notebooks 01-03) ----------------------------------

STAGE_COLOURS = {"rate_distortion": "#ffffff", "feature_alignment": "#dbe9f6", "channel_distillation": "#fde2c8",
                 "fine_tuning": "#dff0d8"}


def _read_runs(runs: dict[str, str | Path]) -> dict[str, list[dict]]:
    from .training import read_metrics

    return {label: read_metrics(path) for label, path in runs.items()}


def _train_rows(rows: list[dict]) -> list[dict]:
    """The "train" lines that carry losses: a line whose steps were all skipped (non-finite) has none."""
    return [r for r in rows if r.get("kind") == "train" and "loss" in r]


def _smooth(values, k: int = 9):
    v = np.asarray(values, dtype=float)
    if len(v) < 3 * k:
        return v
    kernel = np.ones(k) / k
    pad = np.pad(v, (k // 2, k - 1 - k // 2), mode="edge")
    return np.convolve(pad, kernel, mode="valid")


def training_curves(runs: dict[str, str | Path], title: str = "Training") -> Figure:
    """Loss terms per step (left: total loss; middle: rate, bpp; right: validation PSNR vs real bpp).

    ``runs`` maps a label to a run folder holding ``metrics.jsonl``.
    """
    data = _read_runs(runs)
    fig, axes = _three_panels()
    for i, (label, rows) in enumerate(data.items()):
        c = f"C{i}"
        tr = _train_rows(rows)
        val = [r for r in rows if r.get("kind") == "val"]
        if tr:
            steps = [r["step"] for r in tr]
            axes[0].plot(steps, _smooth([r["loss"] for r in tr]), color=c, label=label)
            axes[1].plot(steps, _smooth([r["bpp_loss"] for r in tr]), color=c, label=label)
        if val:
            axes[2].plot([r["bpp"] for r in val], [r["psnr"] for r in val], "o-", color=c, ms=3, label=label)
            axes[2].annotate(f"step {val[-1]['step']}", (val[-1]["bpp"], val[-1]["psnr"]), fontsize=7,
                             xytext=(3, 3), textcoords="offset points")
    axes[0].set(title="total loss (smoothed)", xlabel="step", ylabel="loss (bpp + λ·255²·MSE)", yscale="log")
    axes[1].set(title="rate term", xlabel="step", ylabel="rate (bpp, likelihood)")
    axes[2].set(title="validation, real bitstreams", xlabel="bpp (bits per pixel, from bytes)", ylabel="PSNR (dB)")
    return _finish_panels(fig, axes, title)


def _three_panels() -> tuple[Figure, Any]:
    fig = Figure(figsize=(15, 4.2), layout="constrained")
    return fig, fig.subplots(1, 3)


def _finish_panels(fig: Figure, axes, title: str) -> Figure:
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def zoo_curves(entries: Sequence[dict[str, Any]], title: str = "The zoo's teachers: validation while training") -> Figure:
    """The validation curves shipped in zoo records (``feds_lab.zoo.entries``): PSNR and real bpp by step,
    and PSNR against bpp. A fine-tuned lambda's curve starts where its chain's training ended; the long
    run its chain starts from is drawn (grey, dashed) from the curve its record carries, shipped or not."""
    from .zoo import chain

    fig, axes = _three_panels()
    shipped = {e["lmbda"] for e in entries}
    drawn = set()
    for e in entries:  # the long runs first, once each
        src = e["record"].get("source_curve")
        if not src or src["lmbda"] in drawn or src["lmbda"] in shipped:
            continue
        drawn.add(src["lmbda"])
        curve = np.asarray(src["curve"] or [], dtype=float).reshape(-1, 3)
        label, grey = f"λ={src['lmbda']:g} (long run, the source; not shipped)", str(min(0.75, 0.25 * len(drawn)))
        axes[0].plot(curve[:, 0], curve[:, 1], "--", color=grey, label=label)
        axes[1].plot(curve[:, 0], curve[:, 2], "--", color=grey, label=label)
        axes[2].plot(curve[:, 2], curve[:, 1], "--", color=grey, alpha=0.6, label=label)
    for i, e in enumerate(entries):
        curve = np.asarray(e["record"].get("val_curve") or [], dtype=float).reshape(-1, 3)
        if not len(curve):
            continue
        links = chain(e)
        plan = e["record"].get("zoo") or {}
        # the long run's steps, then every fine-tune before this one along the chain
        offset = (plan.get("steps", 0) + (len(links) - 1) * plan.get("finetune_steps", 0)) if links else 0
        steps = curve[:, 0] + offset
        label, c = f"λ={e['lmbda']:g}" + (" (fine-tuned)" if links else ""), f"C{i}"
        axes[0].plot(steps, curve[:, 1], "o-", ms=2, color=c, label=label)
        axes[1].plot(steps, curve[:, 2], "o-", ms=2, color=c, label=label)
        axes[2].plot(curve[:, 2], curve[:, 1], "-", color=c, alpha=0.4)
        axes[2].plot(curve[-1:, 2], curve[-1:, 1], "o", color=c, label=label)
    axes[0].set(title="validation PSNR", xlabel="step (fine-tuned: after their sources')", ylabel="PSNR (dB)")
    axes[1].set(title="validation rate, real bitstreams", xlabel="step", ylabel="bpp (from bytes)")
    axes[2].set(title="the path in the RD plane (dot: shipped)", xlabel="bpp", ylabel="PSNR (dB)")
    return _finish_panels(fig, axes, title)


def entropy_heatmap(H, image_names, title: str = "Channel entropy") -> Figure:
    """``H`` (M, images) bits per element; rows sorted by mean entropy, highest first."""
    import seaborn as sns

    H = np.asarray(H.detach().cpu() if hasattr(H, "detach") else H, dtype=float)
    order = np.argsort(-H.mean(1))
    fig = Figure(figsize=(max(5, 1.1 * H.shape[1] + 3), max(4, 0.12 * H.shape[0] + 2)), layout="constrained")
    ax = fig.add_subplot()
    sns.heatmap(H[order], ax=ax, cmap="magma", xticklabels=list(image_names),
                yticklabels=[str(i) for i in order] if H.shape[0] <= 64 else False,
                cbar_kws={"label": "entropy H_c (bits/element)"})
    ax.set(title=title, xlabel="image", ylabel="latent channel (sorted by mean entropy)")
    return fig


def sorted_entropy(h, title: str = "Channels sorted by entropy") -> Figure:
    """Mean entropy per channel (M,), sorted, with the cumulative share of all bits."""
    h = np.asarray(h.detach().cpu() if hasattr(h, "detach") else h, dtype=float)
    s = np.sort(h)[::-1]
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(np.arange(len(s)), s, color="C0")
    ax.set(xlabel="channel rank (by entropy)", ylabel="entropy H_c (bits/element)", title=title)
    ax2 = ax.twinx()
    share = np.cumsum(s) / max(s.sum(), 1e-12) * 100
    ax2.plot(np.arange(len(s)), share, color="C3", label="cumulative share of bits")
    ax2.set(ylabel="cumulative share of bits (%)", ylim=(0, 101))
    ax2.legend(loc="center right")
    ax.grid(alpha=0.3)
    return fig


def channel_weights_by_tau(h, taus=(0.25, 0.5, 1.0, 2.0, 4.0), title: str | None = None) -> Figure:
    """The distillation weights w = M softmax(H / tau) per channel (sorted by entropy), per tau, plus linear."""
    import torch

    from .losses import channel_weights

    h = torch.as_tensor(np.asarray(h.detach().cpu() if hasattr(h, "detach") else h, dtype=np.float32))
    order = torch.argsort(h, descending=True)
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.add_subplot()
    for i, tau in enumerate(taus):
        ax.plot(channel_weights(h, "softmax", tau)[order].numpy(), color=matplotlib.colormaps["viridis"](i / max(1, len(taus) - 1)),
                label=f"softmax, τ={tau:g} bits")
    ax.plot(channel_weights(h, "linear")[order].numpy(), "k--", label="linear (w ∝ H)")
    ax.axhline(1.0, color="grey", lw=0.8, ls=":", label="uniform")
    ax.set(xlabel="channel rank (by entropy)", ylabel="weight w_c (mean 1)", yscale="log",
           title=title or "Channel-distillation weights at several temperatures")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def channel_ablation_bars(table, title: str = "Channel ablation") -> Figure:
    """``table``: rows with image, variant, bpp, psnr (feds_lab.analysis.channel_ablation_table)."""
    import pandas as pd

    df = pd.DataFrame(table)
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, col, label in ((axes[0], "bpp", "bpp (bits per pixel, real coding)"), (axes[1], "psnr", "PSNR (dB)")):
        piv = df.pivot_table(index="image", columns="variant", values=col, sort=False)
        piv.plot.bar(ax=ax, rot=30)
        ax.set(ylabel=label, xlabel="image", title=col)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def _shade_stages(ax, rows) -> None:
    spans: list[list] = []
    for r in rows:
        if spans and spans[-1][0] == r["stage"]:
            spans[-1][2] = r["step"]
        else:
            start = spans[-1][2] if spans else 0
            spans.append([r["stage"], start, r["step"]])
    for stage, a, b in spans:
        ax.axvspan(a, b, color=STAGE_COLOURS.get(stage, "#eeeeee"), alpha=0.6, lw=0)
        ax.text((a + b) / 2, 0.98, stage.replace("_", " "), transform=ax.get_xaxis_transform(), ha="center",
                va="top", fontsize=7, color="#555555")


def stage_curves(runs: dict[str, str | Path], title: str = "Training by stage") -> Figure:
    """Per run: the rate-distortion term L_RD (solid) and the total loss (dotted) against step, with stages shaded."""
    data = _read_runs(runs)
    fig = Figure(figsize=(14, 4.5), layout="constrained")
    (ax, axv) = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    shaded = False
    for i, (label, rows) in enumerate(data.items()):
        tr = _train_rows(rows)
        if not tr:
            continue
        if not shaded and any(r["stage"] in ("feature_alignment", "channel_distillation") for r in tr):
            _shade_stages(ax, tr)
            shaded = True
        steps = [r["step"] for r in tr]
        c = f"C{i % 10}"
        ax.plot(steps, _smooth([r.get("rd_loss", r["loss"]) for r in tr]), color=c, label=f"{label}: L_RD")
        if any("feat_loss" in r or "ent_loss" in r for r in tr):
            ax.plot(steps, _smooth([r["loss"] for r in tr]), color=c, ls=":", lw=1, label=f"{label}: total")
        val = [r for r in rows if r.get("kind") == "val"]
        if val:
            axv.plot([r["bpp"] for r in val], [r["psnr"] for r in val], "o-", ms=3, color=c, label=label)
    ax.set(xlabel="step", ylabel="loss (smoothed)", yscale="log", title="losses; shaded: FEDS stages")
    axv.set(xlabel="bpp (bits per pixel, from bytes)", ylabel="PSNR (dB)", title="validation, real bitstreams")
    for a in (ax, axv):
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7, ncol=2 if a is ax else 1)
    fig.suptitle(title)
    return fig


def feature_alignment_by_tap(runs: dict[str, str | Path], title: str = "Feature-alignment error by tap") -> Figure:
    """Unweighted per-tap alignment loss (``feat_<tap>`` in metrics.jsonl) against step, one panel per run."""
    data = _read_runs(runs)
    n = max(1, len(data))
    fig = Figure(figsize=(4.5 * n, 3.8), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False, sharey=True)
    for ax, (label, rows) in zip(axes[0], data.items()):
        tr = _train_rows(rows)
        taps = sorted({k[5:] for r in tr for k in r if k.startswith("feat_") and k != "feat_loss"})
        for j, tap in enumerate(taps):
            pts = [(r["step"], r[f"feat_{tap}"]) for r in tr if f"feat_{tap}" in r]
            if pts:
                s, v = zip(*pts)
                ax.plot(s, _smooth(v), color=f"C{j}", label=tap)
        ax.set(title=label, xlabel="step", yscale="log")
        ax.grid(alpha=0.3)
        if taps:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no feature alignment in this run", ha="center", transform=ax.transAxes)
    axes[0][0].set_ylabel("attention-weighted MSE (adapted student vs teacher)")
    fig.suptitle(title)
    return fig


# --- the balance of the loss terms: read before trusting any distillation result -------------------
BALANCE_TERMS = (("rd", "L_RD"), ("w_feat", "α·L_feat"), ("w_ent", "β·L_ent"), ("w_out", "γ·L_out"))


def loss_balance(runs: dict[str, str | Path], title: str = "Loss balance by stage") -> Figure:
    """Per run (one column each): top, each term's value as it enters the loss (L_RD; coefficient
    times term); bottom, each term's gradient norm on the student's weights (the ``grad`` lines of
    metrics.jsonl), stages shaded. A distillation term whose gradient dwarfs L_RD's steers the
    student away from its own rate-distortion optimum; one far below it does nothing."""
    data = _read_runs(runs)
    data = {k: v for k, v in data.items() if any(r.get("kind") == "grad" for r in v)} or data
    n = max(1, len(data))
    fig = Figure(figsize=(4.8 * n, 6.5), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False, sharex="col")
    for col, (label, rows) in enumerate(data.items()):
        tr = _train_rows(rows)
        gr = [r for r in rows if r.get("kind") == "grad"]
        ax_v, ax_g = axes[0][col], axes[1][col]
        for ax in (ax_v, ax_g):
            if tr:
                _shade_stages(ax, tr)
        steps = [r["step"] for r in tr]
        ax_v.plot(steps, _smooth([r.get("rd_loss", r["loss"]) for r in tr]), color="C0", label="L_RD")
        for j, (key, name) in enumerate(BALANCE_TERMS[1:], start=1):
            term = key[2:]
            pts = [(r["step"], r[key] * r[f"{term}_loss"]) for r in tr if key in r and f"{term}_loss" in r]
            if pts:
                s, v = zip(*pts)
                ax_v.plot(s, _smooth(v), color=f"C{j}", label=name)
        for j, (key, name) in enumerate(BALANCE_TERMS):
            pts = [(r["step"], r[key]) for r in gr if key in r and r[key] > 0]
            if pts:
                s, v = zip(*pts)
                ax_g.plot(s, v, "o-", ms=2.5, lw=1, color=f"C{j}", label=f"‖∇ {name}‖")
        ax_v.set(title=label, ylabel="term in the loss", yscale="log")
        ax_g.set(xlabel="step", ylabel="gradient norm, student weights", yscale="log")
        for ax in (ax_v, ax_g):
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        if not gr:
            ax_g.text(0.5, 0.5, "no gradient norms logged\n(no distillation, or grad_log_every=0)",
                      ha="center", va="center", transform=ax_g.transAxes, fontsize=8)
    fig.suptitle(title)
    return fig


def tune_figure(summary: dict[str, Any], title: str = "FEDS search on tune-val") -> Figure:
    """A search (feds_lab.tune.summary): left, each trial's BD-rate against scratch and the
    best so far (dashed: variants scored on the same scale, ``scored``); middle, PSNR gain at matched rate of every trial, pruned ones included; right,
    parameter importances (when the search has enough finished trials)."""
    rows = summary["trials"]
    fig = Figure(figsize=(15, 4.2), layout="constrained")
    ax_h, ax_g, ax_i = fig.subplots(1, 3)
    done = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    if done:
        xs, ys = [r["number"] for r in done], [r["value"] for r in done]
        ax_h.plot(xs, ys, "o", color="C0", label="trial")
        ax_h.plot(xs, np.minimum.accumulate(ys), "-", color="C3", label="best so far")
        ax_h.axhline(0, color="k", lw=0.8)
    for k, (name, scored) in enumerate((summary.get("scored") or {}).items()):  # variants on the same scale
        if scored.get("value") is not None:
            ax_h.axhline(scored["value"], color=f"C{k + 4}", ls="--", lw=1, label=f"{name} (not a trial)")
    if ax_h.get_legend_handles_labels()[0]:
        ax_h.legend(fontsize=8)
    ax_h.set(xlabel="trial", ylabel="BD-rate vs scratch (%), lower is better", title="objective")
    for state, marker, colour in (("COMPLETE", "o", "C0"), ("PRUNED", "x", "C7")):
        pts = [(r["number"], r["psnr_gain"]) for r in rows if r["state"] == state and r["psnr_gain"] is not None]
        if pts:
            ax_g.plot(*zip(*pts), marker, color=colour, label=state.lower())
    ax_g.axhline(0, color="k", lw=0.8)
    ax_g.set(xlabel="trial", ylabel="PSNR gain at matched rate (dB)", title="against scratch, tune-val")
    if ax_g.get_legend_handles_labels()[0]:
        ax_g.legend(fontsize=8)
    imp = summary.get("importances") or {}
    if imp:
        names = list(imp)[::-1]
        ax_i.barh(names, [imp[n] for n in names], color="C2")
        ax_i.set(xlabel="importance (Optuna, PED-ANOVA)", title="which settings matter")
    else:
        ax_i.text(0.5, 0.5, "too few finished trials\nfor importances", ha="center", va="center",
                  transform=ax_i.transAxes)
        ax_i.set_axis_off()
    for ax in (ax_h, ax_g):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig


def learning_curve(table: pd.DataFrame, title: str = "FEDS against scratch by budget",
                   pooled: pd.DataFrame | None = None) -> Figure:
    """feds_lab.evaluation.learning_curve.learning_curve_table: BD-rate of FEDS against scratch (95 %
    bootstrap interval) by FEDS's budget, at equal steps (solid) and at equal wall-clock (dashed), each
    point labelled with the scratch budget it was matched to; one colour per FEDS variant when the table
    has several. Below 0, FEDS needs fewer bits than scratch.

    ``pooled``: feds_lab.evaluation.learning_curve.pooled_by_budget, a budget's seeds pooled against
    scratch's (``variant``, ``steps``, ``bd_rate``, ``ci_low``, ``ci_high``, ``n_test``, ``n_anchor``); the rows
    of the curve's variants are drawn as red diamonds at their budget, with the interval over seeds and
    images: the curve's other points are one seed each."""
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    table = table if "variant" in table.columns else table.assign(variant="feds")
    several = table["variant"].nunique() > 1
    groups = list(table.groupby(["variant", "comparison"], sort=False))
    for k, ((variant, kind), rows) in enumerate(groups):
        wall = kind != "equal steps"
        colour = f"C{k}" if not several else f"C{list(dict.fromkeys(table['variant'])).index(variant)}"
        rows = rows.sort_values("steps")
        ok = rows[rows["bd_rate"].notna()]
        x = ok["steps"] * (1.03 ** (k - (len(groups) - 1) / 2))  # side by side, not on top of each other
        err = None
        if {"ci_low", "ci_high"} <= set(ok.columns) and ok["ci_low"].notna().all():
            err = [ok["bd_rate"] - ok["ci_low"], ok["ci_high"] - ok["bd_rate"]]
        ax.errorbar(x, ok["bd_rate"], yerr=err, marker="s" if wall else "o", capsize=3, color=colour,
                    ls="--" if wall and several else "-", label=f"{variant}, {kind}" if several else kind)
        for xi, (_, r) in zip(x, ok.iterrows()):
            ax.annotate(f"vs {int(r['anchor_steps'])}", (xi, r["bd_rate"]), textcoords="offset points",
                        xytext=(5, -11 if wall else 5), fontsize=7, color=colour)
        for _, r in rows[rows["bd_rate"].isna()].iterrows():  # no scratch ladder to match, or no BD figure
            label = "no match" if pd.isna(r["anchor_steps"]) else "not computable"
            # one column of text per comparison, so that two at one budget do not print over each other
            ax.annotate(f"{label} ({'wall-clock' if wall else 'steps'})", (r["steps"], 0), textcoords="offset points",
                        xytext=(9 * (k - (len(groups) - 1) / 2), 3), ha="center", fontsize=7, color=colour, rotation=90)
    drawn = False
    for _, r in (pooled if pooled is not None else pd.DataFrame()).iterrows():
        if r["variant"] not in set(table["variant"]) or not np.isfinite(r["bd_rate"]):
            continue
        x = r["steps"] * 1.03 ** ((len(groups) + 4) / 2)  # beside the one-seed points
        ax.errorbar([x], [r["bd_rate"]], yerr=[[r["bd_rate"] - r["ci_low"]], [r["ci_high"] - r["bd_rate"]]], fmt="D",
                    ms=7, capsize=4, color="C3", lw=2, label=None if drawn else "equal steps, seeds pooled")
        ax.annotate(f"{int(r['n_test'])} vs {int(r['n_anchor'])} seeds", (x, r["bd_rate"]), textcoords="offset points",
                    xytext=(6, 6), fontsize=7, color="C3")
        drawn = True
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("log", base=2)
    steps = sorted(table["steps"].unique())
    ax.set_xlim(steps[0] / 1.25, steps[-1] * 1.25)  # also when no row has a figure (nothing else to scale by)
    ax.set_xticks(steps, [str(int(s)) for s in steps])
    ax.set(xlabel="FEDS student budget (steps per λ); 'vs N': the scratch budget compared",
           ylabel="BD-rate of FEDS vs scratch (%), lower is better", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def seed_comparison(table: pd.DataFrame, title: str = "Each seed against scratch, and all seeds pooled") -> Figure:
    """feds_lab.evaluation.seeds.seed_table: BD-rate against the anchor of each seed's pair (circles, 95 %
    bootstrap over images) and of the seeds pooled (a diamond, 95 % bootstrap over seeds and images), one
    block of the plot per (variant, anchor) (a learning curve's budget, ``feds@600``, is its own block,
    against scratch at that budget; a variant of the reference has a second block against it). Below 0
    the variant needs fewer bits than its anchor."""
    if "anchor_group" not in table.columns:  # a table from before the column: every row against scratch
        table = table.assign(anchor_group="scratch")
    blocks, top, ticks = [], 0.0, []
    for variant, group in dict.fromkeys(zip(table["variant"], table["anchor_group"])):  # a block per pair of groups
        rows = table[(table["variant"] == variant) & (table["anchor_group"] == group)]
        seeds = rows[(rows["comparison"] != "pooled") & rows["bd_rate"].notna()]
        blocks.append((top, rows, seeds))
        pooled = rows[rows["comparison"] == "pooled"]
        anchor = str(pooled["anchor"].iloc[0]).split(" (")[0] if len(pooled) else "scratch"
        ticks.append((top, f"{variant}\nvs {anchor}"))
        top += 0.5 * len(seeds) + 1.6  # the diamond, half a line per seed, a gap
    fig = Figure(figsize=(7.5, 1.6 + 0.4 * top), layout="constrained")
    ax = fig.subplots()
    for k, (y0, rows, ok) in enumerate(blocks):
        pooled = rows[rows["comparison"] == "pooled"]
        y = y0 + 0.7 + 0.5 * np.arange(len(ok))
        err = None
        if {"ci_low", "ci_high"} <= set(ok.columns) and ok["ci_low"].notna().all():
            err = [ok["bd_rate"] - ok["ci_low"], ok["ci_high"] - ok["bd_rate"]]
        ax.errorbar(ok["bd_rate"], y, xerr=err, fmt="o", ms=4, capsize=2, color="C0", alpha=0.8,
                    label="one seed vs the same seed of its anchor (images)" if k == 0 else None)
        for yi, (_, r) in zip(y, ok.iterrows()):
            ax.annotate(f"s{r['seed']}", (r["bd_rate"], yi), textcoords="offset points", xytext=(4, 2), fontsize=7)
        for _, r in pooled.iterrows():
            if np.isfinite(r["bd_rate"]):
                ax.errorbar([r["bd_rate"]], [y0], xerr=[[r["bd_rate"] - r["ci_low"]], [r["ci_high"] - r["bd_rate"]]],
                            fmt="D", ms=7, capsize=4, color="C3", lw=2,
                            label="all seeds pooled (seeds and images)" if k == 0 else None)
                ax.annotate(f"{r['bd_rate']:+.1f} % [{r['ci_low']:+.1f}, {r['ci_high']:+.1f}], "
                            f"wins {int(r['wins'])}/{int(r['pairs'])}", (r["ci_high"], y0),
                            textcoords="offset points", xytext=(8, 0), va="center", fontsize=8, color="C3")
            else:
                ax.annotate("pooled: not computable", (0, y0), fontsize=8, color="C3")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks([t for t, _ in ticks], [label for _, label in ticks], fontsize=8)
    ax.set_ylim(top - 0.9, -0.6)
    ax.set(xlabel="BD-rate against the anchor each block names (%, PSNR), lower is better", title=title)
    ax.grid(alpha=0.3, axis="x")
    fig.legend(fontsize=8, loc="outside lower center", ncols=2)
    return fig
