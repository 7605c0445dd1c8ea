"""Where a result came from: package versions, git commit, host."""

from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = ("ferbench", "torch", "torchvision", "timm", "accelerate", "datasets", "evaluate", "numpy")


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout FERBench runs from ("+dirty" when it has uncommitted changes)."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True,
            timeout=10,
        )
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def host_info() -> dict[str, object]:
    """The machine, and the threads and OpenMP settings the run trained with (`bench.startup`): `openmp` holds
    OMP_NUM_THREADS, OMP_WAIT_POLICY and GOMP_SPINCOUNT as in effect (null: unset, the runtime's default), who set
    each, whether they were in place when the OpenMP runtime was loaded, and the environment's own text under
    `requested` where it differs from what is in effect."""
    import torch

    from bench.startup import in_effect

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    try:
        affinity: int | None = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return {"platform": platform.platform(terse=True), "cpus": os.cpu_count(), "cpu_affinity": affinity,
            "device": device, "torch_threads": torch.get_num_threads(), "openmp": in_effect(),
            # the instruction set torch's CPU kernels use: bit-identical numbers need the same one
            # (docs/concepts/fingerprints.md)
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}
