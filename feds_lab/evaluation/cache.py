"""Checkpoint evaluations cached by what determines them: rerunning notebook 04 codes no unchanged checkpoint twice.

One entry per (checkpoint, image set, evaluation settings, coding code version), a JSON file
``<folder>/<key>.json``; the key is the sha256 of these parts, which the entry also holds:

- ``checkpoint``: the sha256 of the checkpoint file's bytes (not its path, not its mtime);
- ``images``: each image's name and the sha256 of its pixel tensor (dtype, shape and bytes), in order;
- ``settings``: what else :func:`~feds_lab.evaluation.evaluate.evaluate_model`'s numbers depend on:
  the device (on a GPU its name, the CUDA and cuDNN versions and the math flags), torch's thread
  count (float32 kernels sum in another order on another count: another latent, another rate), the
  CPU's instruction set, the warm-up;
- ``code``: :func:`code_version`, the sha256 of the source of every module that produces the numbers
  (:data:`CODE_MODULES` and every module of ``feds_lab.models``) and the versions of Python, torch,
  compressai, pytorch-msssim, numpy, safetensors and feds-lab; ``family_code``: for a model family
  from outside the package (a plugin), the sources of the package that defines it.

The value: the per-image rows ``evaluate_model`` computed and the model's parameter count. The rows'
encode/decode times are measurements of the run that computed the entry; a results file says which
of its points came from the cache and when they were measured (``meta["evaluation_cache"]``).

A stale entry is never served: an entry is used only when the parts it holds equal the ones computed
now and its checksum holds; a checkpoint that changes while it is hashed and loaded (``os.stat``
before and after, ctime included) is evaluated but not stored; and where a source file above changed
after this process started (the code running may not be the code on disk: a kernel left open while
the code was edited), nothing is read from the cache or written to it, with a note. An entry that
cannot be read, parsed or checked is recomputed, with a one-line note, and rewritten. Entries hold
JSON only. Nothing is ever removed: an entry that no checkpoint matches any more is just not read.

Where (:func:`resolve_cache`): the ``cache`` argument (a folder, ``"off"``, or an :class:`EvalCache`);
else the environment variable ``FEDS_LAB_EVAL_CACHE`` (``off`` or a folder); else the caller's default:
``<runs_dir>/.eval-cache`` for notebook 04 (``PipelineConfig.eval_cache``), off for ``feds-lab eval``
(``--cache``) and for :func:`~feds_lab.evaluation.curves.evaluate_checkpoints` and
:func:`~feds_lab.evaluation.curves.evaluate_curve` called without one.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import pkgutil
import platform
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch

from .. import checkpoint
from ..errors import FedsLabError, one_line
from ..io import atomic_write
from .evaluate import evaluate_model

#: The environment variable: ``off`` or a folder; it wins over a caller's default, not over an argument.
ENV = "FEDS_LAB_EVAL_CACHE"
#: The default folder's name, beside the run folders (``runs/.eval-cache``).
DIRNAME = ".eval-cache"
FORMAT = "feds-lab-eval-cache/1"

#: The modules whose source decides an evaluation's numbers (every module of ``feds_lab.models`` too).
CODE_MODULES = (
    "feds_lab.coding", "feds_lab.bitstream", "feds_lab.entropy_path", "feds_lab.checkpoint", "feds_lab.presets",
    "feds_lab.evaluation.evaluate", "feds_lab.evaluation.metrics", "feds_lab.evaluation.cache",
)
#: The installed distributions whose versions decide them too.
DISTRIBUTIONS = ("torch", "compressai", "pytorch-msssim", "numpy", "safetensors", "feds-lab")

#: The keys every cached row must have (evaluate_model's rows), each a number but ``image``.
_ROW_KEYS = ("image", "height", "width", "bytes", "bpp", "bpp-estimate", "psnr-rgb", "ms-ssim-rgb",
             "encoding_time", "decoding_time")


class _Uncacheable(Exception):
    """This evaluation cannot be keyed safely: it is computed and not stored (the message says why)."""


# --- the key ---------------------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def code_files() -> list[tuple[str, Path]]:
    """(module, source file) of every module :func:`code_version` covers, each imported first (so that the
    code running is the file read now, or one the start-time check catches)."""
    from .. import models

    names = list(CODE_MODULES) + sorted(f"feds_lab.models.{m.name}" for m in pkgutil.iter_modules(models.__path__))
    out = []
    for name in names:
        module = importlib.import_module(name)
        out.append((name, Path(module.__file__)))
    return out


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch.__version__": torch.__version__}
    for dist in DISTRIBUTIONS:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def code_version() -> str:
    """sha256 of the source of every module that produces an evaluation's numbers and of the versions of
    Python and of the packages they run on: another value, another cache key."""
    h = hashlib.sha256()
    for name, path in code_files():
        h.update(f"{name}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\0".encode())
    h.update(json.dumps(_versions(), sort_keys=True).encode())
    return h.hexdigest()


def _family_files(record: dict[str, Any]) -> tuple[str, list[Path]]:
    """The model family's code beyond :func:`code_version`: ("package", []) for the package's own families;
    for a plugin's, the sha256 of its top-level package's sources and those files."""
    from ..models import registry

    family = (record.get("model") or {}).get("family")
    registry._load_families()
    builder = registry._FAMILIES.get(family)
    if builder is None:
        return f"unregistered:{family}", []
    module = getattr(builder, "__module__", "") or ""
    if module == "feds_lab" or module.startswith("feds_lab."):
        return "package", []
    top = sys.modules.get(module.split(".")[0])
    if top is not None and getattr(top, "__path__", None):
        files = sorted(p for folder in top.__path__ for p in Path(folder).rglob("*.py"))
    elif top is not None and getattr(top, "__file__", None):
        files = [Path(top.__file__)]
    else:
        files = []
    if not files:
        raise _Uncacheable(f"model family {family!r} comes from {module}, which has no source file to key on")
    h = hashlib.sha256(module.encode())
    for p in files:
        h.update(f"\0{p.name}\0{hashlib.sha256(p.read_bytes()).hexdigest()}".encode())
    return h.hexdigest(), files


def image_digests(images: Sequence[tuple[str, torch.Tensor]]) -> list[list[str]]:
    """[[name, sha256 of the pixel tensor's dtype, shape and bytes], ...] in order."""
    out = []
    for name, x in images:
        t = x.detach().cpu().contiguous()
        h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        out.append([str(name), h.hexdigest()])
    return out


def evaluation_settings(device: str | torch.device = "cpu", warmup: bool = True) -> dict[str, Any]:
    """What an evaluation's numbers (and times) depend on besides the checkpoint, the images and the code."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    out: dict[str, Any] = {
        "function": "evaluate_model", "device": str(dev), "warmup": bool(warmup), "threads": torch.get_num_threads(),
        "cpu": torch.backends.cpu.get_cpu_capability(), "machine": platform.machine(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "mkldnn": bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled),
    }
    if dev.type == "cuda":
        cudnn = torch.backends.cudnn
        out.update(gpu=torch.cuda.get_device_name(dev), cuda=torch.version.cuda, cudnn=cudnn.version(),
                   cudnn_flags=[cudnn.enabled, cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32],
                   matmul_tf32=torch.backends.cuda.matmul.allow_tf32)
    return out


def _key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _checksum(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _stat(path: Path) -> tuple[int, ...]:
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


# --- the code running is the code on disk ---------------------------------------------------------


def _process_start() -> float | None:
    """When this process started (seconds since the epoch), or None where that cannot be told."""
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:
        pass
    try:  # Linux without psutil
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except Exception:
        return None


def _edited_since_start(files: Iterable[Path]) -> str | None:
    """Why the loaded code may differ from the files (a file changed after the process started), or None."""
    start = _process_start()
    if start is None:
        return "cannot tell when this process started (install psutil), so not whether its code is the code on disk"
    for p in files:
        st = os.stat(p)
        if max(st.st_mtime, st.st_ctime) > start - 2:  # 2 s: the start time is known to about a second
            return f"{p} changed after this process started: the code running may not be that file (restart it)"
    return None


# --- the cache ---------------------------------------------------------------------------------------


@dataclass
class PointResult:
    """One checkpoint coded on every image: what ``evaluate_model`` gave, computed now or cached."""

    path: Path
    rows: list[dict[str, Any]]
    record: dict[str, Any]  #: the checkpoint's record
    params: int  #: the model's parameter count
    cached: bool
    measured: str  #: when the rows (their times included) were measured, ISO 8601


class EvalCache:
    """The evaluation cache in ``folder`` (None: off, every evaluation computed). Counts what it served."""

    def __init__(self, folder: str | os.PathLike | None):
        self.folder = None if folder is None else Path(folder).expanduser()
        self.hits = 0
        self.computed = 0
        self.not_stored = 0
        self._noted: set[str] = set()

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    def __repr__(self) -> str:
        return f"EvalCache({str(self.folder) if self.enabled else 'off'})"

    def _note(self, text: str) -> None:
        if text not in self._noted:
            self._noted.add(text)
            print(f"note: {one_line(text, limit=400)}", file=sys.stderr)

    def points(self, paths: Iterable[str | os.PathLike], images: Sequence[tuple[str, torch.Tensor]],
               device: str | torch.device = "cpu", name: str | None = None, progress: bool = False,
               warmup: bool = True) -> Iterator[PointResult]:
        """Each checkpoint of ``paths`` coded on ``images`` (``evaluate_model``), from the cache where it holds
        the same key, else computed (and stored). A generator: one point at a time."""
        digests = None
        for path in map(Path, paths):
            if self.enabled and digests is None:
                digests = image_digests(images)  # once per call: the images do not change within it
            yield self._point(path, images, digests, device, name, progress, warmup)

    def _parts(self, path: Path, digests, device, warmup) -> tuple[dict[str, Any], tuple[int, ...], dict[str, Any]]:
        before = _stat(path)
        record = checkpoint.read_record(path)
        family, family_files = _family_files(record)
        parts = {"format": FORMAT, "checkpoint": _sha256_file(path), "images": digests,
                 "settings": evaluation_settings(device, warmup), "code": code_version(), "family_code": family}
        # after the sources were read: unchanged since the process started, they are the code it runs
        edited = _edited_since_start([p for _, p in code_files()] + family_files)
        if edited:
            raise _Uncacheable(f"evaluation cache not used: {edited}")
        if _stat(path) != before:
            raise _Uncacheable(f"{path} changed while it was read: evaluated, not cached")
        return parts, before, record

    def _point(self, path: Path, images, digests, device, name, progress, warmup) -> PointResult:
        parts = None
        if self.enabled:
            try:
                parts, before, record = self._parts(path, digests, device, warmup)
            except _Uncacheable as e:
                self._note(str(e))
            except (OSError, FedsLabError):
                pass  # an unreadable checkpoint: load_model below says what is wrong with it
            except Exception as e:  # the cache never stops an evaluation: computed, not stored
                self._note(f"evaluation cache not used for {path} ({type(e).__name__}: {one_line(e, limit=200)})")
        if parts is not None:
            key = _key(parts)
            entry = self._read(key, parts, [n for n, _ in images])
            if entry is not None:
                self.hits += 1
                return PointResult(path, entry["rows"], record, entry["params"], True, entry["measured"])
        model = checkpoint.load_model(path, device=device)
        if parts is not None and _stat(path) != before:
            self._note(f"{path} changed while it was loaded: evaluated, not cached")
            parts = None
        measured = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        ev = evaluate_model(model, images, name=name, progress=progress, warmup=warmup)
        params = int(sum(p.numel() for p in model.parameters()))
        self.computed += 1
        if parts is not None:
            self._write(key, parts, path, ev["rows"], params, measured)
        elif self.enabled:
            self.not_stored += 1
        return PointResult(path, ev["rows"], dict(getattr(model, "checkpoint_record", {}) or {}), params, False,
                           measured)

    def entry_path(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / f"{key}.json"

    def _read(self, key: str, parts: dict[str, Any], names: list[str]) -> dict[str, Any] | None:
        file = self.entry_path(key)
        try:
            entry = json.loads(file.read_bytes())
            problem = _problem(entry, key, parts, names)
        except FileNotFoundError:
            return None
        except Exception as e:  # unreadable, not UTF-8, not JSON, or a value no check expected: never trusted
            problem = f"is unreadable ({type(e).__name__}: {one_line(e, limit=120)})"
        if problem:
            self._note(f"evaluation cache entry {file} {problem}: ignored, recomputed")
            return None
        return entry

    def _write(self, key, parts, path, rows, params, measured) -> None:
        body = {"format": FORMAT, "key": key, "parts": parts, "checkpoint": str(path), "measured": measured,
                "params": params, "rows": rows}
        try:
            text = json.dumps({**body, "checksum": _checksum(body)}, indent=1, sort_keys=True)
            atomic_write(self.entry_path(key), text.encode())
        except (OSError, TypeError, ValueError) as e:
            self.not_stored += 1
            self._note(f"evaluation cache: cannot write {self.entry_path(key)} ({one_line(e, limit=120)}): not cached")

    def summary(self) -> str:
        """One line: how many checkpoint evaluations came from the cache and how many were computed."""
        total = self.hits + self.computed
        if not self.enabled:
            return f"evaluation cache off: {self.computed} checkpoint evaluation(s) computed"
        line = (f"evaluation cache {self.folder}: {self.hits} of {total} checkpoint evaluation(s) from the cache, "
                f"{self.computed} computed")
        if self.not_stored:
            line += f" ({self.not_stored} not stored: see the notes above)"
        if self.hits:
            line += ("; the encode/decode times of cached points are those measured when they were computed "
                     "(dates in each results file's meta['evaluation_cache'])")
        return line

    def meta(self, points: Sequence[PointResult]) -> dict[str, Any]:
        """What a results file says about where its points came from."""
        return {"folder": str(self.folder) if self.enabled else None,
                "from_cache": sum(p.cached for p in points), "computed": sum(not p.cached for p in points),
                "points": [{"checkpoint": str(p.path), "cached": p.cached, "measured": p.measured} for p in points]}


def _problem(entry: Any, key: str, parts: dict[str, Any], names: list[str]) -> str | None:
    """Why a parsed entry cannot be used, or None."""
    if not isinstance(entry, dict) or entry.get("format") != FORMAT:
        return "is not an evaluation cache entry of this version"
    body = {k: v for k, v in entry.items() if k != "checksum"}
    if entry.get("checksum") != _checksum(body):
        return "fails its checksum"
    if entry.get("key") != key or entry.get("parts") != parts:
        return "is filed under another key"
    rows = entry.get("rows")
    if not isinstance(rows, list) or len(rows) != len(names):
        return "has no row per image"
    for row, name in zip(rows, names):
        if not isinstance(row, dict) or row.get("image") != name or any(k not in row for k in _ROW_KEYS):
            return "has a row that is not this image's"
        if any(not isinstance(v, (int, float)) or isinstance(v, bool) for k, v in row.items() if k != "image"):
            return "has a row value that is not a number"
        if any(not math.isfinite(row[k]) for k in ("bytes", "bpp", "encoding_time", "decoding_time")):
            return "has a non-finite rate or time"
    if not isinstance(entry.get("params"), int) or not isinstance(entry.get("measured"), str):
        return "has no parameter count or date"
    return None


def resolve_cache(cache: EvalCache | str | os.PathLike | bool | None = None,
                  default: str | os.PathLike | None = None) -> EvalCache:
    """The cache to use: ``cache`` when given (an :class:`EvalCache`, a folder, ``"off"`` or False), else
    ``FEDS_LAB_EVAL_CACHE`` when set (``off`` or a folder), else ``default`` (a folder, ``"off"``, or None: off)."""
    if isinstance(cache, EvalCache):
        return cache
    if cache is None:
        env = os.environ.get(ENV, "").strip()
        cache = env if env else default
    if cache is None or cache is False or (isinstance(cache, str) and cache.strip().lower() == "off"):
        return EvalCache(None)
    if cache is True or (isinstance(cache, str) and not cache.strip()):
        raise FedsLabError(f"evaluation cache: give a folder or 'off', not {cache!r} (notebook 04's: runs/{DIRNAME})")
    return EvalCache(cache)


__all__ = ["DIRNAME", "ENV", "EvalCache", "PointResult", "code_version", "evaluation_settings", "image_digests",
           "resolve_cache"]
