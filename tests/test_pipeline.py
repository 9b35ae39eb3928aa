"""The headless pipeline: the four notebooks run in order, as one pipeline, and write what they claim."""

import json

import pytest

from feds_lab.errors import FedsLabError
from feds_lab.pipeline import KEY_FIGURES, KEY_TABLES, NOTEBOOKS, PipelineConfig, PipelineError, run_pipeline
from feds_lab.zoo import find, verified_path

LAMBDAS = [0.0035, 0.0067, 0.025, 0.0932]  # the zoo ships these


def tiny(tmp_path, **kw):
    values = dict(name="t", runs_dir=str(tmp_path / "runs"), lambdas=LAMBDAS, teacher="train", teacher_steps=6, student_steps=6,
                  anchors=["jpeg"], entropy_images=2, figures_dir=str(tmp_path / "figures"),
                  train={"batch_size": 2, "val_every": 0, "progress": False}, threads=1)
    values.update(kw)
    return PipelineConfig().updated(values)


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipe")
    logs: list[str] = []
    # the default teachers: the zoo's (the "teacher: train" path runs in the tests below and in test_progress)
    cfg = tiny(tmp, teacher="zoo", teacher_steps=None, seeds={"feds": [1], "scratch": [1]})  # + notebook 04's seed table
    run_dir = run_pipeline(cfg, log=logs.append)
    return cfg, run_dir, logs


@pytest.mark.slow
def test_pipeline_writes_everything(pipeline_run):
    cfg, run, logs = pipeline_run
    for name in NOTEBOOKS:
        nb = json.loads((run / "notebooks" / f"{name}.ipynb").read_text())
        assert nb["metadata"]["papermill"]["exception"] is None
        # the executed copy got the run folder, and read the pipeline's parameters from its pipeline.yaml
        injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
        assert injected and f'run_dir = "{run.resolve()}"' in "".join(injected[0]["source"])
        printed = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
        assert "zoo teachers (" in printed and "student steps 6" in printed, name
        # every notebook shows its figures (not "<Figure size ...>" text): in JupyterLab and in the report
        images = [o for c in nb["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
        assert len(images) >= (2 if name == "02_channel_entropy" else 1), name
    for lmbda in LAMBDAS:
        assert (run / "teacher" / f"l{lmbda:g}" / "model.safetensors").is_file()
        for variant in ("feds", "scratch", "feds_s1", "scratch_s1"):
            assert (run / "student" / variant / f"l{lmbda:g}" / "model.safetensors").is_file()
    results = {p.name for p in (run / "results").glob("*.json")}
    assert {"teacher.json", "student_feds.json", "student_scratch.json"} <= results
    teacher = json.loads((run / "results" / "teacher.json").read_text())
    assert len(teacher["results"]["bpp"]) == 4 and teacher["meta"]["records"]["0.025"]["budget"]["steps"] == 5_000
    for lmbda in LAMBDAS:  # the zoo's files, verified and copied in
        assert (run / "teacher" / f"l{lmbda:g}" / "model.safetensors").read_bytes() == \
            verified_path(find("cnn", "tiny", lmbda)).read_bytes()
    assert teacher["meta"]["threads"] == 1  # the kernel took the pipeline's threads (torch's default is 2+)
    bd = (run / "results" / "bd_rate.csv").read_text().splitlines()
    assert bd[0].startswith("anchor,test") and len(bd) == 1 + 6  # feds-teacher, scratch-teacher, feds-scratch, 3 x JPEG
    gap = (run / "results" / "teacher_gap.csv").read_text().splitlines()  # feds and scratch at the teacher's rates
    assert gap[0].startswith("anchor,test,metric,points") and len(gap) == 1 + 2
    seeds = (run / "results" / "seeds.csv").read_text().splitlines()  # seed 0, seed 1, pooled (or why not)
    assert seeds[0].startswith("variant,anchor_group,comparison,seed") and len(seeds) == 1 + 3
    assert (run / "figures" / "seeds.png").is_file()
    state = json.loads((run / "state.json").read_text())
    assert list(state) == list(NOTEBOOKS)
    for fig in ("teacher_training_curves.png", "teacher_rd.png", "channel_entropy_heatmap.png", "distillation_curves.png",
                "rd_psnr.png"):
        assert (run / "figures" / fig).stat().st_size > 10_000
        assert (cfg.figures_dir and (run.parent.parent / "figures" / fig).is_file())
    assert set(p.name for p in (run.parent.parent / "figures").iterdir()) <= set(KEY_FIGURES) | set(KEY_TABLES)
    assert (run.parent.parent / "figures" / "bd_rate.csv").read_text() == (run / "results" / "bd_rate.csv").read_text()
    assert (run / "report" / "index.html").is_file()
    assert any("finished in" in line for line in logs)


@pytest.mark.slow
def test_resume_skips_completed_notebooks(pipeline_run):
    cfg, run, _ = pipeline_run
    logs: list[str] = []
    run_pipeline(cfg, resume=True, log=logs.append)
    assert sum("skipped (--resume)" in line for line in logs) == len(NOTEBOOKS)


@pytest.mark.slow
def test_failure_names_the_notebook_and_the_error(tmp_path):
    # notebook 03 trains its teachers (a few steps), then meets the bad student variant
    cfg = tiny(tmp_path, notebooks=["03_distillation"], variants={"feds": {"no_such_field": 1}})
    with pytest.raises(PipelineError, match=r"notebook 03_distillation failed in cell \[\d+\]: ConfigError: "
                                            r"unknown config field 'no_such_field'"):
        run_pipeline(cfg)
    state = json.loads((tmp_path / "runs" / "t" / "state.json").read_text())
    assert "03_distillation" not in state


def test_bad_parameters_are_refused(tmp_path):
    with pytest.raises(FedsLabError, match="unknown pipeline parameter"):
        PipelineConfig().updated({"lambda": 1})
    with pytest.raises(FedsLabError, match="unknown preset"):
        tiny(tmp_path, preset="huge").resolved()


def test_missing_data_folder_is_refused_before_any_notebook(tmp_path):
    with pytest.raises(FedsLabError, match="data: no such folder"):
        run_pipeline(tiny(tmp_path, data=str(tmp_path / "nope")))
    assert not (tmp_path / "runs" / "t" / "notebooks").exists()


def test_relative_data_paths_reach_the_notebooks_absolute(tmp_path, monkeypatch):
    (tmp_path / "photos").mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = tiny(tmp_path, data="photos").resolved()  # what pipeline.yaml, read by every notebook, holds
    assert cfg.data == str(tmp_path / "photos")
    assert cfg.notebook_parameters() == {"run_dir": str(cfg.run_dir.resolve())}


def test_example_pipeline_configs_load():
    from pathlib import Path

    files = sorted((Path(__file__).parent.parent / "configs" / "pipelines").glob("*.yaml"))
    assert {f.name for f in files} >= {"tiny.yaml", "study.yaml", "study_transformer.yaml"}
    for f in files:
        cfg = PipelineConfig.from_yaml(f)
        assert len(cfg.lambdas or [0] * 4) >= 4, f


def test_threads_reach_training_runs_unless_train_sets_its_own(tmp_path):
    cfg = tiny(tmp_path, threads=1).resolved()
    assert cfg.train_config("teacher", LAMBDAS[0]).threads == 1
    assert cfg.train_config("student", LAMBDAS[0], variant="feds").threads == 1
    own = tiny(tmp_path, threads=1, train={"threads": 2}).resolved()
    assert own.train_config("teacher", LAMBDAS[0]).threads == 2
    assert tiny(tmp_path, threads=None).resolved().train_config("teacher", LAMBDAS[0]).threads is None
    for bad in (0, -1, 1.5, "2"):
        with pytest.raises(FedsLabError, match="threads must be a positive integer"):
            tiny(tmp_path, threads=bad).resolved()


def test_budget_labels_name_teacher_and_student_budgets_apart(tmp_path):
    same = tiny(tmp_path).resolved()
    assert same.budget_label("all") == same.budget_label("teacher") == "tiny preset, 6 steps per λ, each λ warm-started from the previous"
    apart = tiny(tmp_path, teacher_steps=30, warm_start_ladder=False).resolved()
    assert apart.budget_label("teacher") == "tiny preset, 30 steps per λ"
    assert apart.budget_label("student") == "tiny preset, 6 steps per λ"
    assert apart.budget_label("all") == "tiny preset, teacher 30, students 6 steps per λ"
    with pytest.raises(FedsLabError, match="role"):
        apart.budget_label("students")


@pytest.mark.slow
def test_notebook_02_runs_on_a_brought_codec(tmp_path):
    """Notebook 02 (entropy heatmap, real-coded channel ablation, the explorer) on a wrapped CompressAI
    model, trained here for a few steps from random weights: nothing is downloaded."""
    cfg = tiny(tmp_path, family="compressai:mbt2018-mean", notebooks=["02_channel_entropy"], figures_dir=None)
    run = run_pipeline(cfg, log=lambda _line: None)
    nb = json.loads((run / "notebooks" / "02_channel_entropy.ipynb").read_text())
    assert nb["metadata"]["papermill"]["exception"] is None
    explorer = [c for c in nb["cells"] if "ChannelExplorer(" in "".join(c["source"])]
    assert explorer and explorer[0]["outputs"], "the explorer cell shows the explorer"
    assert (run / "figures" / "channel_entropy_heatmap.png").stat().st_size > 10_000
    ablation = (run / "figures" / "channel_ablation.csv").read_text().splitlines()
    assert ablation[0].startswith("image,variant,bpp,psnr") and len(ablation) == 1 + 2 * 3


def test_a_variant_can_distil_another_lambda_s_teacher(tmp_path):
    # teacher_for (ours): a student distils the teacher nearest its rate, not its own lambda's
    cfg = tiny(tmp_path, variants={"feds": {}, "matched": {"alpha": 0.01, "teacher_for": {0.025: 0.0067}},
                                   "scratch": {"baseline": "scratch"}}).resolved()
    layout = cfg.layout
    matched = cfg.train_config("student", 0.025, "matched")
    assert matched.teacher == str(layout.teacher_model(0.0067)) and matched.alpha == 0.01
    assert "matched" in matched.warm_start  # its own ladder still
    assert cfg.train_config("student", 0.0932, "matched").teacher == str(layout.teacher_model(0.0932))  # the rest: its own
    assert cfg.train_config("student", 0.025, "feds").teacher == str(layout.teacher_model(0.025))
    with pytest.raises(FedsLabError, match=r"not in the ladder"):
        tiny(tmp_path, variants={"feds": {"teacher_for": {0.025: 0.5}}}).resolved().train_config("student", 0.025, "feds")
    with pytest.raises(FedsLabError, match="scratch baseline"):
        tiny(tmp_path, variants={"feds": {}, "scratch": {"baseline": "scratch", "teacher_for": {0.025: 0.0067}}}
             ).resolved().train_config("student", 0.025, "scratch")
    with pytest.raises(FedsLabError, match="must be a mapping"):
        tiny(tmp_path, variants={"feds": {"teacher_for": [0.0067]}}).resolved().train_config("student", 0.025, "feds")


def test_a_variant_named_for_its_budget_trains_at_it(tmp_path):
    cfg = tiny(tmp_path, variants={"feds": {}, "feds_long@12": {"alpha": 0.01}}).resolved()
    assert cfg.train_config("student", LAMBDAS[1], "feds_long@12").steps == 12
    with pytest.raises(FedsLabError, match="named for 12 steps but sets steps: 6"):
        tiny(tmp_path, variants={"feds": {}, "feds_long@12": {"steps": 6}}).resolved()
