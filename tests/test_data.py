"""Image data: folders, conversions, errors that name the file, reproducible batches, splits."""

from __future__ import annotations

import socket
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from feds_lab import data
from feds_lab.errors import FedsLabError, ImageReadError
from feds_lab.data import (
    BUILTIN_VAL,
    DataError,
    ImageFolder,
    TensorImageSet,
    builtin_images,
    builtin_split,
    eval_images,
    list_images,
    load_dataset,
    split_files,
)


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path) if mode else Image.fromarray(arr).save(path)
    return path


def _png16_rgb(path, rgb16: np.ndarray):
    """A 48-bit RGB PNG written by hand (Pillow cannot write one)."""
    h, w, _ = rgb16.shape

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


# --- listing and errors -------------------------------------------------------------------------
def test_list_images_recursive_sorted_any_case(tmp_path):
    _save(tmp_path / "b.PNG", _rgb(8, 8))
    _save(tmp_path / "a.jpg", _rgb(8, 8))
    _save(tmp_path / "sub" / "c.TIFF", _rgb(8, 8))
    _save(tmp_path / ".hidden" / "d.png", _rgb(8, 8))
    (tmp_path / "notes.txt").write_text("not an image")
    names = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert names == ["a.jpg", "b.PNG", "sub/c.TIFF"]


def test_empty_or_missing_folder_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(DataError, match="no images.*empty"):
        ImageFolder(tmp_path / "empty")
    with pytest.raises(FedsLabError, match="nowhere"):  # the CLI prints these without a traceback
        ImageFolder(tmp_path / "nowhere")


def test_unreadable_files_are_named_at_construction(tmp_path):
    _save(tmp_path / "good.png", _rgb(16, 16))
    (tmp_path / "garbage.png").write_bytes(b"this is not a png")
    _save(tmp_path / "cut.png", _rgb(32, 32))
    whole = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ImageReadError) as err:
        ImageFolder(tmp_path, crop=8)
    assert "garbage.png" in str(err.value) and "cut.png" in str(err.value) and "2 unreadable" in str(err.value)


def test_decode_failure_later_names_the_file(tmp_path):
    # A truncated JPEG passes Pillow's header check and fails only when decoded.
    _save(tmp_path / "late.jpg", _rgb(64, 64))
    whole = (tmp_path / "late.jpg").read_bytes()
    (tmp_path / "late.jpg").write_bytes(whole[: len(whole) // 2])
    ds = ImageFolder(tmp_path, crop=32)
    with pytest.raises(ImageReadError, match="late.jpg"):
        ds[0]


def test_small_image_refused_with_name_and_size_or_padded(tmp_path):
    _save(tmp_path / "big.png", _rgb(64, 64))
    _save(tmp_path / "small.png", _rgb(20, 40))
    with pytest.raises(DataError, match=r"small\.png \(20x40 px"):
        ImageFolder(tmp_path, crop=32)
    ds = ImageFolder(tmp_path, crop=32, pad_small=True)
    assert ds.names == ["big.png", "small.png"]
    crop = ds.crop_at(1, 0, 0)
    assert crop.shape == (3, 32, 32)
    src = torch.from_numpy(_rgb(20, 40)).permute(2, 0, 1).float() / 255
    assert torch.equal(crop[:, :20, :32], src[:, :20, :32])
    assert torch.equal(crop[:, 20, :32], src[:, 18, :32])  # reflected: row 20 mirrors row 18
    # an image thinner than half the crop cannot be reflected far enough: its edge is replicated
    tiny = TensorImageSet([("t", torch.rand(3, 3, 3))], crop=8, pad_small=True)
    assert torch.equal(tiny.crop_at(0, 0, 0)[:, 7, 0], tiny.crop_at(0, 0, 0)[:, 2, 0])


# --- conversions --------------------------------------------------------------------------------
def test_modes_converted_to_rgb(tmp_path):
    rgba = np.dstack([_rgb(16, 16), np.full((16, 16), 7, np.uint8)])
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    gray16 = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 257)  # 8-bit levels spread over 16 bits
    gray16[0, 0] = 65535
    _save(tmp_path / "rgba.png", rgba)
    _save(tmp_path / "gray.png", gray)
    _save(tmp_path / "gray16.png", gray16)
    _png16_rgb(tmp_path / "rgb16.png", np.full((16, 16, 3), [65535, 32896, 0], np.uint16))  # 255, 128, 0
    Image.fromarray(_rgb(16, 16)).convert("P").save(tmp_path / "pal.bmp")
    assert Image.open(tmp_path / "gray16.png").mode == "I;16"
    ds = ImageFolder(tmp_path, crop=None)
    imgs = {name: ds.image_uint8(i) for i, name in enumerate(ds.names)}
    for name, img in imgs.items():
        assert img.shape == (3, 16, 16) and img.dtype == torch.uint8, name
    assert torch.equal(imgs["rgba.png"], torch.from_numpy(rgba[..., :3]).permute(2, 0, 1))  # alpha dropped
    assert torch.equal(imgs["gray.png"][1], torch.from_numpy(gray))  # repeated over R, G, B
    assert torch.equal(imgs["gray.png"][0], imgs["gray.png"][2])
    expected16 = np.arange(256, dtype=np.uint8).reshape(16, 16)
    expected16[0, 0] = 255
    assert torch.equal(imgs["gray16.png"][0], torch.from_numpy(expected16))  # scaled, not clipped
    assert imgs["rgb16.png"][:, 0, 0].tolist() == [255, 128, 0]
    full = ds.image(0)
    assert full.dtype == torch.float32 and 0 <= full.min() and full.max() <= 1


# --- reproducible batches -----------------------------------------------------------------------
def _folder(tmp_path, n=5, size=48):
    for i in range(n):
        _save(tmp_path / f"img{i:02d}.png", _rgb(size, size + 8 * i, seed=i))
    return tmp_path


def test_sample_batch_depends_on_seed_and_step_only(tmp_path):
    root = _folder(tmp_path)
    a = ImageFolder(root, crop=32)
    batch = a.sample_batch(7, 4, seed=3)
    assert batch.shape == (4, 3, 32, 32) and batch.dtype == torch.float32
    assert 0 <= batch.min() and batch.max() <= 1
    for step in range(7):  # an uninterrupted run draws the batches before it ...
        a.sample_batch(step, 4, seed=3)
    torch.manual_seed(123)  # ... and the global generator plays no part
    assert torch.equal(a.sample_batch(7, 4, seed=3), batch)
    resumed = ImageFolder(root, crop=32)  # a fresh process resuming at step 7
    assert torch.equal(resumed.sample_batch(7, 4, seed=3), batch)
    assert not torch.equal(a.sample_batch(8, 4, seed=3), batch)
    assert not torch.equal(a.sample_batch(7, 4, seed=4), batch)
    default_seed = ImageFolder(root, crop=32, seed=3)
    assert torch.equal(default_seed.sample_batch(7, 4), batch)


def test_batch_seed_has_no_collisions_between_pairs():
    seeds = {data.batch_seed(s, t) for s in range(20) for t in range(200)}
    assert len(seeds) == 20 * 200
    with pytest.raises(ValueError):
        data.batch_seed(-1, 0)


def test_tensor_set_shares_the_sampler_and_getitem(tmp_path):
    images = [(f"x{i}", torch.rand(3, 40, 50)) for i in range(3)]
    ds = TensorImageSet(images, crop=32)
    assert len(ds) == 3 and ds[1].shape == (3, 32, 32)
    assert torch.equal(ds.sample_batch(0, 2, seed=0), TensorImageSet(images, crop=32).sample_batch(0, 2, seed=0))
    # held as 8-bit: within half a level of the float original
    assert (ds.image(0) - images[0][1]).abs().max() <= 0.5 / 255 + 1e-6
    with pytest.raises(ValueError, match="x0 \\(40x50 px"):
        TensorImageSet(images, crop=48)
    with pytest.raises(ValueError, match="needs a crop size"):
        TensorImageSet(images, crop=None).sample_batch(0, 2, seed=0)


# --- splits -------------------------------------------------------------------------------------
def test_split_files_by_hand():
    files = list(range(24))
    assert split_files(files, "val", 0.1) == [6, 18]  # n_val = 2 at floor((k + 1/2) * 12)
    assert split_files(files, "val", 0.2) == [2, 7, 12, 16, 21]  # n_val = 5 at floor((k + 1/2) * 4.8)
    train, val = split_files(files, "train", 0.2), split_files(files, "val", 0.2)
    assert sorted(train + val) == files and not set(train) & set(val)
    assert split_files(files, "all") == files
    assert split_files([0, 1], "val", 0.01) == [1]  # at least one ...
    assert split_files([0, 1], "train", 0.99) == [0]  # ... and at most n - 1
    with pytest.raises(ValueError, match="at least 2 images"):
        split_files([0], "val")
    with pytest.raises(ValueError, match="unknown split"):
        split_files(files, "test")


def test_load_dataset_folder_split_is_deterministic(tmp_path):
    root = _folder(tmp_path, n=10)
    val = load_dataset(root, "val", crop=32, val_fraction=0.2)
    train = load_dataset(root, "train", crop=32, val_fraction=0.2, seed=9)
    assert val.names == ["img02.png", "img07.png"]
    assert train.names == [f"img{i:02d}.png" for i in (0, 1, 3, 4, 5, 6, 8, 9)]
    assert load_dataset(root, "val", crop=32, val_fraction=0.2).names == val.names
    ev = eval_images(root, "val", val_fraction=0.2)
    assert [n for n, _ in ev] == val.names
    assert ev[1][1].shape == (1, 3, 48, 48 + 8 * 7)
    assert len(eval_images(root, "all")) == 10


# --- the built-in set ---------------------------------------------------------------------------
def test_builtin_set_reads_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the built-in set tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    import skimage.data._fetchers as fetchers

    monkeypatch.setattr(fetchers, "_fetch", refuse)
    data._builtin_uint8.cache_clear()
    images = builtin_images()
    assert [n for n, _ in images] == list(data.BUILTIN_FILES)
    for name, img in images:
        assert img.dim() == 3 and img.shape[0] == 3 and min(img.shape[1:]) >= 256, name
        assert img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1
        assert (img[0] - img[1]).abs().max() > 0.05, f"{name} should be a colour photograph"


def test_builtin_split_fixed():
    val, train = builtin_split("val"), builtin_split("train")
    assert [n for n, _ in val] == list(BUILTIN_VAL) == ["coffee", "rocket"]
    assert len(train) == 6 and not {n for n, _ in train} & set(BUILTIN_VAL)
    assert len(builtin_split("all")) == 8
    ds = load_dataset("builtin", "train", crop=64)
    assert ds.names == [n for n, _ in train]
    assert torch.equal(ds.sample_batch(2, 3, seed=0), load_dataset(None, "train", crop=64).sample_batch(2, 3, seed=0))
    ev = eval_images(None)
    assert [n for n, _ in ev] == ["coffee", "rocket"] and ev[0][1].shape == (1, 3, 400, 600)
