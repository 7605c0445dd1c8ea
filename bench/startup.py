"""Process start-up: the OpenMP wait policy and thread count, decided before torch loads its OpenMP runtime.

torch's OpenMP runtime (libgomp) reads OMP_WAIT_POLICY, GOMP_SPINCOUNT and OMP_NUM_THREADS once, when `import
torch` loads it. By default a thread that waits for the others of a parallel region spins 300,000 times (a few
milliseconds) before it sleeps. When another process holds one of the cores, the thread it waits for is parked
behind that process while the spinning one burns the core it needs: a 2-core run trains 3-10x slower. A bounded
spin count (`SPIN_COUNT`) gives the core back sooner; too small a count (1,000 and below, or the passive policy)
puts threads to sleep between the many small parallel regions of a step and costs a third of the idle speed. The
figures behind the choice are in docs/guides/performance.md ("A shared CPU"), measured with `ferbench bench train
--contention`. The wait policy changes how fast, never what; the thread count changes the last bits of a run's
numbers, so it follows the CPUs a process was given, never the load.

Every FERBench process calls `configure()` before it imports torch: `bench.cli.main` (the CLI, `python -m
bench.train`), submitit jobs and pack members (with the CPUs they were given), the test suite's conftest. Child
processes (DataLoader workers, launcher children) inherit the environment. FERBENCH_OPENMP names the values
FERBench set, so a child decides those again (a SLURM job's own CPUs, a GPU node) while a value the user exported
always wins. A host with a GPU keeps its previous settings: nothing is measured there yet.

Values are checked before anything runs (`check_environment`), against what libgomp 4.5 (torch's) reads: a value it
cannot read (OMP_NUM_THREADS=abc, 0 or -1; GOMP_SPINCOUNT=garbage or a negative number, which it wraps round to an
endless spin; OMP_WAIT_POLICY=sometimes) it ignores with a warning and runs on its defaults, so FERBench refuses it in
one line rather than train on settings nobody asked for. A value it reads but that is then not what runs is kept and
recorded as what is in effect, with the user's text beside it (`in_effect`): torch sets OpenMP's thread count to
MKL's, which caps OMP_NUM_THREADS at the machine's cores (99999 trains with 2 threads on 2 cores). Thread counts
FERBench decides itself (SLURM_CPUS_PER_TASK, a job's share) are capped at the CPUs this process may use.
"""

from __future__ import annotations

import glob
import os
import re
import sys
from pathlib import Path

from bench.errors import FERBenchError

#: GOMP_SPINCOUNT on a CPU host: between libgomp's 300,000 (fast idle, stalls when a core is taken) and
#: 1,000 (robust, a third slower idle); docs/guides/performance.md
SPIN_COUNT = 4_000
#: the variables decided here, all read by libgomp when it is loaded
VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
#: names the values FERBench set ("NAME=VALUE NAME=VALUE"), for child processes to tell them from the user's
MARKER = "FERBENCH_OPENMP"

_in_effect: dict[str, object] | None = None  # what the OpenMP runtime of this process read, once known

# libgomp's grammar (env.c): OMP_NUM_THREADS a list of counts >= 1, one per nesting level (the first is what runs);
# GOMP_SPINCOUNT a count with an optional k/M/G/T multiplier, or infinite/infinity; OMP_WAIT_POLICY active or passive
_THREADS = re.compile(r"\s*\+?([0-9]+)\s*(?:,\s*\+?[0-9]+\s*)*")
_SPINS = re.compile(r"\s*(?:(infinite|infinity)|\+?([0-9]+)\s*([kmgt]?))\s*", re.IGNORECASE)
_MULTIPLIERS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_ULONG_MAX = 2**64 - 1
_EXPECTED = {"OMP_NUM_THREADS": "a whole number of threads >= 1 (or a comma-separated list of them)",
             "OMP_WAIT_POLICY": "active or passive",
             "GOMP_SPINCOUNT": "a whole number >= 0, optionally with k, M, G or T, or infinite"}


def _as_read(name: str, text: str) -> str:
    """`text` of variable `name` as the OpenMP runtime reads it ("10k" -> "10000", " passive" -> "PASSIVE"), or a
    FERBenchError naming the variable and value when it would ignore it (and silently run on its default)."""
    if name == "OMP_NUM_THREADS" and (m := _THREADS.fullmatch(text)):
        counts = [int(c) for c in text.replace("+", "").split(",")]
        if min(counts) >= 1 and max(counts) <= _ULONG_MAX:
            return str(int(m.group(1)))
    elif name == "OMP_WAIT_POLICY" and text.strip().lower() in ("active", "passive"):
        return text.strip().upper()
    elif name == "GOMP_SPINCOUNT" and (m := _SPINS.fullmatch(text)):
        if m.group(1):
            return str(_ULONG_MAX)
        if int(m.group(2)) <= _ULONG_MAX:  # libgomp saturates a multiplied count, as here
            return str(min(int(m.group(2)) * _MULTIPLIERS[m.group(3).lower()], _ULONG_MAX))
    raise FERBenchError(f"{name}={text!r}: expected {_EXPECTED[name]} (torch's OpenMP runtime would not use it as "
                        "written)")


def check_environment() -> None:
    """A FERBenchError (one line naming the variable and its value) for an OpenMP setting the runtime cannot read or
    a SLURM_CPUS_PER_TASK that is no count of CPUs."""
    for name in VARIABLES:
        if name in os.environ:
            _as_read(name, os.environ[name])
    slurm_cpus()


def _ours() -> dict[str, str]:
    """The variables FERBench set (in this process or a parent) and still hold the value it gave them."""
    pairs = (item.partition("=") for item in os.environ.get(MARKER, "").split())
    return {k: v for k, _, v in pairs if k in VARIABLES and os.environ.get(k) == v}


def users_own(name: str) -> bool:
    """Whether `name` is set in the environment by someone other than FERBench (the user, a launcher)."""
    return name in os.environ and name not in _ours()


def openmp_loaded() -> bool:
    """Whether an OpenMP runtime is already loaded here (then it has read its settings)."""
    if "torch" in sys.modules:
        return True
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return False
    return any(lib in maps for lib in ("libgomp", "libiomp", "libomp"))


def gpu_host() -> bool:
    """Whether this process may train on a GPU, asked without importing torch: an NVIDIA or AMD device node,
    unless CUDA_VISIBLE_DEVICES hides every device."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "0").strip() in ("", "-1", "NoDevFiles"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/kfd")


def physical_cores(cpus: set[int], sysfs: Path = Path("/sys/devices/system/cpu")) -> int:
    """How many cores the logical CPUs `cpus` belong to, SMT siblings counted once (torch's own default is one
    thread per core); len(cpus) where the topology cannot be read."""
    cores = set()
    for cpu in cpus:
        try:
            cores.add((sysfs / f"cpu{cpu}" / "topology" / "thread_siblings_list").read_text().strip())
        except OSError:
            return len(cpus)
    return len(cores) or len(cpus)


def usable_cpus() -> int:
    """The logical CPUs this process may run on (its affinity: a container's cpuset, `taskset`, a SLURM job's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform
        return os.cpu_count() or 1


def slurm_cpus() -> int | None:
    """SLURM_CPUS_PER_TASK (None when unset), at most `usable_cpus()`: a larger count would only oversubscribe the
    CPUs there are. Anything but a whole number >= 1 is a FERBenchError naming the variable."""
    text = os.environ.get("SLURM_CPUS_PER_TASK")
    if text is None:
        return None
    if not re.fullmatch(r"\s*[0-9]+\s*", text) or int(text) < 1:
        raise FERBenchError(f"SLURM_CPUS_PER_TASK={text!r}: expected a whole number of CPUs >= 1")
    return min(int(text), usable_cpus())


def allocated_cpus(given: int | None = None) -> int:
    """The threads of a run in this process, the CPUs it was given: SLURM_CPUS_PER_TASK inside a SLURM allocation
    (checked, at most `usable_cpus()`), else `given` (a job's `cpus_per_task`, a pack member's share of its job's),
    else the cores of this process's CPU affinity (a container's cpuset, `taskset`), which torch's own default
    (every core of the machine) ignores.

    One count for every way a run is started (`ferbench run`, a submitit job, a pack and its members): the thread
    count changes the last bits of a run's numbers, so a run must not get other threads for being submitted. Cores,
    SMT siblings counted once (`physical_cores`), as torch counts them: a core's two siblings share its arithmetic
    units. (A job without a count used to take the affinity's logical CPUs, twice the cores on an SMT host; no caller
    reaches that branch: sweeps give cpus_per_task, default 1, and packs give each member its share.)

    Measured on the reference machine (nproc 2 = 2 cores, 1 thread per core), before and after alike: 2 (the job's
    logical count and `default_threads()`'s cores), 1 under `taskset -c 0` or with SLURM_CPUS_PER_TASK=1, a given 3
    returned as 3 (`configure` caps it at `usable_cpus()`). On a 4-CPU, 2-core SMT topology: 4 logical, 2 cores."""
    n = slurm_cpus()
    if n is not None:
        return n
    if given:
        return given
    try:
        return physical_cores(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform
        return os.cpu_count() or 1


def default_threads() -> int:
    """The threads a run uses when nothing gives it a count: `allocated_cpus()`."""
    return allocated_cpus()


def configure(threads: int | None = None) -> dict[str, object]:
    """Set OMP_NUM_THREADS and the wait policy for this process and its children, unless the user set them.

    `threads`: the CPUs this process was given (a job's or a pack member's share); by default `default_threads()`
    on a CPU host and, on a GPU host, torch's own choice as before; at most `usable_cpus()`. torch's thread count
    follows when torch is already loaded (an in-process job). Returns what is in effect (`in_effect()`). An OpenMP
    variable or SLURM_CPUS_PER_TASK that cannot be read is a FERBenchError, raised before anything is set.
    """
    global _in_effect
    check_environment()
    gpu = gpu_host()
    ours = _ours()
    for name in ours:  # decided again below: a parent's choice may not fit here (fewer CPUs, a GPU)
        del os.environ[name]
    set_here: dict[str, str] = {}
    if threads is None and not gpu:
        threads = default_threads()
    if threads:
        threads = min(threads, usable_cpus())
    if threads and not users_own("OMP_NUM_THREADS"):
        set_here["OMP_NUM_THREADS"] = str(threads)
    # a user's OMP_WAIT_POLICY or GOMP_SPINCOUNT decides the waiting alone: GOMP_SPINCOUNT would override the policy
    if not gpu and not users_own("OMP_WAIT_POLICY") and not users_own("GOMP_SPINCOUNT"):
        set_here["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    os.environ.update(set_here)
    if set_here:
        os.environ[MARKER] = " ".join(f"{k}={v}" for k, v in set_here.items())
    else:
        os.environ.pop(MARKER, None)
    if "torch" in sys.modules and "OMP_NUM_THREADS" in set_here:
        import torch

        torch.set_num_threads(threads)
    if not openmp_loaded():  # what the runtime will read when torch loads it (unless configured again first)
        _in_effect = _snapshot(read_at_load=True)
    return in_effect()


def _snapshot(read_at_load: bool) -> dict[str, object]:
    ours = _ours()
    return {**{name: os.environ.get(name) for name in VARIABLES},
            "set_by": {name: "ferbench" if name in ours else "user" for name in VARIABLES if name in os.environ},
            "read_at_load": read_at_load}


def in_effect() -> dict[str, object]:
    """The OpenMP settings of this process, for its record: the variables, who set each (ferbench | user), and
    `read_at_load`: true when they were in place before the OpenMP runtime was loaded, so these are what it read;
    false when it was loaded first (then they are the environment's values now, which it may not have read).

    Each variable is given as the runtime reads it, OMP_NUM_THREADS as the threads torch runs with once it is loaded
    (MKL caps the variable at the machine's cores); `requested` (only when one differs) holds the text in the
    environment, so a record never gives the user's value as the one in effect."""
    out = dict(_in_effect) if _in_effect is not None else _snapshot(read_at_load=False)
    requested = {}
    for name in VARIABLES:
        text = out[name]
        if text is None:
            continue
        try:
            value = _as_read(name, text)
        except FERBenchError:  # set after start-up, never read by the runtime (read_at_load false): left as it is
            continue
        if name == "OMP_NUM_THREADS" and "torch" in sys.modules:
            value = str(sys.modules["torch"].get_num_threads())
        if value != text:
            out[name], requested[name] = value, text
    if requested:
        out["requested"] = requested
    return out
