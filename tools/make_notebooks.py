import nbformat as nbf
from pathlib import Path

KERNEL = {"name": "feds-lab", "display_name": "feds-lab (.venv)", "language": "python"}

PARAMS = '''# Parameters (papermill replaces this cell's values; `feds-lab pipeline` passes the same to all four notebooks)
preset = "tiny"            # paper | small | tiny: model sizes and default budgets (feds_lab/presets.py)
family = "cnn"             # teacher model family: cnn | transformer | compressai:mbt2018-mean ...
student_family = None      # None means the teacher family, another one means cross-family distillation
lambdas = None             # None means the preset lambda ladder
teacher_steps = None       # None means the preset budget
student_steps = None       # all three stages together; the scratch baseline gets the same
data = None                # training images folder; None means scikit-image bundled photographs
eval_data = None           # evaluation images folder  such as Kodak, None means the validation split of data
eval_split = "val"         # val | all
seed = 0
device = "auto"            # auto | cpu | cuda
train = {}                 # TrainConfig overrides for every run, e.g. {"crop": 128, "lr": 1e-3}
variants = {"feds": {}, "scratch": {"baseline": "scratch"}}  # student variants; ablations go here
warm_start_ladder = True  # each lambda starts from the previous lambda model (METHOD.md, short budgets)
anchors = ["jpeg", "webp", "avif", "jpeg2000"]
entropy_images = 8
threads = None             # torch threads here and in training runs that set none; None means all cores, 1 for side-by-side runs
run_dir = "../runs/notebooks"   # where checkpoints, metrics, results and figures go'''

SETUP = '''%matplotlib inline
# (our figures are matplotlib Figure objects, not pyplot's: the inline backend is what shows them)
from feds_lab.pipeline import PipelineConfig

cfg = PipelineConfig.from_parameters(
    run_dir=run_dir, preset=preset, family=family, student_family=student_family, lambdas=lambdas,
    teacher_steps=teacher_steps, student_steps=student_steps, data=data, eval_data=eval_data,
    eval_split=eval_split, seed=seed, device=device, train=train, variants=variants,
    warm_start_ladder=warm_start_ladder, anchors=anchors, entropy_images=entropy_images,
    threads=threads)
layout = cfg.layout
print(f"run folder: {layout.root}\\npreset {cfg.preset}, lambdas {cfg.lambdas}, "
      f"teacher steps {cfg.teacher_steps}, student steps {cfg.student_steps}"
      + (", each lambda warm-started from the previous one" if cfg.warm_start_ladder else ""))'''

BUDGET_NOTE = '''> **About budgets.** The `tiny` preset (the built-in default) trains for a few hundred steps on two CPU
> cores: it shows the machinery, not the method's merit. Learned codecs train for hundreds of thousands
> of steps; every figure here is labelled with the budget that produced it. See `shared/METHOD.md` and
> the README for the `small` study and the `paper` preset on GPUs.'''


def nb(cells):
    n = nbf.v4.new_notebook()
    n.metadata["kernelspec"] = KERNEL
    n.metadata["language_info"] = {"name": "python"}
    out = []
    for kind, src, *tags in cells:
        c = nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src)
        if tags:
            c.metadata["tags"] = tags
        c.id = f"cell-{len(out):02d}"  # stable ids: regenerating changes nothing that did not change
        out.append(c)
    n.cells = out
    return n


NB = {}

NB["01_teacher_training"] = nb([
("md", '''# 01 · Training the teacher

**What this notebook teaches.** A learned image codec is an autoencoder whose latent is quantised and
entropy-coded. It is trained to trade *rate* (bits) against *distortion* (error). FEDS starts from a
large, strong **teacher**; this notebook trains one teacher per rate-distortion trade-off λ.

**How it fits the whole.**
**01 teacher** → 02 channel entropy (what the teacher's latent channels carry) → 03 distillation (FEDS
student and a scratch baseline) → 04 RD analysis (is the student as good, and is it faster?).

**The teacher** (our reading of the paper, see `shared/METHOD.md`): Cheng2020-style residual transforms,
Swin-Transformer-V2 window attention after the x/4, x/8, x/16 stages of the analysis transform $g_a$ and
before the matching stages of the synthesis transform $g_s$, a mean-scale hyperprior with a checkerboard
context, and a wider latent than the student.

**The loss** (CompressAI's convention), for an image $x$ with $N$ pixels and reconstruction $\\hat x$:

$$\\mathcal{L}_{RD} = \\underbrace{\\frac{1}{N}\\sum_i -\\log_2 p(\\hat y_i) - \\frac{1}{N}\\sum_j \\log_2 p(\\hat z_j)}_{R\\ \\text{(bpp)}} \\; + \\; \\lambda \\cdot 255^2 \\cdot \\underbrace{\\operatorname{MSE}(x, \\hat x)}_{D}$$

A larger λ buys quality with bits; one model per λ traces a rate-distortion curve.'''),
("md", BUDGET_NOTE),
("code", PARAMS, "parameters"),
("code", SETUP),
("md", '''## Train one teacher per λ

`feds_lab.training.train` runs the loop (Adam, a separate optimiser for the entropy bottleneck's
quantiles, gradient clipping, validation with real bitstreams). Each run folder holds `config.yaml`,
`metrics.jsonl` and the final `model.safetensors`. A finished run with the same config is not trained
again; an interrupted one resumes from its last checkpoint.'''),
("code", '''from feds_lab.training import train

teachers = {}
for lmbda in cfg.lambdas:
    teachers[lmbda] = train(cfg.train_config("teacher", lmbda))
teachers'''),
("md", '''## Loss and validation curves

Left: the training loss and its two terms (rate in bpp, distortion as MSE). Right: validation on
held-out images with **real bitstreams**: bpp from the bytes the rANS coder wrote, PSNR on 8-bit RGB.'''), ("code", '''from feds_lab import plots

fig = plots.training_curves({f"λ={l:g}": layout.teacher(l) for l in cfg.lambdas},
                            title=f"Teacher training ({cfg.budget_label('teacher')})")
plots.save_figure(fig, layout.figure("teacher_training_curves.png"))
fig'''),
("code", '''import pandas as pd
from feds_lab.checkpoint import read_record

pd.DataFrame([{"λ": l, **{k: read_record(p).get("budget", {}).get(k) for k in ("steps", "batch_size", "crop", "schedule", "lr", "wall_seconds", "device")},
               "parameters": read_record(p).get("parameters")} for l, p in teachers.items()])'''),
("md", '''## Things to try

- **More steps** (`teacher_steps`, or the `small` preset): METHOD.md measured that a hyperprior passes JPEG
  on two CPU cores after about 6,000 steps at 128 px crops. Look for validation PSNR still climbing.
- **Crop size** (`train={"crop": 128}`): at 64 px crops the hyper-latent $z$ is 1×1; watch the rate term.
- **Another family** (`family="transformer"`): a Swin-only codec; compare its curves with the CNN's.
- **MS-SSIM** (`train={"metric": "ms-ssim"}`, needs crops ≥ 192 px): the distortion term changes to $1-\\text{MS-SSIM}$.'''),
])

NB["02_channel_entropy"] = nb([
("md", '''# 02 · Channel entropy: which latent channels carry the image?

**What this notebook teaches.** The teacher's entropy model assigns every quantised latent element
$\\hat y_{c,i}$ a probability $p_T(\\hat y_{c,i})$; its code length is $-\\log_2 p_T$. Averaged over a
channel, that is the channel's **entropy** in bits per element:

$$H_c = -\\frac{1}{B\\,h\\,w}\\sum_{b,i} \\log_2 p_T(\\hat y_{b,c,i}) \\quad [\\text{bits/element}]$$

FEDS argues that high-entropy channels carry most of the information about the image, so the student
should copy them most carefully. The channel weights of the distillation loss (our form; the paper's
body is not available) are

$$w = M_T \\cdot \\operatorname{softmax}(H / \\tau), \\qquad \\tfrac{1}{M_T}\\textstyle\\sum_c w_c = 1,$$

where the temperature $\\tau$ (bits) decides how sharply the weight concentrates on the top channels.

**How it fits the whole.** 01 teacher → **02 channel entropy** → 03 distillation uses exactly these
weights → 04 RD analysis.'''),
("md", BUDGET_NOTE),
("code", PARAMS, "parameters"),
("code", SETUP),
("code", '''from feds_lab.checkpoint import load_model, read_record
from feds_lab.data import eval_images
from feds_lab.training import train

lmbda = cfg.lambdas[len(cfg.lambdas) // 2]            # the middle of the ladder
for l in cfg.lambdas[: cfg.lambdas.index(lmbda) + 1]:  # a warm-started ladder needs its predecessors
    ckpt = train(cfg.train_config("teacher", l))       # returns at once when notebook 01 trained it
teacher = load_model(ckpt)
budget = read_record(ckpt).get("budget", {})
images = eval_images(cfg.data, "all")[: cfg.entropy_images]
print(f"teacher λ={lmbda:g}, {budget.get('steps')} steps; {len(images)} images: {[n for n, _ in images]}")'''),
("md", '''## Entropy of every channel on every image

Each row is a latent channel, each column an image; colour is $H_c$ in bits per element. Rows are sorted
by mean entropy. A few bright rows and many dark ones is the pattern FEDS relies on.'''),
("code", '''from feds_lab import plots
from feds_lab.analysis import entropy_matrix, latent_view

views = [latent_view(teacher, name, x) for name, x in images]
H = entropy_matrix(views)                                  # (M, images), bits per element
fig = plots.entropy_heatmap(H, [v.name for v in views], title=f"Teacher channel entropy (λ={lmbda:g}; {cfg.budget_label('teacher')})")
plots.save_figure(fig, layout.figure("channel_entropy_heatmap.png"))
fig'''),
("code", '''fig = plots.sorted_entropy(H.mean(1), title="Channels sorted by mean entropy")
plots.save_figure(fig, layout.figure("channel_entropy_sorted.png"))
fig'''),
("md", '''## The distillation weights at several temperatures

Small $\\tau$: nearly all weight on the few most informative channels. Large $\\tau$: nearly uniform. The
`linear` option ($w \\propto H$) sits in between; `uniform` is the ablation without entropy weighting.'''),
("code", '''fig = plots.channel_weights_by_tau(H.mean(1), taus=(0.25, 0.5, 1.0, 2.0, 4.0))
plots.save_figure(fig, layout.figure("channel_weights.png"))
fig'''),
("md", '''## What the most and least informative channels are worth

Zero the $k$ most (or least) informative channels *before entropy coding*, code for real, and measure:
bpp comes from the bytes, PSNR from the decoded image.'''),
("code", '''import pandas as pd
from feds_lab.analysis import channel_ablation_table

k = max(1, H.shape[0] // 8)
ablation = pd.DataFrame(channel_ablation_table(teacher, views, k=k))
ablation.to_csv(layout.figure("channel_ablation.csv"), index=False)
fig = plots.channel_ablation_bars(ablation, title=f"Zeroing the {k} most / least informative channels (real coding)")
plots.save_figure(fig, layout.figure("channel_ablation.png"))
display(ablation.groupby("variant")[["bpp", "psnr"]].mean().round(3))
fig'''),
("md", '''## Explore: pick a channel and an image

The explorer shows the chosen channel's latent map, its entropy, the reconstruction, and the
reconstruction **without** that channel. (Run headless, this cell does nothing visible; the figures
above are saved either way.)'''),
("code", '''from feds_lab.widgets import ChannelExplorer

explorer = ChannelExplorer(teacher, images[:4])
explorer.widget'''),
("md", '''## Things to try

- **Temperature** (`train={"tau": 0.5}` in notebook 03): look at how many channels get a weight above 1 here.
- **Another λ**: change `lmbda` above; at higher rates more channels carry bits.
- **Longer training** (`teacher_steps`): a barely trained teacher spreads entropy evenly; see whether the
  heatmap grows a few bright rows as it learns.
- In the explorer: find a channel whose removal costs the most PSNR; is it also the highest-entropy one?'''),
])

NB["03_distillation"] = nb([
("md", '''# 03 · Distillation: FEDS in three stages, and the baseline it must beat

**What this notebook teaches.** A small **student** (narrower, one residual block per stage, no
attention) learns from the frozen teacher in three stages (METHOD.md; split and weights are ours):

1. **Feature alignment**: $\\mathcal{L}_{RD} + \\alpha\\,\\mathcal{L}_{feat}$. For each tapped stage $l$, a 1×1
   adapter $A_l$ lifts the student's feature to the teacher's width, and the error is weighted by the
   teacher's spatial attention $a_T$ (channel mean of $f_T^2$, normalised to mean 1):
   $$\\mathcal{L}_{feat} = \\frac{1}{|L|}\\sum_{l} \\operatorname{mean}\\big(a_T^{(l)} \\odot (A_l(f_S^{(l)}) - f_T^{(l)})^2\\big)$$
2. **Channel-level distillation**: $\\mathcal{L}_{RD} + \\alpha\\,\\mathcal{L}_{feat} + \\beta\\,\\mathcal{L}_{ent}$, with a 1×1
   adapter $P$ from the student's latent to the teacher's and the channel weights $w$ of notebook 02:
   $$\\mathcal{L}_{ent} = \\frac{1}{M_T}\\sum_c w_c \\cdot \\operatorname{mean}\\big((P(y_S)_c - y_{T,c})^2\\big)$$
3. **Fine-tuning**: $\\mathcal{L}_{RD}$ alone at a lower learning rate; the adapters are dropped.

**The baseline.** The same student trained from scratch on $\\mathcal{L}_{RD}$ for the same number of steps.
Without it no claim about distillation can be judged.

**How it fits the whole.** 01 teacher → 02 channel entropy → **03 distillation** → 04 RD analysis.'''),
("md", BUDGET_NOTE),
("code", PARAMS, "parameters"),
("code", SETUP),
("code", '''from feds_lab.training import train

teachers = {l: train(cfg.train_config("teacher", l)) for l in cfg.lambdas}   # at once if notebook 01 ran
students = {}
for variant in cfg.variants:
    for lmbda in cfg.lambdas:
        students[variant, lmbda] = train(cfg.train_config("student", lmbda, variant=variant))
students'''),
("md", '''## Loss curves by stage

The shaded bands are the three stages. A FEDS student's total loss includes the distillation terms in
stages 1-2, so compare the **rate-distortion** term $\\mathcal{L}_{RD}$ (solid) with the scratch baseline's.'''),
("code", '''from feds_lab import plots

fig = plots.stage_curves({f"{v} λ={l:g}": layout.student(v, l) for v in cfg.variants for l in cfg.lambdas},
                         title=f"Student training by stage ({cfg.budget_label('student')})")
plots.save_figure(fig, layout.figure("distillation_curves.png"))
fig'''),
("md", '''## Feature-alignment error by tap

How well the adapted student features match the teacher's, per tapped stage, during stages 1-2.'''),
("code", '''fig = plots.feature_alignment_by_tap({f"λ={l:g}": layout.student("feds", l) for l in cfg.lambdas})
plots.save_figure(fig, layout.figure("feature_alignment_by_tap.png"))
fig'''),
("md", '''## Things to try

- **Ablations** as variants, e.g. `variants={"feds": {}, "scratch": {"baseline": "scratch"},
  "no_align": {"alpha": 0.0}, "uniform": {"weighting": "uniform"}, "no_stage3": {"stage_split": [0.35, 0.65, 0.0]}}`;
  notebook 04 compares every variant.
- **Temperature** `tau` and weighting `linear` / `topk` (no adapter: student channel $j$ copies the
  teacher's $j$-th most informative channel).
- **Cross-family** distillation: `family="transformer", student_family="cnn"`.
- **Longer budgets** (`student_steps`): distillation's benefit, if any, should show as a lower
  $\\mathcal{L}_{RD}$ than the baseline at the same step.'''),
])

NB["04_rd_analysis"] = nb([
("md", '''# 04 · Rate-distortion analysis: is the student as good, and is it faster?

**What this notebook teaches.** Codecs are compared by their **rate-distortion curves**: bpp (from the
bytes of real bitstreams, never from likelihoods alone) against PSNR or MS-SSIM. One number summarises
two curves: the **Bjøntegaard delta rate**, the average bitrate difference at equal quality,

$$\\text{BD-rate} = \\exp\\!\\Big(\\frac{1}{D_{max}-D_{min}}\\int_{D_{min}}^{D_{max}} \\big(\\ln R_{test}(D) - \\ln R_{anchor}(D)\\big)\\,dD\\Big) - 1,$$

with $\\ln R(D)$ interpolated piecewise-cubically (PCHIP, as the JVET common test conditions do) over
the overlapping quality range. Negative is better (fewer bits for the same quality). A bootstrap over
images gives a confidence interval, so that a one-percent gap can be told from noise.

**How it fits the whole.** 01 teacher → 02 channel entropy → 03 distillation → **04 RD analysis**.'''),
("md", BUDGET_NOTE),
("code", PARAMS, "parameters"),
("code", SETUP),
("code", '''from feds_lab.data import eval_images
from feds_lab.training import train

teachers = {l: train(cfg.train_config("teacher", l)) for l in cfg.lambdas}
students = {(v, l): train(cfg.train_config("student", l, variant=v)) for v in cfg.variants for l in cfg.lambdas}
images = eval_images(cfg.eval_data or cfg.data, cfg.eval_split)
print(f"{len(images)} evaluation images: {[n for n, _ in images]}")'''),
("md", '''## Evaluate every model and the classical anchors

Per image: real `compress`/`decompress`, bpp from the bytes (the likelihood estimate beside it), PSNR,
MS-SSIM, encode and decode times. Results are written in CompressAI's JSON format.'''),
("code", ANALYSIS := '''from feds_lab.evaluation.rd_analysis import analyse_run

results = analyse_run(cfg, teachers, students, images)
results.summary'''),
("md", '''## Rate-distortion curves'''),
("code", '''from feds_lab import plots

for metric, fname in (("psnr", "rd_psnr.png"), ("ms-ssim", "rd_ms_ssim.png")):
    fig = plots.rd_curves(results.files, metric=metric,
                          title=f"{metric.upper()} vs rate, {len(images)} held-out images ({cfg.budget_label('all')})")
    plots.save_figure(fig, layout.figure(fname))
    display(fig)'''),
("md", '''## BD-rate table

Each row compares a *test* curve with an *anchor* curve on the same images (PSNR; negative = the test
needs fewer bits). The interval is a 95 % bootstrap over images. Rows that cannot be computed (fewer
than four points, no overlap, non-monotonic curves) say why instead of giving a number.

The rows: FEDS against its teacher; the scratch student against the teacher (is the teacher worth
distilling from? at short budgets a small model can learn faster than a big one); FEDS against scratch;
each ablation against FEDS; every learned codec against JPEG.

A BD figure averages over the quality range **both** curves cover, so read it with its overlap: the
`coverage` column is the share of the test curve's range compared, and `note` cautions when that is
under half, or when more than 5 % of the bootstrap resamples had no BD figure (the interval is then
over the rest). Short-budget models sit below JPEG's usual quality range; a BD-rate over a sliver
of overlap is a statement about that sliver only.'''),
("code", '''bd = results.bd_table
bd.to_csv(layout.results / "bd_rate.csv", index=False)
table, fig = plots.bd_rate_table(bd.to_dict("records"), title="BD-rate (PSNR), 95 % bootstrap interval over images")
plots.save_figure(fig, layout.figure("bd_rate_table.png"))
bd'''),
("md", '''## Parameters and speed

Parameters of each model and its mean encode/decode time on the evaluation images (this machine, thread
count recorded in the results files). The paper reports about 63 % fewer parameters and about 73 % less
coding time for its student; `benchmarks/size_speed.py` measures the `paper` preset's ratios.'''),
("code", '''ps = results.params_speed
ps.to_csv(layout.results / "params_speed.csv", index=False)
ps.round(3)'''),
("md", '''## Things to try

- **Your own evaluation set** (`eval_data="/path/to/kodak"`, `eval_split="all"`): Kodak's 24 images at
  768×512 are the paper's main benchmark.
- **MS-SSIM BD-rates**: `results.bd_table_for("ms-ssim")`.
- **More λ** (`lambdas`): BD-rate needs four points per curve; more points make the interpolation safer.
- **The full rate axis**: `plots.rd_curves(results.files, xlim=None)`; by default the plot zooms on the
  learned codecs when the anchors reach much further.
- Compare `feds` with `scratch` at a larger budget: at the tiny budget the difference is mostly noise,
  and the bootstrap interval says so.'''),
])

out = Path("/work/main/notebooks")
for name, n in NB.items():
    nbf.write(n, out / f"{name}.ipynb")
print("written", list(NB))
