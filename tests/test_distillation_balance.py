"""The distillation balance's pieces, each against a hand example: scale-free losses, output distillation as a share
of the distortion term, ramps, gradient balancing, separate clipping, teacher initialisation, and the
per-term gradient norms in metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from feds_lab import build_model
from feds_lab.losses import EntropyWeightedChannelDistillation, feature_alignment_loss, standardize
from feds_lab.training import TrainConfig, read_metrics, train
from feds_lab.training.config import ConfigError
from feds_lab.training.init import init_from_teacher
from feds_lab.training.stages import DistillationWeights, StagePlan
from feds_lab.training.trainer import _separately_clipped_backward

pytestmark = pytest.mark.usefixtures("one_thread")


# --- scale-free losses ---------------------------------------------------------------------------
def test_standardize_gives_zero_mean_unit_variance_per_image_and_channel():
    f = torch.randn(2, 3, 5, 7) * torch.tensor([1.0, 10.0, 100.0]).view(1, 3, 1, 1) + 4.0
    z = standardize(f)
    assert torch.allclose(z.mean(dim=(2, 3)), torch.zeros(2, 3), atol=1e-5)
    assert torch.allclose(z.var(dim=(2, 3), unbiased=False), torch.ones(2, 3), atol=1e-4)


def test_standardize_is_the_written_out_formula_with_its_gradient():
    """The fused instance-norm kernel computes (f - mean) / sqrt(var + eps^2), gradient included; a
    constant channel and a one-position map standardise to 0."""
    from feds_lab.losses.feature_alignment import STD_EPS

    def by_hand(f):
        mean = f.mean(dim=(2, 3), keepdim=True)
        return (f - mean) / f.var(dim=(2, 3), keepdim=True, unbiased=False).add(STD_EPS**2).sqrt()

    torch.manual_seed(0)
    f = (torch.randn(3, 4, 6, 5) * 7 + 2).requires_grad_()
    g = torch.randn(3, 4, 6, 5)
    a, b = standardize(f), by_hand(f)
    assert torch.allclose(a, b, atol=1e-5)
    ga, = torch.autograd.grad((a * g).sum(), f)
    gb, = torch.autograd.grad((b * g).sum(), f)
    assert torch.allclose(ga, gb, atol=1e-5)
    const = torch.full((1, 2, 4, 4), 3.0)
    assert torch.equal(standardize(const), torch.zeros_like(const))
    one = torch.randn(2, 3, 1, 1, requires_grad=True)
    assert torch.equal(standardize(one), torch.zeros_like(one))


def test_channel_normalised_alignment_is_one_minus_pearson():
    torch.manual_seed(0)
    t = torch.randn(2, 4, 8, 8)
    # an affine copy of the teacher costs nothing, whatever its scale; the opposite costs 2
    assert float(feature_alignment_loss(3 * t - 5, t, "plain", "channel")) == pytest.approx(0, abs=1e-6)
    assert float(feature_alignment_loss(-0.01 * t, t, "plain", "channel")) == pytest.approx(2, abs=1e-4)
    # by hand: one image, one channel, four positions
    a, b = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 3.0, 2.0, 4.0])
    rho = float(torch.corrcoef(torch.stack([a, b]))[0, 1])  # 0.8
    loss = feature_alignment_loss(a.view(1, 1, 2, 2), b.view(1, 1, 2, 2), "plain", "channel")
    assert float(loss) == pytest.approx(1 - rho, abs=1e-5)
    # raw MSE grows with the scale; the normalised loss does not
    assert float(feature_alignment_loss(100 * a.view(1, 1, 2, 2), 100 * b.view(1, 1, 2, 2), "plain", "channel")) \
        == pytest.approx(1 - rho, abs=1e-5)


def test_channel_normalised_latent_term_weights_one_minus_pearson_per_channel():
    torch.manual_seed(0)
    y_t = torch.randn(2, 3, 4, 4)
    lik = torch.full_like(y_t, 0.5)  # every channel 1 bit: uniform weights
    loss = EntropyWeightedChannelDistillation(3, 3, weighting="topk", norm="channel")
    assert float(loss(7 * y_t + 1, y_t, lik)["loss"]) == pytest.approx(0, abs=1e-5)
    flipped = y_t.clone()
    flipped[:, 0] *= -1  # one channel of three opposite: mean of (2, 0, 0)
    assert float(loss(flipped, y_t, lik)["loss"]) == pytest.approx(2 / 3, abs=1e-4)


# --- weights over the stages ---------------------------------------------------------------------
def _plan(steps=100, split=(0.3, 0.5, 0.2)):
    return StagePlan.from_config(TrainConfig(role="student", teacher="t", steps=steps, stage_split=split))


def test_ramps_go_from_one_to_zero_at_the_end_of_stage_two():
    plan = _plan()  # stage 2 ends at step 80
    lin = DistillationWeights({"feat": 0.5}, plan, ramp="linear")
    cos = DistillationWeights({"feat": 0.5}, plan, ramp="cosine")
    const = DistillationWeights({"feat": 0.5}, plan)
    assert lin.at(0)["feat"] == 0.5 and lin.at(40)["feat"] == pytest.approx(0.25) and lin.at(80)["feat"] == 0
    assert cos.at(40)["feat"] == pytest.approx(0.25) and cos.at(20)["feat"] == pytest.approx(0.5 * 0.8535534)
    assert const.at(79)["feat"] == 0.5


def test_gradient_balance_sets_each_term_to_its_share_of_the_rd_gradient():
    w = DistillationWeights({"feat": 0.2, "out": 0.1}, _plan(), balance="grad", momentum=0.5)
    assert w.needs_measurement(3, ["feat"], every=10)  # a term never measured: measure now
    w.update({"rd": 50.0, "feat": 2.0, "out": 100.0})
    assert w.at(0) == pytest.approx({"feat": 0.2 * 25, "out": 0.1 * 0.5})  # 0.2 x 50/2, 0.1 x 50/100
    assert not w.needs_measurement(3, ["feat"], every=10) and w.needs_measurement(10, ["feat"], every=10)
    w.update({"rd": 50.0, "feat": 5.0, "out": 100.0})  # smoothed: 0.5 * 25 + 0.5 * 10
    assert w.at(0)["feat"] == pytest.approx(0.2 * 17.5)
    again = DistillationWeights({"feat": 0.2, "out": 0.1}, _plan(), balance="grad")
    again.load_state_dict(w.state_dict())
    assert again.at(0) == w.at(0) and again.measured == w.measured


def test_separate_clipping_keeps_the_rd_step_whole():
    p = torch.nn.Parameter(torch.zeros(2))
    rd = (p * torch.tensor([30.0, 40.0])).sum()  # gradient (30, 40): norm 50, clipped to 10 by a factor 0.2
    kd = (p * torch.tensor([0.0, 5.0])).sum()  # norm 5: the same factor, so it keeps its 1:10 share
    norm = _separately_clipped_backward(rd, kd, [p], max_norm=10.0)
    assert float(norm) == pytest.approx(50.0)
    assert p.grad.tolist() == pytest.approx([6.0, 8.0 + 1.0], rel=1e-5)
    # a distillation gradient far larger than L_RD's is cut to max_norm, never more
    p.grad = None
    rd = (p * torch.tensor([3.0, 4.0])).sum()  # norm 5: not clipped
    kd = (p * torch.tensor([0.0, 100.0])).sum()
    _separately_clipped_backward(rd, kd, [p], max_norm=10.0)
    assert p.grad.tolist() == pytest.approx([3.0, 4.0 + 10.0], rel=1e-5)


def test_init_from_teacher_copies_leading_slices():
    torch.manual_seed(0)
    teacher, student = build_model("teacher", preset="tiny"), build_model("student", preset="tiny")
    out = init_from_teacher(student, teacher)
    assert out["tensors"] > 10 and 0 < out["fraction"] <= 1
    t = dict(teacher.named_parameters())
    name = "g_a.stages.0.0.conv1.weight"
    s = dict(student.named_parameters())[name]
    assert torch.equal(s, t[name][: s.shape[0], : s.shape[1]])


@pytest.mark.parametrize("family", ["cnn", "transformer"])
def test_init_from_teacher_entropy_scope_copies_the_entropy_model_alone(family):
    torch.manual_seed(0)
    teacher, student = build_model("teacher", preset="tiny", family=family), build_model("student", preset="tiny", family=family)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    out = init_from_teacher(student, teacher, scope="entropy")
    assert out["tensors"] > 10 and 0 < out["fraction"] < 1
    t = dict(teacher.named_parameters())
    for name, p in student.named_parameters():
        if name.startswith("latent_codec.") and name in t and p.dim() == t[name].dim():
            assert torch.equal(p, t[name][tuple(slice(0, n) for n in p.shape)]), name
        elif not name.startswith("latent_codec."):
            assert torch.equal(p, before[name]), f"{name}: a transform weight was copied"


def test_init_scope_needs_init_from_teacher():
    with pytest.raises(ConfigError, match="init_scope 'entropy' needs init_from_teacher"):
        TrainConfig(role="student", teacher="t.safetensors", init_scope="entropy", steps=10, batch_size=2, crop=64,
                    lr=1e-3, schedule="onecycle").check()
    with pytest.raises(ValueError, match="unknown init scope"):
        init_from_teacher(build_model("student", preset="tiny"), build_model("teacher", preset="tiny"), scope="hyper")


# --- in a real run -------------------------------------------------------------------------------
def test_gradient_norms_and_weights_are_logged_per_stage(tmp_path: Path, tiny_checkpoints):
    cfg = TrainConfig(role="student", teacher=str(tiny_checkpoints["teacher"]), steps=8, batch_size=2, crop=64,
                      val_every=0, ckpt_every=0, progress=False, out=str(tmp_path / "s"), grad_log_every=2,
                      feature_norm="channel", latent_norm="channel", output_scale="distortion", gamma=0.1,
                      balance="grad", balance_every=3, clip_mode="separate", alpha=0.2, beta=0.3,
                      stage_split=(0.25, 0.5, 0.25))
    train(cfg)
    rows = read_metrics(tmp_path / "s")
    grads = [r for r in rows if r["kind"] == "grad"]
    stages = {r["stage"] for r in grads}
    assert stages == {"feature_alignment", "channel_distillation"}  # none in fine-tuning: nothing to balance
    for r in grads:
        assert r["rd"] > 0 and r["feat"] > 0 and r["out"] > 0 and r["w_feat"] > 0
        assert ("ent" in r) == (r["stage"] == "channel_distillation")
    # balancing: after a measurement the weighted gradient is about alpha times the RD gradient
    train_rows = {r["step"]: r for r in rows if r["kind"] == "train"}
    later = [g for g in grads if g["step"] > 1]
    assert later and all(0.02 < g["w_feat"] / g["rd"] < 2.0 for g in later)
    assert "w_feat" not in train_rows[8] and train_rows[8]["kd_loss"] == 0 and train_rows[1]["w_feat"] > 0
    # output distillation is a share of the distortion term: lambda * 255^2 * MSE
    assert train_rows[1]["out_loss"] > 10 * train_rows[1]["mse_loss"]


def test_a_measured_step_builds_its_separately_clipped_gradient_from_the_measured_ones():
    """On a step that measures each term's gradient, the separately clipped gradient comes from those
    gradients (no third and fourth backward) and equals the one two more backward passes give."""
    from feds_lab.training.stages import Stage, TrainingObjective
    from feds_lab.training.trainer import _clip_and_set, _rd_and_kd_gradients, term_gradients

    class _One:
        def mean(self, values):
            return values

    torch.manual_seed(0)
    teacher = build_model("teacher", "tiny").eval()
    student = build_model("student", "tiny")
    cfg = TrainConfig(role="student", teacher="t.safetensors", gamma=0.05).resolved()
    objective = TrainingObjective.for_config(cfg, student, teacher)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        t_out = teacher(x, return_features=True)
    coefficients = {"feat": 0.3, "ent": 0.2, "out": 0.05}
    params = [p for p in objective.parameters() if p.requires_grad]
    grads = {}
    for mode in ("two backward passes", "measured"):
        torch.manual_seed(1)  # the same quantisation noise
        terms = objective(x, Stage.CHANNEL_DISTILLATION, t_out, coefficients)
        for p in params:
            p.grad = None
        if mode == "measured":
            norms, per_term = term_gradients(terms, objective, Stage.CHANNEL_DISTILLATION, coefficients, _One(),
                                             keep=params)
            assert set(per_term) == {"rd", "feat", "ent", "out"} and norms["rd"] > 0
            norm = _clip_and_set(params, *_rd_and_kd_gradients(per_term, coefficients, params), 1.0)
        else:
            norm = _separately_clipped_backward(terms["rd_loss"], terms["kd_loss"], params, 1.0)
        grads[mode] = (float(norm), [None if p.grad is None else p.grad.clone() for p in params])
    (n1, g1), (n2, g2) = grads.values()
    assert n1 == pytest.approx(n2, rel=1e-5)
    for a, b in zip(g1, g2):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


def test_held_ratios_give_the_separately_clipped_gradient_with_one_backward():
    """Between measurements, one backward of L_RD + rho L_kd clipped with the held ratios gives the
    gradient two backward passes give, when the ratios are those of the same gradients."""
    from feds_lab.training.trainer import _clip_and_set, _held_clip_backward

    p = torch.nn.Parameter(torch.zeros(3))
    for g_rd, g_kd in (([30.0, 40.0, 0.0], [0.0, 5.0, 1.0]), ([3.0, 4.0, 0.0], [0.0, 100.0, 7.0]),
                       ([0.3, 0.4, 0.0], [0.0, 0.1, 0.2])):
        rd_w, kd_w = torch.tensor(g_rd), torch.tensor(g_kd)
        p.grad = None
        norm, rho, k = _clip_and_set([p], [rd_w], [kd_w], 10.0, ratios=True)
        exact = p.grad.clone()
        p.grad = None
        held_norm = _held_clip_backward((p * rd_w).sum(), (p * kd_w).sum(), [p], 10.0, rho, k)
        assert torch.allclose(p.grad, exact, rtol=1e-5, atol=1e-7)
        assert float(held_norm) == pytest.approx(float(norm), rel=1e-5)


def test_separate_clipping_with_held_ratios_trains_and_resumes(tmp_path: Path, tiny_checkpoints):
    """clip_measure_every: the run takes the gradients apart on its schedule and whenever the set of
    terms changes, and keeps the held ratios in its state (a resumed run goes on with them)."""
    from feds_lab.training.state import load_state

    base = dict(role="student", teacher=str(tiny_checkpoints["teacher"]), steps=8, batch_size=2, crop=64,
                val_every=0, ckpt_every=4, progress=False, balance="none", clip_mode="separate",
                alpha=0.2, beta=0.3, gamma=0.0, stage_split=(0.25, 0.75, 0.0))
    train(TrainConfig(**base, out=str(tmp_path / "held"), clip_measure_every=3))
    held = load_state(tmp_path / "held" / "state.pt")
    assert held["clip_ratios"]["terms"] == ["feat", "ent"] and held["clip_ratios"]["rho"] > 0
    grads = [r["step"] for r in read_metrics(tmp_path / "held") if r["kind"] == "grad"]
    # measured on steps 0, 3, 6 (0-based) and when the term set changed (stage 2 starts at step 2)
    assert grads == [1, 3, 4, 7]
