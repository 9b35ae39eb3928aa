"""The FEDS losses against hand computations on small tensors (numbers worked out in the comments)."""

from __future__ import annotations

import pytest
import torch

from feds_lab.losses import (
    EntropyWeightedChannelDistillation,
    FeatureAlignment,
    RateDistortionLoss,
    bpp_from_likelihoods,
    channel_entropy,
    channel_weights,
    feature_alignment_loss,
    output_distillation_loss,
    spatial_attention,
    topk_pairing,
)

# One feature map used throughout, (1, 2, 1, 2):  channel 0 = [1, 3], channel 1 = [1, 1].
# f^2: c0 [1, 9], c1 [1, 1]; channel mean [1, 5]; its mean over positions 3 -> a_T = [1/3, 5/3].
F_T = torch.tensor([[[[1.0, 3.0]], [[1.0, 1.0]]]])

# Teacher likelihoods (2, 2, 1, 1): channel 0 has p = 0.5 and 0.25 (1 and 2 bits -> 1.5 bits per
# element), channel 1 has p = 1 (0 bits). Softmax weights, tau 1: 2 * [e^1.5, 1] / (e^1.5 + 1).
LIK = torch.tensor([[[[0.5]], [[1.0]]], [[[0.25]], [[1.0]]]])
W_SOFTMAX = [1.635149, 0.364851]


# --- rate-distortion ---------------------------------------------------------------------------
def test_bpp_from_likelihoods_by_hand():
    # 8 elements at p = 1/2 (8 bits) + 1 element at p = 1/4 (2 bits) = 10 bits over 16 pixels.
    lik = {"y": torch.full((1, 2, 2, 2), 0.5), "z": torch.full((1, 1, 1, 1), 0.25)}
    assert bpp_from_likelihoods(lik, num_pixels=16).item() == pytest.approx(0.625)


def test_rate_distortion_mse_by_hand():
    target = torch.zeros(2, 3, 4, 4)
    x_hat = torch.full_like(target, 0.1)  # MSE = 0.01
    # y: 32 elements at 1/2 -> 32 bits over B*H*W = 32 pixels -> 1 bpp.
    out = {"x_hat": x_hat, "likelihoods": {"y": torch.full((2, 4, 2, 2), 0.5)}}
    res = RateDistortionLoss(lmbda=0.01)(out, target)
    assert res["bpp_loss"].item() == pytest.approx(1.0)
    assert res["mse_loss"].item() == pytest.approx(0.01)
    assert res["loss"].item() == pytest.approx(1.0 + 0.01 * 65025 * 0.01)  # 7.5025
    assert "ms_ssim_loss" not in res


def test_rate_distortion_ms_ssim():
    torch.manual_seed(0)
    target = torch.rand(1, 3, 176, 176)
    lik = {"y": torch.full((1, 4, 11, 11), 0.5)}  # 484 bits over 176^2 pixels
    bpp = 484 / 176**2
    same = RateDistortionLoss(lmbda=10.0, metric="ms-ssim")({"x_hat": target.clone(), "likelihoods": lik}, target)
    assert same["ms_ssim_loss"].item() == pytest.approx(0.0, abs=1e-5)  # identical images: MS-SSIM 1
    assert same["loss"].item() == pytest.approx(bpp, abs=1e-4)
    noisy = (target + 0.1 * torch.randn_like(target)).clamp(0, 1)
    res = RateDistortionLoss(lmbda=10.0, metric="ms-ssim")({"x_hat": noisy, "likelihoods": lik}, target)
    assert 0 < res["ms_ssim_loss"].item() < 1
    assert res["ms_ssim_loss"].item() == pytest.approx(1 - res["ms_ssim"].item())
    assert res["loss"].item() == pytest.approx(bpp + 10.0 * res["ms_ssim_loss"].item(), rel=1e-5)


def test_rate_distortion_errors():
    with pytest.raises(ValueError, match="unknown distortion metric"):
        RateDistortionLoss(0.01, metric="psnr")
    small = torch.rand(1, 3, 64, 64)
    with pytest.raises(ValueError, match="MS-SSIM needs images at least 161 px"):
        RateDistortionLoss(0.01, "ms-ssim")({"x_hat": small, "likelihoods": {"y": torch.ones(1, 1, 4, 4)}}, small)


# --- feature alignment --------------------------------------------------------------------------
def test_spatial_attention_by_hand():
    f = F_T.clone().requires_grad_(True)
    a = spatial_attention(f)
    assert a.shape == (1, 1, 1, 2)
    assert a.flatten().tolist() == pytest.approx([1 / 3, 5 / 3])
    assert not a.requires_grad
    # mean 1 per image, whatever the scale; an all-zero map gets uniform weights
    b = spatial_attention(torch.randn(3, 4, 5, 6) * 7)
    assert b.mean(dim=(1, 2, 3)).tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert torch.equal(spatial_attention(torch.zeros(1, 2, 3, 3)), torch.ones(1, 1, 3, 3))


def test_feature_alignment_loss_by_hand():
    zeros = torch.zeros_like(F_T)
    # (0 - f_t)^2: c0 [1, 9], c1 [1, 1]; times a_T [1/3, 5/3]: [1/3, 15], [1/3, 5/3]; mean = 13/3.
    assert feature_alignment_loss(zeros, F_T).item() == pytest.approx(13 / 3)
    assert feature_alignment_loss(zeros, F_T, weighting="plain").item() == pytest.approx(3.0)  # 12 / 4
    with pytest.raises(ValueError, match="unknown feature weighting"):
        feature_alignment_loss(zeros, F_T, weighting="cosine")
    with pytest.raises(ValueError, match="differ in shape"):
        feature_alignment_loss(torch.zeros(1, 3, 1, 2), F_T)


def test_feature_alignment_module_by_hand_and_gradients():
    fa = FeatureAlignment({"ga1": 1, "gs1": 1}, {"ga1": 2, "gs1": 2}, taps=("ga1", "gs1"))
    assert set(fa.adapters) == {"ga1", "gs1"}
    with torch.no_grad():
        fa.adapters["ga1"].weight.copy_(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))
        fa.adapters["ga1"].bias.zero_()
        fa.adapters["gs1"].weight.zero_()
        fa.adapters["gs1"].bias.zero_()
    f_s = {"ga1": torch.ones(1, 1, 1, 2, requires_grad=True), "gs1": torch.ones(1, 1, 1, 2, requires_grad=True)}
    f_t = {"ga1": F_T.clone().requires_grad_(True), "gs1": torch.full((1, 2, 1, 2), 2.0, requires_grad=True)}
    loss, per_tap = fa(f_s, f_t)
    # ga1: lifted c0 [1, 1], c1 [2, 2]; squared error c0 [0, 4], c1 [1, 1]; times [1/3, 5/3]:
    #      [0, 20/3], [1/3, 5/3] -> sum 26/3, mean 13/6.
    # gs1: lifted 0, f_t all 2 (uniform attention) -> 4.     L_feat = (13/6 + 4) / 2 = 37/12.
    assert per_tap["ga1"].item() == pytest.approx(13 / 6)
    assert per_tap["gs1"].item() == pytest.approx(4.0)
    assert loss.item() == pytest.approx(37 / 12)
    assert not per_tap["ga1"].requires_grad
    loss.backward()
    assert f_s["ga1"].grad is not None and fa.adapters["ga1"].weight.grad is not None
    assert f_t["ga1"].grad is None and f_t["gs1"].grad is None  # the teacher learns nothing


def test_feature_alignment_errors():
    with pytest.raises(ValueError, match="tap 'gs3' has no student width"):
        FeatureAlignment({"ga1": 4}, {"ga1": 8, "gs3": 8}, taps=("ga1", "gs3"))
    fa = FeatureAlignment({"ga1": 4, "ga2": 4}, {"ga1": 8, "ga2": 8}, taps=("ga1", "ga2"))
    f_s = {"ga1": torch.zeros(1, 4, 8, 8), "ga2": torch.zeros(1, 4, 4, 4)}
    f_t = {"ga1": torch.zeros(1, 8, 8, 8)}
    with pytest.raises(ValueError, match="tap 'ga2' missing from the teacher features"):
        fa(f_s, f_t)
    f_t["ga2"] = torch.zeros(1, 8, 2, 2)
    with pytest.raises(ValueError, match=r"tap 'ga2'.*\(4, 4\).*\(2, 2\)"):
        fa(f_s, f_t)


def test_feature_alignment_with_tiny_models():
    from feds_lab.models import build_model

    torch.manual_seed(0)
    student, teacher = build_model("student", preset="tiny"), build_model("teacher", preset="tiny").eval()
    fa = FeatureAlignment(student.feature_channels(), teacher.feature_channels())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        f_t = teacher(x, return_features=True)["features"]
    loss, per_tap = fa(student(x, return_features=True)["features"], f_t)
    assert set(per_tap) == {"ga1", "ga2", "ga3", "gs1", "gs2", "gs3"}
    assert torch.isfinite(loss) and loss.item() > 0


# --- channel entropy and weights ----------------------------------------------------------------
def test_channel_entropy_by_hand():
    lik = LIK.clone().requires_grad_(True)
    h = channel_entropy(lik)
    assert h.tolist() == pytest.approx([1.5, 0.0])
    assert not h.requires_grad
    # a zero likelihood is floored at 1e-9: log2(1e9) = 29.897 bits, not infinity
    assert channel_entropy(torch.zeros(1, 1, 1, 1)).item() == pytest.approx(29.897, abs=1e-3)


def test_channel_weights_by_hand():
    h = torch.tensor([1.5, 0.0])
    assert channel_weights(h, "softmax").tolist() == pytest.approx(W_SOFTMAX, abs=1e-6)
    assert channel_weights(h, "linear").tolist() == pytest.approx([2.0, 0.0])
    assert channel_weights(h, "uniform").tolist() == [1.0, 1.0]
    # tau: 2 * softmax([0.75, 0]) = 2 * [e^0.75, 1] / (e^0.75 + 1)
    assert channel_weights(h, "softmax", tau=2.0).tolist() == pytest.approx([1.358357, 0.641643], abs=1e-6)
    assert channel_weights(torch.zeros(3), "linear").tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("mode", ["softmax", "linear", "uniform"])
@pytest.mark.parametrize("tau", [0.3, 1.0, 5.0])
def test_channel_weights_mean_one(mode, tau):
    h = torch.rand(37) * 6
    w = channel_weights(h, mode, tau)
    assert w.shape == (37,) and (w >= 0).all()
    assert w.mean().item() == pytest.approx(1.0, abs=1e-5)


def test_channel_weights_errors():
    with pytest.raises(ValueError, match="unknown channel weighting 'topk'"):
        channel_weights(torch.ones(3), "topk")
    with pytest.raises(ValueError, match="tau must be positive"):
        channel_weights(torch.ones(3), "softmax", tau=0.0)


def test_topk_pairing_order_and_errors():
    h = torch.tensor([0.2, 3.0, 1.0, 3.0, 0.5])
    assert topk_pairing(h, 3).tolist() == [1, 3, 2]  # ties keep channel order
    assert topk_pairing(h, 5).tolist() == [1, 3, 2, 4, 0]
    assert topk_pairing(h, 3).dtype == torch.long
    with pytest.raises(ValueError, match="between 1 and the teacher's 5 channels"):
        topk_pairing(h, 6)
    with pytest.raises(ValueError):
        topk_pairing(h, 0)


# --- channel distillation -----------------------------------------------------------------------
def _distillation_case():
    # y_s (2, 1, 1, 1) = [1, 3]; P = [[1], [0]] lifts it to c0 [1, 3], c1 [0, 0].
    # y_t (2, 2, 1, 1): c0 [0, 1], c1 [2, 2]. Per-channel MSE: c0 (1 + 4) / 2 = 2.5, c1 (4 + 4) / 2 = 4.
    y_s = torch.tensor([1.0, 3.0]).view(2, 1, 1, 1).requires_grad_(True)
    y_t = torch.tensor([[0.0, 2.0], [1.0, 2.0]]).view(2, 2, 1, 1).requires_grad_(True)
    return y_s, y_t, LIK.clone().requires_grad_(True)


@pytest.mark.parametrize(
    "weighting, expected",
    [
        ("softmax", (W_SOFTMAX[0] * 2.5 + W_SOFTMAX[1] * 4) / 2),  # 2.773638
        ("linear", (2.0 * 2.5 + 0.0 * 4) / 2),  # 2.5
        ("uniform", (2.5 + 4) / 2),  # 3.25
    ],
)
def test_channel_distillation_by_hand(weighting, expected):
    cd = EntropyWeightedChannelDistillation(1, 2, weighting=weighting)
    with torch.no_grad():
        cd.P.weight.copy_(torch.tensor([1.0, 0.0]).view(2, 1, 1, 1))
        cd.P.bias.zero_()
    y_s, y_t, lik = _distillation_case()
    out = cd(y_s, y_t, lik)
    assert out["loss"].item() == pytest.approx(expected, abs=1e-5)
    assert out["entropy"].tolist() == pytest.approx([1.5, 0.0])
    assert out["weights"].mean().item() == pytest.approx(1.0)
    out["loss"].backward()
    assert y_s.grad is not None and cd.P.weight.grad is not None
    assert y_t.grad is None and lik.grad is None  # the teacher learns nothing


def test_channel_distillation_topk_by_hand():
    cd = EntropyWeightedChannelDistillation(2, 3, weighting="topk")
    assert cd.P is None and not list(cd.parameters())
    # H = [1, 0, 2] bits -> pairing [2, 0]; w = 2 * softmax([2, 1]) = [1.462117, 0.537883].
    lik = torch.tensor([0.5, 1.0, 0.25]).view(1, 3, 1, 1)
    y_s = torch.tensor([1.0, 1.0]).view(1, 2, 1, 1).requires_grad_(True)
    y_t = torch.tensor([0.0, 5.0, 3.0]).view(1, 3, 1, 1).requires_grad_(True)
    out = cd(y_s, y_t, lik)
    assert out["pairing"].tolist() == [2, 0]
    assert out["weights"].tolist() == pytest.approx([1.462117, 0.537883], abs=1e-6)
    # student 0 vs teacher 2: (1 - 3)^2 = 4; student 1 vs teacher 0: (1 - 0)^2 = 1.
    assert out["loss"].item() == pytest.approx((1.462117 * 4 + 0.537883 * 1) / 2, abs=1e-5)  # 3.193176
    out["loss"].backward()
    assert y_s.grad is not None and y_t.grad is None


def test_channel_distillation_errors():
    with pytest.raises(ValueError, match="unknown channel weighting"):
        EntropyWeightedChannelDistillation(4, 8, weighting="entropy")
    with pytest.raises(ValueError, match="student channels \\(8\\) <= teacher channels \\(4\\)"):
        EntropyWeightedChannelDistillation(8, 4, weighting="topk")
    with pytest.raises(ValueError, match="tau must be positive"):
        EntropyWeightedChannelDistillation(4, 8, tau=-1.0)
    cd = EntropyWeightedChannelDistillation(4, 8)
    with pytest.raises(ValueError, match="student latent should be"):
        cd(torch.zeros(1, 3, 2, 2), torch.zeros(1, 8, 2, 2), torch.ones(1, 8, 2, 2))
    with pytest.raises(ValueError, match="do not line up"):
        cd(torch.zeros(1, 4, 2, 2), torch.zeros(1, 8, 4, 4), torch.ones(1, 8, 4, 4))
    with pytest.raises(ValueError, match="likelihoods"):
        cd(torch.zeros(1, 4, 2, 2), torch.zeros(1, 8, 2, 2), torch.ones(1, 8, 1, 1))


def test_output_distillation_by_hand():
    x_s = torch.zeros(1, 3, 2, 2, requires_grad=True)
    x_t = torch.full((1, 3, 2, 2), 0.5, requires_grad=True)
    loss = output_distillation_loss(x_s, x_t)
    assert loss.item() == pytest.approx(0.25)
    loss.backward()
    assert x_s.grad is not None and x_t.grad is None
    # d/dx_i mean((x - 0.5)^2) = 2 (0 - 0.5) / 12 = -1/12 for each of the 12 elements
    assert x_s.grad.flatten().tolist() == pytest.approx([-1 / 12] * 12)
