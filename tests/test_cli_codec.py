"""The codec commands: the compress/decompress commands, and every bad file they can meet."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from feds_lab.cli import main
from feds_lab.coding import load_image
from feds_lab.errors import ImageReadError


@pytest.fixture
def photo(tmp_path):
    rng = np.random.default_rng(0)
    a = (rng.random((45, 77, 3)) * 255).astype(np.uint8)
    p = tmp_path / "photo.png"
    Image.fromarray(a).save(p)
    return p


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_compress_decompress_cli(tiny_checkpoints, photo, tmp_path, capsys):
    feds = tmp_path / "photo.feds"
    code, out, _ = run(capsys, "compress", photo, "-m", tiny_checkpoints["student"], "-o", feds)
    assert code == 0 and "bpp" in out and "ms" in out
    code, out, _ = run(capsys, "decompress", feds, "-m", tiny_checkpoints["student"], "-o", tmp_path / "back.png")
    assert code == 0 and "decode" in out
    assert Image.open(tmp_path / "back.png").size == (77, 45)
    # without -m the model is found by the fingerprint the file carries
    code, out, _ = run(capsys, "decompress", feds, "--search", tiny_checkpoints["student"].parent, "-o", tmp_path / "b2.png")
    assert code == 0 and "student.safetensors" in out


def _bad_files(good: bytes, tmp_path, photo):
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0xFF
    return {
        "truncated": (good[: len(good) // 2], "checksum mismatch"),
        "corrupted": (bytes(flipped), "checksum mismatch"),
        "empty": (b"", "not a feds-lab file"),
        "header only": (good[:20], "truncated"),
        "foreign": (photo.read_bytes(), "not a feds-lab file"),
        "future version": (good[:4] + bytes([9]) + good[5:], "version 9 is not supported"),
    }


def test_every_bad_file_fails_cleanly(tiny_checkpoints, photo, tmp_path, capsys):
    feds = tmp_path / "good.feds"
    assert run(capsys, "compress", photo, "-m", tiny_checkpoints["student"], "-o", feds)[0] == 0
    for name, (data, message) in _bad_files(feds.read_bytes(), tmp_path, photo).items():
        bad = tmp_path / "bad.feds"
        bad.write_bytes(data)
        code, _, err = run(capsys, "decompress", bad, "-m", tiny_checkpoints["student"], "-o", tmp_path / "x.png")
        assert code == 1, name
        assert message in err and "Traceback" not in err, (name, err)
    # a file written by another model
    code, _, err = run(capsys, "decompress", feds, "-m", tiny_checkpoints["teacher"], "-o", tmp_path / "x.png")
    assert code == 1 and "written by another model" in err
    code, _, err = run(capsys, "decompress", tmp_path / "nope.feds", "-m", tiny_checkpoints["teacher"])
    assert code == 1 and "no such file" in err
    code, _, err = run(capsys, "compress", tmp_path / "nope.png", "-m", tiny_checkpoints["teacher"])
    assert code == 1 and "no such file" in err


def test_cli_bad_file_in_a_real_process(tiny_checkpoints, photo, tmp_path):
    """Exit status, message and no traceback, as a shell user sees them; bounded in time (no hang)."""
    bad = tmp_path / "bad.feds"
    bad.write_bytes(b"FEDS\x01" + b"\x00" * 40)
    p = subprocess.run([sys.executable, "-m", "feds_lab.cli", "decompress", str(bad), "-m",
                        str(tiny_checkpoints["student"])], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1].startswith("feds-lab: error: checksum") and "Traceback" not in p.stderr


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "LA", "CMYK"])
def test_input_modes_are_converted_with_a_note(tmp_path, mode):
    rng = np.random.default_rng(1)
    rgb = Image.fromarray((rng.random((20, 30, 3)) * 255).astype(np.uint8))
    if mode == "I;16":
        im = Image.fromarray((rng.random((20, 30)) * 65535).astype(np.uint16))
        assert im.mode.startswith("I;16")
    else:
        im = rgb.convert(mode)
    path = tmp_path / ("im.tif" if mode == "CMYK" else "im.png")
    im.save(path)
    notes = []
    x = load_image(path, notes)
    assert x.shape == (1, 3, 20, 30) and 0 <= x.min() and x.max() <= 1
    assert notes and mode.split(";")[0] in notes[0]


def test_unreadable_image(tmp_path, tiny_checkpoints, capsys):
    p = tmp_path / "broken.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(ImageReadError, match="broken.png"):
        load_image(p)
    code, _, err = run(capsys, "compress", p, "-m", tiny_checkpoints["student"])
    assert code == 1 and "broken.png: cannot read" in err
