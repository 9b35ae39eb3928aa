"""Rate-distortion evaluation of learned codecs with real bitstreams.

One RD point is a model (one lambda) coded on a set of images::

    x ─ coding.encode ─► bytes ─ coding.decode ─► x_hat      bpp = 8 * len(bytes) / (H * W)
    x ─ pad ─ model.forward (eval) ─► likelihoods               bpp-estimate = sum(-log2 p) / (H * W)

H, W are the original image size (before padding to 64). The estimate sits beside the real rate,
never in its place; ``bpp-gap-percent`` = 100 * (bpp - estimate) / estimate is what coding for real
costs beyond the estimate: the file header, and the entropy coder's departures from -log2 p
(quantised CDF and scale tables, escape-coded tails). It can come out negative.

The results files these functions write (CompressAI's JSON format) are :mod:`.results`'s; its
functions are importable from here too, as they always were. Checkpoints become RD curves (through the
evaluation cache) in :mod:`.curves`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from .. import coding
from ..models.entropy import PAD_MULTIPLE
from .metrics import image_quality
from .results import (  # the results-file names, importable from here as before
    METRIC_KEYS,
    METRIC_LABELS,
    ResultsError,
    load_results,
    make_results,
    ms_ssim_db_array,
    paired_per_image,
    rd_curve,
    save_results,
    summarize,
)

__all__ = ["Image", "evaluate_model", "likelihood_bpp", "load_folder_images",
           "METRIC_KEYS", "METRIC_LABELS", "ResultsError", "load_results", "make_results", "ms_ssim_db_array",
           "paired_per_image", "rd_curve", "save_results", "summarize"]

Image = tuple[str, torch.Tensor]  # (name, (1, 3, H, W) float in [0, 1])


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
