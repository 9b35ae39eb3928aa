"""Bring your own codec: CompressAI models behind the FeatureCodec contract."""

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from compressai.entropy_models import EntropyBottleneck
from compressai.layers import GDN
from compressai.models import MeanScaleHyperprior
from compressai.models.base import CompressionModel
from compressai.models.utils import conv, deconv

import feds_lab.models as models
import feds_lab.models.registry as registry
import feds_lab.presets as presets
from feds_lab.models import FEATURE_NAMES, build_model
from feds_lab.models.wrappers import (
    GOOGLE_GA_TAPS,
    GOOGLE_GS_TAPS,
    CompressAIFeatureWrapper,
    register_compressai_family,
    wrap_compressai_model,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "bring_your_own_codec.md"


@pytest.fixture
def scratch_registry(monkeypatch):
    """Families registered inside a test disappear after it."""
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    monkeypatch.setattr(presets, "MODEL_PRESETS", dict(presets.MODEL_PRESETS))


def _hooks(module):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def _smooth_images(n, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, size // 8, size // 8, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def test_registered_families_build_by_name():
    for family, cls in (
        ("compressai:mbt2018-mean", "MeanScaleHyperprior"),
        ("compressai:bmshj2018-hyperprior", "ScaleHyperprior"),
    ):
        assert family in models.list_families() and family in presets.MODEL_PRESETS
        m = build_model("teacher", "tiny", family=family)
        assert isinstance(m, CompressAIFeatureWrapper)
        assert type(m.model).__name__ == cls
        sizes = presets.model_preset(family, "teacher", "tiny")
        assert (m.config["N"], m.config["M"]) == (sizes["N"], sizes["M"])
        assert m.feature_channels()["y"] == sizes["M"] and m.feature_channels()["ga1"] == sizes["N"]


@pytest.mark.parametrize("family", ["compressai:mbt2018-mean", "compressai:bmshj2018-hyperprior"])
def test_y_and_y_hat_are_the_wrapped_models_own(family):
    torch.manual_seed(0)
    m = build_model("student", "tiny", family=family).eval()
    inner = m.model
    x = torch.rand(2, 3, 64, 128)
    with torch.no_grad():
        out = m(x, return_features=True)
        y = inner.g_a(x)
        assert torch.equal(out["y"], y) and torch.equal(out["features"]["y"], y)
        if family == "compressai:mbt2018-mean":
            means = inner.h_s(inner.entropy_bottleneck(inner.h_a(y))[0]).chunk(2, 1)[1]
        else:
            means = torch.zeros_like(y)
        # eval: y_hat is y rounded around the predicted means, as the decoder will rebuild it
        assert torch.allclose(out["y_hat"], torch.round(y - means) + means, atol=1e-5)
        assert torch.allclose(out["x_hat"], inner.g_s(out["y_hat"]), atol=1e-6)
        # the features are the GDN outputs of the Ballé/Minnen transforms
        assert torch.equal(out["features"]["ga2"], inner.g_a[:4](x))
        assert torch.equal(out["features"]["gs3"], inner.g_s[:6](out["y_hat"]))
    m.train()
    out = m(x)
    assert (out["y_hat"] - out["y"]).abs().max() <= 0.5 + 1e-5  # training: y + uniform noise
    assert _hooks(m) == 0


def test_taps_are_checked_when_wrapping():
    net = MeanScaleHyperprior(N=16, M=32)
    with pytest.raises(ValueError, match="x/4"):
        wrap_compressai_model(net, {"ga1": 1, "ga2": 1, "ga3": 5}, GOOGLE_GS_TAPS)  # ga2 at x/2
    with pytest.raises(ValueError, match="ga3"):
        wrap_compressai_model(net, {"ga1": 1, "ga2": 3}, GOOGLE_GS_TAPS)
    with pytest.raises(IndexError):
        wrap_compressai_model(net, {"ga1": 1, "ga2": 3, "ga3": 9}, GOOGLE_GS_TAPS)
    with pytest.raises(ValueError, match="no submodule"):
        wrap_compressai_model(net, {"ga1": "g_a.body.1", "ga2": 3, "ga3": 5}, GOOGLE_GS_TAPS)
    with pytest.raises(ValueError, match="lacks"):
        wrap_compressai_model(net, GOOGLE_GA_TAPS, GOOGLE_GS_TAPS, feature_channels={"ga1": 16})
    assert _hooks(net) == 0


def test_hooks_do_not_outlive_a_failing_call():
    m = build_model("student", "tiny", family="compressai:mbt2018-mean")

    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    m.model.h_a = Boom()
    with pytest.raises(RuntimeError, match="boom"):
        m(torch.rand(1, 3, 64, 64), return_features=True)
    assert _hooks(m) == 0


def test_wrapped_model_trains_on_rd_loss_and_codes():
    torch.manual_seed(0)
    m = build_model("student", "tiny", family="compressai:mbt2018-mean")
    net_params = [p for n, p in m.named_parameters() if not n.endswith(".quantiles")]
    aux_params = [p for n, p in m.named_parameters() if n.endswith(".quantiles")]
    opt, aux_opt = torch.optim.Adam(net_params, lr=1e-3), torch.optim.Adam(aux_params, lr=1e-2)
    x = _smooth_images(4)
    lmbda, losses = 0.0130, []
    for _ in range(12):
        out = m(x, return_features=True)
        bpp = sum(-torch.log2(v).sum() for v in out["likelihoods"].values()) / (x.shape[0] * 64 * 64)
        loss = bpp + lmbda * 255**2 * F.mse_loss(out["x_hat"], x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        aux_opt.zero_grad()
        m.aux_loss().backward()
        aux_opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert min(losses[-3:]) < losses[0]

    # real bitstreams, and a fresh model loaded from the state dict decodes them
    assert m.update(force=True)
    m.eval()
    xi = x[:1]
    with torch.no_grad():
        c = m.compress(xi)
        x_hat = m.decompress(c["strings"], c["shape"])["x_hat"]
        ref = m(xi)["x_hat"].clamp(0, 1)
        fresh = build_model("student", "tiny", family="compressai:mbt2018-mean")
        fresh.load_state_dict(m.state_dict())
        fresh.eval()
        again = fresh.decompress(c["strings"], c["shape"])["x_hat"]
    assert set(c) == {"strings", "shape"} and all(isinstance(s[0], bytes) for s in c["strings"])
    assert x_hat.shape == xi.shape and torch.equal(x_hat, again)
    assert F.mse_loss(x_hat, ref).item() < 1e-4


class _Block(nn.Module):
    def __init__(self, body: nn.Sequential):
        super().__init__()
        self.body = body

    def forward(self, x):
        return self.body(x)


class _UserCodec(CompressionModel):
    """A user's own codec, unknown to the package: transforms wrapped in a block with a ``body``."""

    def __init__(self, N=8, M=12):
        super().__init__()
        self.entropy_bottleneck = EntropyBottleneck(M)
        self.g_a = _Block(nn.Sequential(conv(3, N), GDN(N), conv(N, N), GDN(N), conv(N, N), GDN(N), conv(N, M)))
        self.g_s = nn.Sequential(deconv(M, N), GDN(N, inverse=True), deconv(N, N), GDN(N, inverse=True),
                                 deconv(N, N), GDN(N, inverse=True), deconv(N, 3))

    def forward(self, x):
        y = self.g_a(x)
        y_hat, y_likelihoods = self.entropy_bottleneck(y)
        return {"x_hat": self.g_s(y_hat), "likelihoods": {"y": y_likelihoods}}

    def compress(self, x):
        y = self.g_a(x)
        return {"strings": [self.entropy_bottleneck.compress(y)], "shape": y.size()[-2:]}

    def decompress(self, strings, shape):
        return {"x_hat": self.g_s(self.entropy_bottleneck.decompress(strings[0], shape)).clamp_(0, 1)}


def test_user_codec_with_dotted_taps(scratch_registry):
    taps_a = {"ga1": "g_a.body.1", "ga2": "g_a.body.3", "ga3": "g_a.body.5"}
    with pytest.raises(TypeError, match="dotted path"):
        wrap_compressai_model(_UserCodec(), {"ga1": 1, "ga2": 3, "ga3": 5}, GOOGLE_GS_TAPS)
    register_compressai_family(
        "user:factorized", _UserCodec, taps_a, GOOGLE_GS_TAPS,
        presets={"tiny": {"teacher": dict(N=16, M=24), "student": dict(N=8, M=12)}},
    )
    m = build_model("student", "tiny", family="user:factorized")
    assert m.feature_channels() == dict(ga1=8, ga2=8, ga3=8, y=12, gs1=8, gs2=8, gs3=8)
    out = m(torch.rand(1, 3, 64, 64), return_features=True)
    assert set(out["features"]) == set(FEATURE_NAMES)
    assert out["features"]["ga3"].shape == (1, 8, 8, 8)
    m.update(force=True)
    m.eval()
    c = m.compress(torch.rand(1, 3, 64, 64))
    assert m.decompress(c["strings"], c["shape"])["x_hat"].shape == (1, 3, 64, 64)


def test_documented_example_runs(scratch_registry):
    """The Python blocks of docs/bring_your_own_codec.md, run top to bottom in one namespace."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation


def test_the_model_contract_is_met_by_both_families_and_the_wrapper():
    x = _smooth_images(1, size=64)
    for family in ("cnn", "transformer", "compressai:mbt2018-mean"):
        torch.manual_seed(0)
        m = build_model("student", "tiny", family=family)
        assert isinstance(m, models.Codec), family
        m.update(force=True)
        m.eval()
        with torch.no_grad():
            y = m.analysis(x)
            c = m.compress_latent(y)
            y_hat = m.decompress_latent(c["strings"], c["shape"])
            assert y.shape == y_hat.shape == (1, m.feature_channels()["y"], 4, 4), family
            assert m.synthesis(y_hat).shape == x.shape
            # the image path codes the same streams as the latent path
            assert m.compress(x)["strings"] == c["strings"], family
            x_hat = m.decompress(c["strings"], c["shape"])["x_hat"]
            assert torch.allclose(x_hat, m.synthesis(y_hat).clamp(0, 1)), family
    assert _hooks(m) == 0  # the wrapper's one-call hooks are gone


def test_notebook_02_analysis_and_the_explorer_on_a_brought_codec(one_thread):
    """Notebook 02's calls (entropy heatmap, real-coded channel ablation, the explorer) on
    compressai:mbt2018-mean, built here with random weights and trained a few steps: nothing downloaded."""
    from feds_lab.analysis import channel_ablation_table, entropy_matrix, latent_view
    from feds_lab.losses import RateDistortionLoss
    from feds_lab.widgets import ChannelExplorer

    torch.manual_seed(0)
    teacher = build_model("teacher", "tiny", family="compressai:mbt2018-mean")
    images = [(f"img{i}", x[None]) for i, x in enumerate(_smooth_images(2, size=64))]
    opt = torch.optim.Adam(teacher.parameters(), lr=1e-3)
    loss = RateDistortionLoss(lmbda=0.0067)
    for _ in range(3):  # briefly trained: the channels' entropies are told apart
        opt.zero_grad()
        out = teacher(torch.cat([x for _, x in images]))
        loss(out, torch.cat([x for _, x in images]))["loss"].backward()
        opt.step()
    teacher.update(force=True)
    teacher.eval()

    views = [latent_view(teacher, name, x) for name, x in images]
    H = entropy_matrix(views)
    assert H.shape == (48, 2) and torch.isfinite(H).all()  # tiny teacher: M = 48
    rows = channel_ablation_table(teacher, views, k=6)
    assert {r["variant"] for r in rows} == {"all channels", "without top-6", "without bottom-6"}
    assert all(r["bpp"] > 0 and math.isfinite(r["psnr"]) for r in rows)

    explorer = ChannelExplorer(teacher, images)
    top = int(views[0].entropy.argmax())
    explorer.channel_picker.value = top
    state = explorer.state()
    assert state["channel"] == top and state["rank"] == 1 and state["channels"] == 48
    assert "bits/element" in explorer.info.value and explorer.latent.value[:4] == b"\x89PNG"
    explorer.image_picker.value = "img1"
    assert explorer.state()["image"] == "img1"
