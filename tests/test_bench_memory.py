"""`ferbench bench memory` and `bench prepare`: real prepares and a real training subprocess, measured."""

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
    assert "bench memory --n 10: expected an integer in [70, inf)" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_bench_prepare_times_one_and_several_decoding_processes(tmp_path: Path, capsys) -> None:
    out = tmp_path / "prepare.json"
    assert main(["bench", "prepare", "--n", "140", "--size", "32", "--image-size", "16", "--workers", "2",
                 "--work-dir", str(tmp_path), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert (res["n_images"], res["jpeg_size"], res["image_size"]) == (140, 32, 16)
    assert [r["workers"] for r in res["runs"]] == [1, 2]
    for r in res["runs"]:
        assert abs(140 / r["images_per_s"] - r["seconds"]) <= 0.006  # the rate is the count over the time
        assert r["reuse_seconds"] < r["seconds"] + 1.0  # the second prepare finds the cache
    assert list(tmp_path.iterdir()) == [out]
