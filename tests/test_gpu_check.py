"""The GPU check's CPU fallback (tiny preset, a few steps, gloo) runs end to end in the suite.

The GPU path itself cannot run here (no GPU in CI); this runs every section the same code takes on a
GPU, on the CPU, and checks that the JSON holds real measurements, not placeholders.
"""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # 22 s on two busy cores
def test_cpu_fallback_writes_every_section(gpu_check, tmp_path, one_thread):
    out = tmp_path / "gpu_check.json"
    rc = gpu_check.main(["--device", "cpu", "--steps", "2", "--warmup", "1", "--reps", "1", "--ddp-steps", "2",
                         "--image-size", "128x128", "--out", str(out)])
    data = json.loads(out.read_text())
    secs = data["sections"]
    assert rc == 0 and data["ok"], {k: v.get("error") for k, v in secs.items()}
    assert set(secs) == {"environment", "train", "coding", "cross_device", "ddp"}
    assert secs["environment"]["device"] == "cpu" and secs["environment"]["compressai"].startswith("1.")

    train = secs["train"]
    assert train["budget"] == {"preset": "tiny", "batch_size": 2, "crop": 128}
    for run in ("teacher", "student_feds_stage2", "student_scratch"):
        assert train[run]["timed_steps"] == 2 and train[run]["steps_per_s"] > 0
        assert Path(train[run]["checkpoint"]).is_file()

    coding = secs["coding"]
    for role in ("teacher", "student"):
        assert coding[role]["encode_s"] > 0 and coding[role]["decode_s"] > 0 and coding[role]["bpp"] > 0
    assert 0 < coding["ratio_params"] < 1  # the student is the smaller model
    expected = ((coding["student"]["encode_s"] + coding["student"]["decode_s"])
                / (coding["teacher"]["encode_s"] + coding["teacher"]["decode_s"]))
    assert coding["ratio_encode_decode"] == pytest.approx(expected, abs=1e-3)

    cross = secs["cross_device"]
    for role in ("teacher", "student"):
        # a fresh CPU model decodes the stream to exactly the encoding model's reconstruction
        for path in ("float32", "float64"):  # both entropy-parameter paths
            r = cross[role][path]
            assert r["decoded"] and r["identical"] and r["max_abs_diff_levels"] == 0
            assert r["streams_equal"] and r["psnr_cpu_decode"] > 0

    ddp = secs["ddp"]
    assert ddp["backend"] == "gloo" and ddp["world_size"] == ddp["processes"] == 1
    assert ddp["steps"] == 2 and ddp["finite"] and ddp["record_device"] == "cpu"


def test_docstring_carries_the_device_command():
    text = SCRIPT.read_text()
    assert "--target /tmp/site .whl/*.whl" in text and "benchmarks/gpu_check.py --out $OUT/gpu_check.json" in text
