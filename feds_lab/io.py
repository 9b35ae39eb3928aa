"""Writing files safely: the one atomic writer every part of the package uses.

:func:`atomic_write` writes to a temporary file in the destination's folder (named
``.<name>.<random>.tmp``), flushes and fsyncs it, gives it a normal file's mode (``0o666`` less the
user's umask, where :func:`tempfile.mkstemp` would leave ``0o600``), and renames it over the
destination with :func:`os.replace`: a reader, or a kill at any moment, sees the old file or the
whole new one, never a part. A killed writer can leave its temporary file behind;
:func:`stale_temporaries` finds those (``feds_lab.training.state.clean_stale_temporaries`` removes
them on resume).

:func:`check_output` is the rule for command outputs: an output never replaces one of the command's
inputs, and an existing output is replaced only when the user says so (``--force``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

from .errors import OutputError

TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a newly created file gets from ``open()`` under the current umask."""
    return 0o666 & ~_umask()


def atomic_write(path: str | os.PathLike, data: bytes | Callable[[BinaryIO], object], *, fsync: bool = True,
                 mode: int | None = None) -> Path:
    """Write ``data`` (bytes, or a function that writes into a binary file object) to ``path``
    atomically. ``mode`` defaults to :func:`file_mode` (the umask's), never mkstemp's private 0600."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            if isinstance(data, (bytes, bytearray, memoryview)):
                f.write(data)
            else:
                data(f)

    return atomic_write_path(path, write, fsync=fsync, mode=mode)


def atomic_write_path(path: str | os.PathLike, write: Callable[[str], object], *, fsync: bool = True,
                      mode: int | None = None) -> Path:
    """Like :func:`atomic_write`, for writers that want a file name (e.g. safetensors' ``save_file``):
    ``write(tmp_name)`` writes the whole file, which is then fsynced, chmodded and renamed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    except OSError as e:  # an unwritable folder: name the file the user asked for, not our temporary
        if e.errno is None:
            raise
        why = (e.strerror or os.strerror(e.errno)).rstrip(".")
        raise OSError(e.errno, f"cannot write it: {why[:1].lower()}{why[1:]}", str(path)) from e
    os.close(fd)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, file_mode() if mode is None else mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if fsync:
        _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def stale_temporaries(folder: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Temporary files :func:`atomic_write` left in ``folder`` for the files ``names`` (a killed write)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    names = tuple(names)
    return sorted(p for p in folder.glob(f".*{TMP_SUFFIX}")
                  if p.is_file() and not p.is_symlink() and any(p.name.startswith(f".{n}.") for n in names))


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` name the same file (or the same not-yet-existing path)."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.abspath(a) == os.path.abspath(b) or a.resolve() == b.resolve()


def check_output(output: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), force: bool = False) -> Path:
    """Refuse an output that is one of the ``inputs`` (even with ``force``), or that exists without ``force``."""
    output = Path(output)
    for src in inputs:
        if same_file(output, src):
            raise OutputError(f"{output} is the input file {src}; refusing to replace it (choose another -o)")
    if output.is_dir():
        raise OutputError(f"{output} is a folder; give a file name with -o")
    if (output.exists() or output.is_symlink()) and not force:
        raise OutputError(f"{output} exists; use --force (-f) to replace it, or choose another -o")
    return output
