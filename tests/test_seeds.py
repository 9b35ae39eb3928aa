"""Seed studies: a variant trained on several seeds (``seeds``), and the table that pools them against scratch
with a bootstrap over seeds and images."""

from __future__ import annotations

import numpy as np
import pytest

from feds_lab.errors import FedsLabError
from feds_lab.evaluation.bdrate import BDRateError, bootstrap_bd, bootstrap_bd_pooled
from feds_lab.evaluation.evaluate import make_results, save_results
from feds_lab.evaluation.rd_analysis import RDAnalysis
from feds_lab.pipeline import PipelineConfig

IMAGES = [f"img{i}" for i in range(5)]
LAMBDAS = [0.0018, 0.0067, 0.025, 0.0483]
RATES, PSNRS = np.array([0.1, 0.2, 0.4, 0.8]), np.array([20.0, 22.0, 24.0, 26.0])


def _runs(factors, noise, rng):
    """One (rate, quality) pair of per-image arrays per seed: rates at ``factor`` x the base."""
    return [(f * RATES * (1 + noise * rng.standard_normal((len(IMAGES), 4))), np.tile(PSNRS, (len(IMAGES), 1)))
            for f in factors]


def test_seeds_expand_into_variants(tmp_path):
    cfg = PipelineConfig(teacher="train", name="s", runs_dir=str(tmp_path), lambdas=[0.0018, 0.0067, 0.025, 0.0483],
                         variants={"feds": {"alpha": 0.01}, "scratch": {"baseline": "scratch"}},
                         seeds={"feds": [1, 2], "scratch": [2]}).resolved()
    assert sorted(cfg.variants) == ["feds", "feds_s1", "feds_s2", "scratch", "scratch_s2"]
    run = cfg.train_config("student", 0.0067, "feds_s2")
    assert run.seed == 2 and run.alpha == 0.01 and "feds_s2" in run.warm_start  # its own ladder
    assert cfg.train_config("student", 0.0067, "scratch_s2").baseline == "scratch"
    assert cfg.seed_groups() == {"feds": {0: "feds", 1: "feds_s1", 2: "feds_s2"}, "scratch": {0: "scratch", 2: "scratch_s2"}}
    # what the name spells is a field of the variant's record: nothing downstream parses it
    replica = cfg.variant_records()["feds_s2"]
    assert (replica.base, replica.seed, replica.replica_of, replica.kind, replica.budget) == ("feds", 2, "feds", "feds", None)
    assert cfg.variant_records()["scratch_s2"].kind == "scratch" and not replica.primary
    assert cfg.resolved().variants == cfg.variants  # resolving twice changes nothing
    with pytest.raises(FedsLabError, match="not a variant"):
        PipelineConfig(teacher="train", runs_dir=str(tmp_path), seeds={"fedz": [1]}).resolved()
    with pytest.raises(FedsLabError, match="repeats seed 0"):  # the variant's own seed is the config's
        PipelineConfig(teacher="train", runs_dir=str(tmp_path), seeds={"feds": [0]}).resolved()
    with pytest.raises(FedsLabError, match="non-negative integer"):
        PipelineConfig(teacher="train", runs_dir=str(tmp_path), seeds={"feds": ["one"]}).resolved()
    with pytest.raises(FedsLabError, match="other overrides"):  # a hand-written feds_s1 that is not feds on seed 1
        PipelineConfig(teacher="train", runs_dir=str(tmp_path), variants={"feds": {}, "feds_s1": {"alpha": 3.0}},
                       seeds={"feds": [1]}).resolved()


def test_pooled_bootstrap_holds_the_seed_noise():
    rng = np.random.default_rng(0)
    # the test codec needs 10 % fewer bits on average, but its seeds scatter by +-10 %
    anchor = _runs([1.0, 1.0, 1.0, 1.0], 0.02, rng)
    test = _runs([0.8, 1.0, 0.9, 0.9], 0.02, rng)
    pooled = bootstrap_bd_pooled(anchor, test, n_resamples=400)
    assert pooled.estimate == pytest.approx(-10, abs=2)
    assert pooled.low < pooled.estimate < pooled.high
    one = bootstrap_bd(*anchor[0], *test[0], n_resamples=400)  # one pair: the images' noise only
    assert one.estimate == pytest.approx(-20, abs=2)
    assert (pooled.high - pooled.low) > 2 * (one.high - one.low)  # seeds that disagree widen the interval
    # seeds that agree: pooling narrows it
    same = bootstrap_bd_pooled(_runs([1.0] * 4, 0.02, rng), _runs([0.9] * 4, 0.02, rng), n_resamples=400)
    assert same.high - same.low < pooled.high - pooled.low
    with pytest.raises(BDRateError, match="same images"):
        bootstrap_bd_pooled(anchor, [(r[:3], q[:3]) for r, q in test])
    with pytest.raises(BDRateError, match="no runs"):
        bootstrap_bd_pooled(anchor, [])


def _results(name, factor, tmp_path, seed):
    rng = np.random.default_rng(seed)
    points = []
    for k, (bpp, psnr) in enumerate(zip(RATES, PSNRS)):
        rows = [{"image": im, "bpp": bpp * factor * (1 + 0.02 * rng.standard_normal()), "psnr-rgb": psnr + 0.3 * j,
                 "ms-ssim-rgb": 0.9} for j, im in enumerate(IMAGES)]
        points.append({"rows": rows, "setting": {"lmbda": k}})
    path = tmp_path / f"{name}.json"
    save_results(make_results(name, points), path)
    return path


def _analysis(files, tmp_path, bootstrap, **config) -> RDAnalysis:
    """The analysis of a run of ``config`` whose results are ``files`` (one per variant, named as it)."""
    records = PipelineConfig(teacher="train", name="s", runs_dir=str(tmp_path), lambdas=LAMBDAS, **config).resolved().variant_records()
    return RDAnalysis(files=files, names={f.stem: f.stem for f in files if f.stem in records}, summary=None,
                      params_speed=None, bootstrap=bootstrap, variants=records)


def test_seed_table_pairs_each_seed_and_pools(tmp_path):
    from feds_lab.plots import seed_comparison

    factors = {"scratch": 1.0, "scratch_s1": 1.0, "scratch_s2": 1.0,
               "feds": 0.8, "feds_s1": 1.1, "feds_s2": 0.9, "no_align": 0.95}
    files = [_results(name, f, tmp_path, k) for k, (name, f) in enumerate(factors.items())]
    analysis = _analysis(files, tmp_path, 200, variants={"feds": {}, "scratch": {"baseline": "scratch"}, "no_align": {"alpha": 0.0}},
                         seeds={"scratch": [1, 2], "feds": [1, 2]})
    assert analysis.seed_groups == {"scratch": {0: "scratch", 1: "scratch_s1", 2: "scratch_s2"},
                                    "feds": {0: "feds", 1: "feds_s1", 2: "feds_s2"}}
    table = analysis.seed_table()
    per_seed = table[table.comparison != "pooled"].set_index("seed")
    assert list(per_seed.index) == [0, 1, 2]
    assert per_seed.loc[0, "bd_rate"] == pytest.approx(-20, abs=2) and per_seed.loc[1, "bd_rate"] > 0
    pooled = table[table.comparison == "pooled"].iloc[0]
    assert pooled["wins"] == 2 and pooled["pairs"] == 3 and pooled["n_anchor"] == pooled["n_test"] == 3
    assert pooled["bd_rate"] == pytest.approx(100 * (0.9333 - 1), abs=2)  # the mean curve, not the mean of figures
    assert pooled["ci_low"] < pooled["bd_rate"] < pooled["ci_high"]
    # the other seeds are the seed table's: not ablations against FEDS, not curves in the RD plot
    pairs = analysis.comparisons()
    assert ("scratch", "feds") in pairs and ("feds", "no_align") in pairs
    assert not any("_s" in a or "_s" in t for a, t in pairs)
    assert {f.stem for f in analysis.curve_files()} == {"scratch", "feds", "no_align"}
    seed_comparison(table)
    # a row between students says it is one draw where one of them has one seed, and only there
    notes = {(r["anchor"], r["test"]): r["note"] for r in analysis.bd_table.to_dict("records")}
    assert "one draw" not in notes[("scratch", "feds")]
    assert "one draw" in notes[("feds", "no_align")] and "one draw" in notes[("scratch", "no_align")]
    # no seeds: no table
    assert RDAnalysis(files=files, names={n: n for n in factors}, summary=None, params_speed=None).seed_table().empty


def test_a_learning_curve_budget_takes_seeds(tmp_path):
    cfg = PipelineConfig(teacher="train", name="s", runs_dir=str(tmp_path), lambdas=LAMBDAS, student_steps=300,
                         variants={"feds": {"alpha": 0.01}, "scratch": {"baseline": "scratch"}},
                         learning_curve={"feds": [600], "scratch": [600]},
                         seeds={"feds@600": [1, 2], "scratch@600": [1]}).resolved()
    assert sorted(cfg.variants) == ["feds", "feds@600", "feds_s1@600", "feds_s2@600", "scratch", "scratch@600",
                                    "scratch_s1@600"]
    run = cfg.train_config("student", 0.0067, "feds_s2@600")
    assert (run.seed, run.steps, run.alpha) == (2, 600, 0.01) and "feds_s2@600" in run.warm_start
    assert cfg.seed_groups()["feds@600"] == {0: "feds@600", 1: "feds_s1@600", 2: "feds_s2@600"}
    replica = cfg.variant_records()["feds_s2@600"]
    assert (replica.base, replica.budget, replica.steps, replica.seed, replica.replica_of) == ("feds", 600, 600, 2, "feds@600")
    assert cfg.resolved().variants == cfg.variants
    with pytest.raises(FedsLabError, match="learning_curve entry"):  # a budget the curve does not train
        PipelineConfig(teacher="train", runs_dir=str(tmp_path), seeds={"feds@600": [1]}).resolved()


def test_a_budget_s_seeds_are_pooled_against_scratch_at_that_budget(tmp_path):
    factors = {"scratch": 1.0, "scratch_s1": 1.0, "feds": 1.2, "feds_s1": 1.2,
               "scratch@600": 1.0, "scratch_s1@600": 1.0, "feds@600": 0.8, "feds_s1@600": 0.9}
    files = [_results(name, f, tmp_path, k) for k, (name, f) in enumerate(factors.items())]
    config = dict(variants={"feds": {}, "scratch": {"baseline": "scratch"}}, student_steps=300,
                  learning_curve={"feds": [600], "scratch": [600]})
    seeds = {"scratch": [1], "feds": [1], "scratch@600": [1], "feds@600": [1]}
    analysis = _analysis(files, tmp_path, 100, seeds=seeds, **config)
    table = analysis.seed_table()
    pooled = table[table.comparison == "pooled"].set_index("variant")
    assert sorted(pooled.index) == ["feds", "feds@600"]  # scratch@600 is an anchor, not a variant
    assert pooled.loc["feds", "bd_rate"] > 10 and pooled.loc["feds@600", "bd_rate"] < -10
    assert pooled.loc["feds@600", "anchor"].startswith("scratch@600")
    budget = table[(table.variant == "feds@600") & (table.comparison != "pooled")]
    assert set(budget["anchor"]) == {"scratch@600", "scratch_s1@600"}  # each seed against scratch's same seed there
    # a budget whose anchor has no seeds there: no rows (nothing to pair it with)
    del seeds["scratch@600"]
    assert set(_analysis(files, tmp_path, 50, seeds=seeds, **config).seed_table()["variant"]) == {"feds"}


def test_a_variant_of_the_reference_is_pooled_against_it_too(tmp_path):
    # rate_matched@600 changes feds@600 (its teacher pairing): against scratch@600 and against feds@600,
    # seed by seed and pooled, each in its own block of the seed figure
    from feds_lab.plots import seed_comparison

    factors = {"scratch@600": 1.0, "scratch_s1@600": 1.0, "feds@600": 1.2, "feds_s1@600": 1.2,
               "rate@600": 0.9, "rate_s1@600": 0.9, "feds": 1.0, "scratch": 1.0}
    files = [_results(name, f, tmp_path, k) for k, (name, f) in enumerate(factors.items())]
    analysis = _analysis(files, tmp_path, 100, variants={"feds": {}, "scratch": {"baseline": "scratch"}, "rate@600": {}},
                         student_steps=300, learning_curve={"feds": [600], "scratch": [600]},
                         seeds={"scratch@600": [1], "feds@600": [1], "rate@600": [1]}, reference="feds")
    assert analysis.variant("rate_s1@600").base == "rate" and analysis.variant("rate@600").budget == 600
    table = analysis.seed_table()
    pooled = table[table.comparison == "pooled"].set_index(["variant", "anchor_group"])
    assert sorted(pooled.index) == [("feds@600", "scratch@600"), ("rate@600", "feds@600"), ("rate@600", "scratch@600")]
    assert pooled.loc[("rate@600", "scratch@600"), "bd_rate"] == pytest.approx(-10, abs=3)
    assert pooled.loc[("rate@600", "feds@600"), "bd_rate"] == pytest.approx(100 * (0.9 / 1.2 - 1), abs=3)
    against_feds = table[(table.variant == "rate@600") & (table.anchor_group == "feds@600") & (table.comparison != "pooled")]
    assert set(against_feds["anchor"]) == {"feds@600", "feds_s1@600"}  # each seed against the reference's same seed
    ax = seed_comparison(table).axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["feds@600\nvs scratch@600", "rate@600\nvs scratch@600",
                                                            "rate@600\nvs feds@600"]


def test_a_cross_family_student_s_seeds_are_pooled_against_its_own_scratch(tmp_path):
    # the config's own pair (cnn_scratch, cnn_feds): the CNN student distilling a transformer teacher
    # against the CNN student trained alone, seed by seed, beside the rows against the family's scratch
    factors = {"scratch": 1.0, "scratch_s1": 1.0, "feds": 1.0, "feds_s1": 1.0,
               "cnn_scratch": 0.8, "cnn_scratch_s1": 0.8, "cnn_feds": 0.72, "cnn_feds_s1": 0.72}
    files = [_results(name, f, tmp_path, k) for k, (name, f) in enumerate(factors.items())]
    variants = {"feds": {}, "scratch": {"baseline": "scratch"}, "cnn_feds": {"family": "cnn"},
                "cnn_scratch": {"family": "cnn", "baseline": "scratch"}}
    analysis = _analysis(files, tmp_path, 100, family="transformer", variants=variants, reference="scratch",
                         seeds={v: [1] for v in variants})
    analysis.extra = [("cnn_scratch", "cnn_feds")]
    pooled = analysis.seed_table().query("comparison == 'pooled'").set_index(["variant", "anchor_group"])
    assert pooled.loc[("cnn_feds", "cnn_scratch"), "bd_rate"] == pytest.approx(-10, abs=3)
    assert pooled.loc[("cnn_feds", "scratch"), "bd_rate"] == pytest.approx(-28, abs=3)
