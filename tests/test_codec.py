"""Real coding: the codecs code for real, at any size, reproducibly, and checkpoints are strict."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from feds_lab import build_model
from feds_lab.checkpoint import fingerprint, load_model, load_weights, read_record, save_model
from feds_lab.coding import decode, encode, pad_image
from feds_lab.errors import CheckpointError, CheckpointMismatchError
from feds_lab.models import FEATURE_NAMES
from feds_lab.presets import PRESET_NAMES

SIZES = [(64, 64), (37, 101), (10, 10), (130, 70)]


@pytest.mark.parametrize("role", ["teacher", "student"])
@pytest.mark.parametrize("size", SIZES)
def test_round_trip_any_size(tiny_checkpoints, role, size):
    model = load_model(tiny_checkpoints[role])
    torch.manual_seed(1)
    x = torch.rand(1, 3, *size)
    r = encode(model, x)
    assert r.bpp == 8 * len(r.data) / (size[0] * size[1])
    d = decode(model, r.data)
    assert d.x_hat.shape == x.shape
    # the decoder reproduces what the encoder-side forward pass reconstructs
    with torch.no_grad():
        xp, _ = pad_image(x)
        ref = model(xp)["x_hat"].clamp(0, 1)[..., : size[0], : size[1]]
    assert torch.allclose(d.x_hat, ref, atol=1e-4)
    # byte-identical re-encoding
    assert encode(model, x).data == r.data


def test_reloaded_model_codes_identical_bytes(tiny_checkpoints, tmp_path):
    a = load_model(tiny_checkpoints["teacher"])
    b = load_model(save_model(a, tmp_path / "again.safetensors"))
    x = torch.rand(1, 3, 80, 48)
    assert fingerprint(a) == fingerprint(b)
    assert encode(a, x).data == encode(b, x).data


def test_decode_in_fresh_process_is_bit_exact(tiny_checkpoints, tmp_path):
    model = load_model(tiny_checkpoints["teacher"])
    torch.manual_seed(2)
    x = torch.rand(1, 3, 70, 90)
    (tmp_path / "img.feds").write_bytes(encode(model, x).data)
    here = decode(model, (tmp_path / "img.feds").read_bytes()).x_hat
    code = (
        "import sys, torch; from safetensors.torch import save_file\n"
        "from feds_lab.checkpoint import load_model; from feds_lab.coding import decode\n"
        "m = load_model(sys.argv[1]); d = decode(m, open(sys.argv[2], 'rb').read())\n"
        "save_file({'x': d.x_hat.contiguous()}, sys.argv[3])\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tiny_checkpoints["teacher"]), str(tmp_path / "img.feds"),
                    str(tmp_path / "out.safetensors")], check=True, timeout=120)
    there = load_file(tmp_path / "out.safetensors")["x"]
    assert torch.equal(here, there)


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_named_features_line_up(preset):
    teacher, student = build_model("teacher", preset), build_model("student", preset)
    x = torch.rand(1, 3, 64, 128)
    with torch.no_grad():
        ft = teacher(x, return_features=True)["features"]
        fs = student(x, return_features=True)["features"]
    assert tuple(ft) == FEATURE_NAMES == tuple(fs)
    strides = dict(ga1=2, ga2=4, ga3=8, y=16, gs1=8, gs2=4, gs3=2)
    for name in FEATURE_NAMES:
        assert ft[name].shape[-2:] == fs[name].shape[-2:] == (64 // strides[name], 128 // strides[name])
        assert ft[name].shape[1] == teacher.feature_channels()[name]
        assert fs[name].shape[1] == student.feature_channels()[name]
    # no features are kept between calls unless asked for
    assert "features" not in student(x)


def test_presets_and_paper_ratio():
    counts = {}
    for preset in PRESET_NAMES:
        for role in ("teacher", "student"):
            counts[preset, role] = sum(p.numel() for p in build_model(role, preset).parameters())
    assert counts["paper", "student"] / counts["paper", "teacher"] <= 0.37
    assert counts["tiny", "teacher"] < counts["mini", "teacher"] < counts["small", "teacher"] < counts["paper", "teacher"]
    for preset in ("tiny", "mini"):  # the zoo's presets: the student a quarter of its teacher
        assert 0.2 < counts[preset, "student"] / counts[preset, "teacher"] < 0.3
    with pytest.raises(ValueError, match="unknown preset"):
        build_model("teacher", "huge")
    with pytest.raises(ValueError, match="unknown model family"):
        build_model("teacher", "tiny", family="nope")


def test_plain_hyperprior_option_codes():
    m = build_model("student", "tiny", entropy_model="hyperprior")
    m.update(force=True)
    m.eval()
    x = torch.rand(1, 3, 50, 60)
    assert decode(m, encode(m, x).data).x_hat.shape == x.shape


def test_checkpoint_record_and_mismatch(tiny_checkpoints, tmp_path):
    rec = read_record(tiny_checkpoints["student"])
    assert rec["model"]["role"] == "student" and rec["model"]["M"] == 32 and rec["lmbda"] == 0.0067
    assert rec["package_version"] and len(rec["fingerprint"]) == 16
    with pytest.raises(CheckpointMismatchError, match=r"differ in shape.*checkpoint \(16, 3, 3, 3\) vs model \(32, 3, 3, 3\)"):
        load_weights(build_model("teacher", "tiny"), tiny_checkpoints["student"])
    # a safetensors file that is not ours, and a file that is not safetensors at all
    save_file({"w": torch.zeros(2)}, tmp_path / "foreign.safetensors")
    with pytest.raises(CheckpointError, match="not a feds-lab checkpoint"):
        load_model(tmp_path / "foreign.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint"):
        load_model(tmp_path / "junk.safetensors")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_model(tmp_path / "missing.safetensors")
