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
# # 04 · Rate-distortion analysis: is the student as good, and is it faster?
#
# **What this notebook teaches.** Codecs are compared by their **rate-distortion curves**: bpp (from the
# bytes of real bitstreams, never from likelihoods alone) against PSNR or MS-SSIM. One number summarises
# two curves: the **Bjøntegaard delta rate**, the average bitrate difference at equal quality,
#
# $$\text{BD-rate} = \exp\!\Big(\frac{1}{D_{max}-D_{min}}\int_{D_{min}}^{D_{max}} \big(\ln R_{test}(D) - \ln R_{anchor}(D)\big)\,dD\Big) - 1,$$
#
# with $\ln R(D)$ interpolated piecewise-cubically (PCHIP, as the JVET common test conditions do) over
# the overlapping quality range. Negative is better (fewer bits for the same quality). A bootstrap over
# images gives a confidence interval, so that a one-percent gap can be told from noise.
#
# **How it fits the whole.** 01 teacher → 02 channel entropy → 03 distillation → **04 RD analysis**.

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
from feds_lab.data import eval_images
from feds_lab.training import train

teachers = {l: cfg.teacher_model(l) for l in cfg.lambdas}   # the zoo's, or notebook 01's
students = {(v, l): train(cfg.train_config("student", l, variant=v)) for v in cfg.variants for l in cfg.lambdas}
images = eval_images(cfg.eval_data or cfg.data, cfg.eval_split)
print(f"{len(images)} evaluation images: {[n for n, _ in images]}")

# %% [markdown]
# ## Evaluate every model and the classical anchors
#
# Per image: real `compress`/`decompress`, bpp from the bytes (the likelihood estimate beside it), PSNR,
# MS-SSIM, encode and decode times. Results are written in CompressAI's JSON format.
#
# Each checkpoint's evaluation is cached (`runs/.eval-cache/`, `feds_lab.evaluation.cache`) under the sha256
# of the checkpoint's bytes, the images' pixels, the evaluation settings (device, threads) and the source of
# the coding code: rerunning this notebook codes only what changed, and the cell says how many points came
# from the cache. Cached points keep the encode/decode times measured when they were computed (each results
# file's `meta["evaluation_cache"]` says when). `FEDS_LAB_EVAL_CACHE=off` (or `eval_cache: off` in
# pipeline.yaml) turns the cache off; `FEDS_LAB_EVAL_CACHE=<folder>` moves it.

# %%
from feds_lab.evaluation.rd_analysis import analyse_run

results = analyse_run(cfg, teachers, students, images)
results.summary

# %% [markdown]
# ## Rate-distortion curves

# %%
from feds_lab import plots

for metric, fname in (("psnr", "rd_psnr.png"), ("ms-ssim", "rd_ms_ssim.png")):
    fig = plots.rd_curves(results.curve_files(), metric=metric,  # other seeds and budgets: their own figures below
                          title=f"{metric.upper()} vs rate, {len(images)} held-out images ({cfg.budget_label('all')})")
    plots.save_figure(fig, layout.figure(fname))
    display(fig)

# %% [markdown]
# ## BD-rate table
#
# Each row compares a *test* curve with an *anchor* curve on the same images (PSNR; negative = the test
# needs fewer bits). The interval is a 95 % bootstrap over images. Rows that cannot be computed (fewer
# than four points, no overlap, non-monotonic curves) say why instead of giving a number.
#
# The rows: FEDS against its teacher; the scratch student against the teacher (is the teacher worth
# distilling from? at short budgets a small model can learn faster than a big one); FEDS against scratch;
# each ablation against FEDS; every learned codec against JPEG.
#
# A BD figure averages over the quality range **both** curves cover, so read it with its overlap: the
# `coverage` column is the share of the test curve's range compared, and `note` cautions when that is
# under half, or when more than 5 % of the bootstrap resamples had no BD figure (the interval is then
# over the rest). Short-budget models sit below JPEG's usual quality range; a BD-rate over a sliver
# of overlap is a statement about that sliver only.

# %%
bd = results.bd_table
bd.to_csv(layout.bd_rate, index=False)
table, fig = plots.bd_rate_table(bd.to_dict("records"), title="BD-rate (PSNR), 95 % bootstrap interval over images")
plots.save_figure(fig, layout.figure("bd_rate_table.png"))
bd

# %% [markdown]
# ## Against the teacher at matched rate
#
# A BD figure needs both curves to rise with rate; at short budgets a teacher's top λ can come out
# below the one before it (more bits, less quality), and every row against the teacher then says "not
# computable". This table still answers how far each student lies from its teacher: the student's PSNR
# minus the teacher's at the same rate, on the teacher's Pareto front (its dominated points left out),
# interpolated in log-rate, averaged over the student's points inside the front's rate range (none
# extrapolated; `points` of `of` say how many), with a 95 % bootstrap over images. Ours, not the
# paper's measure: positive means the student is ahead of its teacher. A learning curve's budgets
# (`feds@1200` ...) get a row each: how far the teacher is ahead at each student budget.

# %%
gap = results.teacher_gap()
if len(gap):
    gap.to_csv(layout.teacher_gap, index=False)
    display(gap.round(3))

# %% [markdown]
# ## Seeds: does it hold on another draw? (when the run has `seeds`)
#
# At a short budget two students that differ only in their seed (initial weights, crops, quantisation
# noise) can lie further apart than any gap between methods, and the interval over images above knows
# nothing of that. With `seeds` set (e.g. `{feds: [1, 2, 3], scratch: [1, 2, 3]}`) each listed variant is
# trained again on each seed. Circles: one seed against the same seed of scratch (interval over images).
# Diamond: every seed of the variant against every seed of scratch, their mean curves compared, with a
# bootstrap over seeds and images: the figure to quote. `wins` counts the seed pairs below 0.
# A learning curve's budget can have seeds too (`feds@600: [1, 2]` beside `scratch@600: [1, 2]`): it gets
# its own block, against scratch's seeds at that budget. A variant that changes the reference (e.g.
# `rate_matched@600` beside `feds_tuned@600`, both with seeds) gets a second block, against the reference.

# %%
seeds = results.seed_table()
if len(seeds):
    seeds.to_csv(layout.seeds, index=False)
    fig = plots.seed_comparison(seeds, title=f"Seed by seed and pooled, {len(images)} held-out images\n"
                                             f"({cfg.budget_label('student')}; a variant named @N: N steps per λ)")
    plots.save_figure(fig, layout.figure("seeds.png"))
    display(fig)
    display(seeds.round(3))
else:
    print("no seeds in this run (seeds is empty, or scratch has no other seeds)")

# %% [markdown]
# ## Parameters and speed
#
# Parameters of each model and its mean encode/decode time on the evaluation images (this machine, thread
# count recorded in the results files). The paper reports about 63 % fewer parameters and about 73 % less
# coding time for its student; `benchmarks/size_speed.py` measures the `paper` preset's ratios.

# %%
ps = results.params_speed
ps.to_csv(layout.params_speed, index=False)
ps.round(3)

# %% [markdown]
# ## Learning curve: does the gap to scratch move as the student trains longer? (when the run has one)
#
# With `learning_curve` set (e.g. `{feds: [150, 300, 600], scratch: [150, 300, 600, 1200]}`) every listed
# variant is also trained at those budgets. Circles: FEDS against scratch at the same steps per λ.
# Squares: against the scratch ladder whose training took about as long (a FEDS step also runs the
# teacher and the distillation terms); each point names the scratch budget it was matched to. The
# reference variant (`reference`) comes first; every other variant with a curve gets its own colour.
# Red diamonds: a budget that has `seeds` too (e.g. `feds@600: [1, 2]`), every seed pooled as in the
# seed figure above; the circles and squares are one seed each.

# %%
from feds_lab.evaluation.learning_curve import learning_curve_table, pooled_by_budget
from feds_lab.variants import curve_tests

if cfg.learning_curve:  # (the config refuses a curve with nothing to compare)
    curve = learning_curve_table(results, test=curve_tests(cfg.reference, cfg.learning_curve))
    curve.to_csv(layout.learning_curve, index=False)
    fig = plots.learning_curve(curve, title=f"FEDS vs scratch by budget, {len(images)} held-out images "
                                            f"({cfg.preset} preset)",
                               pooled=pooled_by_budget(results, seeds))  # budgets with seeds: pooled too
    plots.save_figure(fig, layout.figure("learning_curve.png"))
    display(fig)
    display(curve.round(3))
else:
    print("no learning curve in this run (learning_curve is empty)")

# %% [markdown]
# ## The search behind the settings (when `feds-lab tune` ran on this run folder)
#
# `feds-lab tune` trains FEDS ladders on the `tune-train` split and measures each trial by its BD-rate
# against the scratch ladder on `tune-val`; the images above (the `val` split, or your `eval_data`) took no
# part in it. Left: each trial's objective and the best so far; middle: PSNR gain at matched rate, pruned
# trials included; right: which settings mattered.

# %%
import json

if layout.tune_summary.exists():
    search = json.loads(layout.tune_summary.read_text())
    fig = plots.tune_figure(search, title=f"FEDS search on tune-val ({cfg.budget_label('student')})")
    plots.save_figure(fig, layout.figure("tune_search.png"))
    display(fig)
    import pandas as pd

    trials = pd.DataFrame([{"trial": t["number"], "state": t["state"], "BD-rate vs scratch (%)": t["value"],
                            "PSNR gain (dB)": t["psnr_gain"], **t["params"]} for t in search["trials"]])
    display(trials.sort_values("BD-rate vs scratch (%)").round(3))
else:
    print(f"no search in this run folder ({layout.tune_summary} is missing)")

# %% [markdown]
# ## Things to try
#
# - **Your own evaluation set** (`eval_data="/path/to/kodak"`, `eval_split="all"`): Kodak's 24 images at
#   768×512 are the paper's main benchmark.
# - **MS-SSIM BD-rates**: `results.bd_table_for("ms-ssim")`.
# - **More λ** (`lambdas`): BD-rate needs four points per curve; more points make the interpolation safer.
# - **The full rate axis**: `plots.rd_curves(results.files, xlim=None)`; by default the plot zooms on the
#   learned codecs when the anchors reach much further.
# - Compare `feds` with `scratch` at a larger budget: at the tiny budget the difference is mostly noise,
#   and the bootstrap interval says so.
