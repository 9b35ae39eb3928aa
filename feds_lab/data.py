"""Image data: a folder the user names (Kodak, Tecnick, CLIC, ...) or the built-in photographs.

Training reads random crops; evaluation reads full images. Two kinds of set share one
implementation of cropping and sampling (:class:`CropSampler`):

- :class:`ImageFolder`: every image under a folder, recursively;
- :class:`TensorImageSet`: images already in memory, e.g. the built-in set.

Exact resume: :meth:`CropSampler.sample_batch` draws batch ``step`` from a generator seeded by
``(seed, step)`` alone, so batch k is the same whether or not the run was interrupted before it.

Images are held in memory as 8-bit RGB (decoded lazily, once), since the data sets here are small;
every tensor handed out is float in [0, 1]. Nothing here downloads anything.
"""

from __future__ import annotations

import functools
import warnings
import importlib.resources
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from .errors import FedsLabError, ImageReadError, one_line

#: Image files read from data folders. GIF is read (frame 1 of an animated one, with a note);
#: a multi-frame file of any format codes its first frame, and read_image says so.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".gif")
SPLITS = ("train", "val", "all", "tune-train", "tune-val")
#: The tuning splits: ``train`` cut once more, so that a hyper-parameter search (``feds-lab tune``)
#: measures on images that neither its runs train on nor the reported evaluation (``val``) uses.
TUNE_SPLITS = {"tune-train": "train", "tune-val": "val"}

#: Default share of a folder's images held out for validation (ours; see :func:`split_files`).
VAL_FRACTION = 0.1
#: Share of the ``train`` split held out as ``tune-val`` (ours: 6 of the 44 training photographs
#: of a 49-image folder).
TUNE_FRACTION = 0.125

# --- the built-in set ---------------------------------------------------------------------------
#: The colour photographs scikit-image ships inside its package (read straight from its data folder,
#: never through its pooch fetchers, so nothing can reach the network). Left out, on purpose:
#: ``motorcycle_right`` (the stereo twin of ``motorcycle_left``: it would leak across the split),
#: the synthetic ``color``/``phantom``/``chessboard_RGB``, the drawings ``horse``/``logo``, and the
#: grayscale images.
BUILTIN_FILES = {
    "astronaut": "astronaut.png",  # 512x512
    "chelsea": "chelsea.png",  # 300x451
    "coffee": "coffee.png",  # 400x600
    "hubble_deep_field": "hubble_deep_field.jpg",  # 872x1000
    "immunohistochemistry": "ihc.png",  # 512x512
    "motorcycle_left": "motorcycle_left.png",  # 500x741
    "retina": "retina.jpg",  # 1411x1411
    "rocket": "rocket.jpg",  # 427x640
}
#: The built-in validation split (ours): two everyday photographs of a Kodak-like size; the other six
#: images train.
BUILTIN_VAL = ("coffee", "rocket")


class DataError(FedsLabError, ValueError):
    """A data set the user named cannot be used as asked (no images, images too small, bad split)."""


# --- reading one image --------------------------------------------------------------------------
def to_rgb_uint8(im: Image.Image, notes: list[str] | None = None, name: str = "image",
                 bits: int | None = None) -> np.ndarray:
    """Any Pillow image -> (H, W, 3) uint8 RGB; each conversion is appended to ``notes``.

    16-bit grayscale (``I;16*``) is scaled by 255/65535, not clipped as Pillow's ``convert`` would.
    32-bit integer (``I``) and float (``F``) grayscale are read by their actual range
    (:func:`_gray_by_range`): ``I`` from a file of at most 16 bits per sample (``bits``; Pillow reads
    16-bit PGMs as ``I``) as 16-bit; float data in [0, 1] as [0, 1], up to 255 as 0..255, beyond
    that scaled by its maximum; integer data up to 255 as 8-bit levels, up to 65535 as 16-bit, beyond
    that scaled by its maximum. Non-finite values, or negative values in more than 1 % of the
    pixels, are refused (``ValueError``) rather than guessed. Alpha is dropped (the colour under
    transparent pixels is kept: it is what an RGB codec codes), palettes are expanded, grayscale is
    repeated over the three channels. Pillow itself reads 16-bit RGB(A) PNGs as 8-bit.
    """
    mode = im.mode
    if mode.startswith("I;16"):
        gray = np.round(np.clip(np.asarray(im, dtype=np.float64), 0, 65535) / 257.0)
        what = "16-bit grayscale, scaled to 8 bits"
    elif mode in ("I", "F"):
        gray, what = _gray_by_range(np.asarray(im, dtype=np.float64), mode, bits)
    else:
        if mode != "RGB" and notes is not None:
            what = "alpha dropped" if "A" in mode or "transparency" in im.info else "converted"
            notes.append(f"{name}: {mode} image converted to 8-bit RGB ({what})")
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
    if notes is not None:
        notes.append(f"{name}: {mode} image converted to 8-bit RGB ({what})")
    return np.repeat(gray.astype(np.uint8)[..., None], 3, axis=2)


#: share of pixels below zero that a float or 32-bit integer image may hold (clipped to 0, with a
#: note); beyond it the image is refused: its range cannot be told
NEGATIVE_SHARE = 0.01


def _gray_by_range(a: np.ndarray, mode: str, bits: int | None) -> tuple[np.ndarray, str]:
    """A float (``F``) or 32-bit integer (``I``) grayscale array -> (8-bit levels as float, what was done).

    The range is the data's own: a float TIFF holding 0..255 is not clipped to [0, 1] (90 % of such a
    photograph's pixels would be white), an int32 TIFF is not clipped to 16 bits."""
    kind = "float" if mode == "F" else "32-bit integer"
    if a.size == 0:
        return a, f"{kind} grayscale, empty"
    if mode == "F" and not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).sum())
        raise ValueError(f"a float image with {bad} NaN or infinite value(s) out of {a.size}: its range cannot "
                         "be told; save it as an 8- or 16-bit image")
    low, top = float(a.min()), float(a.max())
    shown = (lambda v: f"{v:g}") if mode == "F" else (lambda v: f"{int(v)}")
    negative = float((a < 0).mean())
    if negative > NEGATIVE_SHARE:
        raise ValueError(f"a {kind} image with negative values in {negative:.0%} of its pixels (from {shown(low)} "
                         f"to {shown(top)}): its range cannot be told; save it as an 8- or 16-bit image")
    if mode == "I" and (bits is None or bits <= 16) and top <= 65535:
        scale, what = 65535.0, f"{kind} grayscale from a file of at most 16 bits per sample, read as 16-bit"
    elif mode == "F" and top <= 1.0 + 0.5 / 255:  # within half an 8-bit level of 1: a [0, 1] image
        scale, what = 1.0, "float grayscale, read as [0, 1]"
    elif top <= 255.0:
        scale = 255.0
        what = (f"float grayscale with values up to {shown(top)}, read as 0..255" if mode == "F"
                else f"32-bit integer grayscale with values up to {shown(top)}, read as 8-bit levels")
    elif mode == "I" and top <= 65535:
        scale, what = 65535.0, f"32-bit integer grayscale with values up to {shown(top)}, read as 16-bit"
    else:
        scale, what = top, f"{kind} grayscale with values up to {shown(top)}, scaled by its maximum"
    if negative:
        what += f"; negative values in {negative:.2%} of the pixels set to 0"
    clipped = float((a > scale).mean()) if mode == "F" and scale == 1.0 else 0.0
    if clipped:
        what += f"; values above 1 in {clipped:.2%} of the pixels set to 1"
    return np.round(np.clip(a, 0, scale) * (255.0 / scale)), what


def _bits_per_sample(im: Image.Image) -> int | None:
    """The file's declared bits per sample where its header says (TIFF), else None."""
    try:
        bits = getattr(im, "tag_v2", {}).get(258)
        bits = bits[0] if isinstance(bits, (tuple, list)) else bits
        return int(bits) if bits else None
    except (TypeError, ValueError, AttributeError, IndexError):
        return None


def read_image(path: str | Path, notes: list[str] | None = None) -> torch.Tensor:
    """Decode an image file to a (3, H, W) uint8 RGB tensor; any failure names the file.

    EXIF orientation is applied; conversions (see :func:`to_rgb_uint8`) are appended to ``notes``,
    and so is a note that only frame 1 of an animated GIF (or any multi-frame file) is read.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                frames = getattr(im, "n_frames", 1)
                im.load()
                if frames > 1 and notes is not None:
                    kind = "animated GIF" if im.format == "GIF" else f"multi-frame {im.format or 'image'}"
                    notes.append(f"{path}: {kind} with {frames} frames: only frame 1 is read")
                bits = _bits_per_sample(im)
                im = ImageOps.exif_transpose(im)
                arr = to_rgb_uint8(im, notes, name=str(path), bits=bits)
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, bomb warnings ...
        raise ImageReadError(f"{path}: cannot read this image ({e})") from None
    return torch.from_numpy(np.array(arr, dtype=np.uint8)).permute(2, 0, 1).contiguous()  # a writable copy


def probe_image(path: str | Path) -> tuple[int, int]:
    """(H, W) from the header, after Pillow's cheap integrity check (``verify``); errors name the file."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            im.verify()
    except Exception as e:
        raise ImageReadError(f"cannot read image {path}: {e}") from e
    return height, width


def to_float(img: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [0, 1]."""
    return img.float().div_(255.0)


def to_uint8(img: torch.Tensor) -> torch.Tensor:
    """float in [0, 1] (or uint8) -> uint8, rounding to the nearest 8-bit level."""
    if img.dtype == torch.uint8:
        return img
    return img.detach().float().clamp(0, 1).mul(255.0).round().to(torch.uint8)


# --- cropping and sampling ----------------------------------------------------------------------
def _pad_to(img: torch.Tensor, size: int) -> torch.Tensor:
    """Pad (3, H, W) uint8 at the bottom and right to at least size x size: reflect where the image
    is wide enough, else replicate its edge."""
    h, w = img.shape[-2:]
    ph, pw = max(0, size - h), max(0, size - w)
    if not (ph or pw):
        return img
    arr = img.numpy()
    for axis, pad, length in ((1, ph, h), (2, pw, w)):
        if pad:
            widths = [(0, 0)] * 3
            widths[axis] = (0, pad)
            arr = np.pad(arr, widths, mode="reflect" if pad < length else "edge")
    return torch.from_numpy(np.ascontiguousarray(arr))


def batch_seed(seed: int, step: int) -> int:
    """A 64-bit generator seed that depends on (seed, step) only, without collisions between pairs."""
    if seed < 0 or step < 0:
        raise ValueError(f"seed and step must be non-negative, got seed={seed}, step={step}")
    lo, hi = np.random.SeedSequence([seed, step]).generate_state(2, dtype=np.uint32)
    return int(hi) << 32 | int(lo)


class CropSampler(Dataset):
    """A set of named 8-bit images with random crops; subclasses say how image i is decoded.

    ``crop``: side of the square crops, px; ``None`` hands out full images (one at a time only).
    Images smaller than the crop are padded (bottom/right, reflect or edge) with ``pad_small``,
    refused otherwise. ``seed``: the default seed of :meth:`sample_batch`.
    """

    def __init__(
        self, names: Sequence[str], sizes: Sequence[tuple[int, int]], crop: int | None, pad_small: bool, seed: int
    ):
        if not names:
            raise ValueError("an image set needs at least one image")
        if crop is not None and crop < 1:
            raise DataError(f"crop must be a positive number of pixels, got {crop}")
        self.names = list(names)
        self.sizes = [tuple(s) for s in sizes]
        self.crop = crop
        self.pad_small = pad_small
        self.seed = seed
        self._cache: list[torch.Tensor | None] = [None] * len(self.names)
        if crop is not None and not pad_small:
            small = [f"{n} ({h}x{w} px, HxW)" for n, (h, w) in zip(self.names, self.sizes) if h < crop or w < crop]
            if small:
                raise DataError(
                    f"{len(small)} image(s) smaller than the {crop}-px crop: {', '.join(small)}; "
                    "use a smaller crop or pad_small=True"
                )

    def _decode(self, i: int) -> torch.Tensor:
        """Image i as (3, H, W) uint8."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.names)

    def image_uint8(self, i: int) -> torch.Tensor:
        """Full image i, (3, H, W) uint8, decoded once and cached."""
        if self._cache[i] is None:
            self._cache[i] = self._decode(i)
        return self._cache[i]

    def image(self, i: int) -> torch.Tensor:
        """Full image i, (3, H, W) float in [0, 1], no crop."""
        return to_float(self.image_uint8(i))

    def crop_at(self, i: int, top: int, left: int) -> torch.Tensor:
        """The crop of image i (padded if small) at (top, left): (3, crop, crop) float in [0, 1]."""
        if self.crop is None:
            raise ValueError("this set hands out full images (crop=None)")
        img = _pad_to(self.image_uint8(i), self.crop)
        return to_float(img[:, top : top + self.crop, left : left + self.crop])

    def _offsets(self, i: int, generator: torch.Generator | None) -> tuple[int, int]:
        h, w = self.sizes[i]
        top = torch.randint(max(h, self.crop) - self.crop + 1, (1,), generator=generator).item()
        left = torch.randint(max(w, self.crop) - self.crop + 1, (1,), generator=generator).item()
        return int(top), int(left)

    def __getitem__(self, i: int) -> torch.Tensor:
        """A random crop of image i, (3, crop, crop) float in [0, 1], from torch's global generator
        (for a DataLoader; training that must resume exactly uses :meth:`sample_batch`)."""
        if self.crop is None:
            return self.image(i)
        return self.crop_at(i, *self._offsets(i, None))

    def sample_batch(self, step: int, batch_size: int, seed: int | None = None) -> torch.Tensor:
        """Batch ``step``: (batch_size, 3, crop, crop) float in [0, 1].

        Image indices (with replacement) and crop offsets come from a generator seeded by
        (seed, step) only: the same step gives the same batch in any run, interrupted or not.
        """
        if self.crop is None:
            raise ValueError("sample_batch needs a crop size (crop=None hands out full images)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        g = torch.Generator().manual_seed(batch_seed(self.seed if seed is None else seed, step))
        indices = torch.randint(len(self), (batch_size,), generator=g).tolist()
        return torch.stack([self.crop_at(i, *self._offsets(i, g)) for i in indices])


class TensorImageSet(CropSampler):
    """In-memory images: a list of (name, (3, H, W) tensor), float in [0, 1] or uint8.

    Float images are held as 8-bit (rounded), like every other image in this module.
    """

    def __init__(
        self,
        images: Sequence[tuple[str, torch.Tensor]],
        crop: int | None = 256,
        pad_small: bool = False,
        seed: int = 0,
    ):
        images = list(images)
        for name, img in images:
            if img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(f"image {name!r} should be (3, H, W), got {tuple(img.shape)}")
        super().__init__(
            [n for n, _ in images], [tuple(img.shape[-2:]) for _, img in images], crop, pad_small, seed
        )
        self._cache = [to_uint8(img) for _, img in images]

    def _decode(self, i: int) -> torch.Tensor:
        return self._cache[i]


class ImageFolder(CropSampler):
    """Every image under ``root``, recursively (``list_images``), or the given ``files`` under it.

    Names are paths relative to ``root``. At construction every file's header is read and checked
    (Pillow ``verify``): unreadable files are all named in one error, never skipped, and images
    smaller than the crop are refused (or padded with ``pad_small``). Pixels are decoded on first
    use; a file that fails to decode then raises :class:`ImageReadError` naming it.
    """

    def __init__(
        self,
        root: str | Path,
        crop: int | None = 256,
        pad_small: bool = False,
        files: Sequence[str | Path] | None = None,
        seed: int = 0,
    ):
        self.root = Path(root)
        self.files = list_images(self.root) if files is None else [Path(f) for f in files]
        sizes, bad = [], []
        for path in self.files:
            try:
                sizes.append(probe_image(path))
            except ImageReadError as e:
                bad.append(str(e))
        if bad:  # name every bad file at once, so one pass fixes the folder
            raise ImageReadError(f"{len(bad)} unreadable image file(s) under {self.root}: " + "; ".join(bad))
        names = [_relative_name(p, self.root) for p in self.files]
        super().__init__(names, sizes, crop, pad_small, seed)

    def _decode(self, i: int) -> torch.Tensor:
        img = read_image(self.files[i])
        if tuple(img.shape[-2:]) != self.sizes[i]:  # crop offsets are drawn from the header's size
            raise ImageReadError(
                f"{self.files[i]} decoded to {tuple(img.shape[-2:])} px, its header said {self.sizes[i]}"
            )
        return img


def _relative_name(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def check_data_folder(data: str | Path | None, split: str = "all", val_fraction: float = VAL_FRACTION,
                      what: str = "data") -> list[Path]:
    """Check, before any work starts, that a data folder can be used: it exists, holds image files,
    every one of them can be read (the header of each, checked as :class:`ImageFolder` does, and the
    pixels of the first), and ``split`` of them is not empty. Returns the image files; the built-in
    sets (``None``, ``"builtin"``, :data:`BUILTIN_EVAL_SET`) need no check and give ``[]``.

    Raises :class:`DataError` naming the folder (``what``: the setting it came from, e.g.
    ``"eval_data"``) and every unreadable file, so that one pass fixes the folder. Costs one header
    read per file and one full decode.
    """
    if _is_builtin(data) or str(data) == BUILTIN_EVAL_SET:
        return []
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"{what}: {root} does not exist or is not a folder (give a folder of images, or leave "
                        f"{what} out for the built-in photographs)")
    try:
        files = list_images(root)
    except DataError as e:
        raise DataError(f"{what}: {e}") from None
    bad = []
    for path in files:
        try:
            probe_image(path)
        except ImageReadError as e:
            bad.append(f"{_relative_name(path, root)} ({one_line(e.__cause__ or e, 120)})")
    if len(bad) == len(files):
        raise DataError(f"{what}: no readable image in {root}: none of its {len(files)} image file(s) can be read, "
                        f"e.g. {bad[0]}")
    if not bad:  # every header reads: decode the first image in full, as training will
        try:
            read_image(files[0])
        except ImageReadError as e:
            bad.append(f"{_relative_name(files[0], root)} ({one_line(e.__cause__ or e, 120)})")
            if len(files) == 1:
                raise DataError(f"{what}: no readable image in {root}: {bad[0]}") from None
    if bad:
        raise DataError(f"{what}: {len(bad)} of the {len(files)} image files in {root} cannot be read (remove or "
                        f"fix them): " + "; ".join(bad))
    try:
        chosen = split_files(files, split, val_fraction)
    except DataError as e:
        raise DataError(f"{what}: {root}: {e}") from None
    if not chosen:
        raise DataError(f"{what}: the {split!r} split of {root} holds no image")
    return files


# --- listing and splitting ----------------------------------------------------------------------
def list_images(root: str | Path) -> list[Path]:
    """Image files under ``root``, recursively, sorted by relative path (``IMAGE_EXTENSIONS``, any case).

    Hidden files and folders (name starting with ".", e.g. macOS ``._x.png`` shadows) are left out.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a folder")
    files = [
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {root} or its subfolders")
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def split_files(files: Sequence, split: str, val_fraction: float = VAL_FRACTION) -> list:
    """A deterministic train/val split of a sorted list (ours).

    ``n_val = round(n * val_fraction)`` (at least 1, at most n - 1) items at evenly spaced
    positions ``floor((k + 1/2) * n / n_val)`` go to ``val``, the rest to ``train``; ``all`` keeps
    everything; ``tune-train``/``tune-val`` split ``train`` again with :data:`TUNE_FRACTION`, the
    same rule. It depends on the sorted names only (no seed), so teacher, student and baseline
    runs always validate on the same images. E.g. 24 files, fraction 0.1: positions 6 and 18 (0-based).
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; known: {list(SPLITS)}")
    files = list(files)
    if split == "all":
        return files
    if split in TUNE_SPLITS:  # the same rule, applied to the train split
        return split_files(split_files(files, "train", val_fraction), TUNE_SPLITS[split], TUNE_FRACTION)
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    n = len(files)
    if n < 2:
        raise DataError(f"a train/val split needs at least 2 images, got {n}; use split='all'")
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    val = {int((k + 0.5) * n / n_val) for k in range(n_val)}
    return [f for i, f in enumerate(files) if (i in val) == (split == "val")]


# --- the built-in set ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _builtin_uint8() -> tuple[tuple[str, torch.Tensor], ...]:
    folder = importlib.resources.files("skimage.data")
    out = []
    for name, filename in BUILTIN_FILES.items():
        path = Path(str(folder / filename))
        if not path.is_file():
            raise DataError(
                f"scikit-image's bundled image {filename} is not at {path}; the built-in set reads only "
                "the images shipped inside the scikit-image package and downloads nothing"
            )
        out.append((name, read_image(path)))
    return tuple(out)


def builtin_images() -> list[tuple[str, torch.Tensor]]:
    """The built-in photographs (``BUILTIN_FILES``) as (name, (3, H, W) float in [0, 1]), in a fixed order."""
    return [(name, to_float(img)) for name, img in _builtin_uint8()]


def builtin_split(split: str) -> list[tuple[str, torch.Tensor]]:
    """The built-in set's fixed split: ``val`` = ``BUILTIN_VAL`` (coffee, rocket), ``train`` = the
    other six, ``all`` = all eight. (name, (3, H, W) float in [0, 1])."""
    return [(name, to_float(img)) for name, img in _builtin_split_uint8(split)]


def _builtin_split_uint8(split: str) -> list[tuple[str, torch.Tensor]]:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; known: {list(SPLITS)}")
    images = _builtin_uint8()
    if split == "all":
        return list(images)
    if split in TUNE_SPLITS:
        return split_files(_builtin_split_uint8("train"), TUNE_SPLITS[split], TUNE_FRACTION)
    return [(n, img) for n, img in images if (n in BUILTIN_VAL) == (split == "val")]


def _is_builtin(data: str | Path | None) -> bool:
    return data is None or str(data) == "builtin"


# --- entry points -------------------------------------------------------------------------------
def load_dataset(
    data: str | Path | None,
    split: str,
    crop: int | None,
    val_fraction: float = VAL_FRACTION,
    seed: int = 0,
    pad_small: bool = False,
) -> CropSampler:
    """The ``split`` of a data set, for training crops.

    data: ``None`` or ``"builtin"``: the built-in photographs (``builtin_split``); otherwise a folder,
    split by :func:`split_files`. ``seed``: the default seed of ``sample_batch`` (the split itself
    does not depend on it).
    """
    if _is_builtin(data):
        return TensorImageSet(_builtin_split_uint8(split), crop=crop, pad_small=pad_small, seed=seed)
    files = split_files(list_images(data), split, val_fraction)
    return ImageFolder(data, crop=crop, pad_small=pad_small, files=files, seed=seed)


def eval_images(
    data: str | Path | None, split: str = "val", val_fraction: float = VAL_FRACTION
) -> list[tuple[str, torch.Tensor]]:
    """Full images for evaluation: [(name, (1, 3, H, W) float in [0, 1])], no crop, no padding.

    Same sources and splits as :func:`load_dataset`; for a test set such as Kodak use ``split="all"``.
    """
    if _is_builtin(data):
        return [(name, to_float(img).unsqueeze(0)) for name, img in _builtin_split_uint8(split)]
    if str(data) == BUILTIN_EVAL_SET:  # an evaluation-only set: every split is all of it
        return builtin_eval_images()
    root = Path(data)
    files = split_files(list_images(root), split, val_fraction)
    return [(_relative_name(p, root), to_float(read_image(p)).unsqueeze(0)) for p in files]


# --- the built-in evaluation set (photographs shipped with the installed packages) --------------
#: The demo's evaluation set: every photograph that ships with the installed packages and that no
#: built-in training image is a view of (the two ``BUILTIN_VAL`` images, one from matplotlib, three
#: gray-level ones from scikit-image), so that a bootstrap over images has more than 2 samples
#: (6 images: 462 distinct resamples, against 3 for 2). Six different scenes, but not a balanced test
#: set: three are gray-level photographs, coded as RGB with three equal channels (no chroma to
#: code, so they cost fewer bits than colour ones), and all are small (0.12-0.31 megapixels).
#: {name: (package, path inside it, source and licence as the package states them)}
BUILTIN_EVAL = {
    "coffee": ("skimage", "data/coffee.png", "scikit-image; Rachel Michetti, no copyright restrictions (CC0)"),
    "rocket": ("skimage", "data/rocket.jpg", "scikit-image; SpaceX, public domain"),
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg",
                     "matplotlib sample data; U.S. Navy photograph of Grace Hopper, public domain"),
    "camera": ("skimage", "data/camera.png", "scikit-image, gray-level; Lav Varshney, CC0"),
    "coins": ("skimage", "data/coins.png",
              "scikit-image, gray-level; Greek coins from Pompeii, Brooklyn Museum, no known copyright restrictions"),
    "moon": ("skimage", "data/moon.png",
             "scikit-image, gray-level; surface of the moon (scikit-image states no source or licence for it)"),
}
#: ``eval_data`` value naming that set (``PipelineConfig`` picks it for the built-in default)
BUILTIN_EVAL_SET = "builtin-eval"


@functools.lru_cache(maxsize=1)
def _builtin_eval_uint8() -> tuple[tuple[str, torch.Tensor], ...]:
    out = []
    for name, (package, relative, _) in BUILTIN_EVAL.items():
        path = Path(str(importlib.resources.files(package) / relative))
        if not path.is_file():
            raise DataError(f"the built-in evaluation image {name} is not at {path} (shipped inside the {package} "
                            "package; nothing is downloaded)")
        out.append((name, read_image(path)))  # gray-level files become RGB with three equal channels
    return tuple(out)


def builtin_eval_images() -> list[tuple[str, torch.Tensor]]:
    """:data:`BUILTIN_EVAL` as [(name, (1, 3, H, W) float in [0, 1])], like :func:`eval_images`."""
    return [(name, to_float(img).unsqueeze(0)) for name, img in _builtin_eval_uint8()]
