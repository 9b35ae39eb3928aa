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
# # 02 · Channel entropy: which latent channels carry the image?
#
# **What this notebook teaches.** The teacher's entropy model assigns every quantised latent element
# $\hat y_{c,i}$ a probability $p_T(\hat y_{c,i})$; its code length is $-\log_2 p_T$. Averaged over a
# channel, that is the channel's **entropy** in bits per element:
#
# $$H_c = -\frac{1}{B\,h\,w}\sum_{b,i} \log_2 p_T(\hat y_{b,c,i}) \quad [\text{bits/element}]$$
#
# FEDS argues that high-entropy channels carry most of the information about the image, so the student
# should copy them most carefully. The channel weights of the distillation loss (our form; the paper's
# body is not available) are
#
# $$w = M_T \cdot \operatorname{softmax}(H / \tau), \qquad \tfrac{1}{M_T}\textstyle\sum_c w_c = 1,$$
#
# where the temperature $\tau$ (bits) decides how sharply the weight concentrates on the top channels.
#
# **How it fits the whole.** 01 teacher → **02 channel entropy** → 03 distillation uses exactly these
# weights → 04 RD analysis.

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
from feds_lab.checkpoint import load_model, read_record
from feds_lab.data import eval_images

lmbda = cfg.lambdas[len(cfg.lambdas) // 2]            # the middle of the ladder
ckpt = cfg.teacher_model(lmbda)                       # the zoo's, or notebook 01's (at once)
teacher = load_model(ckpt)
budget = read_record(ckpt).get("budget", {})
images = eval_images(cfg.data, "all")[: cfg.entropy_images]
print(f"teacher λ={lmbda:g}, {budget.get('steps')} steps; {len(images)} images: {[n for n, _ in images]}")

# %% [markdown]
# ## Entropy of every channel on every image
#
# Each row is a latent channel, each column an image; colour is $H_c$ in bits per element. Rows are sorted
# by mean entropy. A few bright rows and many dark ones is the pattern FEDS relies on.

# %%
from feds_lab import plots
from feds_lab.analysis import entropy_matrix, latent_view

views = [latent_view(teacher, name, x) for name, x in images]
H = entropy_matrix(views)                                  # (M, images), bits per element
fig = plots.entropy_heatmap(H, [v.name for v in views], title=f"Teacher channel entropy (λ={lmbda:g}; {cfg.budget_label('teacher')})")
plots.save_figure(fig, layout.figure("channel_entropy_heatmap.png"))
fig

# %%
fig = plots.sorted_entropy(H.mean(1), title="Channels sorted by mean entropy")
plots.save_figure(fig, layout.figure("channel_entropy_sorted.png"))
fig

# %% [markdown]
# ## The distillation weights at several temperatures
#
# Small $\tau$: nearly all weight on the few most informative channels. Large $\tau$: nearly uniform. The
# `linear` option ($w \propto H$) sits in between; `uniform` is the ablation without entropy weighting.

# %%
fig = plots.channel_weights_by_tau(H.mean(1), taus=(0.25, 0.5, 1.0, 2.0, 4.0))
plots.save_figure(fig, layout.figure("channel_weights.png"))
fig

# %% [markdown]
# ## What the most and least informative channels are worth
#
# Zero the $k$ most (or least) informative channels *before entropy coding*, code for real, and measure:
# bpp comes from the bytes, PSNR from the decoded image.

# %%
import pandas as pd
from feds_lab.analysis import channel_ablation_table

k = max(1, H.shape[0] // 8)
ablation = pd.DataFrame(channel_ablation_table(teacher, views, k=k))
ablation.to_csv(layout.figure("channel_ablation.csv"), index=False)
fig = plots.channel_ablation_bars(ablation, title=f"Zeroing the {k} most / least informative channels (real coding)")
plots.save_figure(fig, layout.figure("channel_ablation.png"))
display(ablation.groupby("variant")[["bpp", "psnr"]].mean().round(3))
fig

# %% [markdown]
# ## Explore: pick a channel and an image
#
# The explorer shows the chosen channel's latent map, its entropy, the reconstruction, and the
# reconstruction **without** that channel. (Run headless, this cell does nothing visible; the figures
# above are saved either way.)

# %%
from feds_lab.widgets import ChannelExplorer

explorer = ChannelExplorer(teacher, images[:4])
explorer.widget

# %% [markdown]
# ## Things to try
#
# - **Temperature** (`train={"tau": 0.5}` in notebook 03): look at how many channels get a weight above 1 here.
# - **Another λ**: change `lmbda` above; at higher rates more channels carry bits.
# - **Longer training** (`teacher_steps`): a barely trained teacher spreads entropy evenly; see whether the
#   heatmap grows a few bright rows as it learns.
# - In the explorer: find a channel whose removal costs the most PSNR; is it also the highest-entropy one?
