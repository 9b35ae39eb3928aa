"""The run folder: every path and file name of one pipeline run, spelled once.

A run folder ``runs/<name>/`` holds everything one pipeline run made::

    pipeline.yaml            the parameters (one PipelineConfig, resolved): what every notebook reads
    state.json               which notebooks completed, with which parameters (for --resume)
    notebooks/NN_*.ipynb     the executed notebooks (run records)
    teacher/l<λ>/            one training run per lambda: config.yaml, metrics.jsonl, state.pt, model.safetensors
    student/<variant>/l<λ>/  variant "feds", "scratch" (the baseline) and any ablation; a learning curve's
                             budgets and a variant's other seeds by their names (feds_lab.variants)
    results/                 RD results (CompressAI's JSON format): teacher.json, student_<variant>.json,
                             anchors/<codec>.json; the tables bd_rate.csv and params_speed.csv
    figures/                 every figure the notebooks saved
    report/                  standalone HTML of each notebook and index.html (offline, no server)

The pipeline (``feds_lab.pipeline``), the report (``feds_lab.report``), the notebooks and the RD
analysis all find their files through :class:`RunLayout`, and the trainer names the files of one training
run from here too (``CONFIG_FILE`` ...). This module imports nothing heavy, so that ``feds-lab --help``
does not load torch.
"""

from __future__ import annotations

from pathlib import Path

#: The notebooks of a pipeline run, in the order they run (sources: notebooks/NN_name.py).
NOTEBOOKS = ("01_teacher_training", "02_channel_entropy", "03_distillation", "04_rd_analysis")

#: Figures copied to the repository's figures/ folder after a run (from runs/<name>/figures/).
KEY_FIGURES = (
    "teacher_training_curves.png", "teacher_rd.png", "channel_entropy_heatmap.png", "channel_weights.png",
    "distillation_curves.png", "loss_balance.png", "feature_alignment_by_tap.png", "rd_psnr.png", "rd_ms_ssim.png",
    "bd_rate_table.png", "tune_search.png", "learning_curve.png", "seeds.png",
)

LEARNING_CURVE_FILE = "learning_curve.csv"
SEEDS_FILE = "seeds.csv"
TEACHER_GAP_FILE = "teacher_gap.csv"
PIPELINE_FILE = "pipeline.yaml"
RUN_STATE_FILE = "state.json"  # not training's state.pt: which notebooks completed
BD_RATE_FILE = "bd_rate.csv"
PARAMS_SPEED_FILE = "params_speed.csv"
#: Tables copied beside the key figures (from runs/<name>/results/), so that numbers can be checked in git.
KEY_TABLES = ("bd_rate.csv", "params_speed.csv", "learning_curve.csv", "seeds.csv", "teacher_gap.csv")
TEACHER_RESULTS_FILE = "teacher.json"
ANCHORS_DIR = "anchors"
REPORT_INDEX = "index.html"
TUNE_DIR = "tune"  # feds-lab tune: optuna.db, summary.json, best.yaml, tune_search.png, trial-*/
TUNE_SUMMARY_FILE = "summary.json"

# The files of one training run (teacher/l<λ>/, student/<variant>/l<λ>/; feds_lab.training.state writes them)
CONFIG_FILE = "config.yaml"  # the resolved TrainConfig (written at the start)
STATE_FILE = "state.pt"  # the latest training state (torch.save; read back with weights_only=True)
METRICS_FILE = "metrics.jsonl"  # one JSON object per line
MODEL_FILE = "model.safetensors"  # the final model and its record; present = finished


def lambda_folder(lmbda: float) -> str:
    """``l0.0067``: the folder of one lambda's run (``%g``: no trailing zeros)."""
    return f"l{lmbda:g}"


def student_results_name(variant: str) -> str:
    return f"student_{variant}.json"


def anchor_results_name(codec: str) -> str:
    """``jpeg.json`` for the codec named ``JPEG``: one classical anchor's results file, in a run
    folder's ``results/anchors/`` and in the folder ``feds-lab anchors -o DIR`` writes."""
    return f"{codec.lower()}.json"


class RunLayout:
    """Where everything of one run folder lives. Paths only: nothing is created but by :meth:`figure`."""

    def __init__(self, run_dir: str | Path):
        self.root = Path(run_dir)

    # --- records of the run --------------------------------------------------------------------
    @property
    def pipeline_file(self) -> Path:
        return self.root / PIPELINE_FILE

    @property
    def state_file(self) -> Path:
        return self.root / RUN_STATE_FILE

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"

    def notebook(self, name: str) -> Path:
        """The executed copy of notebook ``name`` (e.g. ``01_teacher_training``)."""
        return self.notebooks / f"{name}.ipynb"

    # --- training runs -------------------------------------------------------------------------
    def teacher(self, lmbda: float) -> Path:
        return self.root / "teacher" / lambda_folder(lmbda)

    def student(self, variant: str, lmbda: float) -> Path:
        return self.root / "student" / variant / lambda_folder(lmbda)

    def teacher_model(self, lmbda: float) -> Path:
        """The finished teacher's checkpoint (present once its training completed)."""
        return self.teacher(lmbda) / MODEL_FILE

    def student_model(self, variant: str, lmbda: float) -> Path:
        return self.student(variant, lmbda) / MODEL_FILE

    # --- results -------------------------------------------------------------------------------
    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def bd_rate(self) -> Path:
        """The BD-rate table notebook 04 writes and the report shows."""
        return self.results / BD_RATE_FILE

    @property
    def learning_curve(self) -> Path:
        return self.results / LEARNING_CURVE_FILE

    @property
    def teacher_gap(self) -> Path:
        """Every student against the teacher at matched rate (notebook 04; RDAnalysis.teacher_gap)."""
        return self.results / TEACHER_GAP_FILE

    @property
    def seeds(self) -> Path:
        """The seed table notebook 04 writes (evaluation.seeds: each seed's pair and the pooled figure)."""
        return self.results / SEEDS_FILE

    @property
    def params_speed(self) -> Path:
        return self.results / PARAMS_SPEED_FILE

    @property
    def teacher_results(self) -> Path:
        return self.results / TEACHER_RESULTS_FILE

    def student_results(self, variant: str) -> Path:
        return self.results / student_results_name(variant)

    @property
    def anchors(self) -> Path:
        return self.results / ANCHORS_DIR

    def anchor_results(self, codec: str) -> Path:
        return self.anchors / anchor_results_name(codec)

    # --- the search (feds-lab tune) --------------------------------------------------------------
    @property
    def tune(self) -> Path:
        return self.root / TUNE_DIR

    @property
    def tune_summary(self) -> Path:
        return self.tune / TUNE_SUMMARY_FILE

    # --- figures and report --------------------------------------------------------------------
    @property
    def figures(self) -> Path:
        return self.root / "figures"

    def figure(self, name: str) -> Path:
        """Where a notebook saves figure ``name`` (the folder is made on the way)."""
        self.figures.mkdir(parents=True, exist_ok=True)
        return self.figures / name

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def report_index(self) -> Path:
        return self.report / REPORT_INDEX
