"""The evaluation cache: a checkpoint evaluated twice on the same images, settings and code is coded once;
any change in any of those is a miss; a damaged entry is recomputed; the cache can be turned off."""

import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

from feds_lab import coding
from feds_lab.errors import FedsLabError
from feds_lab.checkpoint import load_model, save_model
from feds_lab.evaluation import cache as cache_mod
from feds_lab.evaluation.cache import EvalCache, evaluation_settings, resolve_cache
from feds_lab.evaluation.curves import evaluate_checkpoints, evaluate_curve
from feds_lab.evaluation.results import load_results
from feds_lab.models import build_model

pytestmark = pytest.mark.filterwarnings("ignore:image .* is too small for MS-SSIM")


def image(h, w, seed):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, max(h // 16, 1), max(w // 16, 1), generator=g)
    return torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def images():
    # small: MS-SSIM is NaN on them (and NaN must survive the JSON round trip); 48x80 is padded
    return [("a", image(64, 64, 0)), ("b", image(48, 80, 1))]


@pytest.fixture(autouse=True)
def quiet_machine(monkeypatch, one_thread):
    """No FEDS_LAB_EVAL_CACHE from the caller; and sources edited by someone else while the tests run do not
    turn the cache off here (the test of that check says so itself)."""
    monkeypatch.delenv(cache_mod.ENV, raising=False)
    monkeypatch.setattr(cache_mod, "_process_start", lambda: time.time() + 3600)
    pytest.importorskip("pytorch_msssim")


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    return save_model(build_model("student", "tiny"), tmp_path / "student.safetensors", {"lmbda": 0.0067})


@pytest.fixture
def encodes(monkeypatch):
    """Counts the calls of coding.encode (what a computed evaluation does, a cached one does not)."""
    calls = []
    real = coding.encode

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(coding, "encode", counting)
    return calls


def no_encoder(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the encoder ran: this evaluation should have come from the cache")

    monkeypatch.setattr(coding, "encode", fail)


def same(a, b):
    """Equal, NaN included (JSON text of both)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def curve(ckpt, images, cache):
    return evaluate_curve("tiny", {0.0067: ckpt}, images, cache=cache)


def test_a_second_evaluation_comes_from_the_cache(ckpt, images, tmp_path, monkeypatch, capsys):
    first_cache = EvalCache(tmp_path / "cache")
    first = curve(ckpt, images, first_cache)
    assert (first_cache.hits, first_cache.computed) == (0, 1)
    (entry,) = (tmp_path / "cache").glob("*.json")
    stored = json.loads(entry.read_text())  # JSON, nothing else
    assert stored["parts"]["images"][0][0] == "a" and stored["parts"]["checkpoint"] != stored["key"]

    no_encoder(monkeypatch)
    again_cache = EvalCache(tmp_path / "cache")
    again = curve(ckpt, images, again_cache)
    assert (again_cache.hits, again_cache.computed) == (1, 0)
    assert same(again["per_image"], first["per_image"]) and same(again["results"], first["results"])
    assert np.isnan(again["per_image"][0][0]["ms-ssim-rgb"])  # NaN came back as NaN
    assert again["meta"]["params"] == first["meta"]["params"] > 0
    assert again["meta"]["records"] == first["meta"]["records"]
    told = again["meta"]["evaluation_cache"]
    assert (told["from_cache"], told["computed"]) == (1, 0)
    assert told["points"][0]["cached"] and told["points"][0]["measured"] == \
        first["meta"]["evaluation_cache"]["points"][0]["measured"]
    assert not first["meta"]["evaluation_cache"]["points"][0]["cached"]
    assert "1 of 1 checkpoint evaluation(s) from the cache, 0 computed" in again_cache.summary()
    assert "note:" not in capsys.readouterr().err

    # the same entry serves evaluate_checkpoints (feds-lab eval): same checkpoint, images, settings, code
    (res,) = evaluate_checkpoints([ckpt], images, progress=False, cache=str(tmp_path / "cache"))
    assert same(res["per_image"], first["per_image"]) and res["meta"]["evaluation_cache"]["from_cache"] == 1


def nudged(ckpt, path):
    """The same model with one weight moved by one ulp, saved to ``path``: a few bytes differ."""
    model = load_model(ckpt)
    with torch.no_grad():
        w = next(p for p in model.parameters() if p.dim() == 4)
        w.view(-1)[0] = torch.nextafter(w.view(-1)[0], torch.tensor(float("inf")))
    return save_model(model, path, {"lmbda": 0.0067})


def flip_one_byte(path):
    """The lowest mantissa byte of a conv weight's first value, XOR 1, in the file itself (the record unchanged)."""
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    name = next(k for k, v in header.items() if k.endswith("weight") and v.get("dtype") == "F32"
                and len(v["shape"]) == 4)
    data[8 + n + header[name]["data_offsets"][0]] ^= 1
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("change", ["weights", "one-byte", "pixel", "setting", "code"])
def test_any_change_in_the_key_is_a_miss(change, ckpt, images, tmp_path, monkeypatch, encodes):
    folder = tmp_path / "cache"
    warmup = True
    curve(ckpt, images, EvalCache(folder))
    assert curve(ckpt, images, EvalCache(folder))["meta"]["evaluation_cache"]["from_cache"] == 1
    before = len(encodes)
    if change == "weights":
        nudged(ckpt, ckpt)  # another model saved to the same path: one weight one ulp away
    elif change == "one-byte":
        flip_one_byte(ckpt)
    elif change == "pixel":
        x = images[1][1].clone()
        x[0, 2, 5, 7] += 1 / 255
        images = [images[0], ("b", x)]
    elif change == "setting":
        warmup = False  # an argument of evaluate_model
    else:
        monkeypatch.setattr(cache_mod, "code_version", lambda: "another version of the coding code")
    cache = EvalCache(folder)
    (point,) = cache.points([ckpt], images, warmup=warmup)
    assert not point.cached and (cache.hits, cache.computed) == (0, 1)
    assert len(encodes) > before  # coded again
    assert len(list(folder.glob("*.json"))) == 2  # a second entry beside the first
    (point,) = EvalCache(folder).points([ckpt], images, warmup=warmup)
    assert point.cached


def test_settings_that_change_the_numbers_are_in_the_key():
    one = evaluation_settings("cpu")
    torch.set_num_threads(2)  # float32 kernels sum in another order: another latent (the fixture restores 1)
    assert evaluation_settings("cpu") != one
    torch.set_num_threads(1)
    assert evaluation_settings("cpu") == one and evaluation_settings("cpu", warmup=False) != one


@pytest.mark.parametrize("damage", ["truncated", "garbage", "not-utf8", "a-digit", "a-list", "another-key",
                                    "a-folder"])
def test_a_damaged_entry_is_recomputed(damage, ckpt, images, tmp_path, capsys, encodes):
    folder = tmp_path / "cache"
    first = curve(ckpt, images, EvalCache(folder))
    (entry,) = folder.glob("*.json")
    text = entry.read_text()
    if damage == "truncated":
        entry.write_text(text[: len(text) // 2])
    elif damage == "garbage":
        entry.write_text("{{{ not json")
    elif damage == "not-utf8":
        entry.write_bytes(b"\xff\xfe\x00garbage")
    elif damage == "a-digit":  # still valid JSON, one number changed: the checksum catches it
        data = json.loads(text)
        data["rows"][0]["bpp"] += 0.5
        entry.write_text(json.dumps(data))
    elif damage == "a-list":
        entry.write_text("[1, 2, 3]")
    elif damage == "another-key":  # a valid entry of another evaluation, under this key's name
        data = json.loads(text)
        data["parts"]["images"][0][1] = "0" * 64
        body = {k: v for k, v in data.items() if k != "checksum"}
        data["checksum"] = cache_mod._checksum(body)
        entry.write_text(json.dumps(data))
    else:
        entry.unlink()
        entry.mkdir()
    capsys.readouterr()
    before = len(encodes)
    cache = EvalCache(folder)
    again = curve(ckpt, images, cache)
    assert (cache.hits, cache.computed) == (0, 1) and len(encodes) > before
    err = capsys.readouterr().err
    notes = err.strip().splitlines()
    assert notes[0].startswith("note: evaluation cache entry") and "recomputed" in notes[0]
    assert len(notes) == (2 if damage == "a-folder" else 1)  # a folder cannot be replaced either: said too
    keep = ("bytes", "bpp", "bpp-estimate", "psnr-rgb", "ms-ssim-rgb")
    assert same([[{k: r[k] for k in keep} for r in p] for p in again["per_image"]],
                [[{k: r[k] for k in keep} for r in p] for p in first["per_image"]])
    if damage != "a-folder":  # rewritten: served next time
        assert next(EvalCache(folder).points([ckpt], images)).cached


def test_the_cache_can_be_turned_off(ckpt, images, tmp_path, monkeypatch, encodes):
    assert not resolve_cache("off").enabled and not resolve_cache(False).enabled and not resolve_cache(None).enabled
    assert resolve_cache(None, default=tmp_path / "d").folder == tmp_path / "d"
    with pytest.raises(FedsLabError, match="give a folder"):
        resolve_cache("  ")  # not the current folder by accident
    monkeypatch.setenv(cache_mod.ENV, "off")
    assert not resolve_cache(None, default=tmp_path / "d").enabled  # the variable beats a default
    assert resolve_cache(tmp_path / "arg").folder == tmp_path / "arg"  # an argument beats the variable
    monkeypatch.setenv(cache_mod.ENV, str(tmp_path / "env"))
    assert resolve_cache(None, default="off").folder == tmp_path / "env"

    monkeypatch.setenv(cache_mod.ENV, "OFF")
    curve(ckpt, images, None)
    n = len(encodes)
    res = curve(ckpt, images, None)
    assert len(encodes) > n and res["meta"]["evaluation_cache"]["from_cache"] == 0
    assert not list(tmp_path.rglob("*.json"))
    assert "off" in EvalCache(None).summary()


def test_pipeline_default_is_beside_the_run_folders(tmp_path):
    from feds_lab.evaluation.rd_analysis import config_cache
    from feds_lab.pipeline import PipelineConfig

    cfg = PipelineConfig().updated({"runs_dir": str(tmp_path)}).resolved()
    assert resolve_cache(None, default=config_cache(cfg)).folder == tmp_path / ".eval-cache"
    off = PipelineConfig().updated({"runs_dir": str(tmp_path), "eval_cache": False}).resolved()  # YAML's `off`
    assert off.eval_cache == "off" and not resolve_cache(None, default=config_cache(off)).enabled
    assert off.resume_key() == cfg.resume_key()  # where the cache is changes no result
    rel = PipelineConfig().updated({"runs_dir": str(tmp_path), "eval_cache": "somewhere"}).resolved()
    assert rel.eval_cache.startswith("/")  # notebooks run in notebooks/: never relative


def test_code_edited_after_the_process_started_is_not_cached(ckpt, images, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cache_mod, "_process_start", lambda: 0.0)  # every source is newer than the process
    cache = EvalCache(tmp_path / "cache")
    curve(ckpt, images, cache)
    curve(ckpt, images, cache)
    assert (cache.hits, cache.computed, cache.not_stored) == (0, 2, 2)
    assert not list((tmp_path / "cache").glob("*.json"))
    err = capsys.readouterr().err
    assert err.count("changed after this process started") == 1  # said once


def test_a_checkpoint_replaced_while_it_loads_is_not_cached(ckpt, images, tmp_path, monkeypatch, capsys):
    from feds_lab import checkpoint

    real = checkpoint.load_model

    def load_then_replace(path, device="cpu"):
        model = real(path, device)
        nudged(path, path)  # training wrote a new checkpoint meanwhile
        return model

    monkeypatch.setattr(checkpoint, "load_model", load_then_replace)
    cache = EvalCache(tmp_path / "cache")
    curve(ckpt, images, cache)
    assert (cache.computed, cache.not_stored) == (1, 1) and not list((tmp_path / "cache").glob("*.json"))
    assert "changed while it was loaded" in capsys.readouterr().err


def test_cli_eval_cache(ckpt, images, tmp_path, capsys):
    from feds_lab.cli import main as run_cli

    folder = tmp_path / "images"
    folder.mkdir()
    x = images[0][1]
    Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(folder / "one.png")
    for i in range(2):
        run_cli(["eval", str(ckpt), "--data", str(folder), "--quiet", "--cache", str(tmp_path / "c"),
                 "-o", str(tmp_path / f"r{i}.json")])
    assert "1 of 1 checkpoint evaluation(s) from the cache" in capsys.readouterr().err
    assert same(load_results(tmp_path / "r0.json")["per_image"], load_results(tmp_path / "r1.json")["per_image"])


def test_notebook_04_s_analysis_reuses_every_unchanged_checkpoint(tmp_path, images, monkeypatch, capsys):
    from feds_lab.evaluation.rd_analysis import analyse_run
    from feds_lab.pipeline import PipelineConfig

    cfg = PipelineConfig().updated({"runs_dir": str(tmp_path / "runs"), "name": "t", "anchors": [],
                                    "lambdas": [0.0067], "variants": {"feds": {}}}).resolved()
    paths = {}
    for role, seed in (("teacher", 0), ("student", 1)):
        torch.manual_seed(seed)
        paths[role] = save_model(build_model(role, "tiny"), tmp_path / f"{role}.safetensors", {"lmbda": 0.0067})
    run = lambda: analyse_run(cfg, {0.0067: paths["teacher"]}, {("feds", 0.0067): paths["student"]}, images[:1])
    first = run()
    assert first.evaluation_cache == {"folder": str(tmp_path / "runs" / ".eval-cache"), "from_cache": 0, "computed": 2}
    no_encoder(monkeypatch)
    again = run()
    assert again.evaluation_cache["from_cache"] == 2 and again.evaluation_cache["computed"] == 0
    assert "2 of 2 checkpoint evaluation(s) from the cache, 0 computed" in capsys.readouterr().err
    assert again.summary.equals(first.summary)
