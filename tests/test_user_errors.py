"""Loose ends of the hostile-input campaign: images read by their actual range (float and 32-bit
integer TIFFs), errors said in the user's words (an unwritable output folder, a bad checkpoint record,
``--lambdas abc``), a data folder without a readable image refused before any work, and an image
too large for the memory refused before the encoder allocates it. All fast (no training)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from feds_lab.cli import main, os_error_message
from feds_lab.data import DataError, check_data_folder, read_image
from feds_lab.errors import CheckpointError, CodingError, FedsLabError, ImageReadError


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _gray(h=24, w=32, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w))  # in [0, 1)


# --- float and 32-bit integer images, by their actual range -----------------------------------------
def test_a_float_tiff_holding_0_to_255_is_read_as_0_to_255_not_clipped(tmp_path):
    levels = np.round(_gray() * 255)
    Image.fromarray(levels.astype(np.float32), "F").save(tmp_path / "f255.tif")
    assert Image.open(tmp_path / "f255.tif").mode == "F"
    notes = []
    img = read_image(tmp_path / "f255.tif", notes)
    assert torch.equal(img[0], torch.from_numpy(levels.astype(np.uint8)))  # not 90 % white
    assert torch.equal(img[0], img[2])
    assert len(notes) == 1 and "read as 0..255" in notes[0] and "F image" in notes[0]


def test_a_float_tiff_in_0_to_1_is_read_as_before(tmp_path):
    a = _gray()
    Image.fromarray(a.astype(np.float32), "F").save(tmp_path / "f01.tif")
    notes = []
    img = read_image(tmp_path / "f01.tif", notes)
    assert torch.equal(img[0], torch.from_numpy(np.round(a.astype(np.float32).astype(np.float64) * 255).astype(np.uint8)))
    assert "read as [0, 1]" in notes[0]


def test_a_float_tiff_beyond_255_is_scaled_by_its_maximum(tmp_path):
    a = _gray() * 4000.0
    a[0, 0] = 4000.0
    Image.fromarray(a.astype(np.float32), "F").save(tmp_path / "fbig.tif")
    notes = []
    img = read_image(tmp_path / "fbig.tif", notes)
    assert img.max() == 255 and (img[0] == 255).float().mean() < 0.01  # nothing saturates but the maximum
    assert "scaled by its maximum" in notes[0] and "4000" in notes[0]


def test_float_images_whose_range_cannot_be_told_are_refused(tmp_path):
    a = (_gray() * 255).astype(np.float32)
    nan = a.copy()
    nan[3, 4] = np.nan
    Image.fromarray(nan, "F").save(tmp_path / "nan.tif")
    with pytest.raises(ImageReadError, match=r"nan.tif: cannot read this image \(a float image with 1 NaN"):
        read_image(tmp_path / "nan.tif")
    Image.fromarray(a - 128, "F").save(tmp_path / "signed.tif")
    with pytest.raises(ImageReadError, match=r"negative values in \d+% of its pixels"):
        read_image(tmp_path / "signed.tif")
    few = a.copy()
    few[0, 0] = -3.0  # one pixel in 768: clipped to 0, and said
    Image.fromarray(few, "F").save(tmp_path / "few.tif")
    notes = []
    assert read_image(tmp_path / "few.tif", notes)[0, 0, 0] == 0
    assert "negative values in 0.13% of the pixels set to 0" in notes[0]


def test_an_int32_tiff_is_read_by_its_range_not_as_16_bit(tmp_path):
    a = np.round(_gray() * 4_000_000).astype(np.int32)
    a[0, 0] = 4_000_000
    Image.fromarray(a, "I").save(tmp_path / "i32.tif")
    im = Image.open(tmp_path / "i32.tif")
    assert im.mode == "I" and im.tag_v2[258] in (32, (32,))
    notes = []
    img = read_image(tmp_path / "i32.tif", notes)
    assert (img[0] == 255).float().mean() < 0.01  # 71 % saturated when read as 16-bit
    assert torch.equal(img[0], torch.from_numpy(np.round(a / 4_000_000 * 255).astype(np.uint8)))
    assert "32-bit integer grayscale with values up to 4000000, scaled by its maximum" in notes[0]
    # an int32 TIFF of 8-bit levels: those levels (not divided by 257 into a black image)
    levels = np.round(_gray(seed=1) * 255).astype(np.int32)
    Image.fromarray(levels, "I").save(tmp_path / "i8.tif")
    notes = []
    assert torch.equal(read_image(tmp_path / "i8.tif", notes)[1], torch.from_numpy(levels.astype(np.uint8)))
    assert "read as 8-bit levels" in notes[0]


def test_a_16_bit_pgm_read_as_mode_i_stays_16_bit(tmp_path):
    """Pillow reads 16-bit PGMs as ``I``: their file says 16 bits, so even a dark one is 16-bit."""
    a = np.full((4, 6), 200, ">u2")  # dark: 200 of 65535
    a[0, 0] = 65535
    (tmp_path / "g16.pgm").write_bytes(b"P5 6 4 65535\n" + a.tobytes())
    assert Image.open(tmp_path / "g16.pgm").mode == "I"
    notes = []
    img = read_image(tmp_path / "g16.pgm", notes)
    assert img[0, 0, 0] == 255 and img[0, 1, 1] == 1  # 200 / 257, rounded
    assert "read as 16-bit" in notes[0]


# --- errors in the user's words ---------------------------------------------------------------------
def test_os_errors_are_said_without_python_s_errno_text():
    msg = os_error_message(PermissionError(13, "Permission denied", "/data/out/x.feds"))
    assert msg.startswith("/data/out/x.feds: permission denied; check the permissions") and "Errno" not in msg
    assert os_error_message(OSError(28, "No space left on device")).startswith("no space left on device; the disk")


def test_an_unwritable_output_folder_is_said_in_one_line(tiny_checkpoints, tmp_path, capsys, monkeypatch):
    import feds_lab.io as io

    photo = tmp_path / "photo.png"
    Image.fromarray((_gray(20, 30)[..., None].repeat(3, 2) * 255).astype(np.uint8)).save(photo)

    def refuse(*a, dir=None, **k):  # what a folder the user may not write to gives, even to root
        raise PermissionError(1, "Operation not permitted", f"{dir}/.x.feds.abc123.tmp")

    monkeypatch.setattr(io.tempfile, "mkstemp", refuse)
    code, _, err = run(capsys, "compress", photo, "-m", tiny_checkpoints["student"], "-o", tmp_path / "out" / "x.feds")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith(f"feds-lab: error: {tmp_path / 'out' / 'x.feds'}: cannot write it: operation not permitted")
    assert "Errno" not in err and "PermissionError" not in err and ".tmp" not in err


def test_a_record_with_a_size_in_words_is_named(tiny_checkpoints, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from feds_lab.checkpoint import load_model

    with safe_open(str(tiny_checkpoints["student"]), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata())
    record = json.loads(meta["feds_lab"])
    record["model"]["overrides"] = {"N": "big"}
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={**meta, "feds_lab": json.dumps(record)})
    with pytest.raises(CheckpointError) as e:
        load_model(bad)
    assert "the model setting N='big' is not a whole number" in str(e.value)
    assert "string formatting" not in str(e.value)


def test_lambdas_that_are_not_numbers_are_said_so(tmp_path, capsys):
    code, _, err = run(capsys, "pipeline", "--lambdas", "abc", "--runs-dir", tmp_path / "runs")
    assert code == 1 and "'abc' is not a number" in err
    assert "ValueError" not in err and "could not convert" not in err


# --- a data folder without a readable image -----------------------------------------------------------
def test_a_data_folder_without_a_readable_image_is_refused(tmp_path):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.png").write_bytes(b"not a png")
    (junk / "b.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"data: no readable image in .*junk: none of its 2 image file\(s\) can be read"):
        check_data_folder(junk)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="eval_data: no images"):
        check_data_folder(tmp_path / "empty", what="eval_data")
    with pytest.raises(DataError, match="does not exist or is not a folder"):
        check_data_folder(tmp_path / "nope")
    assert check_data_folder(None) == [] and check_data_folder("builtin") == [] and check_data_folder("builtin-eval") == []


def test_a_data_folder_names_every_unreadable_file_and_checks_the_split(tmp_path):
    good = (_gray(16, 16)[..., None].repeat(3, 2) * 255).astype(np.uint8)
    Image.fromarray(good).save(tmp_path / "good.png")
    assert check_data_folder(tmp_path) == [tmp_path / "good.png"]
    with pytest.raises(DataError, match="a train/val split needs at least 2 images"):
        check_data_folder(tmp_path, "train")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 30)
    with pytest.raises(DataError, match=r"1 of the 2 image files in .* cannot be read \(remove or fix them\): sub/bad.png"):
        check_data_folder(tmp_path, "train")


def test_the_pipeline_refuses_a_folder_without_a_readable_image_before_any_notebook(tmp_path, monkeypatch):
    import papermill

    from feds_lab.pipeline import PipelineConfig, run_pipeline

    def no_kernel(*a, **k):
        raise AssertionError("a notebook kernel was started")

    monkeypatch.setattr(papermill, "execute_notebook", no_kernel)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.png").write_bytes(b"not a png")
    cfg = PipelineConfig().updated(dict(name="t", runs_dir=str(tmp_path / "runs"), data=str(junk), figures_dir=None))
    with pytest.raises(FedsLabError, match="no readable image"):
        run_pipeline(cfg, log=lambda _line: None)


# --- the encoder's memory ---------------------------------------------------------------------------
def test_encode_refuses_an_image_larger_than_the_memory_saying_how_much(tiny_checkpoints, monkeypatch):
    import feds_lab.coding as coding
    from feds_lab.checkpoint import load_model

    model = load_model(tiny_checkpoints["student"])
    x = torch.rand(1, 3, 40, 70)
    need = coding.encode_memory(model, 64, 128)
    monkeypatch.setattr(coding, "_available_memory", lambda: need - 1)
    with pytest.raises(CodingError, match=r"coding this 70x40 image \(0.0 megapixels\) needs about 0.1 GiB of memory; "
                                          r"0.1 GiB are available"):
        coding.encode(model, x)
    monkeypatch.setattr(coding, "_available_memory", lambda: need)
    assert coding.encode(model, x).width == 70
    # an 81-megapixel photograph (11000 x 7360): gigabytes, even for the tiny student
    assert coding.encode_memory(model, 7360, 11008) > 3 * 2**30


def test_compress_says_the_memory_in_one_line(tiny_checkpoints, tmp_path, capsys, monkeypatch):
    import feds_lab.coding as coding

    photo = tmp_path / "photo.png"
    Image.fromarray((_gray(20, 30)[..., None].repeat(3, 2) * 255).astype(np.uint8)).save(photo)
    monkeypatch.setattr(coding, "_available_memory", lambda: 10 << 20)
    code, _, err = run(capsys, "compress", photo, "-m", tiny_checkpoints["student"])
    assert code == 1 and err.strip().splitlines() == [
        "feds-lab: error: coding this 30x20 image (0.0 megapixels) needs about 0.1 GiB of memory; 0.0 GiB are "
        "available (code a smaller image, or use a machine with more memory)"]
    assert not (tmp_path / "photo.feds").exists()


def test_a_study_config_names_its_photographs_by_an_environment_variable(tmp_path, monkeypatch):
    """The study configs say `data: $FEDS_LAB_PHOTOS`: unset, a clear error; set, that folder."""
    from feds_lab.errors import FedsLabError
    from feds_lab.pipeline import PipelineConfig

    monkeypatch.delenv("FEDS_LAB_PHOTOS", raising=False)
    cfg = PipelineConfig.from_yaml("configs/pipelines/study_feds.yaml").updated({"runs_dir": str(tmp_path / "runs")})
    with pytest.raises(FedsLabError, match=r"FEDS_LAB_PHOTOS, which is not set.*--data DIR"):
        cfg.resolved()
    (tmp_path / "photos").mkdir()
    monkeypatch.setenv("FEDS_LAB_PHOTOS", str(tmp_path / "photos"))
    assert cfg.resolved().data == str((tmp_path / "photos").resolve())
