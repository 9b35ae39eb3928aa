# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: feds-lab (.venv)
#     language: python
#     name: feds-lab
# ---

# %% [markdown]
# # 03 · Distillation: FEDS in three stages, and the baseline it must beat
#
# **What this notebook teaches.** A small **student** (narrower, one residual block per stage, no
# attention) learns from the frozen teacher in three stages (`docs/method.md`; split and weights are ours):
#
# 1. **Feature alignment**: $\mathcal{L}_{RD} + \alpha\,\mathcal{L}_{feat}$. For each tapped stage $l$, a 1×1
#    adapter $A_l$ lifts the student's feature to the teacher's width, and the error is weighted by the
#    teacher's spatial attention $a_T$ (channel mean of $f_T^2$, normalised to mean 1):
#    $$\mathcal{L}_{feat} = \frac{1}{|L|}\sum_{l} \operatorname{mean}\big(a_T^{(l)} \odot (A_l(f_S^{(l)}) - f_T^{(l)})^2\big)$$
# 2. **Channel-level distillation**: $\mathcal{L}_{RD} + \alpha\,\mathcal{L}_{feat} + \beta\,\mathcal{L}_{ent}$, with a 1×1
#    adapter $P$ from the student's latent to the teacher's and the channel weights $w$ of notebook 02:
#    $$\mathcal{L}_{ent} = \frac{1}{M_T}\sum_c w_c \cdot \operatorname{mean}\big((P(y_S)_c - y_{T,c})^2\big)$$
# 3. **Fine-tuning**: $\mathcal{L}_{RD}$ alone (at `finetune_lr_factor` times the schedule's rate); the adapters are dropped.
#
# **Scale (ours: scale-free losses).** On raw activations these terms have no fixed ratio to $\mathcal{L}_{RD}$, so
# $\alpha = \beta = 1$ means nothing. The options: `feature_norm` / `latent_norm = "channel"` standardise
# both sides per image and channel (the error becomes $1 - \rho$, Pearson's correlation, as in PKD);
# `output_scale = "distortion"` writes output distillation as a share of the distortion term,
# $\gamma\,\lambda\,255^2\,\mathrm{MSE}(\hat x_S, \hat x_T)$; `balance = "grad"` makes $\alpha, \beta, \gamma$ each term's
# gradient norm as a share of $\mathcal{L}_{RD}$'s; `ramp` lowers the distillation weights to 0 by the end of
# stage 2; `clip_mode = "separate"` clips $\mathcal{L}_{RD}$'s gradient as the baseline's is clipped.
#
# **The baseline.** The same student trained from scratch on $\mathcal{L}_{RD}$ for the same number of steps.
# Without it no claim about distillation can be judged.
#
# **How it fits the whole.** 01 teacher → 02 channel entropy → **03 distillation** → 04 RD analysis.

# %% [markdown]
# > **About budgets.** The `tiny` preset (the built-in default) trains for a few hundred steps on two CPU
# > cores: it shows the machinery, not the method's merit. Learned codecs train for hundreds of thousands
# > of steps; every figure here is labelled with the budget that produced it. See `docs/method.md` and
# > `docs/gpu.md` for the `small` study and the `paper` preset on GPUs.

# %% tags=["parameters"]
# Parameters: papermill replaces this cell. Every other parameter is read from the run folder's
# pipeline.yaml (feds_lab.pipeline.PipelineConfig lists them all, with their defaults).
run_dir = "../runs/notebooks"  # the run folder: checkpoints, metrics, results and figures go there
overrides = {}                 # values for this notebook run only, e.g. {"teacher_steps": 100}

# %%
# %matplotlib inline
# (our figures are matplotlib Figure objects, not pyplot's: the inline backend is what shows them)
from feds_lab.pipeline import PipelineConfig

cfg = PipelineConfig.for_notebook(run_dir, overrides)
layout = cfg.layout
print(cfg.describe())

# %%
from feds_lab.training import train

teachers = {l: cfg.teacher_model(l) for l in cfg.lambdas}   # the zoo's, or notebook 01's (at once)
students = {}
for variant in cfg.variants:
    for lmbda in cfg.lambdas:
        students[variant, lmbda] = train(cfg.train_config("student", lmbda, variant=variant))
students

# %% [markdown]
# ## Loss curves by stage
#
# The shaded bands are the three stages. A FEDS student's total loss includes the distillation terms in
# stages 1-2, so compare the **rate-distortion** term $\mathcal{L}_{RD}$ (solid) with the scratch baseline's.

# %%
from feds_lab import plots

# the reference first; not the learning curve's other budgets (notebook 04 draws those)
at_own_budget = [v.name for v in cfg.variant_records().values() if v.budget is None]
shown = list(dict.fromkeys([cfg.reference, *at_own_budget]))[:3]
fig = plots.stage_curves({f"{v} λ={l:g}": layout.student(v, l) for v in shown for l in cfg.lambdas},
                         title=f"Student training by stage ({cfg.budget_label('student')})")
plots.save_figure(fig, layout.figure("distillation_curves.png"))
fig

# %% [markdown]
# ## The balance of the terms: read this before trusting any distillation result
#
# Top: each term as it enters the loss ($\mathcal{L}_{RD}$, and coefficient × term). Bottom: each term's
# gradient norm on the student's weights (logged every `grad_log_every` steps). A distillation gradient
# far above $\mathcal{L}_{RD}$'s steers the student away from its own rate-distortion optimum; one far
# below it does nothing.

# %%
distilled = [v for v in dict.fromkeys([cfg.reference, *cfg.variants])  # the reference first
             if cfg.train_config("student", cfg.lambdas[0], variant=v).distills]
fig = plots.loss_balance({f"{v} λ={l:g}": layout.student(v, l) for v in distilled[:2] for l in cfg.lambdas[1:3]},
                         title=f"Loss balance ({cfg.budget_label('student')})")
plots.save_figure(fig, layout.figure("loss_balance.png"))
fig

# %% [markdown]
# ## Feature-alignment error by tap
#
# How well the adapted student features match the teacher's, per tapped stage, during stages 1-2.

# %%
fig = plots.feature_alignment_by_tap({f"λ={l:g}": layout.student(cfg.reference, l) for l in cfg.lambdas})
plots.save_figure(fig, layout.figure("feature_alignment_by_tap.png"))
fig

# %% [markdown]
# ## Things to try
#
# - **Ablations** as variants, e.g. `variants={"feds": {}, "scratch": {"baseline": "scratch"},
#   "no_align": {"alpha": 0.0}, "uniform": {"weighting": "uniform"}, "no_stage3": {"stage_split": [0.35, 0.65, 0.0]}}`;
#   notebook 04 compares every variant.
# - **Temperature** `tau` and weighting `linear` / `topk` (no adapter: student channel $j$ copies the
#   teacher's $j$-th most informative channel).
# - **Cross-family** distillation: `family="transformer", student_family="cnn"`.
# - **Longer budgets** (`student_steps`): judge distillation on the rate-distortion plane (notebook 04's
#   BD-rate against the baseline), not by a lower $\mathcal{L}_{RD}$ at one λ: at a few hundred steps a
#   student has not reached its λ's operating point (`docs/method.md`, budgets).
# - **Search** the settings instead of guessing: `feds-lab tune --config <pipeline.yaml> --trials N` trains
#   FEDS ladders on `tune-train`, measures them on `tune-val` (never the images notebook 04 reports) by
#   BD-rate against the scratch ladder, and notebook 04 shows what it found.
