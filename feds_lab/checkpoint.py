"""Model checkpoints: safetensors weights with a small JSON record embedded in the same file.

The record (``role``, ``family``, ``preset``, sizes, ``lmbda``, the training budget, the package
version and the model fingerprint) lives in the safetensors header's metadata, so a checkpoint is
one file that cannot run code when loaded, and a record can be read without loading the weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from . import __version__
from .errors import CheckpointError, CheckpointMismatchError, one_line
from .io import atomic_write_path

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


#: How a checkpoint stores its floating-point weights: as the model holds them, or as float16 (half the
#: size, for weights that ship with the package; read back as float32).
STORAGES = ("float32", "float16")


def save_model(model: torch.nn.Module, path: str | os.PathLike, record: dict[str, Any] | None = None,
               storage: str = "float32") -> Path:
    """Write ``model`` (after ``update()``, so that it can code) and its record, atomically.

    ``storage="float16"`` rounds every float32 parameter (not the buffers) to float16 in the file (the record says so, and
    the loaders read them back as float32) and leaves out the buffers the architecture fixes (the masked
    convolutions' masks: a loader requires them equal to a fresh model's anyway); the fingerprint
    recorded is the one the loaded model has."""
    if storage not in STORAGES:
        raise ValueError(f"unknown storage {storage!r}; known: {list(STORAGES)}")
    path = Path(path)
    model.update(force=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    fp = fingerprint(model)
    if storage == "float16":
        import copy

        params = {k for k, _ in model.named_parameters()}  # buffers (bounds, pedestals, masks) stay exact
        state = {k: v.half() if v.dtype == torch.float32 and k in params else v for k, v in state.items()}
        # the coder's tables are rebuilt from the weights at load: stored empty
        state = {k: v.reshape(-1)[:0].reshape(0, *v.shape[1:]) if _is_table(k) and v.dim() else v
                 for k, v in state.items() if not _is_fixed(k)}
        twin = copy.deepcopy(model)  # what a loader will hold: the float16 weights as float32
        with torch.no_grad():
            own = dict(twin.named_parameters())
            for k, v in state.items():
                if v.dtype == torch.float16:
                    own[k].copy_(v.float())
        twin.update(force=True)
        fp = fingerprint(twin)
    full = {
        "format": FORMAT,
        "package_version": __version__,
        "model": getattr(model, "config", {}),
        "fingerprint": fp,
        **(record or {}),
        "storage": storage,
    }
    meta = {RECORD_KEY: json.dumps(full, default=str)}
    # the umask's mode (not mkstemp's 0600): a checkpoint is meant to be shared
    return atomic_write_path(path, lambda tmp: save_file(state, tmp, metadata=meta))


#: Bounds on what a record may say, checked before anything is built from it.
MAX_RECORD_BYTES = 1 << 20
MAX_SIZE_VALUE = 1 << 14  # any model size (N, M, dims, heads, depths ...) in the record
MAX_TENSORS = 100_000
#: block counts, depths, heads and windows: a record may not ask for thousands of layers
MAX_COUNT_VALUE = 64
_COUNTS = ("res_blocks", "attn_depth", "depths", "attn_heads", "heads", "window")
#: EntropyBottleneck: the longest pmf (symbols per channel) its quantiles may ask ``update()`` for
MAX_PMF_LENGTH = 1 << 14


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON record of a checkpoint, without loading its weights. Only :class:`CheckpointError` leaves it."""
    path = Path(path)
    try:
        return _read_record(path)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {one_line(e)})") from None


def _read_record(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a safetensors checkpoint ({one_line(e)})") from None
    if RECORD_KEY not in meta:
        raise CheckpointError(f"{path} is a safetensors file but not a feds-lab checkpoint (no record)")
    raw = meta[RECORD_KEY]
    if not isinstance(raw, str) or len(raw) > MAX_RECORD_BYTES:
        raise CheckpointError(f"{path}: the checkpoint record is larger than {MAX_RECORD_BYTES} bytes")
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: the checkpoint record is not valid JSON ({one_line(e)})") from None
    if not isinstance(record, dict):
        raise CheckpointError(f"{path}: the checkpoint record is a {type(record).__name__}, not an object")
    fmt = record.get("format")
    if not isinstance(fmt, str) or not fmt.startswith("feds-lab-checkpoint/"):
        raise CheckpointError(f"{path}: unknown checkpoint format {fmt!r}")
    if "model" in record and not isinstance(record["model"], dict):
        raise CheckpointError(f"{path}: the record's 'model' is not an object")
    if "fingerprint" in record and not isinstance(record["fingerprint"], str):
        raise CheckpointError(f"{path}: the record's 'fingerprint' is not a string")
    return record


def _model_spec(path: Path, record: dict[str, Any]) -> tuple[str, str, str, dict[str, Any]]:
    """(role, preset, family, overrides) from a record, every value type-checked and bounded."""
    m = record.get("model") or {}
    if not {"family", "role", "preset"} <= set(m):
        raise CheckpointError(f"{path}: the record does not say which model it holds")
    for key in ("family", "role", "preset"):
        if not isinstance(m[key], str) or not 0 < len(m[key]) <= 64:
            raise CheckpointError(f"{path}: the record's model {key} {str(m[key])[:40]!r} is not a name")
    overrides = m.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise CheckpointError(f"{path}: the record's model overrides are not an object")

    def bounded(key, v, depth=0):
        if isinstance(v, bool) or v is None:
            return
        if isinstance(v, int):
            if not 0 <= v <= MAX_SIZE_VALUE:
                raise CheckpointError(f"{path}: the record's model size {key}={v} is out of range "
                                      f"(0..{MAX_SIZE_VALUE})")
        elif isinstance(v, float):
            if not math.isfinite(v) or abs(v) > MAX_SIZE_VALUE:
                raise CheckpointError(f"{path}: the record's model setting {key}={v} is out of range")
        elif isinstance(v, str):
            if len(v) > 64:
                raise CheckpointError(f"{path}: the record's model setting {key} is too long")
        elif isinstance(v, (list, tuple)) and depth < 2 and len(v) <= 16:
            for x in v:
                bounded(key, x, depth + 1)
        else:
            raise CheckpointError(f"{path}: the record's model setting {key} is not a size ({type(v).__name__})")

    for key, v in overrides.items():
        bounded(key, v)
        if key in _COUNTS and any(isinstance(x, int) and x > MAX_COUNT_VALUE for x in (v if isinstance(v, (list, tuple)) else [v])):
            raise CheckpointError(f"{path}: the record's {key}={v} is out of range (at most {MAX_COUNT_VALUE})")
    for key in ("N", "M", "dims", "depths", "heads", "hyper_channels", "window", "attn_depth", "attn_heads"):
        if key in m:
            bounded(key, m[key])
    return m["role"], m["preset"], m["family"], dict(overrides)


def _storage(path: Path, record: dict[str, Any]) -> str:
    storage = record.get("storage", "float32")
    if storage not in STORAGES:
        raise CheckpointError(f"{path}: unknown weight storage {storage!r} in the record (known: {list(STORAGES)})")
    return storage


def _file_layout(path: Path, storage: str = "float32") -> dict[str, tuple[tuple[int, ...], str]]:
    """{name: (shape, dtype)} of every tensor in the file, from its header (no weight is read); float16
    weights count as the float32 they are read as where the record says ``storage: float16``."""
    layout = _raw_layout(path)
    if storage == "float16":
        layout = {k: (shape, "F32" if dtype == "F16" else dtype) for k, (shape, dtype) in layout.items()}
    return layout


def _raw_layout(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            if len(keys) > MAX_TENSORS:
                raise CheckpointError(f"{path}: {len(keys)} tensors, more than any model here has")
            out = {}
            for k in keys:
                sl = f.get_slice(k)
                out[k] = (tuple(int(d) for d in sl.get_shape()), str(sl.get_dtype()))
            return out
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"cannot read the weights in {path} ({one_line(e)})") from None


def _read_tensors(path: Path, device: str | torch.device = "cpu", storage: str = "float32") -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # SafetensorError, OSError, ValueError, MemoryError
        raise CheckpointError(f"cannot read the weights in {path} ({one_line(e)})") from None
    if storage == "float16":
        state = {k: v.float() if v.dtype == torch.float16 else v for k, v in state.items()}
    return state


# CompressAI resizes these entropy-coder tables on load: their sizes depend on training, not on the model.
# They are never taken from a file: load_weights rebuilds them from the weights with update(force=True).
_TABLES = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")
_RESIZABLE = _TABLES
_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


def check_compatible(model: torch.nn.Module, state: dict[str, Any], source: str = "checkpoint",
                     storage: str = "float32") -> None:
    """Raise :class:`CheckpointMismatchError` naming every missing, unexpected or mis-shaped tensor
    (float16 storage may leave out the buffers the architecture fixes).

    ``state`` maps names to tensors, or to ``(shape, dtype)`` pairs read from a file's header (then
    nothing has been loaded yet); ``model`` may live on the ``meta`` device (then nothing has been
    allocated yet). Dtypes must match too (a float weight stored as integers is refused).
    """
    own = model.state_dict()

    def shape_dtype(v):
        if isinstance(v, torch.Tensor):
            return tuple(v.shape), v.dtype
        shape, dtype = v
        return tuple(shape), _SAFETENSORS_DTYPES.get(str(dtype), str(dtype))

    missing = sorted(k for k in set(own) - set(state) if not (storage == "float16" and _is_fixed(k)))
    unexpected = sorted(set(state) - set(own))
    shapes, dtypes = [], []
    for k in own:
        if k not in state:
            continue
        shape, dtype = shape_dtype(state[k])
        if not k.endswith(_RESIZABLE) and shape != tuple(own[k].shape):
            shapes.append(f"{k}: checkpoint {shape} vs model {tuple(own[k].shape)}")
        if dtype != own[k].dtype:
            dtypes.append(f"{k}: checkpoint {dtype} vs model {own[k].dtype}")
    if missing or unexpected or shapes or dtypes:
        lines = []
        if shapes:
            lines.append(f"{len(shapes)} tensor(s) differ in shape, e.g. " + "; ".join(shapes[:3]))
        if dtypes:
            lines.append(f"{len(dtypes)} tensor(s) differ in dtype, e.g. " + "; ".join(dtypes[:3]))
        if missing:
            lines.append(f"{len(missing)} tensor(s) missing from the checkpoint, e.g. {', '.join(missing[:3])}")
        if unexpected:
            lines.append(f"{len(unexpected)} unexpected tensor(s) in the checkpoint, e.g. {', '.join(unexpected[:3])}")
        cfg = getattr(model, "config", {})
        desc = f"{cfg.get('family', '?')}/{cfg.get('role', '?')}/{cfg.get('preset', '?')}"
        raise CheckpointMismatchError(f"the {source} does not fit this model ({desc}): " + "; ".join(lines))


def _is_table(name: str) -> bool:
    return name.endswith(_TABLES)


# Buffers the architecture fixes (a masked convolution's mask: 0.46 MB of float32 in a tiny teacher).
# The float16 storage leaves them out; every loader takes a freshly built model's (check_weights
# requires a stored one to be equal to it anyway).
_FIXED = ("context_prediction.mask",)


def _is_fixed(name: str) -> bool:
    return name.endswith(_FIXED)


def check_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Every floating-point weight finite; every constant buffer (masks, bounds ...) equal to a fresh
    model's; the entropy bottlenecks' quantiles ordered and within MAX_PMF_LENGTH. ``model`` is a
    freshly built model of the right sizes (not yet loaded)."""
    params = {k for k, _ in model.named_parameters()}
    own = model.state_dict()
    bad = [k for k, v in state.items() if v.is_floating_point() and not _is_table(k) and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"the {source} holds non-finite weights ({len(bad)} tensor(s), e.g. {', '.join(bad[:3])})")
    changed = [k for k, v in state.items() if k not in params and not _is_table(k) and k in own
               and own[k].device.type != "meta" and not torch.equal(v.to(own[k].device), own[k])]
    if changed:
        raise CheckpointError(f"the {source} changes constant buffers of the model ({', '.join(changed[:3])})")
    for k, v in state.items():
        if k.endswith("quantiles") and v.dim() == 3 and v.shape[-1] == 3:
            q = v.double()
            lo, med, hi = q[..., 0], q[..., 1], q[..., 2]
            if bool((lo > med).any()) or bool((med > hi).any()):
                raise CheckpointError(f"the {source}'s {k} are not ordered (lower <= median <= upper)")
            length = torch.ceil(med - lo).clamp(min=0) + torch.ceil(hi - med).clamp(min=0) + 1
            if float(length.max()) > MAX_PMF_LENGTH:
                raise CheckpointError(f"the {source}'s {k} ask for {float(length.max()):.0f} symbols per channel "
                                      f"(at most {MAX_PMF_LENGTH})")


def check_coder_tables(model: torch.nn.Module, source: str = "model") -> None:
    """The invariants CompressAI's C++ rANS coder relies on, for every entropy model's tables:
    ``_quantized_cdf`` 2-D int32, each row 0, strictly increasing up to 1 << precision over its
    ``_cdf_length`` (>= 3) entries; ``_offset`` and ``_cdf_length`` one int32 per row; bounded offsets."""
    from compressai.entropy_models import EntropyModel

    for name, m in model.named_modules():
        if not isinstance(m, EntropyModel):
            continue
        cdf, length, offset = m._quantized_cdf, m._cdf_length, m._offset
        where = f"{source}: entropy model {name or '(root)'}"
        if cdf.dim() != 2 or cdf.dtype != torch.int32 or cdf.shape[0] == 0 or cdf.shape[1] < 3:
            raise CheckpointError(f"{where}: CDF table of shape {tuple(cdf.shape)} and dtype {cdf.dtype}")
        if length.shape != (cdf.shape[0],) or offset.shape != (cdf.shape[0],) or length.dtype != torch.int32 \
                or offset.dtype != torch.int32:
            raise CheckpointError(f"{where}: CDF lengths/offsets do not match the table")
        if bool((length < 3).any()) or bool((length > cdf.shape[1]).any()):
            raise CheckpointError(f"{where}: CDF lengths outside 3..{cdf.shape[1]}")
        if bool((offset.abs() > MAX_PMF_LENGTH * 4).any()):
            raise CheckpointError(f"{where}: absurd CDF offsets")
        top = 1 << m.entropy_coder_precision
        cols = torch.arange(cdf.shape[1], device=cdf.device)[None, :]
        valid = cols < length[:, None].long()
        last = cdf.gather(1, (length.long() - 1)[:, None])[:, 0]
        steps = cdf[:, 1:] - cdf[:, :-1]
        step_valid = valid[:, 1:]
        if bool((cdf[:, 0] != 0).any()) or bool((last != top).any()) or bool((steps[step_valid] <= 0).any()):
            raise CheckpointError(f"{where}: a CDF row does not rise strictly from 0 to {top}")


def _rebuild_tables(model: torch.nn.Module, source: str) -> None:
    """Entropy-coder tables from the weights (never from a file), then checked."""
    try:
        model.update(force=True)
    except Exception as e:
        raise CheckpointError(f"the {source}: cannot build the entropy coder's tables ({one_line(e)})") from None
    check_coder_tables(model, source)


def load_weights(model: torch.nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint's weights into an existing model; returns the record.

    Checked before any weight is read: the tensors' names, shapes and dtypes (from the file's
    header) against the model. Then: every weight finite, constant buffers unchanged, quantiles sane.
    The entropy coder's tables in the file are ignored and rebuilt from the weights.
    """
    path = Path(path)
    record = read_record(path)
    m = record.get("model", {})
    source = (f"checkpoint {path.name} ({m.get('family')}/{m.get('role')}/{m.get('preset')}, "
              f"N={m.get('N', m.get('dims'))}, M={m.get('M')})")
    storage = _storage(path, record)
    check_compatible(model, _file_layout(path, storage), source=source, storage=storage)
    state = _read_tensors(path, storage=storage)
    check_compatible(model, state, source=source, storage=storage)  # the same, from the tensors themselves
    check_weights(model, state, source=source)
    own = model.state_dict()
    state.update({k: own[k] for k in own if k not in state})  # the fixed buffers a float16 file leaves out
    for k in state:
        if _is_table(k):  # the model's own (empty or current) tables: rebuilt below
            state[k] = own[k]
    try:
        model.load_state_dict(state)
    except Exception as e:
        raise CheckpointMismatchError(f"the {source} does not load into this model ({one_line(e)})") from None
    _rebuild_tables(model, source)
    return record


class MetaBuild(TorchFunctionMode):
    """Build a model on the ``meta`` device: its shapes and dtypes, no memory. CompressAI's layers
    mix in small CPU constants (GDN's pedestal, the bottleneck's quantiles); those are moved to
    ``meta`` where they meet a meta tensor, and ``param.data = meta`` assignments keep the param's device."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        from torch.utils._device import _device_constructors
        from torch.utils._pytree import tree_map

        kwargs = dict(kwargs or {})
        name = getattr(func, "__name__", "")
        if name.endswith("_") and not name.endswith("__") and args and isinstance(args[0], torch.Tensor) \
                and args[0].device.type == "meta":
            return args[0]  # in-place (initialisation) on a meta tensor: nothing to do, and fast
        if func in _device_constructors() and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
        if getattr(func, "__name__", "") == "__set__" and len(args) == 2 and all(isinstance(a, torch.Tensor) for a in args):
            target, value = args
            if target.device != value.device:  # small: a CPU parameter made by a legacy constructor
                args = (target, torch.zeros(value.shape, dtype=value.dtype, device=target.device))
        elif any(t.device.type == "meta" for t in tensors) and any(t.device.type != "meta" for t in tensors):
            args, kwargs = tree_map(
                lambda t: t.to("meta") if isinstance(t, torch.Tensor) and t.device.type != "meta" else t, (args, kwargs))
        return func(*args, **kwargs)


#: record settings that are sizes or counts: whole numbers (or lists of them), never text
_SIZE_SETTINGS = ("N", "M", "dims", "depths", "heads", "hyper_channels", "res_blocks", "window", "attn_depth",
                  "attn_heads")


def _build_failure(overrides: dict[str, Any], error: Exception) -> str:
    """Why a record's model could not be built, in the user's words: the size settings that are not
    whole numbers (Python's own text, e.g. "not all arguments converted during string formatting",
    says nothing to a user); otherwise the builder's own message."""
    def whole(v, lists: bool):
        if isinstance(v, (list, tuple)):  # one number per stage: the transformer family's dims, depths, heads
            return lists and all(whole(x, False) for x in v)
        return isinstance(v, int) and not isinstance(v, bool)

    bad = [f"{k}={v!r}" for k, v in overrides.items()
           if k in _SIZE_SETTINGS and not whole(v, k in ("dims", "depths", "heads"))]
    if len(bad) == 1:
        return f"the model setting {bad[0]} is not a whole number"
    if bad:
        return f"the model settings {', '.join(bad)} are not whole numbers"
    return one_line(error)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the model a checkpoint describes, load its weights, and make it ready to code.

    The record's sizes are bounded, and the model is first built on the ``meta`` device (no memory)
    and checked against the file's tensor shapes and dtypes: a record cannot ask for more memory than
    its file's weights take. Only :class:`CheckpointError` leaves this function.
    """
    from .models import build_model

    path = Path(path)
    record = read_record(path)
    role, preset, family, overrides = _model_spec(path, record)
    try:
        with MetaBuild():
            skeleton = build_model(role, preset=preset, family=family, **overrides)
    except Exception as e:
        raise CheckpointError(f"{path}: the record describes no model this package builds "
                              f"({_build_failure(overrides, e)})") from None
    storage = _storage(path, record)
    check_compatible(skeleton, _file_layout(path, storage), source=f"checkpoint {path.name}", storage=storage)
    del skeleton
    try:
        model = build_model(role, preset=preset, family=family, **overrides)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot build the model it describes ({_build_failure(overrides, e)})") from None
    load_weights(model, path)
    model.checkpoint_record = record
    return model.to(device).eval()
