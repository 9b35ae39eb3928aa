"""Real coding: images in, bytes out, and back. bpp always comes from the bytes.

``encode`` pads an image to a multiple of 64 (replicating its border, which costs fewer bits
than zeros), runs the codec's ``compress`` (CompressAI's rANS coder), and wraps the streams in
the ``.feds`` container (:mod:`feds_lab.bitstream`); ``decode`` checks the container, decodes,
and crops back to the original size.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .bitstream import Bitstream, shape_from_json
from .checkpoint import fingerprint
from .errors import BitstreamError
from .models.entropy import PAD_MULTIPLE


# --- images --------------------------------------------------------------------------------------

def load_image(path: str | os.PathLike, notes: list[str] | None = None) -> torch.Tensor:
    """Read any image Pillow reads as a (1, 3, H, W) float tensor in [0, 1].

    Grayscale, palette, CMYK, alpha and 16-bit images are converted to 8-bit RGB by the one reader
    the data sets use too (:func:`feds_lab.data.read_image`); each conversion is appended to
    ``notes`` (when given) so that callers can tell the user.
    """
    from .data import read_image, to_float

    return to_float(read_image(path, notes)).unsqueeze(0)


def tensor_to_pil(x: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) or (3, H, W) in [0, 1] -> 8-bit RGB image."""
    if x.dim() == 4:
        x = x[0]
    a = x.detach().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(a, "RGB")


def save_image(x: torch.Tensor, path: str | os.PathLike) -> Path:
    path = Path(path)
    _atomic_write(path, lambda f: tensor_to_pil(x).save(f, format=_pil_format(path)))
    return path


def _pil_format(path: Path) -> str:
    ext = path.suffix.lower().lstrip(".")
    return {"jpg": "JPEG", "jpeg": "JPEG", "tif": "TIFF", "tiff": "TIFF", "webp": "WEBP", "bmp": "BMP", "ppm": "PPM"}.get(ext, "PNG")


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    _atomic_write(path, lambda f: f.write(data))
    return path


# --- padding -------------------------------------------------------------------------------------

def pad_image(x: torch.Tensor, multiple: int = PAD_MULTIPLE) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Pad right and bottom to a multiple of ``multiple`` by replicating the border.

    Returns the padded tensor and ``pad`` = (left, right, top, bottom) for :func:`crop_image`.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    pad = (0, pw, 0, ph)
    if ph == 0 and pw == 0:
        return x, pad
    # 'replicate' works for any size, including images smaller than the padding
    return F.pad(x, pad, mode="replicate"), pad


def crop_image(x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    left, right, top, bottom = pad
    h, w = x.shape[-2:]
    return x[..., top : h - bottom, left : w - right]


# --- coding --------------------------------------------------------------------------------------

@dataclass
class EncodeResult:
    data: bytes  # the whole .feds file
    height: int
    width: int
    seconds: float
    stream_bytes: int = 0  # the entropy-coded payload alone, without the container's header

    @property
    def bpp(self) -> float:
        """Bits per pixel of the whole file: what a user stores or sends."""
        return 8.0 * len(self.data) / (self.height * self.width)

    @property
    def stream_bpp(self) -> float:
        return 8.0 * self.stream_bytes / (self.height * self.width)


@dataclass
class DecodeResult:
    x_hat: torch.Tensor  # (1, 3, H, W) in [0, 1], cropped to the original size
    seconds: float
    notes: list[str] = field(default_factory=list)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def encode(model: torch.nn.Module, x: torch.Tensor) -> EncodeResult:
    """Compress one image (1, 3, H, W) in [0, 1] to a ``.feds`` file's bytes.

    The model must have been ``update()``-d (checkpoints from :mod:`feds_lab.checkpoint` are).
    """
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise ValueError(f"encode takes one RGB image (1, 3, H, W), got {tuple(x.shape)}")
    device = next(model.parameters()).device
    fp = fingerprint(model)
    h, w = x.shape[-2:]
    _sync(device)
    t0 = time.perf_counter()
    xp, _ = pad_image(x.to(device))
    out = model.compress(xp)
    streams = [s[0] for s in out["strings"]]
    data = Bitstream(fp, h, w, streams, out["shape"]).to_bytes()
    _sync(device)
    return EncodeResult(data, h, w, time.perf_counter() - t0, sum(map(len, streams)))


@torch.no_grad()
def decode(model: torch.nn.Module, data: bytes) -> DecodeResult:
    """Decode a ``.feds`` file's bytes with the model that wrote it."""
    bs = Bitstream.from_bytes(data)
    fp = fingerprint(model)
    if bs.fingerprint != fp:
        raise BitstreamError(
            f"this file was written by another model (fingerprint {bs.fingerprint}); "
            f"the checkpoint given has fingerprint {fp}"
        )
    shape = shape_from_json(bs.shape)
    _check_shape(shape, bs.height, bs.width)
    device = next(model.parameters()).device
    _sync(device)
    t0 = time.perf_counter()
    try:
        x_hat = model.decompress([[s] for s in bs.streams], shape)["x_hat"]
    except (RuntimeError, ValueError, AssertionError, IndexError) as e:
        raise BitstreamError(f"the streams do not decode with this model ({type(e).__name__}: {e})") from None
    ph, pw = (-bs.height) % PAD_MULTIPLE, (-bs.width) % PAD_MULTIPLE
    if tuple(x_hat.shape[-2:]) != (bs.height + ph, bs.width + pw):
        raise BitstreamError(f"decoded size {tuple(x_hat.shape[-2:])} does not match the header's {bs.height}x{bs.width}")
    x_hat = crop_image(x_hat, (0, pw, 0, ph)).clamp_(0, 1)
    _sync(device)
    return DecodeResult(x_hat.cpu(), time.perf_counter() - t0)


def _check_shape(shape, h: int, w: int) -> None:
    """No latent dimension may exceed the padded image: refuses headers that would allocate wildly."""
    limit = max(h, w) + PAD_MULTIPLE

    def walk(s):
        if isinstance(s, dict):
            for v in s.values():
                walk(v)
        elif isinstance(s, tuple):
            for v in s:
                walk(v)
        elif not isinstance(s, int) or not 0 < s <= max(limit, 4096):
            raise BitstreamError(f"implausible latent shape in the header: {shape}")

    walk(shape)
