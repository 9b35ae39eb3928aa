"""CPU thread defaults that survive a busy machine (issue 17).

On a shared machine torch's defaults fall apart: its OpenMP threads spin-wait at every barrier
(``OMP_WAIT_POLICY=ACTIVE`` is libgomp's behaviour in practice), and it starts one thread per core
whether or not another process is using that core, so each parallel region waits for the thread
whose core is taken. Measured by ``benchmarks/busy_machine.py`` (tiny demo training step, one busy
background process, two cores): see the README's "Busy machines" section.

What :func:`configure_threads` sets, unless the user already did (each is only a default):

- ``OMP_WAIT_POLICY=PASSIVE``: waiting threads sleep instead of spinning. Read by libgomp when it
  loads, i.e. when torch is imported: so this must run before ``import torch`` (``feds_lab/__init__.py``
  calls it first thing, and the pipeline passes it on to its notebook kernels' environment).
- ``OMP_NUM_THREADS`` = :func:`free_cores`: the cores of this process's affinity mask that are idle
  right now (sampled from ``/proc/stat`` over a tenth of a second), divided among the processes of a
  ``torchrun`` job on this node (``LOCAL_WORLD_SIZE``), at least 1. When torch is already imported,
  ``torch.set_num_threads`` gets the same number.

The ``threads`` settings (``TrainConfig.threads``, ``PipelineConfig.threads``) still win over this
default; ``OMP_NUM_THREADS`` or ``FEDS_LAB_THREADS`` set by hand win too (``FEDS_LAB_THREADS=auto``
forces the automatic choice, ``FEDS_LAB_THREADS=torch`` leaves torch's own default alone).
"""

from __future__ import annotations

import os
import sys
import time

#: set to "1" in the environment when OMP_NUM_THREADS was chosen here (not by the user): a child
#: process (a notebook kernel) then chooses again from the load it sees, instead of inheriting it
AUTO_MARK = "FEDS_LAB_THREADS_AUTO"
#: user override: a number, "auto" or "torch"
OVERRIDE = "FEDS_LAB_THREADS"

#: a core counts as free when at least this share of it was idle during the sample
FREE_SHARE = 0.7


def _cpu_times() -> dict[int, tuple[int, int]]:
    """{cpu: (busy jiffies, total jiffies)} from /proc/stat (Linux); {} elsewhere."""
    out = {}
    try:
        with open("/proc/stat") as f:
            for line in f:
                if not line.startswith("cpu") or line.startswith("cpu "):
                    continue
                name, *fields = line.split()
                values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
                idle = values[3] + values[4]
                out[int(name[3:])] = (sum(values) - idle, sum(values))
    except (OSError, ValueError):
        return {}
    return out


def allowed_cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def free_cores(sample_s: float = 0.1) -> int:
    """How many of this process's allowed cores were idle (at least ``FREE_SHARE``) over ``sample_s``.

    Our own process sleeps during the sample, so what is counted as busy is other processes' work.
    Without /proc/stat (not Linux) the load average stands in; at least 1.
    """
    cores = allowed_cores()
    before = _cpu_times()
    if before:
        time.sleep(sample_s)
        after = _cpu_times()
        busy = 0.0
        for c in cores:
            if c in before and c in after:
                d_busy, d_total = after[c][0] - before[c][0], after[c][1] - before[c][1]
                busy += d_busy / d_total if d_total > 0 else 0.0
    else:
        try:
            busy = os.getloadavg()[0]
        except (AttributeError, OSError):
            busy = 0.0
    return max(1, min(len(cores), int(len(cores) - busy + (1 - FREE_SHARE))))


def default_threads(sample_s: float = 0.1, environ: dict | None = None) -> int:
    """The thread count :func:`configure_threads` picks: free cores, shared among a torchrun job's
    processes on this node (``LOCAL_WORLD_SIZE`` of ``environ``, default ``os.environ``), at least 1."""
    env = os.environ if environ is None else environ
    try:
        local = max(1, int(env.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(1, free_cores(sample_s) // local)


def configure_threads(environ: dict | None = None, sample_s: float = 0.1) -> int | None:
    """Set the thread defaults above in ``environ`` (default ``os.environ``); return the thread count
    chosen, or None where the user's own setting stands. Cheap (one /proc/stat sample)."""
    env = os.environ if environ is None else environ
    override = env.get(OVERRIDE, "").strip().lower()
    if override == "torch":  # torch's and OpenMP's own defaults, untouched
        return None
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if override and override != "auto":
        try:
            n = max(1, int(override))
        except ValueError:
            print(f"feds-lab: ignoring {OVERRIDE}={override!r} (a number, auto or torch)", file=sys.stderr)
            n = default_threads(sample_s, env)
    elif "OMP_NUM_THREADS" in env and env.get(AUTO_MARK) != "1" and override != "auto":
        return None  # the user's own
    else:
        n = default_threads(sample_s, env)
    env["OMP_NUM_THREADS"] = str(n)
    env[AUTO_MARK] = "1"
    if environ is None and "torch" in sys.modules:  # too late for the environment: tell torch directly
        sys.modules["torch"].set_num_threads(n)
    return n


def kernel_environment(threads: int | None = None) -> dict[str, str]:
    """What a child process (a notebook kernel) should get: passive waiting, and either ``threads``
    or a mark that lets it choose from the load it finds when it starts."""
    env = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    elif "OMP_NUM_THREADS" not in os.environ or os.environ.get(AUTO_MARK) == "1":
        env[AUTO_MARK] = "1"  # the kernel's feds_lab import chooses again
    return env
