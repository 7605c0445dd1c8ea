"""`ferbench bench memory`: a real prepare and a real training subprocess, measured by the kernel."""

from __future__ import annotations

import json
from pathlib import Path

from bench.cli import main


def test_bench_memory_measures_the_run_against_its_cache(tmp_path: Path, capsys) -> None:
    out = tmp_path / "memory.json"
    assert main(["bench", "memory", "--n", "140", "--size", "32", "--image-size", "32", "--iterations", "2",
                 "--work-dir", str(tmp_path), "--json", str(out)]) == 0
    assert "peak RSS of the run" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["cache_bytes"] == 140 * 32 * 32 * 3  # train and test pixels, one byte each, nothing else
    assert res["n_train"] == 126 and res["iterations"] == 2
    assert 50e6 < res["peak_rss_bytes"] < 20e9  # a real process's peak, in bytes (ru_maxrss is in kB)
    assert res["peak_rss_over_cache"] == round(res["peak_rss_bytes"] / res["cache_bytes"], 3)
    assert list(tmp_path.iterdir()) == [out]  # the JPEGs and the cache are removed


def test_bench_memory_refuses_bad_settings(tmp_path: Path, capsys) -> None:
    assert main(["bench", "memory", "--n", "10", "--work-dir", str(tmp_path)]) == 2
    assert "expected --n >= 70" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
