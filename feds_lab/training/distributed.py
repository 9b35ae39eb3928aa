"""Data-parallel training under ``torchrun``, and the single-process case with the same interface.

``torchrun --nproc_per_node N -m feds_lab.training.cli train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; without them the run is one process. Backend: NCCL on GPUs, gloo on CPU. Rank 0
writes every file and draws the progress bar; the other ranks only compute.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # we initialised the process group, so we tear it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def batch_slice(self, batch_size: int) -> slice:
        """This rank's share of a global batch (ours: every rank draws the same global batch of the step
        and keeps its slice, so N ranks see exactly the data one process would)."""
        if batch_size % self.world_size:
            raise ValueError(f"batch_size {batch_size} does not split evenly over {self.world_size} processes")
        n = batch_size // self.world_size
        return slice(self.rank * n, (self.rank + 1) * n)

    def any(self, *flags: bool) -> list[bool]:
        """Element-wise OR of boolean flags over all ranks (one small all-reduce), so that every rank
        takes the same branch: skipping a step or stopping on one rank alone would hang the others."""
        if not self.active:
            return [bool(f) for f in flags]
        t = torch.tensor([float(f) for f in flags], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def mean(self, values: list[float]) -> list[float]:
        """Element-wise mean of floats over all ranks (one small all-reduce)."""
        if not self.active:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return [v / self.world_size for v in t.tolist()]

    def gather(self, obj):
        """Every rank's ``obj`` as a list indexed by rank (a collective: all ranks must call it)."""
        if not self.active:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: the GPU of this rank if there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' asked for, but torch sees no GPU; use device=cpu or auto")
        return torch.device("cuda", local_rank)
    return torch.device(name)


def setup(device: str = "auto") -> Distributed:
    """Join the process group when launched by torchrun (env ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(device=resolve_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    owns = False
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        owns = True
    return Distributed(rank, world, local_rank, dev, owns)


def teardown(d: Distributed) -> None:
    if d.owns_group and dist.is_initialized():
        dist.destroy_process_group()
