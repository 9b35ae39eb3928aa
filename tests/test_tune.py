"""The search (feds-lab tune): a tiny search of two trials runs end to end, resumes from its storage,
and measures only on tune-val; the PSNR-at-matched-rate helper against a hand example."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from feds_lab.data import split_files
from feds_lab.pipeline import PipelineConfig
from feds_lab.tune import PRIOR, Search, psnr_gain_at_matched_rate, suggest, summary, write_summary

optuna = pytest.importorskip("optuna")


def test_psnr_gain_at_matched_rate_by_hand():
    anchor = (np.array([0.1, 1.0]), np.array([20.0, 30.0]))  # 10 dB per decade of rate
    assert psnr_gain_at_matched_rate(anchor, [(np.sqrt(0.1), 26.0)]) == pytest.approx(1.0)  # anchor: 25 dB
    assert psnr_gain_at_matched_rate(anchor, [(10.0, 39.0)]) == pytest.approx(-1.0)  # extended past its end: 40
    # a curve whose neighbouring lambdas cross: the dominated point (0.3 bpp at 22 dB, beaten by 0.2 bpp at
    # 24 dB) is not the anchor, inside the curve or past its end (where its segment to 1.0 bpp, 15 dB per
    # decade, would have been extended instead of the front's last, 8.6)
    crossing = (np.array([0.1, 0.2, 0.3, 1.0]), np.array([20.0, 24.0, 22.0, 30.0]))
    assert psnr_gain_at_matched_rate(crossing, [(0.3, 25.0)]) == pytest.approx(1.0 - 6 * np.log10(1.5) / np.log10(5))
    assert psnr_gain_at_matched_rate(crossing, [(10.0, 40.0)]) == pytest.approx(10.0 - 6 / np.log10(5))


def test_search_space_holds_the_feds_and_prim_forms_and_the_teacher_init(tmp_path):
    from optuna.trial import FixedTrial

    cfg = PipelineConfig(name="s", runs_dir=str(tmp_path), lambdas=[0.0035, 0.0067, 0.025, 0.0932])
    student = cfg.resolved().train_config("student", 0.0067, "feds")
    prim = suggest(FixedTrial({"form": "prim", "prim_latent": 0.75, "prim_recon": 0.5, "init": "entropy"}))
    assert prim["beta"] == 0.75 and prim["gamma"] == 0.5 and prim["alpha"] == 0.0
    assert prim["balance"] == "none" and prim["stage_split"] == [0.0, 1.0, 0.0] and prim["latent_norm"] == "none"
    assert prim["init_from_teacher"] is True and prim["init_scope"] == "entropy"
    feds = suggest(FixedTrial(PRIOR))
    assert feds["balance"] == "grad" and "init_from_teacher" not in feds and feds["alpha"] == 0.1
    for values in (prim, feds):
        student.updated(values).resolved().check()  # each form is a valid student config


def test_tune_splits_are_disjoint_from_the_reported_split():
    files = [f"{i:03d}.png" for i in range(49)]
    val, tv, tt = (set(split_files(files, s)) for s in ("val", "tune-val", "tune-train"))
    assert not (val & tv) and not (val & tt) and not (tv & tt)
    assert len(val) == 5 and len(tv) == 6 and len(tt) == 38


def _small_photos(folder):
    """Ten 128x128 crops of the built-in photographs: validation codes small images, so the test is quick."""
    from PIL import Image

    from feds_lab.data import builtin_images, to_uint8

    folder.mkdir()
    for i in range(10):
        name, img = builtin_images()[i % 8]
        top, left = 64 * (i // 8), 64 * (i // 8)
        crop = to_uint8(img[:, top:top + 128, left:left + 128]).permute(1, 2, 0).numpy()
        Image.fromarray(crop).save(folder / f"{i:02d}_{name}.png")
    return folder


@pytest.mark.slow
def test_tiny_search_runs_and_resumes(tmp_path, one_thread):
    cfg = PipelineConfig(name="t", runs_dir=str(tmp_path), teacher="train", teacher_steps=2, student_steps=3,
                         lambdas=[0.0018, 0.0067, 0.025, 0.0483], threads=1, data=str(_small_photos(tmp_path / "photos")),
                         train={"train_split": "tune-train", "crop": 64, "batch_size": 2})
    search = Search(cfg)
    study = search.run(1, log=lambda m: None)
    assert len(study.trials) == 1
    study = search.run(2, log=lambda m: None)  # the same storage: one more trial
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == 2
    assert finished[0].params["alpha"] == pytest.approx(0.1)  # the enqueued prior comes first
    for t in finished:
        folder = tmp_path / "t" / "tune" / t.user_attrs["folder"].split("/")[-1]
        assert sorted(p.name for p in folder.iterdir()) == ["l0.0018", "l0.0067", "l0.025", "l0.0483"]
        # each trial's runs trained on tune-train, validated on tune-val (their records say so)
        from feds_lab.checkpoint import read_record

        assert read_record(folder / "l0.0067" / "model.safetensors")["budget"]["train_split"] == "tune-train"
        assert len(t.user_attrs["points"]) == 4
    # resume: a new Search on the same storage with the same target runs nothing new
    again = Search(cfg).run(2, log=lambda m: None)
    assert len(again.trials) == 2
    path = write_summary(search, again, log=lambda m: None)
    s = json.loads(path.read_text())
    assert s["complete"] + sum(r["state"] == "PRUNED" for r in s["trials"]) == 2
    assert (path.parent / "tune_search.png").stat().st_size > 1000
    assert (path.parent / "best.yaml").exists() == bool(s["complete"])


@pytest.mark.slow
def test_trial_on_several_seeds_scores_the_seed_mean_curves(tmp_path, one_thread):
    from feds_lab.evaluation.bdrate import BDRateError, bd_rate
    from feds_lab.tune import BD_UNDEFINED, TuneError, val_point

    cfg = PipelineConfig(name="s", runs_dir=str(tmp_path), teacher="train", teacher_steps=2, student_steps=3,
                         lambdas=[0.0018, 0.0067, 0.025, 0.0483], threads=1, data=str(_small_photos(tmp_path / "photos")),
                         train={"train_split": "tune-train", "crop": 64, "batch_size": 2},
                         variants={"feds": {}, "scratch": {"baseline": "scratch"},
                                   "init_only": {"alpha": 0.0, "beta": 0.0, "gamma": 0.0, "init_from_teacher": True},
                                   "prim": {"beta": 0.75, "gamma": 0.75}},
                         seeds={"init_only": [1]})
    search = Search(cfg, seeds=[0, 1])
    assert search.study_name == "s-feds-seeds0-1"
    study = search.run(1, log=lambda m: None)
    (t,) = [t for t in study.trials if t.state.is_finished()]
    folder = Path(t.user_attrs["folder"])
    lambdas = ["l0.0018", "l0.0067", "l0.025", "l0.0483"]
    # seed 0 in the one-seed layout, seed 1 beside it; each seed's scratch ladder is the pipeline's own
    assert sorted(p.name for p in (folder / "s1").iterdir()) == lambdas
    runs = {0: [folder / l / "model.safetensors" for l in lambdas],
            1: [folder / "s1" / l / "model.safetensors" for l in lambdas]}
    scratch = {0: [tmp_path / "s" / "student" / "scratch" / l / "model.safetensors" for l in lambdas],
               1: [tmp_path / "s" / "student" / "scratch_s1" / l / "model.safetensors" for l in lambdas]}
    from feds_lab.checkpoint import read_record

    assert read_record(runs[1][2])["train_config"]["seed"] == 1
    assert read_record(scratch[1][2])["train_config"]["seed"] == 1
    # the two seeds are different draws, and the objective is the BD-rate of the seed means
    assert [val_point(p) for p in runs[0]] != [val_point(p) for p in runs[1]]
    mean = lambda paths: np.mean([[val_point(p) for p in paths[s]] for s in (0, 1)], axis=0)  # noqa: E731
    f, r = mean(runs), mean(scratch)
    try:
        expected = bd_rate(r[:, 0], r[:, 1], f[:, 0], f[:, 1])
    except BDRateError:  # three training steps: the mean curve may not be monotonic
        expected = BD_UNDEFINED
    assert t.state == optuna.trial.TrialState.COMPLETE and t.value == pytest.approx(expected)
    np.testing.assert_allclose(t.user_attrs["points"], f)
    # a configured variant on the search's scale: its ladder per seed in the pipeline's folders, scored as a trial
    scored = search.score("init_only", log=lambda m: None)
    own = {0: [tmp_path / "s" / "student" / "init_only" / l / "model.safetensors" for l in lambdas],
           1: [tmp_path / "s" / "student" / "init_only_s1" / l / "model.safetensors" for l in lambdas]}
    assert read_record(own[1][0])["train_config"]["seed"] == 1
    assert read_record(own[1][0])["train_config"]["init_from_teacher"] is True
    g = mean(own)
    np.testing.assert_allclose(scored["points"], g)
    try:
        assert scored["value"] == pytest.approx(bd_rate(r[:, 0], r[:, 1], g[:, 0], g[:, 1]))
    except BDRateError:
        assert scored["value"] is None and "no BD-rate" in scored["note"]
    s = json.loads(write_summary(search, study, log=lambda m: None).read_text())
    np.testing.assert_allclose(s["scored"]["init_only"]["points"], scored["points"])
    with pytest.raises(TuneError, match="prim_s1"):  # a seed the config does not declare for it
        search.score("prim", log=lambda m: None)
    # a study keeps its seeds: another list is refused, not mixed into its ranking
    with pytest.raises(TuneError, match="seeds"):
        Search(cfg, study_name="s-feds-seeds0-1", seeds=[0, 2]).study()
    with pytest.raises(TuneError, match="seeds"):
        Search(cfg, study_name="s-feds-seeds0-1").study()


def test_designed_trials_are_queued_once(tmp_path):
    cfg = PipelineConfig(name="q", runs_dir=str(tmp_path), teacher="train", lambdas=[0.0018, 0.0067, 0.025, 0.0483],
                         data=str(tmp_path))
    search = Search(cfg)
    probes = tmp_path / "probes.yaml"
    probes.write_text("- {alpha: 0.01, beta: 0.01, gamma: 0.3}\n- {alpha: 0.1, taps: synthesis}\n")
    assert search.enqueue(probes, log=lambda m: None) == 2
    assert search.enqueue(probes, log=lambda m: None) == 0  # a restarted worker passes the same file
    waiting = [t for t in search.study().trials if t.state == optuna.trial.TrialState.WAITING]
    assert [t.system_attrs["fixed_params"].get("gamma") for t in waiting][-2:] == [0.3, None]
    probes.write_text("- {alpah: 0.1}\n")
    with pytest.raises(Exception, match="unknown search parameter"):
        search.enqueue(probes)
    # and the file the README names is valid
    from pathlib import Path

    assert Search(cfg.updated({"name": "q2"})).enqueue(Path(__file__).parent.parent / "configs/tune/probes.yaml",
                                                       log=lambda m: None) == 9
