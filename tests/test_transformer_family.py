"""The transformer family, and the feature contract that lets any two families distil each other."""

import math

import pytest
import torch
import torch.nn.functional as F

from feds_lab.models import FEATURE_NAMES, build_model, list_families
from feds_lab.models.transformer import TransformerCodec
from feds_lab.presets import model_preset

FAMILIES = ("cnn", "transformer", "compressai:mbt2018-mean", "compressai:bmshj2018-hyperprior")


@pytest.fixture(scope="module")
def cnn_sizes():
    """Spatial size of every CNN feature on a 64x128 image: the reference every family must meet."""
    torch.manual_seed(0)
    with torch.no_grad():
        out = build_model("student", "tiny", family="cnn")(torch.rand(1, 3, 64, 128), return_features=True)
    return {name: tuple(f.shape[-2:]) for name, f in out["features"].items()}


def test_the_families_are_registered():
    assert set(FAMILIES) <= set(list_families())


# every family at tiny and small, but one of the two Ballé/Minnen families is enough at small
CONTRACT_CASES = [(f, p) for f in FAMILIES for p in ("tiny", "small") if (f, p) != (FAMILIES[3], "small")]


@pytest.mark.parametrize("role", ["teacher", "student"])
@pytest.mark.parametrize("family,preset", CONTRACT_CASES)
def test_every_family_meets_the_feature_contract(family, role, preset, cnn_sizes):
    torch.manual_seed(0)
    model = build_model(role, preset, family=family)
    x = torch.rand(1, 3, 64, 128)
    with torch.no_grad():
        out = model(x, return_features=True)
    widths = model.feature_channels()
    assert set(out["features"]) == set(FEATURE_NAMES) == set(widths)
    for name, f in out["features"].items():
        assert tuple(f.shape[-2:]) == cnn_sizes[name], name
        assert f.shape[:2] == (1, widths[name]), name
    M = widths["y"]
    assert out["x_hat"].shape == x.shape
    assert out["y"].shape == out["y_hat"].shape == (1, M, 4, 8)
    assert out["likelihoods"]["y"].shape == (1, M, 4, 8)
    z = out["likelihoods"]["z"]
    assert z.shape[0] == 1 and tuple(z.shape[-2:]) == (1, 2)
    assert all(torch.isfinite(v).all() for v in out["likelihoods"].values())
    assert model.config["family"] == family and model.config["preset"] == preset
    if preset == "tiny":
        assert "features" not in model(x)  # only when asked


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_transformer_paper_preset_builds_and_meets_the_size_target():
    torch.manual_seed(0)
    teacher = build_model("teacher", "paper", family="transformer")
    student = build_model("student", "paper", family="transformer")
    # the method's target (docs/method.md) at the paper preset: the student at most 0.37 of the teacher's parameters
    assert _n_params(student) / _n_params(teacher) <= 0.37
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for model in (teacher, student):
            out = model(x, return_features=True)
            assert out["x_hat"].shape == x.shape
            assert out["features"]["y"].shape == (1, model.config["M"], 4, 4)


@pytest.mark.parametrize("family", FAMILIES)
def test_student_is_smaller_than_teacher_at_every_preset(family):
    for preset in ("tiny", "small", "paper"):
        t = model_preset(family, "teacher", preset)
        s = model_preset(family, "student", preset)
        assert s != t
    torch.manual_seed(0)
    student, teacher = (build_model(role, "tiny", family=family) for role in ("student", "teacher"))
    assert _n_params(student) < _n_params(teacher)


def test_transformer_teacher_is_deeper_and_wider_than_its_student():
    for preset in ("tiny", "small", "paper"):
        t = model_preset("transformer", "teacher", preset)
        s = model_preset("transformer", "student", preset)
        assert sum(t["depths"]) > sum(s["depths"])
        assert all(a >= b for a, b in zip(t["dims"], s["dims"])) and t["M"] > s["M"]
        assert sum(t["heads"]) > sum(s["heads"])


def _psnr(a, b):
    return 10 * math.log10(1 / max(F.mse_loss(a, b).item(), 1e-10))


@pytest.mark.parametrize(
    "role,size,overrides",
    [
        ("teacher", (60, 120), {}),  # padded to 64x128
        ("student", (60, 120), {}),
        ("student", (64, 64), {"window": 8}),  # smaller than window x 16: every map is padded to whole windows
        ("teacher", (64, 64), {"window": 8, "entropy_model": "hyperprior"}),
    ],
)
def test_transformer_codes_real_bitstreams(role, size, overrides):
    torch.manual_seed(0)
    model = build_model(role, "tiny", family="transformer", **overrides)
    model.update(force=True)
    model.eval()
    h, w = size
    x = torch.rand(1, 3, h, w)
    xp = F.pad(x, (0, (-w) % 64, 0, (-h) % 64), mode="replicate")
    with torch.no_grad():
        c = model.compress(xp)
        x_hat = model.decompress(c["strings"], c["shape"])["x_hat"]
        ref = model(xp)["x_hat"].clamp(0, 1)
    assert all(isinstance(s[0], bytes) and len(s[0]) > 0 for s in c["strings"])
    assert x_hat.shape == xp.shape
    assert x_hat[..., :h, :w].shape == x.shape
    assert torch.isfinite(x_hat).all() and x_hat.min() >= 0 and x_hat.max() <= 1
    # the decoder sees the latents the eval forward pass rounded: same reconstruction
    assert _psnr(x_hat, ref) > 40


def test_transformer_teacher_pairs_with_cnn_student():
    torch.manual_seed(0)
    teacher = build_model("teacher", "tiny", family="transformer").eval()
    student = build_model("student", "tiny", family="cnn")
    x = torch.rand(2, 3, 64, 128)
    with torch.no_grad():
        ft = teacher(x, return_features=True)["features"]
    fs = student(x, return_features=True)["features"]
    ct, cs = teacher.feature_channels(), student.feature_channels()
    # the losses bridge widths with 1x1 adapters built from feature_channels(), before any forward
    adapters = torch.nn.ModuleDict({n: torch.nn.Conv2d(cs[n], ct[n], 1) for n in FEATURE_NAMES})
    loss = 0.0
    for name in FEATURE_NAMES:
        assert ft[name].shape[-2:] == fs[name].shape[-2:], name
        assert ft[name].shape[1] == ct[name] and fs[name].shape[1] == cs[name]
        loss = loss + F.mse_loss(adapters[name](fs[name]), ft[name])
    loss.backward()
    assert all(p.grad is not None for p in student.g_a.parameters())


def test_transformer_trains_a_few_steps():
    torch.manual_seed(0)
    model = build_model("student", "tiny", family="transformer")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = F.interpolate(torch.rand(4, 3, 8, 8), size=(64, 64), mode="bilinear", align_corners=False)
    losses = []
    for _ in range(6):
        out = model(x)
        bpp = sum(-torch.log2(v).sum() for v in out["likelihoods"].values()) / (x.shape[0] * 64 * 64)
        loss = bpp + 0.0130 * 255**2 * F.mse_loss(out["x_hat"], x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert min(losses[-2:]) < losses[0]


def test_transformer_config_rebuilds_the_model():
    torch.manual_seed(0)
    model = build_model("teacher", "tiny", family="transformer", M=40)
    recorded = ("family", "role", "preset", "overrides", "feature_channels")
    cfg = {k: v for k, v in model.config.items() if k not in recorded}
    again = TransformerCodec(**cfg)
    assert again.feature_channels() == model.feature_channels()
    assert again.feature_channels()["y"] == 40
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in again.state_dict().items()} == shapes


@pytest.mark.parametrize(
    "bad",
    [dict(dims=(16, 16)), dict(depths=(2, 2, 2)), dict(heads=(3, 3, 3, 3))],  # 3 heads do not divide 16
)
def test_transformer_rejects_inconsistent_sizes(bad):
    sizes = {**model_preset("transformer", "student", "tiny"), **bad}
    with pytest.raises(ValueError):
        TransformerCodec(**sizes)
