"""The entropy-parameter path, computed the same way by encoder and decoder, and a check that it was.

A learned codec's decoder recomputes every entropy parameter from data it has already decoded: the
hyper-synthesis turns ``z_hat`` into scales (and means), the checkerboard context adds what the
anchors say, and each scale picks one of the coder's CDF tables. The rANS decoder stays in step
only if it picks *exactly* the table the encoder picked. In float32 with several threads it may not:
another thread count sums in another order, a scale on a table boundary falls on the other side,
and the decoder turns the rest of the stream into a wrong image without any error (CompressAI's
known cross-platform failure; Ballé et al., ICLR 2019, "Integer networks for data compression with
latent-variable models", give the principled fix).

Two things here, both ours:

- **The path in float64 on one thread** (``PATH_FLOAT64``, the default): a *coder* is a copy of the
  model in which everything between the analysis ``g_a`` and the synthesis ``g_s`` (hyper-analysis,
  entropy bottleneck, hyper-synthesis, context model, entropy-parameter layers, the scale-to-table
  lookup) runs in float64 on one thread; ``g_a`` and ``g_s`` keep their dtype and threads. On one
  machine that makes the tables chosen independent of the thread count and the process by
  construction; across machines and devices the remaining differences are of the order of 1e-16,
  where float32's are 1e-7, so a table boundary is practically never straddled. It is not the
  integer arithmetic that would make it exact everywhere: what is left is caught by the check.
  ``PATH_FLOAT32`` is the older path (float32, the caller's threads), which files of format 1 used.
- **The check**: the encoder hashes the table index and the integer symbol of every Gaussian
  conditional it codes (:class:`SymbolDigest`); the decoder hashes the indexes it computed and the
  symbols it decoded, and a file whose digest does not come out refuses to decode
  (:class:`~feds_lab.errors.EntropyMismatchError`) instead of giving a wrong image.

The copy is made once per model and weights (cached on the model, keyed by its fingerprint) and
never touches the model it copies.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from typing import Iterator

import torch
import torch.nn as nn
from compressai.entropy_models import EntropyBottleneck, GaussianConditional

from .errors import CodingError

#: How the entropy-parameter path is computed; the number is what a ``.feds`` file records.
PATH_FLOAT32 = 0  #: float32, the caller's threads (format 1: no digest)
PATH_FLOAT64 = 1  #: float64 on one thread (ours, the default)
PATHS = {"float32": PATH_FLOAT32, "float64": PATH_FLOAT64}
DEFAULT_PATH = PATH_FLOAT64

#: Latent values beyond this magnitude (or non-finite ones) are refused: CompressAI's C++ coder
#: loops for ever on the integer a NaN becomes, and no trained codec's latent comes near 2**20.
LATENT_LIMIT = float(1 << 20)

DIGEST_BYTES = 8


def check_latent(t: torch.Tensor, what: str, error: type[Exception] = CodingError) -> None:
    t = t.detach()
    if t.numel() and (not bool(torch.isfinite(t).all()) or float(t.abs().max()) > LATENT_LIMIT):
        raise error(f"{what} holds non-finite or absurd values (beyond {LATENT_LIMIT:g}); "
                    "the model's weights are broken or the data is not what it claims")


class SymbolDigest:
    """A running hash of (table indexes, integer symbols), in the order the coder visits them.

    ``mode`` says which side records: the encoder records what it writes (``compress``), the decoder
    what it reads (``decompress``); CompressAI's latent codecs also decode on the encoder's side,
    which must not count twice.
    """

    def __init__(self, mode: str):
        if mode not in ("encode", "decode"):
            raise ValueError(mode)
        self.mode = mode
        self._h = hashlib.blake2b(digest_size=DIGEST_BYTES)

    def add(self, indexes: torch.Tensor, symbols: torch.Tensor) -> None:
        for t in (indexes, symbols):
            self._h.update(t.detach().to("cpu", torch.int32).contiguous().numpy().tobytes())

    def digest(self) -> bytes:
        return self._h.digest()


def _check_inputs(*tensors) -> None:
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            check_latent(t, "the latent this image gives")


class CheckedGaussianConditional(GaussianConditional):
    """CompressAI's Gaussian conditional with its inputs checked before the C++ coder sees them, and
    its indexes and symbols recorded in the active :class:`SymbolDigest` (set by :func:`recording`)."""

    digest: SymbolDigest | None = None

    def compress(self, inputs, indexes, means=None):
        _check_inputs(inputs, means)
        if self.digest is not None and self.digest.mode == "encode":
            self.digest.add(indexes, self.quantize(inputs, "symbols", means))
        return super().compress(inputs, indexes, means)

    def decompress(self, strings, indexes, dtype=torch.float, means=None):
        out = super().decompress(strings, indexes, dtype, means)
        if self.digest is not None and self.digest.mode == "decode":
            self.digest.add(indexes, torch.round(out - means if means is not None else out))
        return out


class CheckedEntropyBottleneck(EntropyBottleneck):
    """CompressAI's entropy bottleneck with its input checked (its tables do not depend on data)."""

    digest: SymbolDigest | None = None

    def compress(self, x):
        _check_inputs(x)
        return super().compress(x)


_CHECKED = {GaussianConditional: CheckedGaussianConditional, EntropyBottleneck: CheckedEntropyBottleneck}


def _transform(model: nn.Module, name: str) -> nn.Module | None:
    own = getattr(model, name, None)
    if isinstance(own, nn.Module):
        return own
    for path, m in model.named_modules():
        if path.endswith("." + name):
            return m
    return None


def _cast_output(dtype):
    return lambda _m, _args, out: out.to(dtype) if isinstance(out, torch.Tensor) else out


def _cast_input(dtype):
    return lambda _m, args: tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                                  for a in args)


def _transforms_on_callers_threads(c: nn.Module, transforms) -> None:
    """The coder runs on one thread (:func:`recording`) except inside the analysis and the synthesis,
    which run on the caller's threads."""
    def enter(*_):
        torch.set_num_threads(c._feds_caller_threads)

    def leave(*_):
        torch.set_num_threads(1)

    for t in transforms:
        t.register_forward_pre_hook(enter)
        t.register_forward_hook(leave)


def coder(model: nn.Module, path: int = DEFAULT_PATH, fp: str | None = None) -> nn.Module:
    """The copy of ``model`` that codes with entropy-parameter path ``path`` (cached on the model).

    ``PATH_FLOAT32`` codes with the model as it is (its entropy models checked and recording);
    ``PATH_FLOAT64`` runs every module outside ``g_a`` and ``g_s`` in float64, on one thread. A
    decoder must use the path the file was written with; :func:`feds_lab.coding.decode` reads it.
    """
    if path not in PATHS.values():
        raise CodingError(f"unknown entropy-parameter path {path}")
    if fp is None:
        from .checkpoint import fingerprint

        fp = fingerprint(model)
    cache = getattr(model, "_feds_coders", None)
    if cache is None or cache[0] != fp:
        cache = (fp, {})
        object.__setattr__(model, "_feds_coders", cache)
    if path in cache[1]:
        return cache[1][path]
    c = copy.deepcopy(model)
    for m in c.modules():
        if type(m) in _CHECKED:
            m.__class__ = _CHECKED[type(m)]
    analysis, synthesis = _transform(c, "g_a"), _transform(c, "g_s")
    if path == PATH_FLOAT64:
        if synthesis is None:
            raise CodingError(f"{type(model).__name__} has no synthesis transform g_s; code it with the float32 path")
        dtype = next(synthesis.parameters()).dtype
        c.double()
        synthesis.to(dtype)
        if analysis is not None:
            analysis.to(dtype)
            analysis.register_forward_hook(_cast_output(torch.float64))
        synthesis.register_forward_pre_hook(_cast_input(dtype))
        _transforms_on_callers_threads(c, [t for t in (analysis, synthesis) if t is not None])
    object.__setattr__(c, "_feds_path", path)
    c.eval()
    cache[1][path] = c
    return c


@contextlib.contextmanager
def recording(c: nn.Module, mode: str) -> Iterator[SymbolDigest]:
    """Record every Gaussian conditional's indexes and symbols while the block runs."""
    d = SymbolDigest(mode)
    models = [m for m in c.modules() if isinstance(m, (CheckedGaussianConditional, CheckedEntropyBottleneck))]
    threads = torch.get_num_threads()
    one_thread = getattr(c, "_feds_path", PATH_FLOAT32) == PATH_FLOAT64
    object.__setattr__(c, "_feds_caller_threads", threads)
    for m in models:
        m.digest = d
    try:
        if one_thread:
            torch.set_num_threads(1)
        yield d
    finally:
        for m in models:
            m.digest = None
        torch.set_num_threads(threads)
