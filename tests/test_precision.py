"""``precision``: the transforms under bfloat16 autocast inside training steps only; the entropy model,
the losses and everything a forward pass returns in float32; validation and coding untouched."""

from pathlib import Path

import pytest
import torch

from feds_lab import build_model
from feds_lab.checkpoint import load_model
from feds_lab.models.base import transform_precision
from feds_lab.training import TrainConfig, read_metrics, train
from feds_lab.training import trainer as trainer_module
from feds_lab.training.trainer import transform_dtype

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("family", ["cnn", "transformer"])
def test_bf16_transforms_return_float32_close_to_float32_and_nothing_else_changes(family):
    torch.manual_seed(0)
    model = build_model("teacher", preset="tiny", family=family).train()  # noise for rounding: no flips to amplify
    x = torch.rand(2, 3, 64, 64)

    def forward():
        torch.manual_seed(1)  # the same quantisation noise each time
        return model(x, return_features=True)

    with torch.no_grad():
        ref = forward()
        with transform_precision(torch.bfloat16):
            low = forward()
        again = forward()
    tensors = [low["x_hat"], low["y"], low["y_hat"], *low["likelihoods"].values(), *low["features"].values()]
    assert (low["y"] - ref["y"]).norm() / ref["y"].norm() < 0.05

    class Fixed(torch.nn.Module):  # the same y_hat for both: a rounding flip would dominate the synthesis' error
        def forward(self, y):
            return {"y_hat": ref["y_hat"], "likelihoods": ref["likelihoods"]}

    model.latent_codec = Fixed()
    with torch.no_grad(), transform_precision(torch.bfloat16):
        low = forward()
    assert all(t.dtype == torch.float32 for t in tensors)
    # computed in bf16 (not the float32 numbers) but close to them: 8 bits of mantissa
    assert not torch.equal(low["y"], ref["y"])
    assert (low["x_hat"] - ref["x_hat"]).norm() / ref["x_hat"].norm() < 0.05
    # outside the context: float32 exactly as before
    assert torch.equal(again["y"], ref["y"]) and torch.equal(again["x_hat"], ref["x_hat"])


def test_precision_settings_resolve_per_device(monkeypatch):
    cpu = torch.device("cpu")
    assert transform_dtype("fp32", cpu) is None
    assert transform_dtype("bf16", cpu) is torch.bfloat16
    monkeypatch.setattr(trainer_module, "bf16_arithmetic", lambda device: False)
    assert transform_dtype("auto", cpu) is None
    monkeypatch.setattr(trainer_module, "bf16_arithmetic", lambda device: True)
    assert transform_dtype("auto", cpu) is torch.bfloat16
    with pytest.raises(Exception, match="precision"):
        TrainConfig(role="teacher", precision="fp16").resolved().check()


def test_a_bf16_run_trains_validates_and_saves_a_float32_model(tmp_path: Path, tiny_checkpoints):
    out = tmp_path / "s"
    cfg = TrainConfig(role="student", teacher=str(tiny_checkpoints["teacher"]), steps=4, batch_size=2, crop=64,
                      val_every=2, ckpt_every=0, progress=False, precision="bf16", out=str(out))
    path = train(cfg)
    rows = read_metrics(out)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows if r["kind"] == "train")
    vals = [r for r in rows if r["kind"] == "val"]
    assert vals and all(v["psnr"] > 0 and v["bpp"] > 0 for v in vals)
    model = load_model(path)
    assert all(p.dtype == torch.float32 for p in model.parameters())
