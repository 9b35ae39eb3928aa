"""Classical anchors through Pillow: JPEG, WebP, AVIF and JPEG 2000, in the results format.

Each codec is swept over its quality setting; one RD point per setting, averaged over the images.
Every image is encoded to bytes in memory, decoded back, and measured like a learned codec: bpp
from the byte length of the whole file (container headers included, as for our own bitstreams),
PSNR and MS-SSIM on 8-bit RGB, encode and decode times in seconds (after one untimed warm-up).

The settings are Pillow's, written into each results file's ``meta``:

======== ========================== ===========================================================
codec    swept                      fixed
======== ========================== ===========================================================
JPEG     quality 1, 3, 5..90        optimize=True (optimal Huffman tables), 4:2:0 (Pillow default)
WebP     quality 0..90              method=6 (slowest, best)
AVIF     quality 0..90              speed=6, 4:2:0 (Pillow defaults)
JPEG2000 target bpp 0.1..2          quality_mode="rates" with ratio 24 / bpp, 9/7 wavelet
======== ========================== ===========================================================

The sweeps span roughly 0.1 to 2 bpp on photographs (the range of the learned models). JPEG reaches
down to quality 1 because short-budget learned models sit at 19-24 dB, where JPEG's quality 5 (about
23.6 dB on the study's photographs) would leave almost no overlap to compare over; quality 2 is left
out because libjpeg clamps its tables to the same bytes as quality 1 (a repeated point is not a curve).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import PIL
import torch
from PIL import Image, features
from tqdm.auto import tqdm

from ..errors import FedsLabError
from ..run_folder import anchor_results_name
from .evaluate import Image as EvalImage
from .results import ResultsError, make_results, save_results
from .metrics import image_quality


class CodecError(FedsLabError, ValueError):
    """A codec name is unknown, or this Pillow build cannot encode it."""


@dataclass(frozen=True)
class Codec:
    """A Pillow codec and the sweep that traces its RD curve."""

    name: str  # as it appears in results and plots (CompressAI's plot dashes JPEG/WebP/JPEG2000)
    pil_format: str
    feature: str  # PIL.features id that says whether this Pillow build has it
    param: str  # what the sweep varies
    sweep: tuple[float, ...]
    options: Callable[[float], dict[str, Any]] = field(compare=False)


CODECS: dict[str, Codec] = {
    "jpeg": Codec("JPEG", "JPEG", "jpg", "quality", (1, 3, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90),
                  lambda q: {"quality": int(q), "optimize": True}),
    "webp": Codec("WebP", "WEBP", "webp", "quality", (0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90),
                  lambda q: {"quality": int(q), "method": 6}),
    "avif": Codec("AVIF", "AVIF", "avif", "quality", (0, 10, 20, 30, 40, 50, 60, 70, 80, 90),
                  lambda q: {"quality": int(q), "speed": 6}),
    # OpenJPEG's "rates" are compression ratios against the raw 24-bit RGB image
    "jpeg2000": Codec("JPEG2000", "JPEG2000", "jpg_2000", "target_bpp",
                      (0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0),
                      lambda bpp: {"quality_mode": "rates", "quality_layers": [24 / bpp], "irreversible": True}),
}


def available_codecs() -> list[str]:
    """The codecs of :data:`CODECS` that this Pillow build can encode."""
    return [key for key, codec in CODECS.items() if features.check(codec.feature)]


def get_codec(key: str) -> Codec:
    key = key.strip().lower().replace(" ", "").replace("-", "")
    key = {"jpg": "jpeg", "j2k": "jpeg2000", "jp2": "jpeg2000"}.get(key, key)
    if key not in CODECS:
        raise CodecError(f"unknown codec {key!r}; known: {list(CODECS)}")
    if not features.check(CODECS[key].feature):
        raise CodecError(f"this Pillow build ({PIL.__version__}) cannot encode {CODECS[key].name}")
    return CODECS[key]


def to_pil(x: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) float in [0, 1] -> 8-bit RGB PIL image (round(clamp(x) * 255))."""
    array = torch.round(x.detach().float().clamp(0, 1)[0] * 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(array))


def from_pil(image: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image -> (1, 3, H, W) float in [0, 1]."""
    array = np.asarray(image.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0).float() / 255


def code_image(image: Image.Image, codec: Codec, value: float) -> tuple[bytes, Image.Image, float, float]:
    """Encode to bytes in memory and decode back: (file bytes, decoded RGB image, enc s, dec s)."""
    buffer = io.BytesIO()
    start = time.perf_counter()
    image.save(buffer, codec.pil_format, **codec.options(value))
    enc_s = time.perf_counter() - start
    data = buffer.getvalue()
    start = time.perf_counter()
    decoded = Image.open(io.BytesIO(data))
    decoded.load()
    decoded = decoded.convert("RGB")
    dec_s = time.perf_counter() - start
    return data, decoded, enc_s, dec_s


def evaluate_codec(
    codec: str | Codec,
    images: Sequence[EvalImage],
    sweep: Sequence[float] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """One codec over its sweep (or ``sweep``): a results dict, one RD point per setting.

    images: [(name, (1, 3, H, W) float in [0, 1])]. Rows carry ``image``, ``height``, ``width``,
    ``bytes``, ``bpp``, ``psnr-rgb``, ``ms-ssim-rgb``, ``ms-ssim-rgb-db``, ``encoding_time``,
    ``decoding_time``.
    """
    codec = get_codec(codec) if isinstance(codec, str) else codec
    sweep = tuple(sweep if sweep is not None else codec.sweep)
    if not images:
        raise ResultsError("no images to code")
    pil_images = [(name, to_pil(x)) for name, x in images]
    code_image(pil_images[0][1], codec, sweep[0])  # warm-up, untimed

    points = []
    for value in tqdm(sweep, desc=codec.name, disable=not progress, leave=False):
        rows = []
        for name, image in pil_images:
            data, decoded, enc_s, dec_s = code_image(image, codec, value)
            row = {"image": name, "height": image.height, "width": image.width, "bytes": len(data),
                   "bpp": 8 * len(data) / (image.height * image.width)}
            row.update(image_quality(from_pil(image), from_pil(decoded)))
            row.update({"encoding_time": enc_s, "decoding_time": dec_s})
            rows.append(row)
        points.append({"rows": rows, "setting": {codec.param: value, **_jsonable(codec.options(value))}})
    meta = {"codec": codec.name, "pillow": PIL.__version__, "swept": codec.param,
            "threads": torch.get_num_threads(), "images": [n for n, _ in images]}
    return make_results(codec.name, points, description=f"Pillow {PIL.__version__} {codec.name}, "
                        f"swept over {codec.param}", meta=meta)


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()}


def run_anchors(
    images: Sequence[EvalImage],
    codecs: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Every codec in ``codecs`` (default: all this Pillow has); with ``out_dir``, one
    ``<codec>.json`` each. Returns {codec key: results}."""
    keys = list(codecs) if codecs else available_codecs()
    chosen = {key: get_codec(key) for key in keys}  # fail on a bad name before coding anything
    results = {}
    for key, codec in tqdm(chosen.items(), desc="anchors", disable=not progress):
        results[key] = evaluate_codec(codec, images, progress=progress)
        if out_dir is not None:
            save_results(results[key], Path(out_dir) / anchor_results_name(codec.name))
    return results
