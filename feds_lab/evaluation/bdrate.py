"""Bjøntegaard deltas between two rate-distortion curves, with a bootstrap over images.

The functions on arrays come first; :func:`bd_table` and :func:`matched_rate_gap` give the same
figures as table rows for pairs of results files (:mod:`.results`), with their intervals and cautions.

BD-rate: the average difference in log-rate between the test and anchor curves over the quality
range both cover, as a percentage of the anchor's rate (negative: the test codec needs fewer bits
for the same quality). BD-quality (BD-PSNR when the quality is PSNR): the average quality
difference over the log-rate range both cover, in the quality's unit (dB for PSNR and MS-SSIM dB).

Interpolation ``method``:

- ``"pchip"`` (default): a piecewise cubic Hermite interpolant through the points
  (``scipy.interpolate.PchipInterpolator``), integrated exactly. This is the definition of the
  ``bjontegaard`` package (method ``'pchip'``), which our tests match to 1e-9. The JVET CTC
  spreadsheet integrates a piecewise cubic Hermite interpolant too; we have not compared it with
  ours digit for digit, so treat agreement with published CTC tables beyond ~0.01 % as unchecked.
- ``"cubic"``: one cubic polynomial fitted through all points (``numpy.polyfit``), integrated over
  the overlap: the classic VCEG-M33 form. Equal to the ``bjontegaard`` package's ``'cubic'``.

The log base does not matter: BD-rate is ``10**mean(dlog10 R) - 1`` = ``exp(mean(dln R)) - 1``,
and BD-quality is an average over an interval, unchanged by rescaling the log-rate axis.

Every function raises :class:`BDRateError` (a ``ValueError``) instead of returning a number that
means nothing: fewer than four points, non-finite or non-positive rates, quality that does not rise
strictly with rate, or curves whose ranges do not overlap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
from scipy.interpolate import PchipInterpolator

from ..errors import FedsLabError
from .results import load_results, paired_per_image, quality_transform, rd_curve

METHODS = ("pchip", "cubic")
MIN_POINTS = 4


class BDRateError(FedsLabError, ValueError):
    """Two curves for which a Bjøntegaard delta is not defined (the message says why)."""


# --- one curve ---------------------------------------------------------------------------------


def _prepare(rate, quality, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate one curve; return (log10 rate, quality), sorted by rate."""
    rate = np.asarray(rate, dtype=float).ravel()
    quality = np.asarray(quality, dtype=float).ravel()
    if rate.shape != quality.shape:
        raise BDRateError(f"{label} curve: {rate.size} rates but {quality.size} quality values")
    if rate.size < MIN_POINTS:
        raise BDRateError(f"{label} curve has {rate.size} points; BD needs at least {MIN_POINTS}")
    if not (np.all(np.isfinite(rate)) and np.all(np.isfinite(quality))):
        raise BDRateError(f"{label} curve has non-finite values (NaN or inf)")
    if np.any(rate <= 0):
        raise BDRateError(f"{label} curve has a rate <= 0; rates must be positive (bpp)")
    order = np.argsort(rate, kind="stable")
    rate, quality = rate[order], quality[order]
    if np.any(np.diff(rate) <= 0) or np.any(np.diff(quality) <= 0):
        raise BDRateError(
            f"{label} curve is not monotonic: quality must rise strictly with rate "
            f"(sorted by rate: bpp={np.round(rate, 4).tolist()}, quality={np.round(quality, 3).tolist()})"
        )
    return np.log10(rate), quality


class _Cubic:
    """One cubic polynomial through all points, as VCEG-M33 fits it."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        coeffs = np.polyfit(x, y, 3)
        self._antiderivative = np.polyint(coeffs)

    def integrate(self, a: float, b: float) -> float:
        return float(np.polyval(self._antiderivative, b) - np.polyval(self._antiderivative, a))


def _interpolant(x: np.ndarray, y: np.ndarray, method: str):
    if method == "pchip":
        return PchipInterpolator(x, y)
    if method == "cubic":
        return _Cubic(x, y)
    raise BDRateError(f"unknown interpolation method {method!r}; known: {list(METHODS)}")


def _average_difference(xa, ya, xt, yt, method: str, axis_name: str) -> float:
    """Mean of f_test - f_anchor over the overlap of the two x ranges."""
    lo, hi = max(xa[0], xt[0]), min(xa[-1], xt[-1])
    if hi <= lo:
        raise BDRateError(
            f"the curves' {axis_name} ranges do not overlap "
            f"(anchor {xa[0]:.4g}..{xa[-1]:.4g}, test {xt[0]:.4g}..{xt[-1]:.4g})"
        )
    fa, ft = _interpolant(xa, ya, method), _interpolant(xt, yt, method)
    return float((ft.integrate(lo, hi) - fa.integrate(lo, hi)) / (hi - lo))


# --- the two deltas --------------------------------------------------------------------------


def bd_rate(rate_anchor, quality_anchor, rate_test, quality_test, method: str = "pchip") -> float:
    """BD-rate in percent of the anchor's rate (negative = the test saves bits).

    rate_*: bits per pixel (any positive rate unit, the same for both); quality_*: dB (PSNR or
    MS-SSIM dB), one value per point. Points may come in any order.
    """
    la, qa = _prepare(rate_anchor, quality_anchor, "anchor")
    lt, qt = _prepare(rate_test, quality_test, "test")
    mean_dlog = _average_difference(qa, la, qt, lt, method, "quality")
    return float((10**mean_dlog - 1) * 100)


def bd_quality(rate_anchor, quality_anchor, rate_test, quality_test, method: str = "pchip") -> float:
    """BD-quality in the quality's unit (BD-PSNR in dB for PSNR; positive = the test is better)."""
    la, qa = _prepare(rate_anchor, quality_anchor, "anchor")
    lt, qt = _prepare(rate_test, quality_test, "test")
    return _average_difference(la, qa, lt, qt, method, "rate")


bd_psnr = bd_quality


def quality_overlap(quality_anchor, quality_test) -> tuple[float, float]:
    """(low, high) of the quality range both curves cover: what a BD-rate averages over
    (low >= high when they do not overlap)."""
    qa, qt = np.asarray(quality_anchor, float), np.asarray(quality_test, float)
    return float(max(qa.min(), qt.min())), float(min(qa.max(), qt.max()))


def overlap_fraction(quality_anchor, quality_test) -> float:
    """Length of the shared quality range over the length of the union (0: disjoint, 1: same)."""
    qa, qt = np.asarray(quality_anchor, float), np.asarray(quality_test, float)
    union = max(qa.max(), qt.max()) - min(qa.min(), qt.min())
    low, high = quality_overlap(qa, qt)
    return float(max(high - low, 0.0) / union) if union > 0 else 0.0


def pareto_front(rate, quality) -> tuple[np.ndarray, np.ndarray]:
    """(rates, qualities) of the points no other point beats at a lower or equal rate, by rate.

    At short budgets neighbouring lambdas cross: a point with more bits and less quality than another
    is no operating point anyone would choose, and a segment through it slopes the wrong way."""
    rate, quality = (np.asarray(a, dtype=float).ravel() for a in (rate, quality))
    order = np.lexsort((-quality, rate))  # by rate; at equal rates the better point first
    r_out, q_out = [], []
    for r, v in zip(rate[order], quality[order]):
        if not q_out or (v > q_out[-1] and r > r_out[-1]):
            r_out.append(float(r))
            q_out.append(float(v))
    return np.asarray(r_out), np.asarray(q_out)


def quality_at_rate(anchor: tuple[np.ndarray, np.ndarray], rates) -> np.ndarray:
    """The anchor curve's quality at each of ``rates``: its Pareto front interpolated piecewise-linearly
    in log-rate, extended linearly past its ends (a caller that cares says which rates lie outside)."""
    fr, fq = pareto_front(*anchor)
    if fr.size < 2:
        raise BDRateError(f"a matched-rate quality needs an anchor of two points or more on its front, got {fr.size}")
    lr, x = np.log10(fr), np.log10(np.asarray(rates, dtype=float))
    i = np.clip(np.searchsorted(lr, x) - 1, 0, lr.size - 2)
    slope = (fq[i + 1] - fq[i]) / (lr[i + 1] - lr[i])
    return fq[i] + slope * (x - lr[i])


def psnr_gain_at_matched_rate(anchor: tuple[np.ndarray, np.ndarray], points: list[tuple[float, float]]) -> float:
    """Mean over ``points`` of PSNR minus the anchor curve's PSNR at the same rate (dB):
    :func:`quality_at_rate` on the anchor's Pareto front (leaving out a crossing point matters: a
    segment through one moved an extended figure by several dB, measured: -4.7 dB on a transformer ladder)."""
    bpp, psnr = (np.array([p[k] for p in points], dtype=float) for k in (0, 1))
    return float(np.mean(psnr - quality_at_rate(anchor, bpp)))


# --- bootstrap over images ---------------------------------------------------------------------


@dataclass
class BootstrapResult:
    """A bootstrap of a BD figure over images.

    ``estimate`` is the figure on all images; ``mean``, ``low`` and ``high`` summarise the
    resamples that gave a valid curve (``low``/``high``: the percentile interval at
    ``confidence``). ``n_failed`` resamples gave a curve for which BD is undefined (for instance a
    non-monotonic mean curve) and are left out of the interval, so report it beside the interval.
    """

    estimate: float
    mean: float
    low: float
    high: float
    confidence: float
    n_resamples: int
    n_failed: int

    def as_dict(self) -> dict:
        return asdict(self)


def bootstrap_bd(
    rate_anchor,
    quality_anchor,
    rate_test,
    quality_test,
    *,
    statistic: str = "rate",
    method: str = "pchip",
    quality_transform: Callable[[np.ndarray], np.ndarray] | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int | None = 0,
) -> BootstrapResult:
    """Bootstrap BD-rate (``statistic="rate"``, %) or BD-quality (``"quality"``) over images.

    Inputs are per-image RD points, arrays of shape (n_images, n_points) with the same images in
    the same row order for both curves (the points of the two curves need not match). Each resample
    draws n_images rows with replacement (the same rows for both codecs: a paired bootstrap),
    averages rate and quality over them point by point, as a results file does, and computes the
    BD figure. ``quality_transform`` maps mean quality to the BD axis after averaging (MS-SSIM ->
    dB: average MS-SSIM first, as CompressAI's plots do).
    """
    _check_bootstrap(statistic, confidence, n_resamples)
    arrays = [np.atleast_2d(np.asarray(a, dtype=float)) for a in (rate_anchor, quality_anchor, rate_test, quality_test)]
    ra, qa, rt, qt = arrays
    if ra.shape != qa.shape or rt.shape != qt.shape:
        raise BDRateError("rate and quality arrays of a curve must have the same shape (n_images, n_points)")
    if ra.shape[0] != rt.shape[0]:
        raise BDRateError(
            f"anchor has {ra.shape[0]} images, test has {rt.shape[0]}: a paired bootstrap needs the same images"
        )
    transform = quality_transform or (lambda q: q)
    delta = bd_rate if statistic == "rate" else bd_quality

    def figure(rows: np.ndarray) -> float:
        anchor = ra[rows].mean(0), transform(qa[rows].mean(0))
        test = rt[rows].mean(0), transform(qt[rows].mean(0))
        return delta(*anchor, *test, method)

    n_images = ra.shape[0]
    estimate = figure(np.arange(n_images))  # raises if the full-data curves are already invalid
    rng = np.random.default_rng(seed)
    return _summarise(estimate, lambda: figure(rng.integers(0, n_images, n_images)), n_resamples, confidence)


def _check_bootstrap(statistic: str, confidence: float, n_resamples: int) -> None:
    if statistic not in ("rate", "quality"):
        raise BDRateError(f"statistic must be 'rate' or 'quality', got {statistic!r}")
    if not 0 < confidence < 1:
        raise BDRateError(f"confidence must lie in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise BDRateError("n_resamples must be >= 1")


def _summarise(estimate: float, draw: Callable[[], float], n_resamples: int, confidence: float) -> BootstrapResult:
    """The percentile interval of ``n_resamples`` calls of ``draw`` (one resample's figure each); the
    calls that raise BDRateError are counted, not used."""
    samples, failed = [], 0
    for _ in range(n_resamples):
        try:
            samples.append(draw())
        except BDRateError:
            failed += 1
    if not samples:
        raise BDRateError(f"all {n_resamples} bootstrap resamples gave curves for which BD is undefined")
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return BootstrapResult(
        estimate=estimate, mean=float(np.mean(samples)), low=float(low), high=float(high),
        confidence=confidence, n_resamples=n_resamples, n_failed=failed,
    )


def bootstrap_bd_pooled(
    anchor_runs,
    test_runs,
    *,
    statistic: str = "rate",
    method: str = "pchip",
    quality_transform: Callable[[np.ndarray], np.ndarray] | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int | None = 0,
) -> BootstrapResult:
    """BD figure of one codec trained with several seeds against another, bootstrapped over seeds and images.

    ``anchor_runs`` and ``test_runs`` are lists (one entry per training seed) of (rate, quality) pairs of
    per-image arrays (n_images, n_points), the same images in the same row order everywhere. The figure
    compares the two mean curves: rate and quality averaged point by point over every seed and image of
    each codec. Each resample draws each codec's seeds with replacement (independently: a seed of one
    arm has no partner in the other) and one set of image rows for both (paired over images), so the
    interval holds the training noise across seeds as well as the choice of images. With a handful of
    seeds the percentile interval is somewhat too narrow (a small-sample bootstrap); the per-seed rows
    beside it show the spread plainly.
    """
    _check_bootstrap(statistic, confidence, n_resamples)
    arms = []
    for label, runs in (("anchor", anchor_runs), ("test", test_runs)):
        if len(runs) < 1:
            raise BDRateError(f"{label}: no runs")
        r = np.stack([np.atleast_2d(np.asarray(rate, dtype=float)) for rate, _ in runs])
        q = np.stack([np.atleast_2d(np.asarray(quality, dtype=float)) for _, quality in runs])
        if r.shape != q.shape:
            raise BDRateError(f"{label}: rate and quality arrays must have the same shape (n_images, n_points)")
        arms.append((r, q))
    (ra, qa), (rt, qt) = arms
    if ra.shape[1] != rt.shape[1]:
        raise BDRateError(f"anchor runs have {ra.shape[1]} images, test runs {rt.shape[1]}: the same images are needed")
    transform = quality_transform or (lambda q: q)
    delta = bd_rate if statistic == "rate" else bd_quality

    def figure(sa: np.ndarray, st: np.ndarray, rows: np.ndarray) -> float:
        anchor = ra[sa][:, rows].mean((0, 1)), transform(qa[sa][:, rows].mean((0, 1)))
        test = rt[st][:, rows].mean((0, 1)), transform(qt[st][:, rows].mean((0, 1)))
        return delta(*anchor, *test, method)

    n_a, n_t, n_images = ra.shape[0], rt.shape[0], ra.shape[1]
    estimate = figure(np.arange(n_a), np.arange(n_t), np.arange(n_images))
    rng = np.random.default_rng(seed)
    return _summarise(estimate, lambda: figure(rng.integers(0, n_a, n_a), rng.integers(0, n_t, n_t),
                                               rng.integers(0, n_images, n_images)), n_resamples, confidence)


# --- tables: one row per pair of results files ---------------------------------------------------

#: a BD figure computed over less than this share of the test curve's quality range, or an interval
#: from which more than this share of resamples dropped out, gets a caution in its row's ``note``
COVERAGE_CAUTION = 0.5
FAILED_CAUTION = 0.05


def bd_table(anchor, tests, metric="psnr", method="pchip", bootstrap=0, confidence=0.95, seed=0,
             strict: bool = True) -> list[dict[str, Any]]:
    """One row per test curve: BD-rate (%), BD-quality (dB), and with ``bootstrap`` its interval.

    Each row also says over which quality range the BD-rate was taken (``overlap_low``/``overlap_high``,
    dB) and which share of the test curve's quality range that is (``coverage``): BD figures average
    over the overlap only, so two curves that barely overlap give a number about a sliver of either.
    ``note`` cautions when the coverage is below :data:`COVERAGE_CAUTION` or when more than
    :data:`FAILED_CAUTION` of the bootstrap resamples had no BD figure (their mean curves were not
    monotonic or did not overlap; the interval is over the rest, which biases it).
    With ``strict=False`` a pair that has no BD figure (too few points, no overlap, non-monotonic)
    gets a row whose ``note`` says why, instead of raising.
    """
    anchor = load_results(anchor)
    a_curve = rd_curve(anchor, metric)
    rows = []
    for test in tests:
        test = load_results(test)
        t_curve = rd_curve(test, metric)
        row: dict[str, Any] = {"anchor": anchor["name"], "test": test["name"], "metric": metric, "method": method}
        try:
            row.update(bd_rate=bd_rate(*a_curve, *t_curve, method), bd_quality=bd_quality(*a_curve, *t_curve, method))
            lo, hi = quality_overlap(a_curve[1], t_curve[1])
            row.update(overlap_low=lo, overlap_high=hi, coverage=(hi - lo) / np.ptp(t_curve[1]))
            cautions = []
            if row["coverage"] < COVERAGE_CAUTION:
                cautions.append(f"over {row['coverage']:.0%} of the test curve's quality range only "
                                f"({lo:.2f}-{hi:.2f} dB)")
            if bootstrap:
                _, ra, qa, rt, qt = paired_per_image(anchor, test, metric)
                result = bootstrap_bd(ra, qa, rt, qt, method=method, quality_transform=quality_transform(metric),
                                      n_resamples=bootstrap, confidence=confidence, seed=seed)
                row.update({"ci_low": result.low, "ci_high": result.high, "resamples": result.n_resamples,
                            "failed": result.n_failed, "confidence": confidence})
                if result.n_failed > FAILED_CAUTION * result.n_resamples:
                    cautions.append(f"interval from {result.n_resamples - result.n_failed} of {result.n_resamples} "
                                    "resamples (the others had no BD figure)")
            row["note"] = "; ".join(cautions)
        except BDRateError as err:  # say which pair of curves
            if strict:
                raise BDRateError(f"{test['name']} against {anchor['name']}: {err}") from None
            row.update(bd_rate=np.nan, bd_quality=np.nan, note=f"not computable: {err}")
        rows.append(row)
    return rows


def matched_rate_gap(anchor, test, metric: str = "psnr", bootstrap: int = 0, confidence: float = 0.95,
                     seed: int = 0) -> dict[str, Any]:
    """The test curve's quality minus the anchor's at the same rate (dB), averaged over the test's points
    that lie inside the rate range of the anchor's Pareto front (none extrapolated), with a bootstrap
    over images (the points compared stay those of the full data).

    Where no BD figure exists because the anchor's curve folds back (a teacher whose top lambda is beaten
    by the one below it), this still says how far a student lies from it. Ours, not the paper's measure."""
    anchor, test = load_results(anchor), load_results(test)
    a_curve, t_curve = rd_curve(anchor, metric), rd_curve(test, metric)
    lambdas = [s.get("lmbda") for s in test.get("settings") or [{}] * len(t_curve[0])]
    row: dict[str, Any] = {"anchor": anchor["name"], "test": test["name"], "metric": metric}
    front = pareto_front(*a_curve)[0]
    inside = (t_curve[0] >= front.min()) & (t_curve[0] <= front.max()) if front.size >= 2 else np.zeros(len(t_curve[0]), bool)
    row.update(points=int(inside.sum()), of=int(inside.size),
               anchor_front=f"{front.size} of {len(a_curve[0])} points, {front.min():.3f}-{front.max():.3f} bpp")
    if not inside.any():
        row.update(gap_db=np.nan, note="not computable: no test point lies in the rate range of the anchor's front"
                   if front.size >= 2 else "not computable: the anchor's front has fewer than two points")
        return row
    gaps = t_curve[1][inside] - quality_at_rate(a_curve, t_curve[0][inside])
    row.update(gap_db=float(gaps.mean()),
               per_lambda=", ".join(f"{l:g}: {g:+.2f}" if l is not None else f"{g:+.2f}"
                                    for l, g in zip(np.asarray(lambdas, dtype=object)[inside], gaps)),
               note="" if inside.all() else f"{int((~inside).sum())} point(s) outside the anchor's rate range left out")
    if bootstrap:
        transform = quality_transform(metric)
        _, ra, qa, rt, qt = paired_per_image(anchor, test, metric)  # points in rd_curve's order (by rate)

        def figure(rows: np.ndarray) -> float:
            a = ra[rows].mean(0), transform(qa[rows].mean(0))
            t_rate, t_quality = rt[rows].mean(0)[inside], transform(qt[rows].mean(0))[inside]
            return float(np.mean(t_quality - quality_at_rate(a, t_rate)))

        rng = np.random.default_rng(seed)
        result = _summarise(row["gap_db"], lambda: figure(rng.integers(0, ra.shape[0], ra.shape[0])), bootstrap, confidence)
        row.update(ci_low=result.low, ci_high=result.high, resamples=result.n_resamples, confidence=confidence)
    return row
