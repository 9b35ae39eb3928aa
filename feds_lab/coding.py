"""Real coding: images in, bytes out, and back. bpp always comes from the bytes.

``encode`` pads an image to a multiple of 64 (replicating its border, which costs fewer bits
than zeros), runs the codec's ``compress`` (CompressAI's rANS coder), and wraps the streams in
the ``.feds`` container (:mod:`feds_lab.bitstream`); ``decode`` checks the container, decodes,
and crops back to the original size.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from .bitstream import Bitstream, shape_from_json
from .checkpoint import fingerprint
from .entropy_path import DEFAULT_PATH, PATHS, check_latent, coder, recording
from .errors import BitstreamError, CodingError, EntropyMismatchError, FedsLabError, OutputError, one_line
from .io import atomic_write
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


#: File name extensions a decoded image can be written as, and the Pillow format of each.
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP",
                 ".bmp": "BMP", ".ppm": "PPM"}


def image_format(path: str | os.PathLike) -> str:
    """The Pillow format for an output image's name; an unknown extension is an :class:`OutputError`."""
    ext = Path(path).suffix.lower()
    if ext not in IMAGE_FORMATS:
        raise OutputError(f"{path}: cannot tell the image format from {ext or 'a name without extension'!r}; "
                          f"use one of {', '.join(IMAGE_FORMATS)}")
    return IMAGE_FORMATS[ext]


def save_image(x: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write an image atomically, in the format its extension names, with the umask's file mode."""
    path = Path(path)
    fmt = image_format(path)
    return atomic_write(path, lambda f: tensor_to_pil(x).save(f, format=fmt))


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, data)


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
def encode(model: torch.nn.Module, x: torch.Tensor, path: int = DEFAULT_PATH) -> EncodeResult:
    """Compress one image (1, 3, H, W) in [0, 1] to a ``.feds`` file's bytes.

    The model must have been ``update()``-d (checkpoints from :mod:`feds_lab.checkpoint` are).
    Non-finite or absurd latents are refused (:class:`CodingError`) before the entropy coder runs.
    ``path`` is how the entropy parameters are computed (:mod:`feds_lab.entropy_path`; the file
    records it, with the digest of its symbols that the decoder must reproduce). On the CPU, the
    memory the encode needs (:func:`encode_memory`) must be available before it starts: otherwise a
    :class:`CodingError` says how much it needs and how much there is.
    """
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise ValueError(f"encode takes one RGB image (1, 3, H, W), got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise CodingError("the image holds non-finite values")
    device = next(model.parameters()).device
    h, w = x.shape[-2:]
    hp, wp = h + (-h) % PAD_MULTIPLE, w + (-w) % PAD_MULTIPLE
    free = _available_memory() if device.type == "cpu" else None
    if free is not None:  # before any work: an 81-megapixel photograph needs gigabytes
        need = encode_memory(model, hp, wp)
        if need > free:
            raise CodingError(f"coding this {w}x{h} image ({h * w / 1e6:.1f} megapixels) needs about "
                              f"{need / 2**30:.1f} GiB of memory; {max(free, 0) / 2**30:.1f} GiB are available "
                              "(code a smaller image, or use a machine with more memory)")
    fp = fingerprint(model)
    _sync(device)
    t0 = time.perf_counter()
    xp, _ = pad_image(x.to(device))
    c = coder(model, path, fp)
    with recording(c, "encode") as digest:
        out = c.compress(xp)
    streams = [s[0] for s in out["strings"]]
    data = Bitstream(fp, h, w, streams, out["shape"], path, digest.digest()).to_bytes()
    _sync(device)
    return EncodeResult(data, h, w, time.perf_counter() - t0, sum(map(len, streams)))


#: Working memory of the encoder's analysis transform, in float32 values per padded pixel, measured
#: (peak RSS of ``encode`` on one thread, 1-4 megapixels, tiny/small CNN, transformer and CompressAI
#: models): each stage holds about this many of its own feature maps at once, a convolution stage 4,
#: a window-attention stage 20 (queries, keys, values, attention rows, the MLP's 4x-wide hidden layer),
#: plus the image and its padded copy. Against the measurement: from 4 % under (tiny CNN student, 4
#: megapixels: 96 estimated, 100 bytes per pixel measured) to 1.7x over (CompressAI's tiny mbt2018-mean).
_CONV_MAPS, _ATTENTION_MAPS, _IMAGE_FLOATS = 4, 20, 8
_ENCODE_FIXED = 64 << 20  # bytes: the coder's tables, index buffers, the streams


def encode_memory(model: torch.nn.Module, hp: int, wp: int) -> int:
    """Bytes :func:`encode` needs for a padded ``hp`` x ``wp`` image (about: a guide, not a bound).

    From the model's feature widths (``config["feature_channels"]``: ga1..ga3 and y at x/2..x/16;
    192 channels where unknown) and where it has window attention (the transformer family's
    ``depths``, the CNN teacher's ``attention`` after x/4): the widest stage per pixel, times the
    feature maps such a stage holds at once."""
    cfg = getattr(model, "config", None) or {}
    channels = dict(cfg.get("feature_channels") or {})
    depths = cfg.get("depths")
    floats = 0.0
    for i, (name, stride) in enumerate((("ga1", 2), ("ga2", 4), ("ga3", 8), ("y", 16))):
        if isinstance(depths, (list, tuple)) and i < len(depths):
            attention = bool(depths[i])
        else:
            attention = bool(cfg.get("attention")) and i > 0
        width = channels.get(name, 192)
        width = width if isinstance(width, (int, float)) else 192
        floats = max(floats, (_ATTENTION_MAPS if attention else _CONV_MAPS) * width / stride**2)
    return int(hp * wp * 4 * (floats + _IMAGE_FLOATS)) + _ENCODE_FIXED


# --- what a model's streams look like, for any image size ----------------------------------------

@dataclass
class _Layout:
    """The latent shapes and stream count ``model.compress`` gives, as a function of the padded size.

    Each number in the shapes is ``c0 + ch * Hp/64 + cw * Wp/64`` (channels: ``ch = cw = 0``; heights
    and widths: proportional), measured from three small encodes and checked on a fourth.
    """

    template: Any  # the shape structure, each number replaced by (c0, ch, cw)
    streams: int
    latent_per_block: int  # latent elements per 64x64 block (y), a bound on any stream's symbols
    synthesis_floats_per_pixel: float  # a bound on the synthesis transform's working memory

    def shape(self, hp: int, wp: int) -> Any:
        a, b = hp // PAD_MULTIPLE, wp // PAD_MULTIPLE

        def build(t):
            if isinstance(t, dict):
                return {k: build(v) for k, v in t.items()}
            if isinstance(t, list):
                return [build(v) for v in t]
            c0, ch, cw = t
            return c0 + ch * a + cw * b

        return build(self.template)


def _synthesis_module(model: torch.nn.Module, name: str) -> torch.nn.Module | None:
    own = getattr(model, name, None)
    if isinstance(own, torch.nn.Module):
        return own
    for path, m in model.named_modules():
        if path.endswith("." + name):
            return m
    return None


def _layout(model: torch.nn.Module) -> _Layout | None:
    """The model's stream layout; None when it is not linear in the size. It depends on the architecture
    alone, so it is cached per model and architecture (not per weight: training changes those)."""
    import json

    from .bitstream import plain_shape

    fp = json.dumps(getattr(model, "config", {}), sort_keys=True, default=str) + repr(
        [(k, tuple(v.shape)) for k, v in model.state_dict().items() if not k.endswith(("_quantized_cdf", "_offset", "_cdf_length", "scale_table"))])
    cached = getattr(model, "_feds_layout", None)
    if cached is not None and cached[0] == fp:
        return cached[1]
    device = next(model.parameters()).device
    c = coder(model, DEFAULT_PATH)  # the copy encode and decode use anyway: no second copy just to probe shapes
    g_a = _synthesis_module(c, "g_a")
    seen: dict[str, int] = {}
    hook = g_a.register_forward_hook(lambda _m, _i, out: seen.__setitem__("y", out.numel())) if g_a is not None else None
    probes = {}
    try:
        with torch.no_grad(), recording(c, "encode"):
            for a, b in ((1, 1), (2, 1), (1, 2), (2, 2)):
                x = torch.full((1, 3, a * PAD_MULTIPLE, b * PAD_MULTIPLE), 0.5, device=device)
                out = c.compress(x)
                probes[a, b] = (plain_shape(out["shape"]), len(out["strings"]))
                if (a, b) == (1, 1):
                    per_block = seen.get("y", 0)
    finally:
        if hook is not None:
            hook.remove()

    def fit(s11, s21, s12, s22):
        if isinstance(s11, dict):
            if not (isinstance(s21, dict) and s11.keys() == s21.keys() == s12.keys() == s22.keys()):
                raise _NotLinear
            return {k: fit(s11[k], s21[k], s12[k], s22[k]) for k in s11}
        if isinstance(s11, list):
            if not (isinstance(s21, list) and len(s11) == len(s21) == len(s12) == len(s22)):
                raise _NotLinear
            return [fit(*v) for v in zip(s11, s21, s12, s22)]
        ch, cw = s21 - s11, s12 - s11
        c0 = s11 - ch - cw
        if c0 + 2 * ch + 2 * cw != s22:
            raise _NotLinear
        return (c0, ch, cw)

    try:
        template = fit(*(probes[k][0] for k in ((1, 1), (2, 1), (1, 2), (2, 2))))
        counts = {probes[k][1] for k in probes}
        if len(counts) != 1:
            raise _NotLinear
    except _NotLinear:
        layout = None
    else:
        channels = dict(getattr(model, "config", {}).get("feature_channels") or {})
        strides = {"gs1": 8, "gs2": 4, "gs3": 2}
        widest = max([channels.get(k, 192) / strides[k] ** 2 for k in strides] or [48.0])
        layout = _Layout(template, counts.pop(), max(per_block, 1), 4 * widest + 6)
    object.__setattr__(model, "_feds_layout", (fp, layout))
    return layout


class _NotLinear(Exception):
    pass


def _available_memory() -> int | None:
    """Bytes this process may still allocate: MemAvailable, and the address-space limit's headroom."""
    import resource

    limits = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/status") as f:
                vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
            limits.append(soft - vm)
    except (OSError, ValueError, StopIteration):
        pass
    return min(limits) if limits else None


#: Threads the decoder's synthesis runs on (ours). A fixed count makes the decoded image the same
#: whatever the caller's thread count: measured, float32 kernels on 1 thread and on 2 differ in the last
#: bits, and about 30 of a photograph's 8-bit values by one level. None: the caller's threads (faster on
#: several cores; the image may then differ by one level in a few values, never more: the entropy
#: decoding itself does not depend on threads, :mod:`feds_lab.entropy_path`).
SYNTHESIS_THREADS: int | None = 1


@torch.no_grad()
def decode(model: torch.nn.Module, data: bytes, synthesis_threads: int | None = SYNTHESIS_THREADS) -> DecodeResult:
    """Decode a ``.feds`` file's bytes with the model that wrote it.

    Before the entropy decoder runs: the container is checked (:meth:`Bitstream.from_bytes`), the
    fingerprint must be the model's, the latent shapes and the stream count must be exactly those
    the model gives for the declared image size, and the memory the decode needs (bounded by that
    size) must be available. During it: the decoded latent must be finite and bounded before the
    synthesis transform runs. After it: the image must be finite and of the declared size. Only
    :class:`~feds_lab.errors.FedsLabError` leaves this function.
    """
    threads = torch.get_num_threads()
    try:
        if synthesis_threads:
            torch.set_num_threads(synthesis_threads)
        return _decode(model, data)
    except FedsLabError:
        raise
    except MemoryError:
        raise BitstreamError("not enough memory to decode this file") from None
    except Exception as e:
        raise BitstreamError(f"the streams do not decode with this model ({type(e).__name__}: {one_line(e)})") from None
    finally:
        torch.set_num_threads(threads)


def _decode(model: torch.nn.Module, data: bytes) -> DecodeResult:
    bs = Bitstream.from_bytes(data)
    fp = fingerprint(model)
    if bs.fingerprint != fp:
        raise BitstreamError(
            f"this file was written by another model (fingerprint {bs.fingerprint}); "
            f"the checkpoint given has fingerprint {fp}"
        )
    ph, pw = (-bs.height) % PAD_MULTIPLE, (-bs.width) % PAD_MULTIPLE
    hp, wp = bs.height + ph, bs.width + pw
    device = next(model.parameters()).device
    layout = _layout(model)
    streams = bs.streams
    if layout is not None:
        expected = layout.shape(hp, wp)
        if bs.shape != expected or len(bs.streams) != layout.streams:
            raise BitstreamError(f"the header's latent shapes {bs.shape} ({len(bs.streams)} streams) are not this "
                                 f"model's for a {bs.width}x{bs.height} image ({expected}, {layout.streams} streams)")
        need = int(hp * wp * 4 * layout.synthesis_floats_per_pixel)
        free = _available_memory() if device.type == "cpu" else None
        if free is not None and need > free:
            raise BitstreamError(f"decoding this {bs.width}x{bs.height} image needs about {need / 2**30:.1f} GiB; "
                                 f"{max(free, 0) / 2**30:.1f} GiB are available")
        # CompressAI's rANS decoder reads its string without bounds: a damaged stream makes it read on
        # past the end. Zeros after each stream keep those reads inside our buffer (at most one word
        # per symbol once the stream is spent; the symbol count is bounded by the declared size).
        symbols = (hp // PAD_MULTIPLE) * (wp // PAD_MULTIPLE) * layout.latent_per_block
        pad = bytes(8 * symbols + 1024)
        streams = [s + pad for s in bs.streams]
    else:
        _check_shape(shape_from_json(bs.shape), bs.height, bs.width)
    shape = shape_from_json(bs.shape)
    if bs.path not in PATHS.values():
        raise BitstreamError(f"the file's entropy-parameter path {bs.path} is unknown to this feds-lab "
                             f"(it knows {sorted(PATHS.values())})")
    c = coder(model, bs.path, fp)
    g_s = _synthesis_module(c, "g_s")

    def check_digest(digest) -> None:
        if bs.digest is not None and digest.digest() != bs.digest:
            raise EntropyMismatchError(
                "decoded with other entropy parameters than the encoder's (thread count, machine or device "
                "differ beyond what this file's entropy-parameter path absorbs); refusing to give a wrong image")

    _sync(device)
    t0 = time.perf_counter()
    with recording(c, "decode") as digest:
        def check_y_hat(_m, args):  # before the synthesis runs: no work spent on a wrong latent
            check_digest(digest)
            if args and isinstance(args[0], torch.Tensor):
                check_latent(args[0], "the decoded latent", error=BitstreamError)

        hook = g_s.register_forward_pre_hook(check_y_hat, prepend=True) if g_s is not None else None
        try:
            x_hat = c.decompress([[s] for s in streams], shape)["x_hat"]
        except (RuntimeError, ValueError, AssertionError, IndexError, TypeError, KeyError) as e:
            raise BitstreamError(f"the streams do not decode with this model ({type(e).__name__}: {one_line(e)})") from None
        finally:
            if hook is not None:
                hook.remove()
        check_digest(digest)
    if tuple(x_hat.shape[-2:]) != (hp, wp):
        raise BitstreamError(f"decoded size {tuple(x_hat.shape[-2:])} does not match the header's {bs.height}x{bs.width}")
    if not bool(torch.isfinite(x_hat).all()):
        raise BitstreamError("the streams decode to non-finite pixels: the file is corrupted")
    x_hat = crop_image(x_hat, (0, pw, 0, ph)).clamp_(0, 1)
    _sync(device)
    return DecodeResult(x_hat.cpu(), time.perf_counter() - t0)


def _check_shape(shape, h: int, w: int) -> None:
    """No latent dimension may exceed the padded image: refuses headers that would allocate wildly
    (the fallback for models whose stream layout is not linear in the image size)."""
    limit = max(h, w) + PAD_MULTIPLE

    def walk(s):
        if isinstance(s, dict):
            for v in s.values():
                walk(v)
        elif isinstance(s, tuple):
            for v in s:
                walk(v)
        elif not isinstance(s, int) or not 0 < s <= limit:
            raise BitstreamError(f"implausible latent shape in the header: {shape}")

    walk(shape)
