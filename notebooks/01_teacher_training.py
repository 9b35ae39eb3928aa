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
# # 01 · Training the teacher
#
# **What this notebook teaches.** A learned image codec is an autoencoder whose latent is quantised and
# entropy-coded. It is trained to trade *rate* (bits) against *distortion* (error). FEDS starts from a
# large, strong **teacher**; this notebook trains one teacher per rate-distortion trade-off λ.
#
# **How it fits the whole.**
# **01 teacher** → 02 channel entropy (what the teacher's latent channels carry) → 03 distillation (FEDS
# student and a scratch baseline) → 04 RD analysis (is the student as good, and is it faster?).
#
# **The teacher** (our reading of the paper, see `docs/method.md`): Cheng2020-style residual transforms,
# Swin-Transformer-V2 window attention after the x/4, x/8, x/16 stages of the analysis transform $g_a$ and
# before the matching stages of the synthesis transform $g_s$, a mean-scale hyperprior with a checkerboard
# context, and a wider latent than the student.
#
# **The loss** (CompressAI's convention), for an image $x$ with $N$ pixels and reconstruction $\hat x$:
#
# $$\mathcal{L}_{RD} = \underbrace{\frac{1}{N}\sum_i -\log_2 p(\hat y_i) - \frac{1}{N}\sum_j \log_2 p(\hat z_j)}_{R\ \text{(bpp)}} \; + \; \lambda \cdot 255^2 \cdot \underbrace{\operatorname{MSE}(x, \hat x)}_{D}$$
#
# A larger λ buys quality with bits; one model per λ traces a rate-distortion curve.

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

# %% [markdown]
# ## Train one teacher per λ
#
# `feds_lab.training.train` runs the loop (Adam, a separate optimiser for the entropy bottleneck's
# quantiles, gradient clipping, validation with real bitstreams). Each run folder holds `config.yaml`,
# `metrics.jsonl` and the final `model.safetensors`. A finished run with the same config is not trained
# again; an interrupted one resumes from its last checkpoint.

# %%
from feds_lab.training import train

teachers = {}
for lmbda in cfg.lambdas:
    teachers[lmbda] = train(cfg.train_config("teacher", lmbda))
teachers

# %% [markdown]
# ## Loss and validation curves
#
# Left: the training loss and its two terms (rate in bpp, distortion as MSE). Right: validation on
# held-out images with **real bitstreams**: bpp from the bytes the rANS coder wrote, PSNR on 8-bit RGB.

# %%
from feds_lab import plots

fig = plots.training_curves({f"λ={l:g}": layout.teacher(l) for l in cfg.lambdas},
                            title=f"Teacher training ({cfg.budget_label('teacher')})")
plots.save_figure(fig, layout.figure("teacher_training_curves.png"))
fig

# %%
import pandas as pd
from feds_lab.checkpoint import load_model, read_record

pd.DataFrame([{"λ": l, **{k: read_record(p).get("budget", {}).get(k) for k in ("steps", "batch_size", "crop", "schedule", "lr", "wall_seconds", "device")},
               "parameters": sum(t.numel() for t in load_model(p).parameters())} for l, p in teachers.items()])

# %% [markdown]
# ## Things to try
#
# - **More steps** (`teacher_steps`, or the `small` preset): `docs/method.md` shows that a hyperprior passes JPEG
#   on two CPU cores after about 6,000 steps at 128 px crops. Look for validation PSNR still climbing.
# - **Crop size** (`train={"crop": 128}`): at 64 px crops the hyper-latent $z$ is 1×1; watch the rate term.
# - **Another family** (`family="transformer"`): a Swin-only codec; compare its curves with the CNN's.
# - **MS-SSIM** (`train={"metric": "ms-ssim"}`, needs crops ≥ 192 px): the distortion term changes to $1-\text{MS-SSIM}$.
