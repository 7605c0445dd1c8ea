"""A run's data: the prepared dataset, its split manifest and the index pools the stages draw from."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator

from bench.config import RunConfig
from bench.data.cache import default_cache_dir, load_prepared, prepare_dataset
from bench.data.splits import make_split, save_manifest
from bench.errors import FERBenchError
from bench.method import Method, Stage


@dataclass
class RunData:
    """The prepared data of a run, shared by its stages: images, split manifest and index pools."""

    data: Any
    manifest: dict[str, Any]
    manifest_path: Path | None
    labeled_pool: np.ndarray
    unlabeled_pool: np.ndarray
    images: torch.Tensor  # (N, C, H, W) uint8 view of the memory-mapped training split (gather with index_select)
    labels: torch.Tensor
    pool_position: np.ndarray  # training index -> position in the unlabeled pool, -1 elsewhere
    labeled_position: np.ndarray  # training index -> position in the labeled pool, -1 elsewhere

    def with_extra_unlabeled(self, extra: np.ndarray) -> RunData:
        """A copy whose unlabeled pool also holds `extra` (M, H, W, C) uint8 images (label -1)."""
        n, m = len(self.images), len(extra)
        new = np.arange(n, n + m)
        pool = np.concatenate([self.unlabeled_pool, new])
        pool_position = np.concatenate([self.pool_position, len(self.unlabeled_pool) + np.arange(m)])
        return dataclasses.replace(
            self, unlabeled_pool=pool, pool_position=pool_position,
            images=torch.cat([self.images, torch.from_numpy(extra).permute(0, 3, 1, 2)]),
            labels=torch.cat([self.labels, torch.full((m,), -1, dtype=self.labels.dtype)]),
            labeled_position=np.concatenate([self.labeled_position, np.full(m, -1, dtype=np.int64)]))


def prepare_run_data(cfg: RunConfig, accelerator: Accelerator, method_cls: type[Method]) -> RunData:
    """Prepare (or reuse) the dataset cache, make and save the split manifest, and lay out the pools."""
    cache_dir = default_cache_dir(cfg.data.cache_dir)
    with accelerator.main_process_first():  # the main process builds the cache; the others then find it
        prep_path = prepare_dataset(cfg.data.name, cfg.data.root, cfg.data.image_size, str(cache_dir),
                                    cfg.data.reader_options(), cfg.data.on_bad_image,
                                    label_protocol=cfg.data.label_protocol)
    return run_data_from(load_prepared(prep_path), cfg, method_cls,
                         cache_dir / "splits" if accelerator.is_main_process else None)


def run_data_from(data: Any, cfg: RunConfig, method_cls: type[Method], manifest_dir: Path | None) -> RunData:
    """The split manifest of `data` (a prepared dataset) for `cfg` (saved in `manifest_dir`, if given), and the
    labeled and unlabeled pools laid out."""
    budget = 1.0 if method_cls.labeled_source == "all" else cfg.data.budget
    protocol = "fraction" if method_cls.labeled_source == "all" else cfg.data.protocol
    manifest = make_split(
        data.name, data.fingerprint, data.train.ids, data.train.labels, data.num_classes,
        protocol=protocol, budget=budget, split_seed=cfg.effective_split_seed, class_names=data.class_names,
    )
    labeled_pool = np.asarray(manifest["labeled_index"], dtype=np.int64)
    all_train = np.arange(len(data.train.ids))
    unlabeled_pool = all_train if cfg.data.unlabeled == "all" else np.setdiff1d(all_train, labeled_pool)
    if not len(unlabeled_pool):  # checked before the manifest or anything of the run is written
        _check_unlabeled_left(cfg, method_cls, data.num_classes, manifest)
    manifest_path = save_manifest(manifest, manifest_dir) if manifest_dir is not None else None
    # Methods see an unlabeled image's position in the pool, so per-sample state has exactly one slot each.
    pool_position = np.full(len(all_train), -1, dtype=np.int64)
    pool_position[unlabeled_pool] = np.arange(len(unlabeled_pool))
    # ... and a labeled image's position in the labeled pool ("pos"), for per-labeled-sample state.
    labeled_position = np.full(len(all_train), -1, dtype=np.int64)
    labeled_position[labeled_pool] = np.arange(len(labeled_pool))
    return RunData(data, manifest, manifest_path, labeled_pool, unlabeled_pool,
                   # a view of the memory-mapped cache, not a copy: pages are read as batches touch them
                   torch.from_numpy(data.train.images).permute(0, 3, 1, 2),
                   torch.from_numpy(data.train.labels), pool_position, labeled_position)


def _check_unlabeled_left(cfg: RunConfig, method_cls: type[Method], num_classes: int,
                          manifest: dict[str, Any]) -> None:
    """A FERBenchError when the split labels every training image under data.unlabeled=rest while a stage of the
    method draws unlabeled images from the training set (one with extra image folders has its own)."""
    stages = method_cls(num_classes=num_classes, **cfg.method_args).stages()
    if any(stage.views and not stage.extra_unlabeled for stage in stages):
        raise FERBenchError(
            f"data.unlabeled='rest' with data.budget={manifest['budget']:g} (protocol {manifest['protocol']!r}) labels "
            f"all {manifest['n_labeled']} training images of {manifest['dataset']!r}: none is left for the unlabeled "
            f"views of method {cfg.method!r}; use data.unlabeled=all or a smaller budget")


def stage_run_data(cfg: RunConfig, stage: Stage, run: RunData, accelerator: Accelerator) -> RunData:
    """The run's data as `stage` trains on it: with its extra unlabeled image folders, if it has any."""
    if not stage.extra_unlabeled:
        return run
    from bench.data.imagefolder import load_image_folders

    with accelerator.main_process_first():
        extra = load_image_folders(stage.extra_unlabeled, cfg.data.image_size, default_cache_dir(cfg.data.cache_dir),
                                   progress=accelerator.is_main_process)
    return run.with_extra_unlabeled(extra)
