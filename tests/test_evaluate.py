"""Evaluation with real bitstreams, results files (CompressAI's format), the CLI, and the plots."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from feds_lab import coding
from feds_lab.checkpoint import load_model, save_model
from feds_lab.evaluation import cli as eval_cli
from feds_lab.evaluation.bdrate import bd_quality, bd_rate, bd_table
from feds_lab.evaluation.curves import evaluate_checkpoints
from feds_lab.evaluation.evaluate import (
    ResultsError,
    evaluate_model,
    likelihood_bpp,
    load_results,
    make_results,
    rd_curve,
    save_results,
)
from feds_lab.evaluation.metrics import psnr
from feds_lab.models import build_model


def image(h, w, seed):
    """A smooth random colour image (codes to a few hundred bytes with an untrained model)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, max(h // 16, 1), max(w // 16, 1), generator=g)
    return torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def images():
    # 170x180: not a multiple of 64 (padding), and above MS-SSIM's 161 px minimum
    return [("smooth-a", image(170, 180, 0)), ("smooth-b", image(176, 200, 1))]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Untrained tiny students: two lambdas of one run, and a scratch baseline."""
    root = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for name, seed, lmbda, run in [("a", 0, 0.0035, "student"), ("b", 1, 0.0067, "student"),
                                   ("s", 2, 0.0067, "scratch")]:
        torch.manual_seed(seed)
        model = build_model("student", "tiny")
        paths[name] = save_model(model, root / f"{name}.safetensors",
                                 {"lmbda": lmbda, "run": run, "metric": "mse", "budget": {"steps": 7}})
    return paths


@pytest.fixture(scope="module")
def evaluated(checkpoints, images):
    return evaluate_model(load_model(checkpoints["a"]), images, name="tiny", description="untrained")


def test_evaluate_model_rows(evaluated, images, checkpoints):
    rows = evaluated["rows"]
    assert [r["image"] for r in rows] == ["smooth-a", "smooth-b"]
    model = load_model(checkpoints["a"])
    for row, (_, x) in zip(rows, images):
        h, w = x.shape[-2:]
        assert (row["height"], row["width"]) == (h, w)
        # the real rate comes from the bytes of the whole file, over the original (unpadded) size
        enc = coding.encode(model, x)
        assert len(enc.data) == row["bytes"]
        assert row["bpp"] == pytest.approx(8 * row["bytes"] / (h * w))
        assert row["bpp-streams"] < row["bpp"]
        # the estimate: -log2 likelihoods of y and z from one pass over the padded image
        with torch.no_grad():
            out = model(coding.pad_image(x, 64)[0])
        bits = sum(float(-torch.log2(v).sum()) for v in out["likelihoods"].values())
        assert row["bpp-estimate"] == pytest.approx(bits / (h * w), rel=1e-6)
        assert row["bpp-gap-percent"] == pytest.approx(100 * (row["bpp"] / row["bpp-estimate"] - 1))
        # quality of what the decoder really returns
        x_hat = coding.decode(model, enc.data).x_hat
        assert row["psnr-rgb"] == pytest.approx(psnr(x, x_hat), abs=1e-9)
        assert 0 < row["ms-ssim-rgb"] < 1 and row["ms-ssim-rgb-db"] > 0
        assert row["encoding_time"] > 0 and row["decoding_time"] > 0
    mean = evaluated["mean"]
    assert mean["bpp"] == pytest.approx(np.mean([r["bpp"] for r in rows]))
    assert mean["ms-ssim-rgb-db"] == pytest.approx(-10 * math.log10(1 - mean["ms-ssim-rgb"]))
    assert evaluated["meta"]["threads"] == torch.get_num_threads()
    assert evaluated["meta"]["model"]["role"] == "student"


def test_likelihood_bpp_counts_the_original_pixels(checkpoints):
    model = load_model(checkpoints["a"])
    x = image(128, 128, 3)
    padded_est = likelihood_bpp(model, x[..., :100, :100])  # padded to 128x128, divided by 100*100
    with torch.no_grad():
        out = model(coding.pad_image(x[..., :100, :100], 64)[0])
    bits = sum(float(-torch.log2(v).sum()) for v in out["likelihoods"].values())
    assert padded_est == pytest.approx(bits / 1e4, rel=1e-6)


def test_evaluate_checkpoints_groups_curves(checkpoints, images):
    curves = evaluate_checkpoints([checkpoints[k] for k in ("b", "s", "a")], images[:1], progress=False)
    by_name = {c["name"]: c for c in curves}
    assert set(by_name) == {"cnn-student-tiny", "cnn-student-tiny-scratch"}
    student = by_name["cnn-student-tiny"]
    assert len(student["results"]["bpp"]) == 2 and student["results"]["bpp"] == sorted(student["results"]["bpp"])
    assert sorted(s["lmbda"] for s in student["settings"]) == [0.0035, 0.0067]
    assert {c["budget"]["steps"] for c in student["meta"]["checkpoints"]} == {7}
    assert student["meta"]["threads"] == torch.get_num_threads()
    assert len(student["per_image"]) == 2 and len(student["per_image"][0]) == 1
    json.dumps(student)  # serialisable as it is


def test_two_checkpoints_with_one_lambda_are_an_error(checkpoints, images, tmp_path):
    twin = tmp_path / "twin.safetensors"
    twin.write_bytes(checkpoints["a"].read_bytes())
    with pytest.raises(ResultsError, match="same lambda|with lambda"):
        evaluate_checkpoints([checkpoints["a"], twin], images[:1], progress=False)


# --- results files -------------------------------------------------------------------------------


def fake_results(name, factor, n_images=3, psnr0=28.0):
    """Per-image rows of a codec whose rate is `factor` times a reference's at equal quality."""
    points = []
    for p, bpp in enumerate([0.15, 0.3, 0.6, 1.2, 2.0]):
        rows = [{"image": f"im{i}", "bpp": factor * bpp * (1 + 0.1 * i), "psnr-rgb": psnr0 + 5 * math.log2(bpp) + i,
                 "ms-ssim-rgb": 1 - 0.2 * 2 ** (-p) / (1 + i), "encoding_time": 0.01, "decoding_time": 0.02}
                for i in range(n_images)]
        points.append({"rows": rows, "setting": {"lmbda": bpp}})
    return make_results(name, points[::-1], description="synthetic", meta={"threads": 1})


def test_results_files_are_read_by_compressai_plot(evaluated, tmp_path):
    from compressai.utils.plot.__main__ import main as plot_main
    from compressai.utils.plot.__main__ import parse_json_file

    ours = make_results("tiny", [{"rows": evaluated["rows"], "setting": {"lmbda": 0.0035}}], meta=evaluated["meta"])
    for name, res in [("tiny", ours), ("fake", fake_results("fake", 1.0))]:
        path = save_results(res, tmp_path / f"{name}.json")
        psnr_curve = parse_json_file(path, "psnr")
        assert psnr_curve["name"] == name and psnr_curve["xs"] == res["results"]["bpp"]
        assert np.allclose(psnr_curve["ys"], res["results"]["psnr-rgb"])
        ms = parse_json_file(path, "ms-ssim")
        assert np.allclose(ms["ys"], res["results"]["ms-ssim-rgb-db"])
        assert load_results(path)["per_image"] == json.loads(json.dumps(res["per_image"]))
    png = tmp_path / "rd.png"
    plot_main(["-f", str(tmp_path / "tiny.json"), str(tmp_path / "fake.json"), "-o", str(png)])
    assert png.stat().st_size > 1000


def test_make_results_sorts_points_and_keeps_details():
    res = fake_results("x", 1.0)
    assert res["results"]["bpp"] == sorted(res["results"]["bpp"])
    assert [s["lmbda"] for s in res["settings"]] == [0.15, 0.3, 0.6, 1.2, 2.0]
    assert [np.mean([r["bpp"] for r in p]) for p in res["per_image"]] == pytest.approx(res["results"]["bpp"])
    bpp, quality = rd_curve(res, "ms-ssim")
    assert quality == pytest.approx(-10 * np.log10(1 - np.array(res["results"]["ms-ssim-rgb"])))


@pytest.mark.parametrize("content, match", [
    (None, "not found"),
    ("{not json", "not valid JSON"),
    ('{"results": {"psnr-rgb": [30]}}', "no 'results' with 'bpp'"),
    ('{"results": {"bpp": [0.1, 0.2]}}', "no quality metric"),
    ('{"results": {"bpp": [0.1], "psnr-rgb": [1, 2]}}', "differ in length"),
])
def test_load_results_errors(tmp_path, content, match):
    path = tmp_path / "r.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ResultsError, match=match):
        load_results(path)


# --- the CLI -------------------------------------------------------------------------------------


def run_cli(argv):
    import argparse

    parser = argparse.ArgumentParser(prog="feds-lab")
    sub = parser.add_subparsers(dest="command", required=True)
    eval_cli.add_eval_parser(sub)
    eval_cli.add_anchors_parser(sub)
    eval_cli.add_bdrate_parser(sub)
    args = parser.parse_args(argv)
    args.func(args)


def test_cli_bdrate_table_and_bootstrap(tmp_path, capsys):
    a = save_results(fake_results("anchor", 1.0), tmp_path / "a.json")
    b = save_results(fake_results("test", 0.8), tmp_path / "b.json")
    run_cli(["bdrate", str(a), str(b), "--bootstrap", "200"])
    out = capsys.readouterr().out
    expected = bd_rate(*rd_curve(load_results(a)), *rd_curve(load_results(b)))
    assert expected == pytest.approx(-20.0)
    assert "-20.00" in out and "BD-PSNR dB" in out and "95% CI low %" in out
    assert f"{bd_quality(*rd_curve(load_results(a)), *rd_curve(load_results(b))):.3f}" in out
    run_cli(["bdrate", str(a), str(b), "--metric", "ms-ssim", "--method", "cubic"])
    assert "BD-MS-SSIM dB" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path):
    good = save_results(fake_results("anchor", 1.0), tmp_path / "a.json")
    few = fake_results("few", 1.0)
    few["results"] = {k: v[:3] for k, v in few["results"].items()}
    few_path = save_results(few, tmp_path / "few.json")
    for argv, match in [
        (["bdrate", str(good), str(few_path)], "at least 4"),
        (["bdrate", str(good), str(tmp_path / "missing.json")], "not found"),
        (["anchors", "--codecs", "jpeg,bpg", "-o", str(tmp_path)], "unknown codec"),
        (["eval", str(tmp_path / "none.safetensors")], "not found"),
    ]:
        with pytest.raises(SystemExit) as err:
            run_cli(argv)
        message = str(err.value.code)
        assert message.startswith(f"feds-lab {argv[0]}: error:") and match in message and "\n" not in message


def test_cli_error_through_the_feds_lab_command(tmp_path):
    """Through ``feds_lab.cli.main``: a SystemExit with a string, which Python prints as one line
    on stderr with exit status 1 (no traceback)."""
    from feds_lab.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    with pytest.raises(SystemExit) as err:
        main(["bdrate", str(bad), str(bad)])
    assert isinstance(err.value.code, str) and "not a results file" in err.value.code


def test_cli_eval_and_anchors_write_results(checkpoints, images, tmp_path, capsys, monkeypatch):
    from feds_lab.evaluation.anchors import CODECS

    monkeypatch.setitem(CODECS, "jpeg", dataclasses.replace(CODECS["jpeg"], sweep=(20, 80)))
    folder = tmp_path / "images"
    folder.mkdir()
    x = images[0][1]
    Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(folder / "one.png")
    out = tmp_path / "student.json"
    run_cli(["eval", str(checkpoints["a"]), str(checkpoints["b"]), "--data", str(folder), "-o", str(out),
             "--name", "my-student", "--quiet"])
    res = load_results(out)
    assert res["name"] == "my-student" and len(res["results"]["bpp"]) == 2
    assert res["per_image"][0][0]["image"] == "one.png"
    run_cli(["anchors", "--data", str(folder), "--codecs", "jpeg", "-o", str(tmp_path / "anchors")])
    printed = capsys.readouterr().out
    assert "JPEG (quality)" in printed and "PSNR dB" in printed
    assert load_results(tmp_path / "anchors" / "jpeg.json")["results"]["bpp"][0] < 1


def test_lead_cli_mounts_the_commands():
    from feds_lab.cli import build_parser

    parser = build_parser()
    for command in ("eval", "anchors", "bdrate"):
        assert callable(parser.parse_args([command, "x.json", "y.json"] if command == "bdrate" else
                                          [command, "-o", "d"] if command == "anchors" else [command, "c"]).func)


# --- plots ---------------------------------------------------------------------------------------


def test_plots(tmp_path):
    from matplotlib.figure import Figure

    from feds_lab import plots

    jpeg = fake_results("JPEG", 1.3)
    files = [save_results(fake_results("student", 1.0), tmp_path / "s.json"), jpeg]
    fig = plots.rd_curves(files, metric="psnr")
    ax = fig.axes[0]
    assert isinstance(fig, Figure)
    assert ax.get_xlabel() == "bpp (bits per pixel)" and ax.get_ylabel() == "PSNR (dB)" and ax.get_title()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["student", "JPEG"]
    assert [line.get_linestyle() for line in ax.get_lines()] == ["-", "--"]
    assert np.allclose(ax.get_lines()[1].get_xdata(), jpeg["results"]["bpp"])
    assert plots.rd_curves(files, metric="ms-ssim").axes[0].get_ylabel() == "MS-SSIM (dB)"

    rows = bd_table(files[1], [files[0]], bootstrap=50)
    df, table_fig = plots.bd_rate_table(rows)
    assert list(df.columns)[:4] == ["test", "anchor", "BD-rate (%)", "BD-PSNR (dB)"]
    assert df["BD-rate (%)"].iloc[0] == pytest.approx(rows[0]["bd_rate"]) and rows[0]["bd_rate"] < 0
    assert isinstance(table_fig, Figure)

    teacher, student = build_model("teacher", "tiny"), build_model("student", "tiny")
    df, _ = plots.params_speed_table(
        [{"name": "teacher", "params": plots.count_parameters(teacher), "encoding_time": 0.2, "decoding_time": 0.2},
         {"name": "student", "params": plots.count_parameters(student), "results": files[0]}],
        reference="teacher")
    s = df.set_index("model").loc["student"]
    assert s["params ratio"] < 1 and s["enc+dec ratio"] == pytest.approx(0.03 / 0.4)
    path = plots.save_figure(fig, tmp_path / "figs" / "rd.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_bd_table_says_over_which_range_it_compares(tmp_path, capsys):
    anchor = save_results(fake_results("anchor", 1.0), tmp_path / "a.json")
    same_range = save_results(fake_results("same range", 1.2), tmp_path / "b.json")
    sliver = save_results(fake_results("sliver", 1.0, psnr0=40.0), tmp_path / "c.json")
    full, part = bd_table(anchor, [same_range, sliver])
    assert full["coverage"] == pytest.approx(1.0) and full["note"] == ""
    qa, qs = rd_curve(load_results(anchor))[1], rd_curve(load_results(sliver))[1]
    assert (part["overlap_low"], part["overlap_high"]) == pytest.approx((qs.min(), qa.max()))
    assert part["coverage"] == pytest.approx((qa.max() - qs.min()) / (qs.max() - qs.min()))
    assert part["coverage"] < 0.5 and "of the test curve's quality range only" in part["note"]

    run_cli(["bdrate", str(anchor), str(same_range), str(sliver)])
    out = capsys.readouterr().out
    assert "overlap" in out and "note: sliver against anchor: over" in out and "note: same range" not in out


def test_bd_table_cautions_when_resamples_drop_out(tmp_path):
    anchor = fake_results("anchor", 1.0, n_images=4)
    test = fake_results("test", 1.1, n_images=4)
    # one image whose quality falls as its rate rises: the mean curve still rises, but resamples
    # that draw it twice or more do not (about a quarter of them), and have no BD figure
    for rows in test["per_image"]:
        rows[3]["psnr-rgb"] = 60.0 - 10 * math.log2(rows[3]["bpp"] / 0.15)
    test = make_results("test", [{"rows": rows, "setting": s} for rows, s in zip(test["per_image"], test["settings"])])
    files = save_results(anchor, tmp_path / "a.json"), save_results(test, tmp_path / "t.json")
    row, = bd_table(files[0], [files[1]], bootstrap=200)
    assert 0.1 * 200 < row["failed"] < 0.5 * 200
    assert f"interval from {200 - row['failed']} of 200 resamples" in row["note"]
    row, = bd_table(files[0], [save_results(fake_results("test", 1.1, n_images=4), tmp_path / "u.json")], bootstrap=200)
    assert row["failed"] == 0 and row["note"] == ""


def test_rd_curves_zoom_on_learned_codecs_when_anchors_reach_far(tmp_path):
    from feds_lab import plots

    learned = fake_results("student", 1.0)
    jpeg = fake_results("JPEG", 1.0)
    for p in jpeg["per_image"]:  # a sweep reaching ten times further in rate
        for r in p:
            r["bpp"] *= 10
    jpeg = make_results("JPEG", [{"rows": rows, "setting": s} for rows, s in zip(jpeg["per_image"], jpeg["settings"])])
    top = max(learned["results"]["bpp"])
    ax = plots.rd_curves([learned, jpeg]).axes[0]
    assert ax.get_xlim() == pytest.approx((0.0, 1.5 * top)) and "anchors go on" in ax.get_xlabel()
    low, high = ax.get_ylim()  # the y range fits what is inside the window, learned curve included
    assert low <= min(learned["results"]["psnr-rgb"]) and high >= max(learned["results"]["psnr-rgb"])
    full = plots.rd_curves([learned, jpeg], xlim=None).axes[0]
    assert full.get_xlim()[1] > max(jpeg["results"]["bpp"]) and full.get_xlabel() == "bpp (bits per pixel)"
    near = plots.rd_curves([learned, fake_results("JPEG", 1.3)]).axes[0]  # anchors in the same range: no zoom
    assert near.get_xlim()[1] > 1.3 * top and "anchors" not in near.get_xlabel()
    with pytest.raises(ValueError, match="xlim"):
        plots.rd_curves([learned], xlim="wide")


def test_rd_curves_with_many_curves_keep_them_apart():
    # a study draws a dozen variants: every curve its own colour, the legend beside the axes, not on them
    from matplotlib.colors import to_hex

    from feds_lab import plots

    curves = [fake_results(f"student v{k}", 1.0 + 0.05 * k) for k in range(12)]
    fig = plots.rd_curves(curves)
    ax = fig.axes[0]
    assert len({to_hex(line.get_color()) for line in ax.get_lines()}) == 12
    assert ax.get_legend().get_bbox_to_anchor().x0 > ax.get_window_extent().x1  # outside, right of the axes
    assert len({to_hex(line.get_color()) for line in plots.rd_curves(curves[:3]).axes[0].get_lines()}) == 3
