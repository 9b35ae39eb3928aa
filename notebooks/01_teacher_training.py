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
# large, strong **teacher**; this notebook gets one teacher per rate-distortion trade-off λ (from the
# package's zoo of long-trained teachers, or trained here) and shows how good each is.
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
# ## One teacher per λ: the zoo's, or trained here
#
# Distillation needs a teacher that is ahead of the student trained alone, and a teacher trained for a
# few hundred steps is not. So by default (`teacher: zoo`) the teachers come from the **zoo** shipped inside
# the package (`feds-lab zoo list`): trained once for 20,000 steps (the other λ fine-tuned from a neighbour)
# on Creative Commons photographs, each file checked against its sha256 before use and copied into this
# run folder. With `teacher: train` this notebook trains them instead (`feds_lab.training.train`: Adam, a
# separate optimiser for the entropy bottleneck's quantiles, gradient clipping, validation with real
# bitstreams); a finished run with the same config is not trained again, an interrupted one resumes.

# %%
teachers = {lmbda: cfg.teacher_model(lmbda) for lmbda in cfg.lambdas}
print(f"teachers ({cfg.teacher}): {cfg.teacher_budget()}")
teachers

# %% [markdown]
# ## How they were trained
#
# Zoo teachers: the validation curves shipped in their records (PSNR and bpp from real bitstreams on
# photographs none of them trained on), a fine-tuned λ's curve starting where its source's ended. Teachers
# trained here: the training loss and its rate term, and validation on held-out images.

# %%
from feds_lab import plots

if cfg.teacher == "zoo":
    from feds_lab.zoo import find

    fig = plots.zoo_curves([find(cfg.family, cfg.preset, l) for l in cfg.lambdas],
                           title=f"Zoo teachers ({cfg.family}, {cfg.preset}): validation while training")
else:
    fig = plots.training_curves({f"λ={l:g}": layout.teacher(l) for l in cfg.lambdas},
                                title=f"Teacher training ({cfg.budget_label('teacher')})")
plots.save_figure(fig, layout.figure("teacher_training_curves.png"))
fig

# %%
import pandas as pd
from feds_lab.checkpoint import load_model, read_record

pd.DataFrame([{"λ": l, **{k: read_record(p).get("budget", {}).get(k) for k in ("steps", "batch_size", "crop", "schedule", "lr", "wall_seconds", "device")},
               "trained on": (read_record(p).get("data") or {}).get("folder", cfg.data or "built-in"),
               "parameters": sum(t.numel() for t in load_model(p).parameters())} for l, p in teachers.items()])

# %% [markdown]
# ## The teachers against JPEG and WebP
#
# Every teacher codes every evaluation image for real (bpp from the bytes); Pillow's JPEG and WebP are
# swept over their quality settings on the same images. The BD-rate reads: the bits the teacher ladder
# needs for the same PSNR, against JPEG (negative = fewer), averaged over the quality range both cover,
# with a 95 % bootstrap interval over images. Notebook 04 reuses these evaluations (the evaluation cache).

# %%
from feds_lab.data import eval_images
from feds_lab.evaluation.bdrate import bd_table
from feds_lab.evaluation.curves import evaluate_curve
from feds_lab.evaluation.cache import resolve_cache
from feds_lab.evaluation.rd_analysis import config_cache
from feds_lab.evaluation.anchors import run_anchors
from feds_lab.evaluation.results import save_results

images = eval_images(cfg.eval_data or cfg.data, cfg.eval_split)
curve = evaluate_curve(f"teacher ({cfg.family})", teachers, images, f"teacher, {cfg.budget_label('teacher')}",
                       resolve_cache(None, default=config_cache(cfg)))
save_results(curve, layout.teacher_results)
anchors = run_anchors(images, codecs=[c for c in ("jpeg", "webp") if c in cfg.anchors] or ["jpeg"], progress=False)
fig = plots.rd_curves([curve, *anchors.values()], metric="psnr",
                      title=f"Teachers against JPEG and WebP, {len(images)} evaluation images ({cfg.budget_label('teacher')})")
plots.save_figure(fig, layout.figure("teacher_rd.png"))
display(fig)
pd.DataFrame(bd_table(anchors["jpeg"], [curve], bootstrap=1000, strict=False)).round(3)

# %% [markdown]
# ## Things to try
#
# - **Train the teachers here** (`teacher: train`, then `teacher_steps`): `docs/method.md` shows that a hyperprior
#   passes JPEG on two CPU cores after about 6,000 steps at 128 px crops; a few hundred steps give a teacher
#   that is no better than its student trained alone. Look for validation PSNR still climbing.
# - **Crop size** (`train={"crop": 128}`): at 64 px crops the hyper-latent $z$ is 1×1; watch the rate term.
# - **Another family** (`family="transformer"`): a Swin-only codec; compare its curves with the CNN's.
# - **MS-SSIM** (`train={"metric": "ms-ssim"}`, needs crops ≥ 192 px): the distortion term changes to $1-\text{MS-SSIM}$.
