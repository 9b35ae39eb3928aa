"""Issue 16: learning-curve variants (``feds@600``) and the table that compares FEDS with scratch by
budget, at equal steps and at equal wall-clock."""

from __future__ import annotations

import math

import numpy as np
import pytest

from feds_lab.errors import FedsLabError
from feds_lab.evaluation.evaluate import make_results, save_results
from feds_lab.evaluation.learning_curve import learning_curve_table
from feds_lab.evaluation.rd_analysis import RDAnalysis
from feds_lab.pipeline import PipelineConfig
from feds_lab.run_folder import split_curve_variant

IMAGES = [f"img{i}" for i in range(5)]


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
    cfg = PipelineConfig(name="lc", runs_dir=str(tmp_path), student_steps=300, lambdas=[0.0018, 0.0067, 0.025, 0.0483],
                         learning_curve={"feds": [100, 300], "scratch": [100, 300, 600]}).resolved()
    assert sorted(cfg.variants) == ["feds", "feds@100", "scratch", "scratch@100", "scratch@600"]
    assert cfg.train_config("student", 0.0067, "scratch@600").steps == 600
    assert cfg.train_config("student", 0.0067, "scratch@600").baseline == "scratch"
    # each budget is its own warm-started ladder
    assert "scratch@600" in cfg.train_config("student", 0.0067, "scratch@600").warm_start
    assert cfg.resolved().variants == cfg.variants  # resolving twice changes nothing
    assert split_curve_variant("feds@600") == ("feds", 600) and split_curve_variant("no_align") == ("no_align", None)
    with pytest.raises(FedsLabError, match="not a variant"):
        PipelineConfig(runs_dir=str(tmp_path), learning_curve={"fedz": [100]}).resolved()
    with pytest.raises(FedsLabError, match="positive whole number"):
        PipelineConfig(runs_dir=str(tmp_path), learning_curve={"feds": [0]}).resolved()


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
    table = learning_curve_table(RDAnalysis(files=files, names=names, summary=None, params_speed=None, bootstrap=200),
                                 student_steps=200)
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
