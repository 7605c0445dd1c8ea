"""The two data paths (augment_on device | cpu): identical batches on a CPU host, exact resume, and runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_overrides

from bench.cli import main
from bench.config import AugmentConfig, RunConfig, build_config, run_id
from bench.data.views import ViewMaker
from bench.engine.feed import BatchFeed, FeedSpec, HostFeed, make_feed
from bench.engine.image_store import ImageStore
from bench.engine.streams import IndexStream, labeled_stream

CPU = torch.device("cpu")


def _spec(n: int = 64, channels_last: bool = False) -> tuple[torch.Tensor, FeedSpec]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 7, (n,), generator=g)
    labeled_pool = np.arange(0, n, 4)
    labeled_position = np.full(n, -1)
    labeled_position[labeled_pool] = np.arange(len(labeled_pool))
    spec = FeedSpec(labels, ViewMaker(AugmentConfig()),
                    labeled_stream("uniform", labeled_pool, labels.numpy()[labeled_pool], 4, seed=3),
                    IndexStream(np.arange(n), 12, seed=3, name="unlabeled"), ("weak",), ("weak", "strong"),
                    labeled_position, np.arange(n), seed=3, channels_last=channels_last)
    return images, spec


def _same(a, b) -> bool:
    return a.labeled.keys() == b.labeled.keys() and a.unlabeled.keys() == b.unlabeled.keys() and all(
        torch.equal(a.labeled[k], b.labeled[k]) for k in a.labeled) and all(
        torch.equal(a.unlabeled[k], b.unlabeled[k]) for k in a.unlabeled)


@pytest.mark.parametrize("workers", [0, 2])
def test_cpu_and_device_paths_give_identical_batches(workers: int) -> None:
    images, spec = _spec()
    device = BatchFeed(images, spec, CPU, end_step=8)
    streamed = BatchFeed(images, spec, CPU, budget_gb=0, end_step=8)  # does not "fit": gathered on the host
    host = HostFeed(images, spec, CPU, workers=workers, end_step=8)
    assert (device.where, streamed.where, host.where) == ("device", "host", "host")
    batches = [device.batch(s) for s in range(8)]
    for s in range(8):
        assert _same(batches[s], host.batch(s)), f"step {s}"
        assert _same(batches[s], streamed.batch(s)), f"step {s}"
    host.close()
    assert not _same(batches[0], batches[1])  # a different step is a different batch
    b = batches[2]
    assert b.labeled["weak"].shape == (4, 3, 16, 16) and b.unlabeled["strong"].shape == (12, 3, 16, 16)
    assert torch.equal(b.labeled["y"], spec.labels[b.labeled["idx"]])
    assert torch.equal(b.labeled["pos"] * 4, b.labeled["idx"])  # labeled pool = every 4th image


def test_host_workers_restart_where_a_resumed_run_asks() -> None:
    images, spec = _spec()
    reference = [BatchFeed(images, spec, CPU).batch(s) for s in range(6)]
    host = HostFeed(images, spec, CPU, workers=2, end_step=6)
    # resume at 3, then jump back to 1 (a second resume): the workers restart at the step asked for
    for s in (3, 4, 1, 2, 5):
        assert _same(host.batch(s), reference[s]), f"step {s}"
    host.close()
    beyond = HostFeed(images, spec, CPU, workers=2, end_step=6)  # past the end: made inline, still the same
    assert _same(beyond.batch(5), reference[5])


def test_channels_last_views_keep_their_values() -> None:
    images, spec = _spec()
    _, spec_cl = _spec(channels_last=True)
    a, b = BatchFeed(images, spec, CPU).batch(1), HostFeed(images, spec_cl, CPU).batch(1)
    assert b.unlabeled["strong"].is_contiguous(memory_format=torch.channels_last)
    assert _same(a, b)


def test_image_store_budget() -> None:
    images = torch.zeros(10, 3, 8, 8, dtype=torch.uint8)
    assert ImageStore(images, CPU).where == "device"  # a CPU host is its own device
    assert ImageStore(images, CPU, budget_gb=images.numel() / 2**30).where == "device"
    small = ImageStore(images, CPU, budget_gb=(images.numel() - 1) / 2**30)
    assert small.where == "host" and small.streamed
    idx = np.array([3, 1, 3])
    images[1] = 7
    assert torch.equal(small.gather(idx), images[idx])


def test_make_feed_picks_the_path() -> None:
    images, spec = _spec()
    cfg = RunConfig()
    assert isinstance(make_feed(cfg, images, spec, CPU), BatchFeed)
    cfg.data.augment_on, cfg.data.workers = "cpu", 1
    feed = make_feed(cfg, images, spec, CPU)
    assert isinstance(feed, HostFeed) and feed.workers == 1 and feed.end_step == cfg.train.iterations


def _record(out: Path) -> dict:
    files = sorted((out / "records").glob("*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


def test_runs_on_both_paths_give_identical_records(shared_cache: Path, tmp_path: Path) -> None:
    dev = tiny_overrides(shared_cache, tmp_path / "device", method="fixmatch", **{"method_args.threshold": 0.5})
    cpu = tiny_overrides(shared_cache, tmp_path / "cpu", method="fixmatch", **{
        "method_args.threshold": 0.5, "data.augment_on": "cpu", "data.workers": 2, "data.device_cache_gb": 0})
    assert run_id(build_config(overrides=dev)) == run_id(build_config(overrides=cpu))  # how fast, not what
    assert main(["run", "--quiet", *dev]) == 0
    assert main(["run", "--quiet", *cpu]) == 0
    a, b = _record(tmp_path / "device"), _record(tmp_path / "cpu")
    assert a["metrics"] == b["metrics"] and a["history"] == b["history"]
    assert [c["loss"] for c in a["curves"]] == [c["loss"] for c in b["curves"]]
    assert any(c["mask_rate"] > 0 for c in a["curves"])  # the unlabeled views took part in the loss
    pa, pb = a["performance"], b["performance"]
    assert (pa["augment_on"], pa["images_on"], pa["workers"]) == ("device", "device", 0)
    assert (pb["augment_on"], pb["images_on"], pb["workers"]) == ("cpu", "host", 2)
    for p in (pa, pb):
        assert p["device"] == "cpu" and p["mixed_precision"] == "no" and p["compile"] == "none"
        assert p["fused_optimizer"] is False and "cpu" in p["fused_optimizer_note"]
        assert p["channels_last"] is False and p["images_per_s"] > 0


def test_channels_last_and_compile_run_and_are_recorded(shared_cache: Path, tmp_path: Path) -> None:
    args = tiny_overrides(shared_cache, tmp_path, method="supervised", **{
        "train.iterations": 4, "train.eval_every": 4, "train.channels_last": "true", "train.compile": "default"})
    assert main(["run", "--quiet", *args]) == 0
    rec = _record(tmp_path)
    assert rec["performance"]["compile"] == "default" and rec["performance"]["channels_last"] is True
    assert 0 <= rec["metrics"]["final"]["accuracy"] <= 1


@pytest.mark.parametrize("key, value, message", [
    ("data.augment_on", "gpu", "data.augment_on='gpu': expected one of 'device', 'cpu'"),
    ("data.workers", -1, "data.workers=-1: expected an integer in [0, inf)"),
    ("data.device_cache_gb", -2, "data.device_cache_gb=-2: expected null or a number in [0, inf)"),
    ("train.compile", "max", "train.compile='max': expected one of 'none', 'default', 'reduce-overhead'"),
    ("train.mixed_precision", "fp4", "train.mixed_precision='fp4': expected one of 'no', 'fp16', 'bf16'"),
])
def test_bad_speed_settings_fail_before_anything_runs(tmp_path: Path, capsys, key: str, value, message: str) -> None:
    args = tiny_overrides(tmp_path / "cache", tmp_path / "out", **{key: value})
    assert main(["run", "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"ferbench: error: {message}")
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
