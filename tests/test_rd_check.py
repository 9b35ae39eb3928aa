"""The rate-distortion check, one that can fail. Two tiny codecs trained for real, coded for real.

A model trained within a test's budget on two CPU cores is far from JPEG (measured: the tiny
student after 600 steps at 128 px crops reaches 21.6 dB at 0.131 bpp on the held-out photographs,
where JPEG gives about 24.3 dB; see the README), so this test checks what such a budget must
already show: training works, the rate term follows lambda, and real bytes match the likelihoods.
"""

import pytest
import torch

from feds_lab import build_model
from feds_lab.checkpoint import load_model
from feds_lab.data import eval_images
from feds_lab.evaluation.evaluate import evaluate_model
from feds_lab.training import TrainConfig, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("rd")
    out = {}
    for lmbda in (0.0018, 0.0483):
        cfg = TrainConfig(role="student", baseline="scratch", preset="tiny", lmbda=lmbda, steps=600, crop=128,
                          batch_size=8, lr=2e-3, schedule="onecycle", val_every=0, ckpt_every=0, progress=False,
                          out=str(root / f"l{lmbda}"))
        out[lmbda] = load_model(train(cfg))
    return out


@pytest.mark.slow
def test_training_improves_rd_and_follows_lambda(trained):
    images = eval_images(None, "val")  # held out from training
    low, high = (evaluate_model(trained[l], images)["mean"] for l in (0.0018, 0.0483))
    torch.manual_seed(0)
    untrained = build_model("student", "tiny")
    untrained.update(force=True)
    init = evaluate_model(untrained.eval(), images)["mean"]
    # training buys a lot of quality
    assert low["psnr-rgb"] > init["psnr-rgb"] + 5
    # a larger lambda buys quality with bits
    assert high["bpp"] > low["bpp"] * 1.1
    assert high["psnr-rgb"] > low["psnr-rgb"] + 0.3
    # the real bitstream is close to what the entropy model predicts
    for m in (low, high):
        assert abs(m["bpp-gap-percent"]) < 10
