"""Learning curves: learning-curve variants (``feds@600``) and the table that compares FEDS with scratch by
budget, at equal steps and at equal wall-clock."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest

from feds_lab.errors import FedsLabError
from feds_lab.evaluation.evaluate import make_results, save_results
from feds_lab.evaluation.learning_curve import learning_curve_table, pooled_by_budget
from feds_lab.evaluation.rd_analysis import RDAnalysis
from feds_lab.pipeline import PipelineConfig
from feds_lab.variants import Variant, split_curve_variant

IMAGES = [f"img{i}" for i in range(5)]
LAMBDAS = [0.0018, 0.0067, 0.025, 0.0483]


def _records(tmp_path, **config) -> dict[str, Variant]:
    """The variant records of a run of ``config``, with its teacher's and JPEG's: an analysis' roles."""
    cfg = PipelineConfig(teacher="train", runs_dir=str(tmp_path), lambdas=LAMBDAS, **config).resolved()
    return {**cfg.variant_records(), "teacher": Variant.teacher(cfg.teacher_steps, cfg.seed),
            "anchor:jpeg": Variant.anchor("jpeg")}


def _ladder(name, rate_factor, steps, cost, tmp_path):
    """A synthetic 4-point curve: PSNR 20..26 dB at ``rate_factor`` x the base rates, per image."""
    rng = np.random.default_rng(sum(map(ord, name)))
    points, records = [], {}
    for k, (bpp, psnr) in enumerate(zip((0.1, 0.2, 0.4, 0.8), (20.0, 22.0, 24.0, 26.0))):
        rows = [{"image": im, "bpp": bpp * rate_factor * (1 + 0.02 * rng.standard_normal()),
                 "psnr-rgb": psnr + 0.3 * j, "ms-ssim-rgb": 0.9} for j, im in enumerate(IMAGES)]
        points.append({"rows": rows, "setting": {"lmbda": k}})
        records[str(k)] = {"budget": {"steps": steps, "wall_seconds": steps * cost}}
    path = tmp_path / f"{name}.json"
    save_results(make_results(name, points, meta={"records": records}), path)
    return path


def test_curve_variants_expand_from_the_config(tmp_path):
    cfg = PipelineConfig(teacher="train", name="lc", runs_dir=str(tmp_path), student_steps=300, lambdas=LAMBDAS,
                         learning_curve={"feds": [100, 300], "scratch": [100, 300, 600]}).resolved()
    assert sorted(cfg.variants) == ["feds", "feds@100", "scratch", "scratch@100", "scratch@600"]
    budget = cfg.variant_records()["scratch@600"]
    assert (budget.base, budget.budget, budget.steps, budget.kind, budget.replica_of) == ("scratch", 600, 600, "scratch", None)
    assert (cfg.variant_records()["feds"].steps, cfg.variant_records()["feds"].budget) == (300, None)
    assert cfg.train_config("student", 0.0067, "scratch@600").steps == 600
    assert cfg.train_config("student", 0.0067, "scratch@600").baseline == "scratch"
    # each budget is its own warm-started ladder
    assert "scratch@600" in cfg.train_config("student", 0.0067, "scratch@600").warm_start
    assert cfg.resolved().variants == cfg.variants  # resolving twice changes nothing
    assert split_curve_variant("feds@600") == ("feds", 600) and split_curve_variant("no_align") == ("no_align", None)
    with pytest.raises(FedsLabError, match="not a variant"):
        PipelineConfig(teacher="train", runs_dir=str(tmp_path), learning_curve={"fedz": [100]}).resolved()
    with pytest.raises(FedsLabError, match="positive whole number"):
        PipelineConfig(teacher="train", runs_dir=str(tmp_path), learning_curve={"feds": [0]}).resolved()
    # scratch budgets alone, scratch the reference: nothing to compare them with, said before any training
    only_scratch = dict(teacher="train", runs_dir=str(tmp_path), student_steps=300, reference="scratch")
    with pytest.raises(FedsLabError, match="scratch budgets only"):
        PipelineConfig(**only_scratch, learning_curve={"scratch": [1200]}).resolved()
    assert "scratch@1200" in PipelineConfig(**only_scratch, learning_curve={"feds": [300], "scratch": [1200]}).resolved().variants


def test_equal_steps_and_equal_wall_clock_rows(tmp_path):
    # FEDS needs 10 % fewer bits than scratch at every budget, and each FEDS step costs 2x a scratch step
    files, names = [], {}
    for steps in (100, 200, 400):
        for kind, factor, cost in (("feds", 0.9, 2.0), ("scratch", 1.0, 1.0)):
            role = kind if steps == 200 else f"{kind}@{steps}"
            files.append(_ladder(role, factor * (1.2 if steps == 100 else 1.0), steps, cost, tmp_path))
            names[role] = role
    files.append(_ladder("scratch@800", 0.8, 800, 1.0, tmp_path))
    names["scratch@800"] = "scratch@800"
    records = _records(tmp_path, student_steps=200, learning_curve={"feds": [100, 400], "scratch": [100, 400, 800]})
    table = learning_curve_table(RDAnalysis(files=files, names=names, summary=None, params_speed=None, bootstrap=200,
                                            variants=records))
    same = table[table.comparison == "equal steps"].set_index("steps")
    assert list(same.index) == [100, 200, 400]
    assert same.loc[200, "bd_rate"] == pytest.approx(-10, abs=1.5)
    assert same.loc[200, "ci_low"] <= same.loc[200, "bd_rate"] <= same.loc[200, "ci_high"]
    timed = table[table.comparison == "equal wall-clock"].set_index("steps")
    # FEDS at 200 steps took as long as scratch at 400, and at 400 as long as scratch at 800
    assert timed.loc[200, "anchor_steps"] == 400 and timed.loc[400, "anchor_steps"] == 800
    assert timed.loc[200, "seconds"] == pytest.approx(timed.loc[200, "anchor_seconds"])
    assert timed.loc[400, "bd_rate"] == pytest.approx(100 * (0.9 / 0.8 - 1), abs=2)  # scratch@800 is better
    assert not math.isnan(timed.loc[100, "bd_rate"])
    # without scratch@800, FEDS at 400 steps has no scratch ladder near its time: no figure, not scratch@400's
    short = [f for f in files if "scratch@800" not in f.name]
    table = learning_curve_table(RDAnalysis(files=short, names={k: v for k, v in names.items() if k != "scratch@800"},
                                            summary=None, params_speed=None, bootstrap=50, variants=records))
    row = table[(table.comparison == "equal wall-clock") & (table.steps == 400)].iloc[0]
    assert math.isnan(row["bd_rate"]) and "within 1.5x" in row["note"]
    from feds_lab.plots import learning_curve

    fig = learning_curve(table)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["equal steps", "equal wall-clock"]


def test_key_figures_travel_with_their_tables(tmp_path):
    from feds_lab.pipeline import copy_key_figures
    from feds_lab.run_folder import RunLayout

    layout = RunLayout(tmp_path / "run")
    layout.figures.mkdir(parents=True)
    layout.results.mkdir(parents=True)
    (layout.figures / "rd_psnr.png").write_bytes(b"png")
    layout.bd_rate.write_text("anchor,test\n")
    layout.learning_curve.write_text("comparison\n")
    copied = copy_key_figures(layout, tmp_path / "figures")
    assert sorted(p.name for p in copied) == ["bd_rate.csv", "learning_curve.csv", "rd_psnr.png"]


def test_the_reference_variant_is_what_every_other_variant_is_measured_against(tmp_path):
    names = {r: f"student {r}" for r in ("feds", "feds_tuned", "scratch", "no_align", "feds_tuned@100")}
    names.update(teacher="teacher", **{"anchor:jpeg": "JPEG"})
    records = _records(tmp_path, variants={"feds": {}, "feds_tuned": {}, "scratch": {"baseline": "scratch"},
                                           "no_align": {"alpha": 0.0}}, learning_curve={"feds_tuned": [100]},
                       reference="feds_tuned")
    pairs = RDAnalysis(files=[], names=names, summary=None, params_speed=None, reference="feds_tuned",
                       variants=records).comparisons()
    assert ("teacher", "student feds_tuned") in pairs and ("student scratch", "student feds_tuned") in pairs
    # the prior and the ablation against the reference and against scratch; no ladder point (@) in this table
    for other in ("student feds", "student no_align"):
        assert ("student feds_tuned", other) in pairs and ("student scratch", other) in pairs
    assert not any("@" in a or "@" in t for a, t in pairs)
    assert ("teacher", "student feds") not in pairs  # feds is only a variant here
    with pytest.raises(FedsLabError, match="reference: 'fedz' is not a variant"):
        PipelineConfig(teacher="train", runs_dir=str(tmp_path), reference="fedz").resolved()


def test_a_config_adds_its_own_pairs_and_a_variant_its_own_family(tmp_path):
    """Cross-family: a transformer teacher distils a CNN student (a variant with ``family: cnn``),
    measured against the CNN scratch baseline that ``comparisons`` names."""
    variants = {"feds": {}, "scratch": {"baseline": "scratch"}, "cnn_feds": {"family": "cnn"},
                "cnn_scratch": {"family": "cnn", "baseline": "scratch"}}
    cfg = PipelineConfig(teacher="train", runs_dir=str(tmp_path), family="transformer", variants=variants,
                         comparisons=[["cnn_scratch", "cnn_feds"], ["teacher", "cnn_feds"]]).resolved()
    assert cfg.train_config("student", cfg.lambdas[0], "cnn_feds").family == "cnn"
    assert cfg.train_config("student", cfg.lambdas[0], "feds").family == "transformer"
    names = {r: f"student {r}" for r in variants} | {"teacher": "teacher"}
    records = {**cfg.variant_records(), "teacher": Variant.teacher(cfg.teacher_steps, cfg.seed)}
    pairs = RDAnalysis(files=[], names=names, summary=None, params_speed=None, extra=cfg.comparisons,
                       variants=records).comparisons()
    assert ("student cnn_scratch", "student cnn_feds") in pairs and ("teacher", "student cnn_feds") in pairs
    assert len(pairs) == len(set(pairs))  # a pair the rules already make is not made twice
    for bad, match in (([["cnn_scratch", "cnn_fedz"]], "not variants"), ([["scratch"]], r"\[anchor, test\]")):
        with pytest.raises(FedsLabError, match=match):
            PipelineConfig(teacher="train", runs_dir=str(tmp_path), variants=variants, comparisons=bad).resolved()


def test_a_table_of_several_feds_variants_keeps_them_apart(tmp_path):
    files, names = [], {}
    for role, factor in (("feds", 1.1), ("feds@100", 1.3), ("tuned", 0.9), ("tuned@100", 1.0),
                         ("scratch", 1.0), ("scratch@100", 1.2)):
        files.append(_ladder(role, factor, 100 if "@" in role else 200, 1.0, tmp_path))
        names[role] = role
    records = _records(tmp_path, student_steps=200, reference="tuned",
                       variants={"feds": {}, "tuned": {}, "scratch": {"baseline": "scratch"}, "other": {}},
                       learning_curve={"feds": [100], "tuned": [100], "scratch": [100]})
    analysis = RDAnalysis(files=files, names=names, summary=None, params_speed=None, bootstrap=50, variants=records)
    table = learning_curve_table(analysis, test=["tuned", "feds"])
    assert list(dict.fromkeys(table["variant"])) == ["tuned", "feds"]
    same = table[table.comparison == "equal steps"].set_index(["variant", "steps"])["bd_rate"]
    assert same[("tuned", 200)] == pytest.approx(-10, abs=2) and same[("feds", 200)] == pytest.approx(10, abs=2)
    from feds_lab.plots import learning_curve

    labels = [t.get_text() for t in learning_curve(table).axes[0].get_legend().get_texts()]
    assert labels == ["tuned, equal steps", "tuned, equal wall-clock", "feds, equal steps", "feds, equal wall-clock"]
    # the seed table's pooled rows of the curve's variants: one diamond at each budget (tuned at student_steps,
    # tuned@100 at 100); a variant not on the curve (other) is not drawn, nor a row against another anchor
    seeds = pd.DataFrame([{"variant": v, "anchor_group": a, "comparison": "pooled", "bd_rate": b, "ci_low": b - 5,
                           "ci_high": b + 5, "n_test": 3, "n_anchor": 3}
                          for v, a, b in (("tuned", "scratch", -4.0), ("tuned@100", "scratch@100", 2.0),
                                          ("other", "scratch", 9.0), ("feds", "tuned", 7.0))])
    pooled = pooled_by_budget(analysis, seeds)
    assert list(zip(pooled["variant"], pooled["steps"])) == [("tuned", 200), ("tuned", 100), ("other", 200)]
    ax = learning_curve(table, pooled=pooled).axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()][-1] == "equal steps, seeds pooled"
    diamonds = [line for line in ax.get_lines() if line.get_marker() == "D"]
    assert sorted(float(line.get_ydata()[0]) for line in diamonds) == [-4.0, 2.0]
    x = sorted(float(line.get_xdata()[0]) for line in diamonds)  # beside its budget's one-seed points
    assert 100 < x[0] < 120 and 200 < x[1] < 240


def test_learning_curve_plot_without_any_bd_figure(tmp_path):
    # short budgets: every curve non-monotonic, so no row has a BD-rate; the figure still draws (it once
    # failed on its log-scaled axis with nothing to scale by) and says why at each budget
    from feds_lab.plots import learning_curve

    rows = [{"variant": "feds", "comparison": kind, "steps": s, "anchor_steps": s, "bd_rate": math.nan,
             "note": "not computable"} for s in (100, 200) for kind in ("equal steps", "equal wall-clock")]
    fig = learning_curve(pd.DataFrame(rows))
    fig.savefig(io.BytesIO(), format="png")
    assert sum("not computable" in t.get_text() for t in fig.axes[0].texts) == 4


def test_a_study_of_the_teachers_alone_compares_each_pair_once(tmp_path):
    """scratch as the reference (configs/pipelines/zoo_check.yaml): no row twice, no curve against itself."""
    names = {"scratch": "student scratch", "teacher": "teacher", "anchor:jpeg": "JPEG"}
    records = _records(tmp_path, variants={"scratch": {"baseline": "scratch"}}, reference="scratch")
    pairs = RDAnalysis(files=[], names=names, summary=None, params_speed=None, reference="scratch",
                       variants=records).comparisons()
    assert sorted(pairs) == sorted([("teacher", "student scratch"), ("JPEG", "student scratch"), ("JPEG", "teacher")])


def test_the_teacher_gap_is_measured_at_every_budget(tmp_path):
    files, names = [], {}
    for role, factor, steps in (("teacher", 0.7, 1000), ("feds", 1.1, 200), ("feds@100", 1.3, 100),
                                ("scratch", 1.0, 200), ("scratch@100", 1.2, 100)):
        files.append(_ladder(role, factor, steps, 1.0, tmp_path))
        names[role] = role
    records = _records(tmp_path, student_steps=200, variants={"feds": {}, "scratch": {"baseline": "scratch"}},
                       learning_curve={"feds": [100], "scratch": [100]})
    gap = RDAnalysis(files=files, names=names, summary=None, params_speed=None, bootstrap=50,
                     variants=records).teacher_gap()
    assert list(gap["test"]) == ["feds", "scratch", "feds@100", "scratch@100"]
    by = gap.set_index("test")["gap_db"]
    assert by["feds@100"] < by["feds"] < 0 and by["scratch@100"] < by["scratch"] < 0  # fewer steps, further behind
