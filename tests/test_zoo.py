"""The teacher zoo: files checked against their manifest before use, models that code, the ladder plan."""

import json
import math

import shutil

import pytest
import torch

from feds_lab import build_model
from feds_lab.checkpoint import read_record, save_model
from feds_lab.coding import decode, encode
from feds_lab.data import builtin_split
from feds_lab.zoo import ZooError, budget_text, entries, find, ladder, load, manifest, publish, source_of, verified_path
from feds_lab.zoo.train import LadderPlan, seed_from_interim


@pytest.fixture
def zoo(tmp_path, tiny_checkpoints):
    """A zoo of one published tiny teacher (untrained weights: the machinery, not the quality)."""
    ck = tmp_path / "teacher.safetensors"
    torch.manual_seed(0)
    save_model(build_model("teacher", "tiny"), ck, {"lmbda": 0.013, "budget": {"steps": 3}})
    d = tmp_path / "zoo"
    d.mkdir()
    entry = publish(ck, d, {"data": {"folder": "test", "split": "tune-train"}, "commit": "abc"})
    return d, entry


def test_a_published_model_is_float16_with_its_record_and_codes_a_photograph(zoo):
    d, entry = zoo
    path = verified_path(entry, d)
    rec = read_record(path)
    assert rec["storage"] == "float16" and rec["lmbda"] == 0.013 and rec["data"]["split"] == "tune-train"
    assert entry["name"] == "cnn-tiny-teacher-l0.013" and len(entry["sha256"]) == 64
    model = load("cnn", "tiny", 0.013, zoo_dir=d)
    assert next(model.parameters()).dtype == torch.float32
    x = dict(builtin_split("val"))["coffee"][:, :128, :192].unsqueeze(0).contiguous()
    r = encode(model, x)
    assert decode(model, r.data).x_hat.shape == x.shape and r.bpp > 0
    assert list(ladder("cnn", "tiny", zoo_dir=d)) == [0.013]


def test_float16_storage_changes_the_reconstruction_by_float16_rounding_only(zoo, tmp_path):
    d, _ = zoo
    torch.manual_seed(0)
    full = build_model("teacher", "tiny").eval()
    half = load("cnn", "tiny", 0.013, zoo_dir=d)
    for (name, a), b in zip(full.named_parameters(), half.parameters()):
        assert torch.equal(a.detach().half().float(), b.detach()), name


@pytest.mark.parametrize("damage", ["one byte", "truncated", "missing"])
def test_a_changed_zoo_file_is_refused(zoo, damage):
    d, entry = zoo
    path = d / entry["file"]
    data = bytearray(path.read_bytes())
    if damage == "one byte":
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    elif damage == "truncated":
        path.write_bytes(bytes(data[:-100]))
    else:
        path.unlink()
    with pytest.raises(ZooError, match="changed or truncated|missing"):
        load("cnn", "tiny", 0.013, zoo_dir=d)


def test_unknown_lambdas_and_bad_manifests_are_clear_errors(zoo):
    d, _ = zoo
    with pytest.raises(ZooError, match=r"no cnn tiny teacher at lambda 0.5 \(it has: 0.013\)"):
        find("cnn", "tiny", 0.5, zoo_dir=d)
    (d / "manifest.json").write_text(json.dumps({"format": "feds-lab-zoo/1", "models": [{"name": "x", "file": "../a"}]}))
    with pytest.raises(ZooError, match="malformed entry"):
        manifest(d)


def test_a_float16_file_leaves_out_the_fixed_masks_and_loads_them_from_the_architecture(zoo, tmp_path):
    from safetensors import safe_open

    from feds_lab.checkpoint import CheckpointMismatchError, load_model

    d, entry = zoo
    with safe_open(str(d / entry["file"]), "pt") as f:
        keys = set(f.keys())
    assert not any(k.endswith("mask") for k in keys) and any(k.endswith("context_prediction.weight") for k in keys)
    model = load("cnn", "tiny", 0.013, zoo_dir=d)
    mask = model.latent_codec.y.context_prediction.mask
    fresh = build_model("teacher", "tiny").latent_codec.y.context_prediction.mask
    assert torch.equal(mask, fresh) and 0 < mask.mean() < 1  # the context model's mask, built, not read
    full = tmp_path / "full.safetensors"  # a float32 file must still hold every tensor
    save_model(model, full)
    from safetensors.torch import load_file, save_file

    state = load_file(str(full))
    state.pop("latent_codec.y.context_prediction.mask")
    save_file(state, str(full), metadata={"feds_lab": json.dumps(read_record(full))})
    with pytest.raises(CheckpointMismatchError, match="missing from the checkpoint"):
        load_model(full)


def test_zoo_remove_takes_out_the_file_and_its_entry(zoo):
    from feds_lab.zoo import remove

    d, entry = zoo
    assert remove(entry["name"], d)["file"] == entry["file"]
    assert not (d / entry["file"]).exists() and entries(d) == []
    with pytest.raises(ZooError, match="no zoo model named"):
        remove(entry["name"], d)


def test_the_shipped_zoo_stays_under_20_mb():
    from feds_lab.zoo import ZOO_DIR

    files = [p for p in ZOO_DIR.iterdir() if p.is_file() and not p.name.startswith(".")]
    assert sum(p.stat().st_size for p in files) < 20e6, sorted((p.name, p.stat().st_size) for p in files)
    assert {p.name for p in files if p.suffix == ".safetensors"} == {e["file"] for e in manifest()["models"]}


def test_the_shipped_zoo_verifies_and_its_ladders_are_monotonic():
    """Every file the package ships matches its manifest; each ladder's validation rate rises with lambda."""
    import os

    shipped = entries()

    def paths(value):  # the training machine's absolute paths stay out of what ships
        if isinstance(value, dict):
            return [p for v in value.values() for p in paths(v)]
        if isinstance(value, list):
            return [p for v in value for p in paths(v)]
        return [value] if isinstance(value, str) and os.path.isabs(value) else []

    for e in shipped:
        assert not paths(read_record(verified_path(e))) and not paths(e), e["name"]
    for family, preset in {(e["family"], e["preset"]) for e in shipped}:
        rows = [e for e in shipped if (e["family"], e["preset"]) == (family, preset)]
        bpp = [e["record"]["val"]["bpp"] for e in rows if e["record"].get("val")]
        assert bpp == sorted(bpp), (family, preset)


def test_each_shipped_ladder_codes_a_photograph_as_a_trained_codec_does():
    """The lowest λ of every shipped ladder through real bits: decoded, and far better than an
    untrained model of its size could do at any rate (a trained teacher, not noise)."""
    from feds_lab.evaluation.metrics import psnr

    x = dict(builtin_split("val"))["coffee"][:, :128, :192].unsqueeze(0).contiguous()
    for family, preset in sorted({(e["family"], e["preset"]) for e in entries()}):
        lmbda = min(e["lmbda"] for e in entries(family=family, preset=preset))
        model = load(family, preset, lmbda)
        r = encode(model, x)
        x_hat = decode(model, r.data).x_hat
        assert x_hat.shape == x.shape and 0 < r.bpp < 1, (family, lmbda, r.bpp)
        assert psnr(x_hat.clamp(0, 1), x) > 24, (family, lmbda)


def test_the_ladder_plan_fine_tunes_each_lambda_from_its_nearest_long_one(tmp_path):
    plan = LadderPlan(runs=str(tmp_path))
    plan.check()
    assert plan.order() == [0.013, 0.0483, 0.025, 0.0932, 0.0067, 0.0035, 0.0018, 0.0009]
    assert plan.source(0.0035) == 0.013 and plan.source(0.025) == 0.013 and plan.source(0.0483) is None
    assert plan.source(0.0018) == 0.0035 and plan.source(0.0009) == 0.0018  # below the ladder: a chain
    assert plan.ships(0.025) and not plan.ships(0.0483) and not plan.ships(0.013)  # sources train, not all ship
    cfg = plan.config(0.0067).resolved()
    assert cfg.steps == plan.finetune_steps and cfg.lr == plan.finetune_lr and cfg.threads == 1
    assert cfg.warm_start.endswith("cnn-tiny-teacher-l0.013/model.safetensors")
    assert cfg.train_split == "tune-train" and math.isclose(cfg.lmbda, 0.0067)
    long = plan.config(0.013).resolved()
    assert long.warm_start is None and long.steps == plan.steps


def test_a_lambda_beyond_the_ladder_s_end_chains_from_its_neighbour(tmp_path):
    plan = LadderPlan(runs=str(tmp_path), lambdas=(0.0009, 0.0018, 0.0035, 0.0067, 0.013, 0.025),
                      long=(0.013,), sources={0.0018: 0.0035, 0.0009: 0.0018})
    plan.check()
    assert plan.source(0.0018) == 0.0035 and plan.source(0.0009) == 0.0018 and plan.source(0.0035) == 0.013
    order = plan.order()
    assert order.index(0.0035) < order.index(0.0018) < order.index(0.0009)
    assert plan.config(0.0009).resolved().warm_start.endswith("cnn-tiny-teacher-l0.0018/model.safetensors")
    from feds_lab.errors import FedsLabError

    for sources, message in (({0.0018: 0.5}, "other lambdas of the ladder"), ({0.013: 0.0035}, "is a long lambda"),
                             ({0.0018: 0.0009, 0.0009: 0.0018}, "round in a circle")):
        with pytest.raises(FedsLabError, match=message):
            LadderPlan(lambdas=plan.lambdas, long=plan.long, sources=sources).check()


def test_a_run_folder_that_is_gone_is_seeded_from_the_interim_state(tmp_path):
    interim = tmp_path / "interim" / "cnn-tiny-teacher-l0.013"
    interim.mkdir(parents=True)
    (interim / "state.pt").write_bytes(b"state")
    (interim / "config.yaml").write_text("role: teacher\n")
    run = tmp_path / "runs" / "cnn-tiny-teacher-l0.013"
    assert seed_from_interim(run, tmp_path / "interim")
    assert (run / "state.pt").read_bytes() == b"state"
    assert not seed_from_interim(run, tmp_path / "interim")  # a folder with a state keeps its own


def test_a_finished_unpublished_run_is_kept_as_its_model_and_seeds_a_gone_folder(tmp_path):
    from feds_lab.zoo.train import save_interim

    plan = LadderPlan(lambdas=(0.0067, 0.013), long=(0.013,), runs=str(tmp_path / "runs"))
    done, busy = (tmp_path / "runs" / plan.name(lmbda) for lmbda in (0.013, 0.0067))
    for run in (done, busy):
        run.mkdir(parents=True)
        (run / "config.yaml").write_text("role: teacher\n")
        (run / "state.pt").write_bytes(b"state" + run.name.encode())
        (run / "metrics.jsonl").write_text('{"step": 1}\n' * 1000)
    (done / "model.safetensors").write_bytes(b"model")
    interim = tmp_path / "interim"
    assert save_interim(plan, interim) == [interim / busy.name]  # unfinished states only
    kept = save_interim(plan, interim, finished=True)
    assert set(kept) == {interim / done.name, interim / busy.name}
    assert (interim / done.name / "model.safetensors").read_bytes() == b"model"
    assert not (interim / done.name / "state.pt").exists()  # the model alone, not the optimiser's state
    assert (interim / done.name / "metrics.jsonl.gz").stat().st_size < 200
    shutil.rmtree(tmp_path / "runs")
    for run in (done, busy):
        assert seed_from_interim(run, interim)
        assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n' * 1000
    assert (done / "model.safetensors").read_bytes() == b"model" and not (done / "state.pt").exists()
    assert (busy / "state.pt").read_bytes() == b"state" + busy.name.encode()


@pytest.mark.slow
def test_zoo_train_trains_fine_tunes_and_publishes_a_ladder(tmp_path):
    """The command as a user runs it, on a budget of a few steps: a long lambda from scratch, a
    neighbour fine-tuned from it, both published; run again, it has nothing to do."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "feds_lab.cli", "zoo", "train", "--lambdas", "0.013,0.025", "--long", "0.013",
           "--steps", "4", "--finetune-steps", "3", "--runs", str(tmp_path / "runs"), "--zoo-dir", str(tmp_path / "zoo"),
           "--jobs", "2", "--unshipped", ""]  # publish the long lambda too (the default keeps 0.013 back)
    (tmp_path / "zoo").mkdir()
    env = {**__import__("os").environ, "FEDS_LAB_ZOO_POLL": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "from cnn-tiny-teacher-l0.013" in p.stderr and "published cnn-tiny-teacher-l0.025.safetensors" in p.stderr
    got = entries(tmp_path / "zoo")
    assert [e["lmbda"] for e in got] == [0.013, 0.025]
    assert got[1]["record"]["budget"]["steps"] == 3 and got[0]["record"]["zoo"]["long"] == [0.013]
    assert got[0]["record"]["val_curve"][-1][0] == 4  # the validation curve ships with the weights
    assert read_record(verified_path(got[1], tmp_path / "zoo"))["warm_start"].endswith("l0.013/model.safetensors")
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0 and "training" not in again.stderr
    # the ladder grows past its end: the new lambda chains from a fine-tuned one; the others stay as published
    before = {e["name"]: e["sha256"] for e in got}
    longer = cmd[:6] + ["0.0067,0.013,0.025", "--from", "0.0067=0.025"] + cmd[7:]
    grown = subprocess.run(longer, capture_output=True, text=True, timeout=600, env=env)
    assert grown.returncode == 0, grown.stderr[-2000:]
    assert "cnn-tiny-teacher-l0.0067: training (3 steps, from cnn-tiny-teacher-l0.025)" in grown.stderr
    now = {e["name"]: e for e in entries(tmp_path / "zoo")}
    assert {n: now[n]["sha256"] for n in before} == before
    assert source_of(now["cnn-tiny-teacher-l0.0067"]) == 0.025 and source_of(now["cnn-tiny-teacher-l0.025"]) == 0.013
    assert "fine-tuned from λ 0.025" in budget_text(now["cnn-tiny-teacher-l0.0067"])
    # the chain's long-run curve is the manifest's (one per chain), not stored again in each file
    assert now["cnn-tiny-teacher-l0.0067"]["record"]["source_curve"]["lmbda"] == 0.013
    assert "source_curve" not in read_record(verified_path(now["cnn-tiny-teacher-l0.0067"], tmp_path / "zoo"))


def test_zoo_info_shows_the_file_s_record_with_its_data(zoo, capsys):
    from feds_lab.cli import main

    d, entry = zoo
    assert main(["zoo", "info", entry["name"], "--zoo-dir", str(d)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["sha256"] == entry["sha256"] and shown["record"]["data"]["split"] == "tune-train"
    assert shown["record"]["storage"] == "float16"
    assert main(["zoo", "info", "nope", "--zoo-dir", str(d)]) == 1


# --- the pipeline's teachers come from the shipped zoo ------------------------------------------------

def test_the_pipeline_takes_its_teachers_from_the_shipped_zoo_by_default(tmp_path):
    from feds_lab.errors import FedsLabError
    from feds_lab.pipeline import PipelineConfig
    from feds_lab.zoo import sha256

    cfg = PipelineConfig(name="z", runs_dir=str(tmp_path)).resolved()
    assert cfg.teacher == "zoo" and cfg.teacher_steps is None
    lmbda = cfg.lambdas[0]
    path = cfg.teacher_model(lmbda)  # verified, then put where a trained teacher would be
    assert path == cfg.layout.teacher_model(lmbda) and sha256(path) == find("cnn", "tiny", lmbda)["sha256"]
    stamp = path.stat().st_mtime_ns
    assert cfg.teacher_model(lmbda) == path and path.stat().st_mtime_ns == stamp  # not copied again
    path.write_bytes(b"not a model")  # a run folder's copy that changed is replaced by the zoo's
    assert sha256(cfg.teacher_model(lmbda)) == find("cnn", "tiny", lmbda)["sha256"]
    assert cfg.train_config("student", lmbda, "feds").teacher == str(path)
    assert "zoo teachers" in cfg.budget_label("teacher") and "steps" in cfg.teacher_budget()
    assert "warm-started from the previous" not in cfg.budget_label("teacher")  # the zoo's are fine-tuned from a long λ
    assert cfg.budget_label("all").endswith("each λ warm-started from the previous")  # the students here are
    with pytest.raises(FedsLabError, match="nothing to train"):
        cfg.train_config("teacher", lmbda)


@pytest.mark.parametrize("values, message", [
    ({"lambdas": [0.0005, 0.0067, 0.025, 0.0483]}, r"no cnn tiny teacher at lambda 0.0005, 0.0483 .*teacher: train"),
    ({"family": "compressai:mbt2018-mean"}, r"no compressai:mbt2018-mean tiny teacher .*none yet"),
    ({"teacher_steps": 50}, r"teacher_steps train\(s\) teachers, but teacher is 'zoo'.*teacher: train"),
    ({"teacher_ladder": "first"}, r"teacher_ladder .*teacher: train"),
    ({"teacher": "hub"}, r"teacher must be one of \['zoo', 'train'\]"),
])
def test_what_the_zoo_cannot_give_is_a_clear_error(values, message, tmp_path):
    from feds_lab.errors import FedsLabError
    from feds_lab.pipeline import PipelineConfig

    with pytest.raises(FedsLabError, match=message):
        PipelineConfig(runs_dir=str(tmp_path)).updated(values).resolved()
    if "teacher" not in values:  # the same values train their teachers when asked to
        PipelineConfig(runs_dir=str(tmp_path), teacher="train").updated(values).resolved()


def test_a_tampered_zoo_file_is_not_installed(zoo, tmp_path):
    from feds_lab.zoo import install

    d, entry = zoo
    f = d / entry["file"]
    f.write_bytes(f.read_bytes()[:-1] + bytes([f.read_bytes()[-1] ^ 1]))
    with pytest.raises(ZooError, match="does not match its manifest"):
        install("cnn", "tiny", 0.013, tmp_path / "run", zoo_dir=d)
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_the_zoo_curves_draw_the_long_run_once_and_place_each_fine_tune_after_its_chain():
    from feds_lab.plots import zoo_curves

    plan = {"long": [0.013], "sources": {"0.0009": 0.0035}, "steps": 100, "finetune_steps": 10}
    source = {"lmbda": 0.013, "curve": [[50, 22.0, 0.5], [100, 25.0, 0.4]]}

    def entry(lmbda):
        return {"lmbda": lmbda, "record": {"zoo": plan, "val_curve": [[10, 20.0, 0.3]], "source_curve": source}}

    fig = zoo_curves([entry(0.0009), entry(0.0035)])
    lines = fig.axes[0].get_lines()
    assert [list(line.get_xdata()) for line in lines] == [[50, 100], [120], [110]]  # 0.0009: after 0.013 and 0.0035
    assert "not shipped" in lines[0].get_label()
