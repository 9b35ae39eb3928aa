"""The teacher zoo: long-trained teacher ladders shipped inside the package, as CompressAI ships its.

Every distillation result needs a teacher that is ahead of the student trained alone; a teacher
trained for a few hundred steps is not. The zoo holds teachers trained tens of times longer, once,
and kept::

    feds_lab/zoo/
      manifest.json                          one entry per file: name, family, preset, role, lambda,
                                             sha256, and the training record (steps, data, schedule,
                                             validation PSNR/bpp, the commit that trained it, and the
                                             curve of the long run a fine-tune's chain starts from)
      cnn-tiny-teacher-l0.025.safetensors    float16 parameters (half the size; measured cost below
                                             0.1 % in rate), read back as float32

Loading checks the file's sha256 against the manifest before a byte of it is used: a changed,
truncated or missing file is refused with one line. Nothing is ever downloaded::

    from feds_lab.zoo import load, ladder
    teacher = load("cnn", "tiny", 0.025)              # verified, loaded, ready to code
    for lmbda, path in ladder("cnn", "tiny").items(): ...

``feds-lab zoo list | info NAME | remove NAME | train ...`` (:mod:`feds_lab.zoo.cli`) lists, describes and re-creates
it: :mod:`feds_lab.zoo.train` trains the first lambda long and fine-tunes the others from a neighbour.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from ..errors import CheckpointError, one_line

ZOO_DIR = Path(__file__).resolve().parent
MANIFEST = "manifest.json"
#: record fields kept in the manifest entry only (not in the file's own record)
MANIFEST_ONLY = ("source_curve",)
MANIFEST_FORMAT = "feds-lab-zoo/1"
#: the fields every manifest entry has
_ENTRY_FIELDS = {"name": str, "file": str, "sha256": str, "family": str, "preset": str, "role": str,
                 "lmbda": float, "bytes": int, "record": dict}


if TYPE_CHECKING:
    import torch


class ZooError(CheckpointError):
    """A zoo file is missing, changed or not in the manifest; or the zoo has no such model."""


def zoo_name(family: str, preset: str, role: str, lmbda: float) -> str:
    return f"{family}-{preset}-{role}-l{lmbda:g}"


def manifest(zoo_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The manifest, checked for shape (an empty zoo has ``{"models": []}``)."""
    path = Path(zoo_dir or ZOO_DIR) / MANIFEST
    if not path.is_file():
        return {"format": MANIFEST_FORMAT, "models": []}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ZooError(f"the zoo manifest {path} is unreadable ({one_line(e)})") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("models"), list):
        raise ZooError(f"the zoo manifest {path} is not a {MANIFEST_FORMAT} manifest")
    for entry in data["models"]:
        bad = [k for k, t in _ENTRY_FIELDS.items() if not isinstance(entry.get(k), t if t is not float else (int, float))]
        if bad or "/" in entry["file"] or entry["file"].startswith("."):
            raise ZooError(f"the zoo manifest {path} has a malformed entry ({', '.join(bad) or 'file name'})")
    return data


def entries(zoo_dir: str | os.PathLike | None = None, family: str | None = None, preset: str | None = None,
            role: str = "teacher") -> list[dict[str, Any]]:
    """Manifest entries, filtered, in lambda order."""
    out = [e for e in manifest(zoo_dir)["models"]
           if (family is None or e["family"] == family) and (preset is None or e["preset"] == preset)
           and e["role"] == role]
    return sorted(out, key=lambda e: (e["family"], e["preset"], e["lmbda"]))


def find(family: str, preset: str, lmbda: float, role: str = "teacher",
         zoo_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    for e in entries(zoo_dir, family, preset, role):
        if math.isclose(e["lmbda"], lmbda, rel_tol=1e-6):
            return e
    have = ", ".join(f"{e['lmbda']:g}" for e in entries(zoo_dir, family, preset, role)) or "none"
    raise ZooError(f"the zoo has no {family} {preset} {role} at lambda {lmbda:g} (it has: {have}); "
                   "`feds-lab zoo list` shows them all")


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verified_path(entry: dict[str, Any], zoo_dir: str | os.PathLike | None = None) -> Path:
    """The entry's file, after its size and sha256 matched the manifest's."""
    path = Path(zoo_dir or ZOO_DIR) / entry["file"]
    if not path.is_file():
        raise ZooError(f"zoo file {path.name} is missing (the package is incomplete; reinstall it, or "
                       "`feds-lab zoo train` re-creates it)")
    size = path.stat().st_size
    if size != entry["bytes"] or sha256(path) != entry["sha256"]:
        raise ZooError(f"zoo file {path.name} does not match its manifest ({size} bytes, sha256 differs): "
                       "it was changed or truncated; refusing to load it")
    return path


def load(family: str, preset: str, lmbda: float, role: str = "teacher",
         device: str | torch.device = "cpu", zoo_dir: str | os.PathLike | None = None) -> torch.nn.Module:
    """The zoo's model, verified, loaded and ready to code (eval mode)."""
    from ..checkpoint import load_model

    return load_model(verified_path(find(family, preset, lmbda, role, zoo_dir), zoo_dir), device=device)


def install(family: str, preset: str, lmbda: float, run_dir: str | os.PathLike, role: str = "teacher",
            zoo_dir: str | os.PathLike | None = None) -> Path:
    """Put the zoo's model into a run folder as ``model.safetensors`` (verified first; copied only when
    the folder holds other bytes), so that a pipeline finds a zoo teacher where it finds a trained one."""
    from ..io import atomic_write

    entry = find(family, preset, lmbda, role, zoo_dir)
    src = verified_path(entry, zoo_dir)
    dst = Path(run_dir) / "model.safetensors"
    if not (dst.is_file() and dst.stat().st_size == entry["bytes"] and sha256(dst) == entry["sha256"]):
        dst.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(dst, src.read_bytes())
    return dst


def budget_text(entry: dict[str, Any]) -> str:
    """How a zoo model was trained, in a few words: "20,000 steps", "5,000 steps fine-tuned from λ 0.013
    (20,000 steps)", or along a chain: "... from λ 0.0018, itself from 0.0035, itself from 0.013 (20,000 steps)"."""
    steps = (entry["record"].get("budget") or {}).get("steps")
    text = f"{steps:,} steps" if isinstance(steps, int) else "steps unknown"
    sources = chain(entry)  # below the ladder's end a chain: 0.0009 <- 0.0018 <- 0.0035 <- 0.013
    if sources:
        text += " fine-tuned from λ " + ", itself from ".join(f"{x:g}" for x in sources)
        text += f" ({(entry['record'].get('zoo') or {}).get('steps', 0):,} steps)"
    return text


def source_of(entry: dict[str, Any]) -> float | None:
    """The lambda a zoo model was fine-tuned from, by its record's ladder plan (as
    :meth:`feds_lab.zoo.train.LadderPlan.source` chose it); None for a long one or without a plan."""
    plan = entry["record"].get("zoo") or {}
    sources = {float(k): float(v) for k, v in (plan.get("sources") or {}).items()}  # JSON keys are strings
    return source_in(entry["lmbda"], [float(x) for x in plan.get("long") or []], sources)


def source_in(lmbda: float, long: Sequence[float], sources: dict[float, float] | None = None) -> float | None:
    """The lambda a fine-tuned ``lmbda`` starts from: its entry of ``sources`` (a chain beyond the
    ladder's end), else the nearest long lambda; None for a long one (or none given)."""
    if long and any(math.isclose(lmbda, x) for x in long):
        return None
    for k, v in (sources or {}).items():
        if math.isclose(float(k), lmbda):
            return float(v)
    return nearest_long(lmbda, long)


def nearest_long(lmbda: float, long: Sequence[float]) -> float | None:
    """The long lambda (log distance) a fine-tuned ``lmbda`` starts from; None for a long one (or none given)."""
    if not long or any(math.isclose(lmbda, x) for x in long):
        return None
    return min(long, key=lambda x: abs(math.log(x / lmbda)))


def ladder(family: str = "cnn", preset: str = "tiny", role: str = "teacher",
           zoo_dir: str | os.PathLike | None = None) -> dict[float, Path]:
    """{lambda: verified file} of a family's ladder at a preset (empty when the zoo has none)."""
    return {e["lmbda"]: verified_path(e, zoo_dir) for e in entries(zoo_dir, family, preset, role)}


def publish(checkpoint: str | os.PathLike, zoo_dir: str | os.PathLike | None = None,
            extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Add a trained checkpoint to the zoo: float16 storage, its record (plus ``extra``, e.g. the data's
    sources and the commit), the manifest entry with size and sha256. Replaces an entry of the same name."""
    from ..checkpoint import load_model, read_record, save_model

    zoo_dir = Path(zoo_dir or ZOO_DIR)
    model = load_model(checkpoint)
    record = {**read_record(checkpoint), **(extra or {})}
    for key in ("format", "package_version", "model", "fingerprint", "storage"):
        record.pop(key, None)
    metrics = Path(checkpoint).parent / "metrics.jsonl"  # the run's validation curve, shipped in the record
    if metrics.is_file() and "val_curve" not in record:
        record["val_curve"] = val_curve(metrics)
    record = _portable(record)
    cfg = model.config
    name = zoo_name(cfg["family"], cfg["preset"], cfg["role"], float(record["lmbda"]))
    # the long run's curve is its chain's, the same for every fine-tune of it: the manifest holds it
    file_record = {k: v for k, v in record.items() if k not in MANIFEST_ONLY}
    path = save_model(model, zoo_dir / f"{name}.safetensors", file_record, storage="float16")
    entry = {"name": name, "file": path.name, "sha256": sha256(path), "bytes": path.stat().st_size,
             "family": cfg["family"], "preset": cfg["preset"], "role": cfg["role"], "lmbda": float(record["lmbda"]),
             "record": {k: record.get(k) for k in ("budget", "val", "val_curve", "source_curve", "zoo", "commit")
                        if k in record}}
    from ..io import atomic_write

    with _manifest_lock(zoo_dir):  # two ladders trained side by side publish into one manifest
        data = manifest(zoo_dir)
        data["models"] = [e for e in data["models"] if e["name"] != name] + [entry]
        data["models"].sort(key=lambda e: (e["family"], e["preset"], e["role"], e["lmbda"]))
        atomic_write(zoo_dir / MANIFEST, _manifest_bytes(data))
    return entry


def _manifest_bytes(data: dict[str, Any]) -> bytes:
    """The manifest as written: one entry per line, no padding (a diff shows the entry that changed; the
    zoo's size counts against the repository's)."""
    lines = [json.dumps(e, sort_keys=True, separators=(",", ":")) for e in data["models"]]
    rest = json.dumps({k: v for k, v in data.items() if k != "models"}, sort_keys=True, separators=(",", ":"))
    return (rest[:-1] + (',' if rest != "{}" else '') + '"models":[\n' + ",\n".join(lines) + "\n]}\n").encode()


def remove(name: str, zoo_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Take a model out of a zoo folder: its manifest entry, then its file. Returns the entry."""
    from ..io import atomic_write

    zoo_dir = Path(zoo_dir or ZOO_DIR)
    with _manifest_lock(zoo_dir):
        data = manifest(zoo_dir)
        gone = [e for e in data["models"] if e["name"] == name]
        if not gone:
            raise ZooError(f"no zoo model named {name!r}; `feds-lab zoo list` shows them")
        data["models"] = [e for e in data["models"] if e["name"] != name]
        atomic_write(zoo_dir / MANIFEST, _manifest_bytes(data))
        (zoo_dir / gone[0]["file"]).unlink(missing_ok=True)
    return gone[0]


def val_curve(metrics: str | os.PathLike) -> list[list[float]]:
    """[[step, PSNR dB, bpp], ...]: a run's validation points, from its ``metrics.jsonl``."""
    curve = []
    for line in Path(metrics).read_text().splitlines():
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if m.get("kind") == "val" and "psnr" in m:
            curve.append([int(m["step"]), round(float(m["psnr"]), 4), round(float(m["bpp"]), 5)])
    return curve


def chain(entry: dict[str, Any]) -> list[float]:
    """The lambdas a zoo model was fine-tuned from, nearest first, ending at a long one ([] for a long one)."""
    plan = entry["record"].get("zoo") or {}
    sources = {float(k): float(v) for k, v in (plan.get("sources") or {}).items()}  # JSON keys are strings
    return chain_in(entry["lmbda"], [float(x) for x in plan.get("long") or []], sources)


def chain_in(lmbda: float, long: Sequence[float], sources: dict[float, float] | None = None) -> list[float]:
    """:func:`source_in` followed to a long lambda: the lambdas ``lmbda`` is fine-tuned from, nearest first."""
    out, src = [], source_in(lmbda, long, sources)
    while src is not None and len(out) < 16:  # a plan's check() refuses circles; a record is not trusted to
        out.append(src)
        src = source_in(src, long, sources)
    return out


def _portable(value: Any) -> Any:
    """The record without the training machine's absolute paths: a run's model file becomes
    ``<run>/model.safetensors`` (the run it came from, e.g. the source of a fine-tuned lambda),
    any other path its last part (the data folder's name; its files and sources are in ``data``)."""
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value) and "\n" not in value:
        path = Path(value)
        return f"{path.parent.name}/{path.name}" if path.suffix == ".safetensors" else path.name
    return value


@contextmanager
def _manifest_lock(zoo_dir: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: one publisher at a time is the user's business
        yield
        return
    with open(zoo_dir / ".manifest.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
