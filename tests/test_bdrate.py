"""BD-rate / BD-PSNR against the `bjontegaard` package, the error cases, and the bootstrap."""

import math
import warnings

import bjontegaard as bjt
import numpy as np
import pytest

from feds_lab.evaluation.bdrate import (
    BDRateError,
    bd_psnr,
    bd_quality,
    bd_rate,
    bootstrap_bd,
    overlap_fraction,
)
from feds_lab.evaluation.evaluate import make_results, ms_ssim_db_array, paired_per_image, rd_curve

# Mean curves measured on scikit-image's five photos with Pillow 13 (feds-lab anchors).
JPEG = dict(bpp=[0.147, 0.253, 0.343, 0.423, 0.569, 0.687, 0.799, 0.92, 1.104, 1.398, 2.089],
            psnr=[24.0, 26.77, 28.09, 28.96, 30.12, 30.89, 31.51, 32.11, 32.92, 34.07, 36.13])
WEBP = dict(bpp=[0.111, 0.208, 0.254, 0.337, 0.42, 0.505, 0.587, 0.663, 0.76, 1.0, 1.665],
            psnr=[25.79, 28.0, 28.75, 29.87, 30.77, 31.62, 32.32, 32.92, 33.52, 34.81, 37.03])
AVIF = dict(bpp=[0.084, 0.115, 0.163, 0.235, 0.348, 0.529, 0.763, 1.053, 1.415, 2.062],
            psnr=[25.86, 26.95, 28.21, 29.56, 31.05, 32.83, 34.43, 35.9, 37.02, 38.15])


def reference(kind, ra, qa, rt, qt, method):
    fn = bjt.bd_rate if kind == "rate" else bjt.bd_psnr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its low-overlap warning; the value is what we compare
        return fn(ra, qa, rt, qt, method, require_matching_points=False, min_overlap=0)


def random_curve(rng, n):
    """A concave, increasing PSNR-vs-log-rate curve with jittered points, like a real codec's."""
    bpp = np.sort(rng.uniform(0.08, 2.2, n))
    while np.any(np.diff(bpp) < 0.02):
        bpp = np.sort(rng.uniform(0.08, 2.2, n))
    log_r = np.log2(bpp)
    psnr = 33 + rng.uniform(4, 7) * log_r / 2 - rng.uniform(0, 0.6) * log_r**2 / 4 + rng.uniform(-2, 2)
    return bpp, np.maximum.accumulate(psnr + rng.normal(0, 0.05, n)) + np.arange(n) * 1e-3


@pytest.mark.parametrize("method", ["pchip", "cubic"])
@pytest.mark.parametrize("seed", range(8))
def test_matches_bjontegaard_on_random_curves(method, seed):
    rng = np.random.default_rng(seed)
    ra, qa = random_curve(rng, rng.integers(4, 8))
    rt, qt = random_curve(rng, rng.integers(4, 8))
    if overlap_fraction(qa, qt) < 0.1 or overlap_fraction(np.log(ra), np.log(rt)) < 0.1:
        pytest.skip("random curves barely overlap")
    assert bd_rate(ra, qa, rt, qt, method) == pytest.approx(reference("rate", ra, qa, rt, qt, method), abs=1e-9)
    assert bd_psnr(ra, qa, rt, qt, method) == pytest.approx(reference("psnr", ra, qa, rt, qt, method), abs=1e-9)


@pytest.mark.parametrize("method", ["pchip", "cubic"])
@pytest.mark.parametrize("test", [WEBP, AVIF], ids=["webp", "avif"])
def test_matches_bjontegaard_on_measured_anchors(method, test):
    args = (JPEG["bpp"], JPEG["psnr"], test["bpp"], test["psnr"])
    ours = bd_rate(*args, method=method)
    assert ours == pytest.approx(reference("rate", *args, method), abs=1e-9)
    assert ours < -15  # WebP and AVIF both save well over 15 % against JPEG
    assert bd_quality(*args, method=method) == pytest.approx(reference("psnr", *args, method), abs=1e-9)
    assert bd_quality(*args, method=method) > 0.5


def test_known_values_for_a_shifted_curve():
    """A test curve needing 10 % fewer bits at every quality: BD-rate is -10 % exactly, and with
    PSNR linear in log2(rate) (slope 6 dB per doubling) BD-PSNR is 6 * log2(1 / 0.9) dB."""
    bpp = np.array([0.125, 0.25, 0.5, 1.0, 2.0])
    psnr = 30 + 6 * np.log2(bpp)
    for method in ("pchip", "cubic"):
        assert bd_rate(bpp, psnr, 0.9 * bpp, psnr, method) == pytest.approx(-10.0, abs=1e-9)
        assert bd_psnr(bpp, psnr, 0.9 * bpp, psnr, method) == pytest.approx(6 * math.log2(1 / 0.9), abs=1e-9)
    assert bd_rate(bpp, psnr, bpp, psnr) == pytest.approx(0.0, abs=1e-12)
    # swapping anchor and test inverts the rate ratio: 1 / 0.9 - 1
    assert bd_rate(0.9 * bpp, psnr, bpp, psnr) == pytest.approx((1 / 0.9 - 1) * 100, abs=1e-9)


def test_point_order_does_not_matter():
    order = np.random.default_rng(0).permutation(len(JPEG["bpp"]))
    shuffled = np.asarray(JPEG["bpp"])[order], np.asarray(JPEG["psnr"])[order]
    assert bd_rate(*shuffled, WEBP["bpp"], WEBP["psnr"]) == pytest.approx(
        bd_rate(JPEG["bpp"], JPEG["psnr"], WEBP["bpp"], WEBP["psnr"]), abs=1e-12)


def test_pchip_and_cubic_differ_on_real_curves():
    args = (JPEG["bpp"], JPEG["psnr"], AVIF["bpp"], AVIF["psnr"])
    assert abs(bd_rate(*args, method="pchip") - bd_rate(*args, method="cubic")) > 1e-3


GOOD = ([0.1, 0.2, 0.4, 0.8], [28.0, 30.0, 32.0, 34.0])


@pytest.mark.parametrize(
    "anchor, test, match",
    [
        (([0.1, 0.2, 0.4], [28.0, 30.0, 32.0]), GOOD, "at least 4"),
        (GOOD, ([1.0, 2.0, 4.0, 8.0], [40.0, 41.0, 42.0, 43.0]), "do not overlap"),
        (GOOD, ([0.1, 0.2, 0.4, 0.8], [28.0, 31.0, 30.0, 34.0]), "not monotonic"),
        (GOOD, ([0.1, 0.2, 0.2, 0.8], [28.0, 30.0, 31.0, 34.0]), "not monotonic"),
        (GOOD, ([0.1, 0.2, 0.4, 0.8], [28.0, 30.0, float("nan"), 34.0]), "non-finite"),
        (GOOD, ([0.0, 0.2, 0.4, 0.8], [28.0, 30.0, 32.0, 34.0]), "rate <= 0"),
        (GOOD, ([0.1, 0.2, 0.4, 0.8], [28.0, 30.0, 32.0]), "quality values"),
    ],
    ids=["too-few", "disjoint", "non-monotonic", "repeated-rate", "nan", "zero-rate", "length"],
)
def test_errors(anchor, test, match):
    for fn in (bd_rate, bd_quality):
        with pytest.raises(BDRateError, match=match):
            fn(*anchor, *test)


def test_error_class_and_method():
    assert issubclass(BDRateError, ValueError)
    with pytest.raises(BDRateError, match="unknown interpolation"):
        bd_rate(*GOOD, *GOOD, method="akima-ish")
    # BD-PSNR needs overlapping rate ranges, BD-rate overlapping quality ranges
    with pytest.raises(BDRateError, match="rate ranges do not overlap"):
        bd_quality(*GOOD, [1.0, 2.0, 4.0, 8.0], [29.0, 30.0, 31.0, 32.0])


# --- bootstrap -----------------------------------------------------------------------------------


def per_image(n_images=6, seed=0):
    rng = np.random.default_rng(seed)
    base = np.array([0.15, 0.3, 0.6, 1.2])
    scale = rng.uniform(0.6, 1.6, (n_images, 1))  # images differ in difficulty
    rate = base * scale
    quality = 30 + 5 * np.log2(base) + rng.normal(0, 1.5, (n_images, 1)) + rng.normal(0, 0.05, (n_images, 4))
    return rate, quality


def test_bootstrap_of_a_uniform_saving_is_exact():
    rate, quality = per_image()
    result = bootstrap_bd(rate, quality, 0.8 * rate, quality, n_resamples=200, seed=1)
    assert result.estimate == pytest.approx(-20.0, abs=1e-9)
    assert result.low == pytest.approx(-20.0, abs=1e-9) and result.high == pytest.approx(-20.0, abs=1e-9)
    assert result.n_resamples == 200 and result.n_failed == 0


def test_bootstrap_interval_brackets_the_estimate_and_is_reproducible():
    rate, quality = per_image(n_images=12)
    rng = np.random.default_rng(5)
    rate_t = rate * rng.uniform(0.7, 1.0, rate.shape[0])[:, None]  # savings vary between images
    kw = dict(n_resamples=300, confidence=0.9, seed=3)
    result = bootstrap_bd(rate, quality, rate_t, quality, **kw)
    assert result.low < result.estimate < result.high
    assert result.high - result.low > 1.0  # a real spread, not a degenerate interval
    assert result.low < result.mean < result.high
    assert result == bootstrap_bd(rate, quality, rate_t, quality, **kw)
    psnr_gain = bootstrap_bd(rate, quality, rate_t, quality, statistic="quality", **kw)
    assert psnr_gain.estimate > 0 and psnr_gain.low > 0


def test_bootstrap_counts_failed_resamples():
    """The mean curve is monotonic, but image B alone is not: resamples of B only must fail."""
    rate = np.array([[0.1, 0.2, 0.4, 0.8]] * 2)
    quality = np.array([[30.0, 36.0, 37.0, 38.0], [40.0, 37.0, 45.0, 50.0]])
    result = bootstrap_bd(rate, quality, 0.9 * rate, quality, n_resamples=400, seed=0)
    assert result.estimate == pytest.approx(-10.0)
    assert 40 < result.n_failed < 200  # about a quarter of the resamples draw B twice
    assert result.low == pytest.approx(-10.0)


def test_bootstrap_errors():
    rate, quality = per_image()
    with pytest.raises(BDRateError, match="same images"):
        bootstrap_bd(rate, quality, rate[:-1], quality[:-1])
    with pytest.raises(BDRateError, match="statistic"):
        bootstrap_bd(rate, quality, rate, quality, statistic="psnr")
    with pytest.raises(BDRateError, match="not monotonic"):
        bootstrap_bd(rate, quality[:, ::-1], rate, quality)


def test_bootstrap_from_results_files_with_ms_ssim():
    """Per-image rows of two results files -> paired arrays -> the same figure as the mean curves."""
    rate, quality = per_image(n_images=5)
    ms = 1 - 10 ** (-quality / 20)  # a monotone map of quality into (0, 1), like MS-SSIM

    def results(name, factor):
        points = [{"rows": [{"image": f"im{i}", "bpp": factor * rate[i, p], "psnr-rgb": quality[i, p],
                             "ms-ssim-rgb": ms[i, p]} for i in range(5)]} for p in range(4)]
        return make_results(name, points)

    anchor, test = results("anchor", 1.0), results("test", 0.85)
    names, ra, qa, rt, qt = paired_per_image(anchor, test, metric="ms-ssim")
    assert names == [f"im{i}" for i in range(5)] and ra.shape == (5, 4)
    result = bootstrap_bd(ra, qa, rt, qt, quality_transform=ms_ssim_db_array, n_resamples=50)
    expected = bd_rate(*rd_curve(anchor, "ms-ssim"), *rd_curve(test, "ms-ssim"))
    assert result.estimate == pytest.approx(expected, abs=1e-9)
    assert result.estimate == pytest.approx(-15.0, abs=1e-9)


def test_matched_rate_gap_on_the_teacher_s_front(tmp_path):
    # a teacher whose top lambda folds back (more bits, less quality): no BD figure, but a gap at matched rate
    from feds_lab.evaluation.evaluate import make_results, save_results
    from feds_lab.evaluation.bdrate import matched_rate_gap

    def results(name, points):
        rows = [{"rows": [{"image": f"i{k}", "bpp": b, "psnr-rgb": q + (0.2 if k else -0.2), "ms-ssim-rgb": 0.9}
                          for k in range(2)], "setting": {"lmbda": l}} for l, (b, q) in points.items()]
        return save_results(make_results(name, rows), tmp_path / f"{name}.json")

    teacher = results("teacher", {1: (0.1, 20.0), 2: (0.2, 23.0), 3: (0.4, 25.0), 4: (0.5, 24.0)})
    student = results("student", {1: (0.05, 18.0), 2: (np.sqrt(0.02), 21.0), 3: (0.3, 23.0), 4: (0.6, 24.0)})
    row = matched_rate_gap(teacher, student, bootstrap=50)
    # front: 0.1, 0.2, 0.4 (the 0.5 point is beaten by 0.4); inside it the student's 0.141 and 0.3 bpp.
    # At sqrt(0.02) (halfway in log-rate from 0.1 to 0.2) the front gives 21.5 dB: -0.5; at 0.3, log-linear
    # between 0.2 (23) and 0.4 (25): 23 + 2 log(1.5)/log(2) = 24.17 dB: -1.17
    assert (row["points"], row["of"]) == (2, 4) and row["anchor_front"].startswith("3 of 4 points")
    expected = np.mean([21.0 - 21.5, 23.0 - (23 + 2 * np.log(1.5) / np.log(2))])
    assert row["gap_db"] == pytest.approx(expected, abs=1e-9)
    assert row["per_lambda"].startswith("2: -0.50, 3: -1.17") and "left out" in row["note"]
    assert row["ci_low"] <= row["gap_db"] <= row["ci_high"]
    far = results("far", {1: (1.0, 30.0), 2: (2.0, 31.0), 3: (3.0, 32.0), 4: (4.0, 33.0)})
    assert np.isnan(matched_rate_gap(teacher, far)["gap_db"])  # nothing inside the teacher's rates: no figure
