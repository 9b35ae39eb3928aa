"""``feds-lab tune``: search the FEDS settings with Optuna, on the rate-distortion plane, on the
validation split only.

One trial is one FEDS student *ladder*: a student per lambda of the pipeline config (each warm-started
from the previous, as the pipeline trains them), trained on ``tune-train`` and coded for real on
``tune-val`` (feds_lab.data: both cut from the training split, so the search never sees the images a
study reports). Its objective is the BD-rate of that curve against the scratch baseline's curve on
the same images (%, lower is better). With several seeds per trial (``--seeds 0,1``) each seed trains
its own FEDS ladder and its own scratch ladder (same seed: same initial weights, crops and noise), and
the objective is the BD-rate of the seed-mean FEDS curve against the seed-mean scratch curve: at short
budgets a student's seed moves its curve by more than the settings do, and one seed ranks that noise
(ours; docs/studies/study-zoo.md). A lower L_RD at one lambda is not a better codec (docs/method.md,
"Distillation at short budgets"): only a curve is. After each lambda the trial reports the mean PSNR
gain at matched rate over the points so far, and Optuna's median pruner stops trials that trail.

::

    teachers, scratch ladder (trained once, found again by every trial and every worker)
        └─► trial: suggest settings ─► train the FEDS ladder ─► val of each model (real bits, tune-val)
                                                   └─► BD-rate vs scratch ─► storage (SQLite by default)

Several workers, one search: start ``feds-lab tune`` again with the same ``--storage`` and study name,
on this machine (each worker one thread) or on another one that sees the same storage: a journal file
on a shared disk (``--storage journal:/shared/feds.journal``) or a database server
(``--storage postgresql://user@host/db``). A killed worker's trial is retried with the same settings
and its training runs resume from their checkpoints (a trial's folder is named by its settings).

The search space (:func:`suggest`) and the fixed choices are ours; see the README's study section for
why the fine-tuning rate is not searched (the scratch baseline must keep the same schedule).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .checkpoint import read_record
from .errors import FedsLabError
from .evaluation.bdrate import BDRateError, bd_rate, psnr_gain_at_matched_rate
from .pipeline_config import PipelineConfig
from .training import MODEL_FILE, train

#: Settings every trial shares (ours): scale-free terms (gradient balancing, output distillation as
#: a share of the distortion term), and no learning-rate drop in stage 3, so that the scratch
#: baseline (one plain one-cycle schedule) is the same for every trial.
FIXED = {"balance": "grad", "output_scale": "distortion", "finetune_lr_factor": 1.0}
BD_UNDEFINED = 100.0  # objective of a trial whose curve has no BD-rate (not monotonic): worse than any real one


class TuneError(FedsLabError):
    """The search cannot run as asked (the message says why)."""


def suggest(trial) -> dict[str, Any]:
    """TrainConfig overrides for one trial (ours). ``form``: ``feds`` (the method's terms: alpha, beta,
    gamma are each term's gradient norm as a share of L_RD's, ``balance="grad"``; the stage split is
    drawn as the fine-tuning share and stage 1's share of the rest) or ``prim`` (beyond FEDS: PRIM's
    latent MSE and reconstruction MSE beside L_RD for the whole run, raw scales, plain weights; its
    paper's best is 0.75 and 0.75 relative to L_RD). ``init`` (beyond FEDS): the student starts from
    the teacher's sliced weights, none, the entropy model alone, or all that fit."""
    form = trial.suggest_categorical("form", list(FORMS))
    if form == "prim":
        values = {"alpha": 0.0, "weighting": "uniform", "latent_norm": "none", "output_scale": "raw",
                  "balance": "none", "ramp": "constant", "clip_mode": "total", "stage_split": [0.0, 1.0, 0.0],
                  "finetune_lr_factor": 1.0,
                  "beta": trial.suggest_float("prim_latent", 0.1, 3.0, log=True),
                  "gamma": trial.suggest_float("prim_recon", 0.1, 3.0, log=True)}
    else:
        norm = trial.suggest_categorical("norm", ["channel", "none"])
        stage3 = trial.suggest_float("stage3", 0.1, 0.4)
        align = trial.suggest_float("align_share", 0.2, 0.6)
        s1 = round(align * (1 - stage3), 3)
        s3 = round(stage3, 3)
        values = {
            **FIXED,
            "feature_norm": norm, "latent_norm": norm,
            "alpha": trial.suggest_float("alpha", 0.01, 1.0, log=True),
            "beta": trial.suggest_float("beta", 0.01, 1.0, log=True),
            "gamma": trial.suggest_float("gamma", 0.01, 1.0, log=True),
            "tau": trial.suggest_float("tau", 0.5, 8.0, log=True),
            "ramp": trial.suggest_categorical("ramp", ["constant", "cosine"]),
            "clip_mode": trial.suggest_categorical("clip_mode", ["total", "separate"]),
            "stage_split": [s1, round(1 - s1 - s3, 3), s3],
        }
        # aligning the analysis features (and the latent) pulls the student toward the teacher's rate;
        # aligning the synthesis alone asks for a better decoder at the student's own rate (ours)
        if trial.suggest_categorical("taps", ["all", "synthesis"]) == "synthesis":
            values["taps"] = list(SYNTHESIS_TAPS)
    init = trial.suggest_categorical("init", list(INITS))
    if init != "none":
        values.update(init_from_teacher=True, init_scope=init)
    return values


FORMS = ("feds", "prim")
INITS = ("none", "entropy", "all")


SYNTHESIS_TAPS = ("gs1", "gs2", "gs3")


#: A first trial at a sensible prior (ours), so that the search starts from it rather than from noise.
PRIOR = {"form": "feds", "norm": "channel", "stage3": 0.3, "align_share": 0.4, "alpha": 0.1, "beta": 0.1,
         "gamma": 0.1, "tau": 2.0, "ramp": "cosine", "clip_mode": "separate", "taps": "all", "init": "none"}
#: every parameter a trial may hold (the FEDS form's and the PRIM form's)
SEARCH_PARAMETERS = frozenset(PRIOR) | {"prim_latent", "prim_recon"}


# --- the curves ------------------------------------------------------------------------------------
def val_point(checkpoint: Path) -> tuple[float, float]:
    """(bpp, PSNR) of a finished run on its validation split, from the record its trainer wrote."""
    val = read_record(checkpoint).get("val") or {}
    if "bpp" not in val:
        raise TuneError(f"{checkpoint}: its record has no validation result (val_every=0?)")
    return float(val["bpp"]), float(val["psnr"])


def seed_mean(curves: list[list]) -> list[tuple[float, float]]:
    """[(bpp, PSNR)] per lambda, averaged over seeds (each curve one seed's points, lambda by lambda)."""
    arr = np.asarray(curves, dtype=float)  # seeds x lambdas x 2
    return [(float(b), float(q)) for b, q in arr.mean(axis=0)]


# --- the search ------------------------------------------------------------------------------------
class Search:
    """One search over one pipeline config's FEDS students (the config's teachers, data, budget)."""

    def __init__(self, pipeline_config: PipelineConfig, storage: str | None = None, study_name: str | None = None,
                 seeds: list[int] | tuple[int, ...] | None = None):
        pcfg = pipeline_config.resolved()
        #: every trial's seeds (the config's own seed by default); the first is the config's layout
        self.seeds = [int(s) for s in (seeds if seeds is not None else [pcfg.seed])]
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise TuneError(f"seeds must be distinct non-negative integers, got {list(seeds or [])}")
        extra = sorted({s for s in self.seeds if s != pcfg.seed} - set(pcfg.seeds.get("scratch", [])))
        if extra:  # each further seed's scratch ladder is the pipeline's own ``scratch_s<seed>`` variant
            pcfg = pcfg.updated({"seeds": {**pcfg.seeds, "scratch": sorted([*pcfg.seeds.get("scratch", []), *extra])}})
        self.pcfg = pcfg
        if len(self.pcfg.lambdas) < 4:
            raise TuneError(f"a search needs four lambdas or more (a BD-rate needs four points), got {self.pcfg.lambdas}")
        # each trial is the config's FEDS variant (``reference``) with the trial's settings on top
        self.base = self.pcfg.reference
        if "scratch" not in self.pcfg.variants:
            raise TuneError("the pipeline config needs a 'scratch' variant (the curve every trial is measured against)")
        self.root = self.pcfg.layout.tune
        self.root.mkdir(parents=True, exist_ok=True)
        self.storage_url = storage or f"sqlite:///{(self.root / 'optuna.db').resolve()}"
        default = f"{self.pcfg.name}-feds" + ("" if self.seeds == [self.pcfg.seed] else
                                               "-seeds" + "-".join(map(str, self.seeds)))
        self.study_name = study_name or default

    # --- storage and study ----------------------------------------------------------------------
    def storage(self):
        import optuna

        if self.storage_url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(self.storage_url.removeprefix("journal:")))
        # heartbeats let a later worker find a killed worker's trial and retry it with the same settings
        return optuna.storages.RDBStorage(
            self.storage_url, heartbeat_interval=60, grace_period=180,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2))

    def study(self, seed: int | None = None):
        """The study in the storage (made on first use, with the prior as its first trial). ``seed``:
        the sampler's; leave it None with several workers, or they all draw the same settings."""
        import optuna

        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=6)
        pruner = optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1)
        study = optuna.create_study(storage=self.storage(), study_name=self.study_name, direction="minimize",
                                    sampler=sampler, pruner=pruner, load_if_exists=True)
        # one objective per study: trials measured on other seeds are not comparable
        held = study.user_attrs.get("seeds")
        if held is None and not study.trials:
            study.set_user_attr("seeds", self.seeds)
        elif (held or [self.pcfg.seed]) != self.seeds:
            raise TuneError(f"study {self.study_name!r} measures every trial on seeds {held or [self.pcfg.seed]}, "
                            f"not {self.seeds}: pass the same --seeds, or another --study-name")
        if all(t.state == optuna.trial.TrialState.FAIL for t in study.trials):
            # (again, if every trial so far failed); once, however many workers open a new study
            study.enqueue_trial(PRIOR, skip_if_exists=not study.trials)
        return study

    # --- what every trial compares against -------------------------------------------------------
    def scratch_variant(self, seed: int) -> str:
        """The pipeline's scratch variant of one seed (``scratch``, or ``scratch_s<seed>``)."""
        return "scratch" if seed == self.pcfg.seed else f"scratch_s{seed}"

    def references(self, log=print, wait: bool = False) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Train (or find) the teachers and each seed's scratch ladder; {seed: scratch curve on tune-val}.

        ``wait``: train nothing; wait for another process (a pipeline, another worker) to finish them."""
        for lmbda in self.pcfg.lambdas if not wait else []:  # waiting: each trial waits for its teacher
            self.reference("teacher", lmbda, None, log, wait)
        curves = {}
        for seed in self.seeds:
            pts = [val_point(self.reference("student", l, self.scratch_variant(seed), log, wait))
                   for l in self.pcfg.lambdas]
            curves[seed] = (np.array([p[0] for p in pts]), np.array([p[1] for p in pts]))
        return curves

    def reference(self, role: str, lmbda: float, variant: str | None, log=print, wait: bool = False) -> Path:
        """The finished checkpoint of one teacher or scratch run (trained here unless ``wait``; a zoo
        teacher is the zoo's, verified)."""
        if role == "teacher" and self.pcfg.teacher == "zoo":
            return self.pcfg.teacher_model(lmbda)
        cfg = self._config(role, lmbda, variant, {})
        path = Path(cfg.out) / MODEL_FILE
        if path.exists() or not wait:
            if not path.exists():
                log(f"[tune] training {role if variant is None else variant} lambda {lmbda:g} ...")
            return train(cfg)  # a finished run with this config returns at once
        log(f"[tune] waiting for {path} (trained by another process)")
        while not path.exists():
            time.sleep(20)
        return train(cfg)  # checks that it is the run this config asks for

    def _config(self, role: str, lmbda: float, variant: str | None, overrides: dict[str, Any]):
        cfg = self.pcfg.train_config(role, lmbda, variant)
        values = {"train_split": "tune-train", "progress": False, **overrides}
        if cfg.val_every == 0:
            values["val_every"] = None  # the preset's: every run must validate at its end
        cfg = cfg.updated(values)
        if cfg.train_split != "tune-train":
            raise TuneError("a search trains on tune-train and measures on tune-val; "
                            f"the pipeline config sets train_split={cfg.train_split!r}")
        return cfg

    # --- one trial --------------------------------------------------------------------------------
    def objective(self, trial, scratch, log=print, wait: bool = False) -> float:
        """One trial: a FEDS ladder per seed; the BD-rate (%) of their seed-mean curve against the
        seed-mean scratch curve. ``scratch``: {seed: curve}, or a callable that makes it when first needed."""
        import optuna

        settings = suggest(trial)
        key = hashlib.sha256(json.dumps([self.study_name, settings], sort_keys=True).encode()).hexdigest()[:10]
        folder = self.root / f"trial-{key}"  # named by study and settings: a retried trial resumes its runs
        trial.set_user_attr("folder", str(folder))
        trial.set_user_attr("settings", settings)
        trial.set_user_attr("seeds", self.seeds)
        by_seed: dict[int, list] = {}
        n = len(self.pcfg.lambdas)
        t0 = time.perf_counter()
        for i, seed in enumerate(self.seeds):
            # the config's seed keeps the single-seed layout (l<lambda>), so a one-seed search resumes in it
            base = folder if seed == self.pcfg.seed else folder / f"s{seed}"
            points, previous = by_seed.setdefault(seed, []), None
            for k, lmbda in enumerate(self.pcfg.lambdas):
                over = {**settings, "seed": seed, "out": str(base / f"l{lmbda:g}")}
                if self.pcfg.warm_start_ladder:
                    over["warm_start"] = str(previous) if previous else None
                self.reference("teacher", lmbda, None, log, wait)
                previous = train(self._config("student", lmbda, self.base, over))
                points.append(val_point(previous))
                if callable(scratch):  # the scratch curves, once they exist
                    scratch = scratch()
                trial.set_user_attr("points_by_seed", {str(s): p for s, p in by_seed.items()})
                # pruning: the mean PSNR gain at matched rate of every point so far, each seed against its own scratch
                gains = []
                for s_, pts in by_seed.items():
                    try:
                        gains.append(psnr_gain_at_matched_rate(scratch[s_], pts))
                    except BDRateError as e:  # a scratch curve with no two points on its front
                        log(f"[tune] trial {trial.number} seed {s_}: no matched-rate figure ({e})")
                if not gains:
                    continue
                gain = float(np.mean(gains))
                log(f"[tune] trial {trial.number} seed {seed} lambda {lmbda:g}: {points[-1][1]:.2f} dB at "
                    f"{points[-1][0]:.4f} bpp (mean {gain:+.3f} dB against scratch at matched rate)")
                step = i * n + k
                trial.report(-gain, step)
                trial.set_user_attr("psnr_gain", gain)
                if step < len(self.seeds) * n - 1 and trial.should_prune():
                    raise optuna.TrialPruned()
        trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
        points, value, note = self._against_scratch(by_seed, scratch)
        trial.set_user_attr("points", points)
        if value is None:
            trial.set_user_attr("note", note)
            return BD_UNDEFINED
        return value

    def _against_scratch(self, by_seed: dict[int, list], scratch: dict[int, tuple]) -> tuple[list, float | None, str]:
        """The seed-mean curve of ``by_seed`` ({seed: [(bpp, PSNR)] per lambda}) and its BD-rate (%) against
        the seed-mean scratch curve; None and the reason where no BD-rate exists."""
        points = seed_mean([by_seed[s] for s in self.seeds])
        ref = seed_mean([list(zip(*scratch[s])) for s in self.seeds])
        try:
            value = float(bd_rate([p[0] for p in ref], [p[1] for p in ref], [p[0] for p in points], [p[1] for p in points]))
        except BDRateError as e:
            return points, None, f"no BD-rate: {e}"
        return points, value, ""

    def score(self, variant: str, log=print, wait: bool = False) -> dict[str, Any]:
        """A variant of the pipeline config (e.g. ``init_only``: the teacher's weights, L_RD alone) measured
        as a trial is: its ladder per seed of the search (the config's seed: ``variant``; another seed s:
        ``variant_s<s>``, declared in the config's ``seeds``), trained on tune-train at the search's
        budget in the pipeline's run folders, and the BD-rate (%) of its seed-mean curve against the
        seed-mean scratch curve on tune-val: the search's scale, for a point no trial can reach."""
        scratch = self.references(log, wait)
        by_seed = {}
        for seed in self.seeds:
            name = variant if seed == self.pcfg.seed else f"{variant}_s{seed}"
            if name not in self.pcfg.variant_records():
                raise TuneError(f"--score {variant}: the config has no variant {name!r} (seed {seed}); "
                                f"declare the seed under seeds: {{{variant}: [...]}}")
            by_seed[seed] = [val_point(self.reference("student", lmbda, name, log, wait)) for lmbda in self.pcfg.lambdas]
        points, value, note = self._against_scratch(by_seed, scratch)
        out: dict[str, Any] = {"variant": variant, "seeds": self.seeds, "points": points, "value": value,
                               "points_by_seed": {str(s): p for s, p in by_seed.items()}}
        if note:
            out["note"] = note
        log(f"[tune] {variant} on the search's scale: " + (f"{out['value']:+.2f} % against scratch on tune-val"
                                                           if out["value"] is not None else out["note"]))
        scored = json.loads(self.scored_path.read_text()) if self.scored_path.exists() else {}
        scored[variant] = out
        self.scored_path.write_text(json.dumps(scored, indent=2))
        return out

    @property
    def scored_path(self) -> Path:
        """The variants measured on the search's scale (:meth:`score`), kept beside the study."""
        return self.root / f"scored-{self.study_name}.json"

    def enqueue(self, path: str | Path, log=print) -> int:
        """Queue designed trials (a YAML list of parameter mappings, each a subset of :func:`suggest`'s;
        the rest are drawn): probes chosen to tell the terms apart, run before the sampler's own.
        A point already queued or tried is not queued again, so a restarted worker can pass the same file."""
        points = yaml.safe_load(Path(path).read_text())
        if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
            raise TuneError(f"{path}: expected a YAML list of parameter mappings (name: value)")
        known = SEARCH_PARAMETERS
        for p in points:
            if set(p) - known:
                raise TuneError(f"{path}: unknown search parameter(s) {sorted(set(p) - known)}; known: {sorted(known)}")
        study = self.study()
        before = len(study.trials)
        for p in points:
            study.enqueue_trial(p, skip_if_exists=True)
        added = len(study.trials) - before
        log(f"[tune] {added} designed trial(s) queued from {path} ({len(points) - added} already there)")
        return added

    def run(self, trials: int, log=print, wait: bool = False, seed: int | None = None) -> Any:
        """Run trials until the study holds ``trials`` finished ones (complete or pruned): a second
        call with the same number resumes a search, a larger one extends it. ``wait``: the teachers
        and the scratch ladder are being trained by another process; wait for each when needed."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = self.study(seed)
        curve: list = []

        def scratch():
            if not curve:
                curve.append(self.references(log, wait))
                for s, (rates, quality) in curve[0].items():
                    log(f"[tune] scratch seed {s} on tune-val: "
                        + ", ".join(f"{q:.2f} dB at {r:.4f} bpp" for r, q in zip(rates, quality)))
            return curve[0]

        if not wait:
            scratch()
        while True:
            done = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE,
                                                           optuna.trial.TrialState.PRUNED)]
            if len(done) >= trials:
                break
            study.optimize(lambda t: self.objective(t, curve[0] if curve else scratch, log, wait), n_trials=1,
                           catch=())
        return study


# --- what the search found -------------------------------------------------------------------------
def summary(study) -> dict[str, Any]:
    """Best trial, every trial's settings and value, and parameter importances (when computable)."""
    import optuna

    rows = []
    for t in study.trials:
        rows.append({"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
                     "psnr_gain": t.user_attrs.get("psnr_gain"), "points": t.user_attrs.get("points"),
                     "note": t.user_attrs.get("note", ""), "seconds": t.user_attrs.get("seconds")})
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    out: dict[str, Any] = {"study": study.study_name, "seeds": study.user_attrs.get("seeds"), "trials": rows,
                           "complete": len(complete)}
    if complete:
        best = study.best_trial
        out["best"] = {"number": best.number, "value": best.value, "params": best.params,
                       "settings": best.user_attrs.get("settings")}
    try:
        out["importances"] = dict(optuna.importance.get_param_importances(study)) if len(complete) >= 3 else {}
    except Exception as e:  # importances need variety among finished trials; say so instead
        out["importances"] = {}
        out["importance_note"] = str(e)
    return out


def write_summary(search: Search, study, log=print) -> Path:
    """``tune/summary.json``, ``tune/best.yaml`` (TrainConfig overrides of the best trial) and the
    search's figure; returns the summary's path. Variants measured with ``--score`` join the summary
    (``scored``) and the figure."""
    from .plots import tune_figure  # matplotlib: only when a summary is drawn

    s = summary(study)
    if search.scored_path.exists():
        s["scored"] = json.loads(search.scored_path.read_text())
    path = search.pcfg.layout.tune_summary
    path.write_text(json.dumps(s, indent=2, default=str))
    if "best" in s:
        (search.root / "best.yaml").write_text(yaml.safe_dump(s["best"]["settings"], sort_keys=False))
        log(f"[tune] best: trial {s['best']['number']}, BD-rate {s['best']['value']:+.2f} % against scratch on "
            f"tune-val; settings in {search.root / 'best.yaml'}")
    seeds = s.get("seeds") or [search.pcfg.seed]
    fig = tune_figure(s, title="FEDS search on tune-val" + (f" ({len(seeds)} seeds per trial: seed-mean curves)"
                                                            if len(seeds) > 1 else ""))
    fig.savefig(search.root / "tune_search.png", dpi=120, bbox_inches="tight")
    log(f"[tune] {s['complete']} complete of {len(s['trials'])} trials; summary {path}")
    return path


# --- CLI -------------------------------------------------------------------------------------------
def _cmd_tune(args) -> None:
    cfg = PipelineConfig.from_yaml(args.config) if args.config else PipelineConfig()
    values = {}
    for item in args.set or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise TuneError(f"--set expects key=value, got {item!r}")
        values[key.strip()] = yaml.safe_load(raw)
    cfg = cfg.updated(values)
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()] if args.seeds else None
    search = Search(cfg, storage=args.storage, study_name=args.study_name, seeds=seeds)
    print(f"[tune] study {search.study_name!r} in {search.storage_url}", file=sys.stderr)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if args.enqueue:
        search.enqueue(args.enqueue, log=log)
    study = search.run(args.trials, log=log, wait=args.wait, seed=args.seed) if args.trials else search.study()
    for variant in [v.strip() for v in (args.score or "").split(",") if v.strip()]:
        search.score(variant, log=log, wait=args.wait)
    write_summary(search, study, log=lambda m: print(m, file=sys.stderr))


def add_tune_parser(sub) -> None:
    p = sub.add_parser("tune", help="search the FEDS settings (Optuna) on the validation split, by BD-rate against scratch")
    p.add_argument("--config", help="pipeline YAML whose teachers, data and budget the search uses "
                                    "(e.g. configs/pipelines/study_feds.yaml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any PipelineConfig field (YAML value)")
    p.add_argument("--trials", type=int, default=0,
                   help="run until the study holds this many finished trials (0: only write the summary)")
    p.add_argument("--storage", help="Optuna storage: sqlite:///PATH (default runs/<name>/tune/optuna.db), "
                                     "journal:PATH (a file on a shared disk), or a database URL")
    p.add_argument("--study-name", dest="study_name", help="default: <pipeline name>-feds")
    p.add_argument("--seed", type=int, help="the sampler's seed (default: none, so that workers draw apart)")
    p.add_argument("--seeds", help="training seeds of every trial, comma-separated (default: the config's seed): "
                                   "each trains its own FEDS and scratch ladders; the objective is the BD-rate "
                                   "of the seed-mean curves. Keep one list per study")
    p.add_argument("--enqueue", metavar="YAML",
                   help="queue designed trials first: a list of parameter mappings (e.g. configs/tune/probes.yaml)")
    p.add_argument("--score", metavar="VARIANT[,VARIANT]",
                   help="also measure these variants of the pipeline config as a trial is measured (their ladders "
                        "on the search's seeds, seed-mean BD-rate against scratch on tune-val), e.g. init_only")
    p.add_argument("--wait", action="store_true",
                   help="train no teacher or scratch run: wait for another process (a pipeline, a worker) to finish them")
    p.set_defaults(func=_cmd_tune)
