"""The run folder: config, training state, metrics and the final model, written so a crash loses little.

::

    <out>/
      config.yaml         the resolved TrainConfig (written at the start)
      state.pt            latest training state (torch.save; read back with weights_only=True)
      metrics.jsonl       one JSON object per line: {"step", "stage", "kind": "train"|"val", ...}
      model.safetensors   the final model and its record (feds_lab.checkpoint); present = finished

``state.pt`` and ``model.safetensors`` are replaced atomically (temporary file in the same folder,
fsync, ``os.replace``): a kill at any moment leaves either the old file or the new one.
The state holds tensors, dicts, lists, numbers and strings only, so ``torch.load(weights_only=True)``
reads it and a stranger's file cannot run code.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError

CONFIG_FILE = "config.yaml"
STATE_FILE = "state.pt"
METRICS_FILE = "metrics.jsonl"
MODEL_FILE = "model.safetensors"
RUN_FILES = (CONFIG_FILE, STATE_FILE, METRICS_FILE, MODEL_FILE)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give it a normal file's mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_state(state: dict[str, Any], path: Path) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_state(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a training state with ``weights_only=True``; a foreign or damaged file gives a clear error."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle errors, truncated zips, disallowed globals
        raise CheckpointError(
            f"cannot read the training state {path} ({type(e).__name__}: {e}); "
            "start over with --fresh (or resume=False) or choose another run folder"
        ) from None
    if not isinstance(state, dict) or "step" not in state or "model" not in state:
        raise CheckpointError(f"{path} is not a feds-lab training state")
    return state


class MetricsLog:
    """``metrics.jsonl``: append one JSON object per line, flushed at once so a crash keeps what was logged."""

    def __init__(self, path: Path):
        self.path = path

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop records of steps after ``step`` (logged by a run killed after its last checkpoint)."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if _step_of(line) <= step]
        atomic_write_bytes(self.path, "".join(line + "\n" for line in kept).encode())

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def _step_of(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")  # a half-written last line: dropped


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    """All records of a run folder's ``metrics.jsonl`` (for notebooks and plots)."""
    return MetricsLog(Path(run) / METRICS_FILE).read()


def clear_run(out: Path) -> None:
    """Remove the files a run writes (and stale temporary files), nothing else."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for tmp in out.glob(".*.tmp"):
        if any(tmp.name.startswith(f".{name}.") for name in RUN_FILES):
            tmp.unlink(missing_ok=True)
