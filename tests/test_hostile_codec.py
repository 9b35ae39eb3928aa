"""Hostile inputs to the codec, its files and its checkpoints; the crafted cases as regressions."""

from __future__ import annotations

import json
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from feds_lab import coding
from feds_lab.bitstream import Bitstream
from feds_lab.checkpoint import RECORD_KEY, load_model, read_record
from feds_lab.cli import main
from feds_lab.coding import decode, encode, load_image
from feds_lab.errors import BitstreamError, CheckpointError, CheckpointMismatchError, FedsLabError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def photo(tmp_path):
    a = (np.random.default_rng(1).random((45, 77, 3)) * 255).astype(np.uint8)
    p = tmp_path / "photo.png"
    Image.fromarray(a).save(p)
    return p


@pytest.fixture(scope="module")
def student(tiny_checkpoints):
    return load_model(tiny_checkpoints["student"])


@pytest.fixture(scope="module")
def good(student):
    x = torch.rand(1, 3, 45, 77, generator=torch.Generator().manual_seed(2))
    return encode(student, x).data


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _sha(p):
    return p.read_bytes()


# --- 1. outputs never replace inputs ------------------------------------------------------------------

def test_decompress_default_name_never_the_original(tiny_checkpoints, photo, tmp_path, capsys):
    original = photo.read_bytes()
    m = tiny_checkpoints["student"]
    assert run(capsys, "compress", photo, "-m", m)[0] == 0  # photo.feds beside photo.png
    feds = tmp_path / "photo.feds"
    code, out, _ = run(capsys, "decompress", feds, "-m", m)
    assert code == 0 and "photo.decoded.png" in out and "PNG image" in out
    assert photo.read_bytes() == original
    assert Image.open(tmp_path / "photo.decoded.png").size == (77, 45)
    # the output exists now: refused without --force, replaced with it
    code, _, err = run(capsys, "decompress", feds, "-m", m)
    assert code == 1 and "exists" in err and "--force" in err and err.count("\n") == 1
    assert run(capsys, "decompress", feds, "-m", m, "-f")[0] == 0
    # compress: the default output exists too
    code, _, err = run(capsys, "compress", photo, "-m", m)
    assert code == 1 and "exists" in err
    assert photo.read_bytes() == original


def test_an_output_is_never_an_input_even_with_force(tiny_checkpoints, photo, tmp_path, capsys):
    m = tiny_checkpoints["student"]
    original, model_bytes = photo.read_bytes(), m.read_bytes()
    for argv in (["compress", photo, "-m", m, "-o", photo, "-f"],  # an image name: refused
                 ["compress", photo, "-m", m, "-o", m, "-f"],
                 ["compress", photo, "-m", m, "-o", tmp_path / "x.jpg"]):
        code, _, err = run(capsys, *argv)
        assert code == 1 and err.startswith("feds-lab: error:"), argv
    assert photo.read_bytes() == original and m.read_bytes() == model_bytes
    feds = tmp_path / "a.feds"
    assert run(capsys, "compress", photo, "-m", m, "-o", feds)[0] == 0
    stream = feds.read_bytes()
    code, _, err = run(capsys, "decompress", feds, "-m", m, "-o", feds, "-f")
    assert code == 1 and feds.read_bytes() == stream
    link = tmp_path / "link.png"
    link.symlink_to(photo)  # the same file under another name
    code, _, err = run(capsys, "decompress", feds, "-m", m, "-o", link, "-f")
    assert code == 0 or "input" in err
    code, _, err = run(capsys, "decompress", feds, "-m", m, "-o", tmp_path / "x.xyz")
    assert code == 1 and ".xyz" in err and not (tmp_path / "x.xyz").exists()
    code, out, _ = run(capsys, "decompress", feds, "-m", m, "-o", tmp_path / "x.webp")
    assert code == 0 and "WEBP image" in out and Image.open(tmp_path / "x.webp").format == "WEBP"


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_files_get_the_umask_mode(tiny_checkpoints, photo, tmp_path, capsys, umask):
    old = os.umask(umask)
    try:
        m = tiny_checkpoints["student"]
        assert run(capsys, "compress", photo, "-m", m, "-o", tmp_path / "a.feds")[0] == 0
        assert run(capsys, "decompress", tmp_path / "a.feds", "-m", m, "-o", tmp_path / "a.png")[0] == 0
    finally:
        os.umask(old)
    for name in ("a.feds", "a.png"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    assert not list(tmp_path.glob(".*.tmp"))


def test_animated_gif_codes_frame_one_with_a_note(tiny_checkpoints, tmp_path, capsys):
    rng = np.random.default_rng(3)
    frames = [Image.fromarray((rng.random((20, 30, 3)) * 255).astype(np.uint8)) for _ in range(3)]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    code, _, err = run(capsys, "compress", gif, "-m", tiny_checkpoints["student"])
    assert code == 0 and "animated GIF with 3 frames: only frame 1" in err
    from feds_lab.data import IMAGE_EXTENSIONS, list_images

    assert ".gif" in IMAGE_EXTENSIONS and gif in list_images(tmp_path)


# --- 2-5. checkpoints: validated before use -------------------------------------------------------

def _tamper(src, dst, edit=None, record=None):
    with safe_open(str(src), "pt") as f:
        st = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata())
    if edit:
        edit(st)
    if record is not None:
        meta[RECORD_KEY] = record(json.loads(meta[RECORD_KEY])) if callable(record) else record
    save_file(st, str(dst), metadata=meta)
    return dst


def _first(st, suffix):
    return next(k for k in sorted(st) if k.endswith(suffix))


TABLE_EDITS = {
    "cdf_length zeroed": lambda st: st.__setitem__(k := _first(st, "_cdf_length"), torch.zeros_like(st[k])),
    "quantized_cdf zeroed": lambda st: st.__setitem__(k := _first(st, "_quantized_cdf"), torch.zeros_like(st[k])),
    "quantized_cdf two columns": lambda st: st.__setitem__(k := _first(st, "_quantized_cdf"), st[k][:, :2].contiguous()),
    "huge offset": lambda st: st.__setitem__(k := _first(st, "_offset"), torch.full_like(st[k], 10**6)),
    "scale_table": lambda st: st.__setitem__(_first(st, "scale_table"), torch.full((3,), -1.0)),
}


@pytest.mark.parametrize("name", sorted(TABLE_EDITS))
def test_coder_tables_are_rebuilt_never_trusted(tiny_checkpoints, tmp_path, name, good, student):
    """Once SIGSEGV/SIGFPE in the C++ coder, or 6.28 bpp instead of 0.34: now the file's tables are ignored."""
    bad = _tamper(tiny_checkpoints["student"], tmp_path / "t.safetensors", TABLE_EDITS[name])
    model = load_model(bad)
    x = torch.rand(1, 3, 45, 77, generator=torch.Generator().manual_seed(2))
    assert encode(model, x).data == good  # exactly the genuine model's bytes
    assert torch.equal(decode(model, good).x_hat, decode(student, good).x_hat)


def _set_nan(st):
    k = next(k for k in sorted(st) if k.endswith("weight") and st[k].dim() == 4)
    st[k] = st[k].clone()
    st[k].view(-1)[0] = float("nan")


def _as_int(st):
    k = next(k for k in sorted(st) if k.endswith("weight") and st[k].dim() == 4)
    st[k] = st[k].to(torch.int64)


def _quantiles(st):
    k = _first(st, "quantiles")
    st[k] = st[k].clone()
    st[k][..., 2] = 1e9


def _mask(st):
    k = _first(st, "mask")
    st[k] = torch.ones_like(st[k])


@pytest.mark.parametrize("edit, message", [(_set_nan, "non-finite"), (_as_int, "dtype"),
                                           (_quantiles, "symbols per channel"), (_mask, "constant buffers")])
def test_broken_weights_are_refused(tiny_checkpoints, tmp_path, edit, message):
    """Non-finite weights or floats stored as integers once made compress hang for ever."""
    bad = _tamper(tiny_checkpoints["student"], tmp_path / "w.safetensors", edit)
    with pytest.raises(CheckpointError, match=message) as e:
        load_model(bad)
    assert "\n" not in str(e.value)


def test_record_sizes_are_checked_before_a_model_is_built(tiny_checkpoints, tmp_path):
    """A 2 MB file whose record said N = M = 30000 asked for 32 GB."""
    def sizes(n, m):
        def edit(rec):
            rec["model"]["overrides"] = {"N": n, "M": m}
            return json.dumps(rec)
        return edit

    huge = _tamper(tiny_checkpoints["student"], tmp_path / "h.safetensors", record=sizes(30000, 30000))
    with pytest.raises(CheckpointError, match="out of range"):
        load_model(huge)

    def blocks(rec):  # the campaign's one hang: 16,000 residual blocks took minutes to build, even on meta
        rec["model"]["overrides"] = {"res_blocks": 16000}
        return json.dumps(rec)

    with pytest.raises(CheckpointError, match="res_blocks=16000 is out of range"):
        load_model(_tamper(tiny_checkpoints["student"], tmp_path / "d.safetensors", record=blocks))
    # within the bound, but not the file's tensors: refused from the meta-device skeleton, nothing allocated
    big = _tamper(tiny_checkpoints["student"], tmp_path / "b.safetensors", record=sizes(12000, 16000))
    with pytest.raises(CheckpointMismatchError, match="differ in shape"):
        load_model(big)


@pytest.mark.parametrize("record, message", [("[1, 2]", "list"), ("[" * 100000 + "]" * 100000, "JSON"),
                                             ('{"format": 5}', "format"), ("null", "NoneType"),
                                             ('{"format": "feds-lab-checkpoint/1", "model": [1]}', "model"),
                                             ('{"format": "feds-lab-checkpoint/1", "model": {"family": 1, '
                                              '"role": "student", "preset": "tiny"}}', "family")])
def test_bad_records_give_one_package_error(tiny_checkpoints, tmp_path, record, message, capsys):
    bad = _tamper(tiny_checkpoints["student"], tmp_path / "r.safetensors", record=record)
    with pytest.raises(CheckpointError, match=message):
        load_model(bad)
    code, _, err = run(capsys, "info", bad)  # info reads the record alone: a readable one is printed
    assert "Traceback" not in err and (code == 0 if "family" in message else code == 1 and err.count("\n") == 1)


# --- 3, 6. the decoder: bounded before it allocates ------------------------------------------------

def _with(good: bytes, *, h=None, w=None, shape=None, streams=None) -> bytes:
    bs = Bitstream.from_bytes(good)
    raw = json.dumps(shape, separators=(",", ":")).encode() if shape is not None and not isinstance(shape, bytes) else shape
    sts = bs.streams if streams is None else streams
    out = struct.pack(">4sB8sIIB", b"FEDS", 1, bytes.fromhex(bs.fingerprint), h or bs.height, w or bs.width, len(sts))
    out += struct.pack(f">{len(sts)}I", *map(len, sts))
    sj = raw if raw is not None else json.dumps(bs.shape, separators=(",", ":")).encode()
    out += struct.pack(">H", len(sj)) + sj + b"".join(sts)
    return out + struct.pack(">I", zlib.crc32(out))


def test_decompression_bombs_are_refused_before_allocating(student, good):
    """A 483-byte file with a 1024x1024 hyper-latent once allocated 7.9 GB; 4096x4096 decoded "fine"."""
    cases = {
        "hyper 1024x1024": _with(good, shape={"y": [32, 4, 8], "hyper": [1024, 1024]}),
        "declared 4096x4096": _with(good, h=4096, w=4096),
        "y channels": _with(good, shape={"y": [320, 4, 8], "hyper": [1, 2]}),
        "deep nesting": _with(good, shape=b"[" * 60000),
        "floats": _with(good, shape=b'{"y":[32.5,4,8],"hyper":[1,2]}'),
        "a list": _with(good, shape=[1, 2]),
        "bools": _with(good, shape={"y": [True, 4, 8], "hyper": [1, 2]}),
        "too many pixels": _with(good, h=65536, w=65536),
        "one stream too few": _with(good, streams=Bitstream.from_bytes(good).streams[:2]),
    }
    for name, data in cases.items():
        with pytest.raises(BitstreamError) as e:
            decode(student, data)
        assert "\n" not in str(e.value), name


def test_a_coherent_large_file_needs_the_memory_it_declares(student, good, monkeypatch):
    """Memory for a decode is bounded by the image it declares: refused when that memory is not there."""
    data = _with(good, h=4096, w=4096, shape={"y": [32, 256, 256], "hyper": [64, 64]})
    monkeypatch.setattr(coding, "_available_memory", lambda: 64 << 20)
    with pytest.raises(BitstreamError, match="needs about"):
        decode(student, data)
    with pytest.raises(BitstreamError, match="needs about"):
        decode(student, _with(good, h=2000, w=3000, shape={"y": [32, 128, 188], "hyper": [32, 47]}))


def test_garbage_streams_give_a_package_error_or_a_finite_image(student, good):
    """40 mutants with a recomputed CRC once decoded to NaN pixels without an error."""
    rng = np.random.default_rng(4)
    bs = Bitstream.from_bytes(good)
    outcomes = set()
    for i in range(60):
        sts = [bytearray(s) for s in bs.streams]
        k = int(rng.integers(len(sts)))
        if i % 3 == 0:
            sts[k] = bytearray(b"\xff" * int(rng.integers(1, 400)))
        elif len(sts[k]):
            for _ in range(int(rng.integers(1, 5))):
                sts[k][int(rng.integers(len(sts[k])))] = int(rng.integers(256))
        try:
            out = decode(student, _with(good, streams=[bytes(s) for s in sts]))
        except BitstreamError as e:
            assert "\n" not in str(e)
            outcomes.add("refused")
        else:
            assert torch.isfinite(out.x_hat).all() and out.x_hat.shape == (1, 3, 45, 77)
            outcomes.add("decoded")
    assert outcomes  # both are fine; nothing else leaves decode


def test_non_finite_latents_are_refused_by_the_encoder(tiny_checkpoints, tmp_path):
    """Weights that overflow (finite, 3e38) give an inf latent: refused before the C++ coder loops for ever."""
    def huge(st):
        k = next(k for k in sorted(st) if k.startswith("g_a") and k.endswith("weight") and st[k].dim() == 4)
        st[k] = torch.full_like(st[k], 3e38)

    model = load_model(_tamper(tiny_checkpoints["student"], tmp_path / "o.safetensors", huge))
    with pytest.raises(FedsLabError, match="non-finite or absurd"):
        encode(model, torch.rand(1, 3, 64, 64))


def test_read_record_only_raises_package_errors(tmp_path):
    for name, data in {"empty": b"", "short": b"\x05", "huge header": struct.pack("<Q", 2**62) + b"{}",
                       "not json": struct.pack("<Q", 4) + b"abcd", "zeros": bytes(100)}.items():
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(data)
        with pytest.raises(CheckpointError):
            read_record(p)
