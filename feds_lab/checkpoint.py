"""Model checkpoints: safetensors weights with a small JSON record embedded in the same file.

The record (``role``, ``family``, ``preset``, sizes, ``lmbda``, the training budget, the package
version and the model fingerprint) lives in the safetensors header's metadata, so a checkpoint is
one file that cannot run code when loaded, and a record can be read without loading the weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from . import __version__
from .errors import CheckpointError, CheckpointMismatchError

RECORD_KEY = "feds_lab"
FORMAT = "feds-lab-checkpoint/1"


def fingerprint(model: torch.nn.Module) -> str:
    """16 hex digits identifying a model's architecture and every weight, CDF tables included.

    A bitstream records the fingerprint of the model that wrote it, so decoding with another model
    fails cleanly instead of producing noise. Cached per model until a tensor changes in place.
    """
    state = model.state_dict()
    key = tuple((k, v._version, v.data_ptr()) for k, v in state.items())
    cached = getattr(model, "_feds_fingerprint", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    h = hashlib.sha256(json.dumps(getattr(model, "config", {}), sort_keys=True, default=str).encode())
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    fp = h.hexdigest()[:16]
    object.__setattr__(model, "_feds_fingerprint", (key, fp))
    return fp


def save_model(model: torch.nn.Module, path: str | os.PathLike, record: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (after ``update()``, so that it can code) and its record, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.update(force=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    full = {
        "format": FORMAT,
        "package_version": __version__,
        "model": getattr(model, "config", {}),
        "fingerprint": fingerprint(model),
        **(record or {}),
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata={RECORD_KEY: json.dumps(full, default=str)})
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a checkpoint is meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON record of a checkpoint, without loading its weights."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a safetensors checkpoint ({e})") from None
    if RECORD_KEY not in meta:
        raise CheckpointError(f"{path} is a safetensors file but not a feds-lab checkpoint (no record)")
    try:
        record = json.loads(meta[RECORD_KEY])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: the checkpoint record is not valid JSON ({e})") from None
    if not isinstance(record, dict) or not record.get("format", "").startswith("feds-lab-checkpoint/"):
        raise CheckpointError(f"{path}: unknown checkpoint format {record.get('format')!r}")
    return record


def _read_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read the weights in {path} ({e})") from None


# CompressAI resizes these entropy-coder tables on load: their sizes depend on training, not on the model.
_RESIZABLE = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")


def check_compatible(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointMismatchError` naming every missing, unexpected or mis-shaped tensor."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and not k.endswith(_RESIZABLE) and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        lines = []
        if shapes:
            lines.append(f"{len(shapes)} tensor(s) differ in shape, e.g. " + "; ".join(shapes[:3]))
        if missing:
            lines.append(f"{len(missing)} tensor(s) missing from the checkpoint, e.g. {', '.join(missing[:3])}")
        if unexpected:
            lines.append(f"{len(unexpected)} unexpected tensor(s) in the checkpoint, e.g. {', '.join(unexpected[:3])}")
        cfg = getattr(model, "config", {})
        desc = f"{cfg.get('family', '?')}/{cfg.get('role', '?')}/{cfg.get('preset', '?')}"
        raise CheckpointMismatchError(f"the {source} does not fit this model ({desc}): " + "; ".join(lines))


def load_weights(model: torch.nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint's weights into an existing model; returns the record."""
    path = Path(path)
    record = read_record(path)
    state = _read_tensors(path)
    m = record.get("model", {})
    check_compatible(model, state, source=f"checkpoint {path.name} ({m.get('family')}/{m.get('role')}/{m.get('preset')}, "
                     f"N={m.get('N', m.get('dims'))}, M={m.get('M')})")
    model.load_state_dict(state)
    return record


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the model a checkpoint describes, load its weights, and make it ready to code."""
    from .models import build_model

    record = read_record(path)
    m = record.get("model") or {}
    if not {"family", "role", "preset"} <= set(m):
        raise CheckpointError(f"{path}: the record does not say which model it holds")
    model = build_model(m["role"], preset=m["preset"], family=m["family"], **(m.get("overrides") or {}))
    load_weights(model, path)
    model.update(force=False)
    model.checkpoint_record = record
    return model.to(device).eval()
