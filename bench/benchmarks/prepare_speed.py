"""`ferbench bench prepare`: images/s of building the prepared cache from JPEGs in the RAF-DB layout.

Writes n size x size JPEGs (smooth random content, quality 90, like aligned face crops) once, then
prepares them into fresh caches with 1 worker and with `workers` workers, and reports both rates and
their ratio. Target on a 2-core machine: >= 1,000 images/s for 20,000 100x100 JPEGs.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.data.cache import prepare_dataset
from bench.data.replicas import write_rafdb_replica


def write_jpegs(folder: Path, n: int, size: int, n_test: int, console: Any) -> None:
    """n size x size JPEGs with random labels in the RAF-DB layout under `folder` (n_test of them test images)."""
    labels = np.random.default_rng(0).integers(1, 8, size=n).tolist()
    t0 = time.perf_counter()
    with console.status(f"writing {n:,} {size}x{size} JPEGs"):
        write_rafdb_replica(folder, labels[n_test:], labels[:n_test], size=size, originals=False)
    console.print(f"wrote {n:,} JPEGs in {time.perf_counter() - t0:.1f} s")


def run_prepare_benchmark(n: int = 20000, size: int = 100, image_size: int = 100, workers: int = 2,
                          work_dir: str | None = None, json_path: str | None = None) -> dict[str, Any]:
    """Time `prepare_dataset` on n JPEGs; returns (and prints) the measurements."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    root = Path(tempfile.mkdtemp(prefix="ferbench-bench-prepare-", dir=work_dir))
    try:
        write_jpegs(root / "raw", n, size, max(7, n // 5), console)
        results: dict[str, Any] = {"n_images": n, "jpeg_size": size, "image_size": image_size, "runs": []}
        for w in sorted({1, workers}):
            cache = root / f"cache-w{w}"
            t0 = time.perf_counter()
            prepare_dataset("rafdb", str(root / "raw"), image_size, str(cache), workers=w, progress=True)
            dt = time.perf_counter() - t0
            t1 = time.perf_counter()
            prepare_dataset("rafdb", str(root / "raw"), image_size, str(cache), workers=w)  # the cache is reused
            results["runs"].append({"workers": w, "seconds": round(dt, 2), "images_per_s": round(n / dt, 1),
                                    "reuse_seconds": round(time.perf_counter() - t1, 2)})
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base = results["runs"][0]["images_per_s"]
    table = Table(title=f"prepare: {n:,} {size}x{size} JPEGs -> {image_size}px cache")
    for col in ("workers", "seconds", "images/s", "vs 1 worker", "reuse (s)"):
        table.add_column(col, justify="right")
    for r in results["runs"]:
        table.add_row(str(r["workers"]), f"{r['seconds']:.1f}", f"{r['images_per_s']:,.0f}",
                      f"{r['images_per_s'] / base:.2f}x", f"{r['reuse_seconds']:.2f}")
    console.print(table)
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n")
    return results
