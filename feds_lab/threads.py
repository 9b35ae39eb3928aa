"""CPU thread defaults that survive a busy machine (cores that other processes share).

On a shared machine torch's defaults fall apart: it starts one thread per core whether or not
another process is using that core, so each parallel region waits for the thread whose core is
taken, and its OpenMP threads spin-wait at every barrier while they wait. Measured by
``benchmarks/busy_machine.py`` (tiny demo training step, two cores; README "Busy machines"): with one
busy process, two threads run 2.5-4x slower per step than alone, whatever the spin (passive waiting,
``GOMP_SPINCOUNT`` 10,000 or 100,000); one thread is as fast busy as alone. On a quiet machine torch's
two spinning threads are 1.4-1.7x faster than one thread, and two *passive* threads are no faster than
one. So the thread count must follow the free cores, and passive waiting only pays where a core is taken.

Nothing here runs on ``import feds_lab``: a program that wants these defaults calls :func:`configure`
(once, before it imports torch). The ``feds-lab`` command does (``feds_lab.cli.main`` and
``feds_lab.training.cli.main``), and so does each notebook kernel of the pipeline
(``PipelineConfig.for_notebook``, the first thing every notebook runs); a library user who imports
feds_lab keeps the process's thread settings as they are unless they call it.

What :func:`configure` (:func:`configure_threads`) sets, unless the user already did (each is only
a default):

- ``OMP_NUM_THREADS`` = :func:`free_cores`: the cores of this process's affinity mask that are idle
  right now (sampled from ``/proc/stat`` over a tenth of a second), divided among the processes of a
  ``torchrun`` job on this node (``LOCAL_WORLD_SIZE``), at least 1. When torch is already imported,
  ``torch.set_num_threads`` gets the same number.
- ``OMP_WAIT_POLICY=PASSIVE`` where some allowed core is taken (a thread that waits sleeps instead of
  spinning on a core another process needs); on a quiet machine OpenMP's own spinning is left alone.
  Read by libgomp when it loads, i.e. when torch is imported: so :func:`configure` must run before
  ``import torch`` to set it (the ``feds-lab`` command calls it first thing; the pipeline's notebook
  kernels choose again). Called later, it still sets torch's thread count, but not the wait policy.
- While a run trains, :class:`ThreadGovernor` (called by the trainer) looks again every few seconds
  and lowers the thread count when another process has started on a core, raising it back (never past
  the count chosen at the start) when the core is free again.

The ``threads`` settings (``TrainConfig.threads``, ``PipelineConfig.threads``) still win over this
default; ``OMP_NUM_THREADS`` or ``FEDS_LAB_THREADS`` set by hand win too (``FEDS_LAB_THREADS=auto``
forces the automatic choice, ``FEDS_LAB_THREADS=torch`` leaves torch's own default alone). Where the
user chose, the governor does nothing.
"""

from __future__ import annotations

import os
import sys
import time

#: the thread count chosen here, in the environment beside OMP_NUM_THREADS (not set by the user): a
#: child process (a notebook kernel) whose OMP_NUM_THREADS still equals it chooses again from the load
#: it sees; one whose OMP_NUM_THREADS was set to something else (by a parent, a test) keeps that
AUTO_MARK = "FEDS_LAB_THREADS_AUTO"
#: set to "1" when OMP_WAIT_POLICY was set here: a child process decides again from the load it sees
WAIT_MARK = "FEDS_LAB_WAIT_AUTO"
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
    if env.get(WAIT_MARK) == "1":  # inherited from a parent that chose it: choose again here
        env.pop("OMP_WAIT_POLICY", None)
        env.pop(WAIT_MARK, None)
    chosen = False
    if override and override != "auto":
        try:
            n = max(1, int(override))
        except ValueError:
            print(f"feds-lab: ignoring {OVERRIDE}={override!r} (a number, auto or torch)", file=sys.stderr)
            n, chosen = default_threads(sample_s, env), True
    elif "OMP_NUM_THREADS" in env and env.get(AUTO_MARK) != env["OMP_NUM_THREADS"] and override != "auto":
        env.pop(AUTO_MARK, None)
        return None  # the user's own
    else:
        n, chosen = default_threads(sample_s, env), True
    if n < len(allowed_cores()) and "OMP_WAIT_POLICY" not in env:  # a core is taken (by others, or our ranks)
        env["OMP_WAIT_POLICY"] = "PASSIVE"
        env[WAIT_MARK] = "1"
    env["OMP_NUM_THREADS"] = str(n)
    if chosen:
        env[AUTO_MARK] = str(n)
    else:
        env.pop(AUTO_MARK, None)  # FEDS_LAB_THREADS=<n>: the user's number
    if environ is None and "torch" in sys.modules:  # too late for the environment: tell torch directly
        sys.modules["torch"].set_num_threads(n)
    return n


_configured: tuple[int | None] | None = None  # (the count chosen,) once configure() has run


def configure(force: bool = False) -> int | None:
    """The thread defaults for this process (:func:`configure_threads` on ``os.environ``), the explicit
    call an entry point makes, before it imports torch. Once per process: a later call returns the
    first call's choice (``force=True`` chooses again). Returns the thread count chosen, or None where
    the user's own setting (``OMP_NUM_THREADS``, ``FEDS_LAB_THREADS=torch``) stands."""
    global _configured
    if _configured is None or force:
        _configured = (configure_threads(),)
    return _configured[0]


def kernel_environment(threads: int | None = None) -> dict[str, str | None]:
    """What a child process (a notebook kernel) should get (None: unset): either ``threads`` (with
    passive waiting when that leaves cores to others) or marks that let it choose from the load it
    finds when it starts (its :func:`configure` call, made by ``PipelineConfig.for_notebook``, chooses
    again). A wait policy the user set stands."""
    users_wait = "OMP_WAIT_POLICY" in os.environ and os.environ.get(WAIT_MARK) != "1"
    env: dict[str, str | None] = {}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), **{AUTO_MARK: None})
        if not users_wait:
            passive = threads < len(allowed_cores())
            env.update(OMP_WAIT_POLICY="PASSIVE" if passive else None, **{WAIT_MARK: "1" if passive else None})
    elif "OMP_NUM_THREADS" not in os.environ or os.environ.get(AUTO_MARK) == os.environ["OMP_NUM_THREADS"]:
        env[AUTO_MARK] = os.environ.get("OMP_NUM_THREADS", "auto")  # the kernel's configure() chooses again
    return env


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class ThreadGovernor:
    """Follows the free cores while a run trains (only where the thread count was chosen here).

    Every ``every`` seconds (:meth:`tick`, once a step) it measures how many allowed cores *other*
    processes used since the last look (all cores' busy time from ``/proc/stat`` minus this process's
    own CPU time) and sets torch's thread count to the cores left, at least 1 and at most the count
    chosen when the run started. Cost: two small file reads every few seconds.
    """

    def __init__(self, every: float = 10.0, log=None, _cpu_times=None, _own=None, _clock=None, _torch=None):
        self.every, self.log = every, log
        self._cpu_times, self._own = _cpu_times or _cpu_times_default, _own or _own_cpu_seconds
        self._clock = _clock or time.monotonic
        if _torch is None:
            import torch as _torch
        self.torch = _torch
        self.ceiling = self.torch.get_num_threads()
        # only where this module chose the count (and torch still runs with it): never against a user's choice
        self.active = (os.environ.get(AUTO_MARK) == str(self.ceiling)
                       and os.environ.get(OVERRIDE, "").strip().lower() in ("", "auto"))
        self.cores = allowed_cores()
        self.tick_hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._last = None

    def _sample(self):
        return self._clock(), self._cpu_times(), self._own()

    def tick(self) -> int | None:
        """Call once a step; returns the new thread count when it changed, else None."""
        if not self.active:
            return None
        now = self._clock()
        if self._last is None:
            self._last = self._sample()
            return None
        if now - self._last[0] < self.every:
            return None
        t1, cpu1, own1 = self._sample()
        t0, cpu0, own0 = self._last
        self._last = (t1, cpu1, own1)
        busy = sum(cpu1[c][0] - cpu0[c][0] for c in self.cores if c in cpu0 and c in cpu1) / self.tick_hz
        wall = t1 - t0
        if wall <= 0 or not cpu0:
            return None
        others = max(0.0, (busy - (own1 - own0)) / wall)  # cores' worth of other processes' work
        n = max(1, min(self.ceiling, int(len(self.cores) - others + (1 - FREE_SHARE))))
        if n == self.torch.get_num_threads():
            return None
        self.torch.set_num_threads(n)
        if self.log:
            self.log(f"threads: {n} (other processes used {others:.1f} of {len(self.cores)} cores)")
        return n


_cpu_times_default = _cpu_times
