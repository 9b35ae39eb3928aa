"""Quality metrics on 8-bit RGB, and the Pillow anchors in the results format."""

import dataclasses
import io
import json
import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, features
from pytorch_msssim import ms_ssim as reference_ms_ssim
from skimage.metrics import peak_signal_noise_ratio

from feds_lab.evaluation import anchors
from feds_lab.evaluation.anchors import CODECS, CodecError, code_image, evaluate_codec, get_codec, run_anchors
from feds_lab.data import builtin_images
from feds_lab.evaluation.evaluate import load_results
from feds_lab.evaluation.metrics import MS_SSIM_MIN_SIDE, image_quality, ms_ssim, ms_ssim_db, psnr, quantize_8bit


@pytest.fixture(scope="module")
def photo():
    """A 192x192 crop of scikit-image's astronaut: the smallest square MS-SSIM takes, rounded up."""
    name, x = builtin_images()[0]
    x = x.unsqueeze(0) if x.dim() == 3 else x
    return x[..., 100:292, 160:352].contiguous()


def levels(array):
    return torch.from_numpy(np.asarray(array, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0) / 255


# --- metrics -------------------------------------------------------------------------------------


def test_psnr_known_value_and_skimage():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + 3, 0, 255).astype(np.uint8)
    expected = peak_signal_noise_ratio(a, b, data_range=255)
    assert psnr(levels(a), levels(b)) == pytest.approx(expected, abs=1e-9)
    flat = np.full((8, 8, 3), 100, np.uint8)
    assert psnr(levels(flat), levels(flat + 3)) == pytest.approx(10 * math.log10(255**2 / 9), abs=1e-9)


def test_psnr_quantises_and_clamps_before_measuring():
    a = levels(np.full((8, 8, 3), 100, np.uint8))
    # less than half an 8-bit level away, or out of range on the same side: the same 8-bit image
    assert psnr(a, a + 0.4 / 255) == math.inf
    assert psnr(torch.ones(1, 3, 8, 8), torch.full((1, 3, 8, 8), 1.3)) == math.inf
    assert psnr(a, a + 0.6 / 255) == pytest.approx(10 * math.log10(255**2 / 1), abs=1e-9)
    assert torch.equal(quantize_8bit(torch.tensor([-0.2, 0.4 / 255, 1.7 / 255, 2.0])),
                       torch.tensor([0.0, 0.0, 2 / 255, 1.0]))


def test_ms_ssim_against_pytorch_msssim_on_8bit_data(photo):
    noisy = (photo + 0.03 * torch.randn(photo.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    ours = ms_ssim(photo, noisy)
    expected = float(reference_ms_ssim(torch.round(photo * 255), torch.round(noisy * 255), data_range=255))
    assert ours == pytest.approx(expected, abs=1e-5)
    assert 0.5 < ours < 0.999
    assert ms_ssim(photo, photo) == pytest.approx(1.0, abs=1e-6)
    assert ms_ssim_db(0.99) == pytest.approx(20.0) and ms_ssim_db(1.0) == math.inf
    q = image_quality(photo, noisy)
    assert q["ms-ssim-rgb-db"] == pytest.approx(-10 * math.log10(1 - q["ms-ssim-rgb"]))
    assert q["psnr-rgb"] == pytest.approx(psnr(photo, noisy))


def test_ms_ssim_on_small_images_is_nan_with_a_warning(photo):
    small = photo[..., : MS_SSIM_MIN_SIDE - 1, :]
    with pytest.warns(UserWarning, match="too small for MS-SSIM"):
        assert math.isnan(ms_ssim(small, small))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not math.isnan(ms_ssim(photo[..., :MS_SSIM_MIN_SIDE, :], photo[..., :MS_SSIM_MIN_SIDE, :]))
    with pytest.warns(UserWarning):
        assert math.isnan(image_quality(small, small)["ms-ssim-rgb-db"])


def test_metrics_reject_mismatched_shapes(photo):
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(photo, photo[..., :-1])
    with pytest.raises(ValueError, match="differ in shape"):
        ms_ssim(photo, photo[..., :-1, :])


# --- anchors -------------------------------------------------------------------------------------


def test_this_pillow_has_all_four_codecs():
    # Pillow >= 11.3 with its wheels' libraries has all four; the project requires it
    assert set(anchors.available_codecs()) == {"jpeg", "webp", "avif", "jpeg2000"}
    assert all(features.check(c.feature) for c in CODECS.values())


@pytest.mark.parametrize("key", list(CODECS))
def test_codec_sweep_is_measured_from_the_bytes(photo, key):
    codec = CODECS[key]
    sweep = (codec.sweep[0], codec.sweep[len(codec.sweep) // 2], codec.sweep[-1])
    res = evaluate_codec(key, [("crop", photo)], sweep=sweep)
    r = res["results"]
    assert res["name"] == codec.name and len(r["bpp"]) == 3
    # sorted by bpp, and quality rises with it
    assert r["bpp"] == sorted(r["bpp"]) and r["psnr-rgb"] == sorted(r["psnr-rgb"])
    assert r["ms-ssim-rgb"] == sorted(r["ms-ssim-rgb"])
    # the default sweep spans the learned models' range
    assert r["bpp"][0] < 0.35 and r["bpp"][-1] > 1.5, r["bpp"]
    for row, setting in zip((p[0] for p in res["per_image"]), res["settings"]):
        assert row["bpp"] == pytest.approx(8 * row["bytes"] / (192 * 192))
        assert row["encoding_time"] > 0 and row["decoding_time"] > 0
        # re-code at the same setting: the same bytes, the same PSNR
        data, decoded, _, _ = code_image(anchors.to_pil(photo), codec, setting[codec.param])
        assert len(data) == row["bytes"]
        assert psnr(photo, anchors.from_pil(decoded)) == pytest.approx(row["psnr-rgb"], abs=1e-9)
    if key == "jpeg2000":  # rate control hits its target within the container's overhead
        assert r["bpp"] == pytest.approx(list(sweep), rel=0.25)
    assert res["meta"]["pillow"] and res["meta"]["swept"] == codec.param


def test_code_image_is_a_real_round_trip(photo):
    image = anchors.to_pil(photo)
    data, decoded, _, _ = code_image(image, CODECS["jpeg"], 75)
    assert data[:2] == b"\xff\xd8"  # a JPEG file
    again = Image.open(io.BytesIO(data)).convert("RGB")
    assert np.array_equal(np.asarray(again), np.asarray(decoded))
    assert torch.equal(anchors.from_pil(image), quantize_8bit(photo))


def test_run_anchors_writes_files_that_compressai_plot_reads(photo, tmp_path, monkeypatch):
    from compressai.utils.plot.__main__ import parse_json_file

    monkeypatch.setitem(CODECS, "jpeg", dataclasses.replace(CODECS["jpeg"], sweep=(10, 40, 70, 90)))
    results = run_anchors([("crop", photo)], codecs=["jpeg"], out_dir=tmp_path, progress=False)
    path = tmp_path / "jpeg.json"
    assert path.is_file() and set(results) == {"jpeg"}
    data = json.loads(path.read_text())
    assert [s["quality"] for s in data["settings"]] == [10, 40, 70, 90]
    assert load_results(path)["name"] == "JPEG"
    parsed = parse_json_file(path, "ms-ssim")
    expected = [-10 * math.log10(1 - v) for v in data["results"]["ms-ssim-rgb"]]
    assert parsed["name"] == "JPEG" and np.allclose(parsed["ys"], expected)
    assert np.allclose(parsed["ys"], data["results"]["ms-ssim-rgb-db"])


def test_codec_names_and_errors():
    assert get_codec("JPG") is CODECS["jpeg"] and get_codec("jpeg-2000") is CODECS["jpeg2000"]
    with pytest.raises(CodecError, match="unknown codec"):
        get_codec("bpg")
    with pytest.raises(CodecError):
        run_anchors([], codecs=["jpeg", "heic"], progress=False)
    assert issubclass(CodecError, ValueError)
