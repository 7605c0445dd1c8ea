"""`ferbench bench memory`: peak memory of a training run against the size of its prepared cache.

Writes n size x size JPEGs in the RAF-DB layout (a tenth of them test images), prepares them at `image_size`,
then trains a short run on them in a subprocess (`ferbench run`, the tiny CNN, `iterations` steps and one
evaluation) and reads that process's peak resident set size from the kernel (`os.wait4`). The cache is
memory-mapped, so the run holds what it reads, not the cache: the target is a peak within 1.5x the cache size
(AffectNet-8 at 224 px is 43 GB of pixels; a 64 GB node must train it). Prints a table; optionally writes JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.benchmarks.prepare_speed import write_jpegs
from bench.data.cache import images_file, prepare_dataset


def run_memory_benchmark(n: int = 150_000, size: int = 64, image_size: int = 64, iterations: int = 50,
                         work_dir: str | None = None, json_path: str | None = None) -> dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    root = Path(tempfile.mkdtemp(prefix="ferbench-bench-memory-", dir=work_dir))
    try:
        n_test = max(7, n // 10)
        write_jpegs(root / "raw", n, size, n_test, console)
        t0 = time.perf_counter()
        path = prepare_dataset("rafdb", str(root / "raw"), image_size, str(root / "cache"), progress=True)
        prepare_s = time.perf_counter() - t0
        cache_bytes = sum(images_file(path, s).stat().st_size for s in ("train", "test"))
        cmd = [sys.executable, "-m", "bench.cli", "run", "--quiet", "method=supervised", "data.name=rafdb",
               f"data.root={root / 'raw'}", f"data.cache_dir={root / 'cache'}", f"data.image_size={image_size}",
               "model.backbone=ferbench_cnn_tiny", f"train.iterations={iterations}", f"train.eval_every={iterations}",
               "train.batch_size=64", f"output_dir={root / 'out'}"]
        t0 = time.perf_counter()
        with console.status(f"training {iterations} iterations on the prepared cache"):
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"the training run failed: {proc.stderr.read()[-2000:]}")
        peak = usage.ru_maxrss * 1024  # kilobytes on Linux
        record = json.loads(next((root / "out" / "records").glob("*.json")).read_text())
        results = {"n_images": n, "n_train": n - n_test, "image_size": image_size, "cache_bytes": cache_bytes,
                   "prepare_seconds": round(prepare_s, 1), "train_seconds": round(time.perf_counter() - t0, 1),
                   "iterations": iterations, "peak_rss_bytes": peak,
                   "peak_rss_over_cache": round(peak / cache_bytes, 3),
                   "torch_threads": record["host"]["torch_threads"], "cpus": os.cpu_count()}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    table = Table(title=f"memory: {n:,} images at {image_size}px, a {iterations}-iteration run on the cache")
    for col in ("cache (GB)", "peak RSS of the run (GB)", "peak / cache", "prepare (s)", "run (s)"):
        table.add_column(col, justify="right")
    table.add_row(f"{cache_bytes / 1e9:.2f}", f"{peak / 1e9:.2f}", f"{peak / cache_bytes:.2f}",
                  f"{results['prepare_seconds']:.0f}", f"{results['train_seconds']:.0f}")
    console.print(table)
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n")
    return results
