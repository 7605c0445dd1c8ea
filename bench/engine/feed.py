"""What the training loop eats: the method's views of the labeled and unlabeled batch at step t.

A batch is a pure function of the step (index streams + a per-step generator seeded by
`step_seed(seed, step, rank, "augment")`), so resume and any number of processes give the same data.
Views are made by `ViewMaker` with batched tensor arithmetic, on one of two paths (`data.augment_on`;
methods never know which):

    device  `BatchFeed`: the uint8 cache sits on the accelerator (or streams from pinned host memory,
            see `ImageStore`); indices go to the device, the batch is gathered and augmented there.
    cpu     `HostFeed`: the classic pipeline: views are made on the host, in `data.workers` DataLoader
            processes that prepare future steps, then copied (pinned, non_blocking) to the device.

On a CPU-only host both paths draw from the same CPU generator and give identical batches. On CUDA the
device path draws from a CUDA generator: same distributions, a different random stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bench.config import RunConfig
from bench.data.views import ViewMaker
from bench.engine.image_store import ImageStore, take
from bench.engine.streams import ClassBalancedStream, IndexStream, step_seed
from bench.method import Batch


@dataclass
class FeedSpec:
    """Everything a batch depends on besides the images.

    labeled_position:  training index -> position in the labeled pool ("pos"), -1 elsewhere
    pool_position:     training index -> position in the unlabeled pool ("idx" of unlabeled), -1 elsewhere
    """

    labels: Tensor
    views: ViewMaker
    labeled: IndexStream | ClassBalancedStream
    unlabeled: IndexStream | None
    labeled_views: tuple[str, ...]
    unlabeled_views: tuple[str, ...]
    labeled_position: np.ndarray
    pool_position: np.ndarray
    seed: int
    rank: int = 0
    world: int = 1
    channels_last: bool = False
    purpose: str = "augment"  # seeds the step's augmentation; the stages of a run draw independently

    def indices(self, step: int) -> tuple[np.ndarray, np.ndarray | None]:
        li = self.labeled.indices(step, self.rank, self.world)
        ui = self.unlabeled.indices(step, self.rank, self.world) if self.unlabeled is not None else None
        return li, ui

    def generator(self, step: int, device: torch.device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(step_seed(self.seed, step, self.rank, self.purpose))

    def make_views(self, x_u8: Tensor, u_u8: Tensor | None, gen: torch.Generator
                   ) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
        """Labeled views, then unlabeled views, from one generator: both paths draw in this order."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        labeled = {v: self.views.make(v, x_u8, gen).contiguous(memory_format=fmt) for v in self.labeled_views}
        unlabeled = None
        if u_u8 is not None:
            unlabeled = {v: self.views.make(v, u_u8, gen).contiguous(memory_format=fmt) for v in self.unlabeled_views}
        return labeled, unlabeled


class BatchFeed:
    """The device path: gather by index on the accelerator and make the views there."""

    augment_on = "device"

    def __init__(self, images: Tensor, spec: FeedSpec, device: torch.device, budget_gb: float | None = None,
                 end_step: int | None = None) -> None:
        self.spec, self.device, self.end_step = spec, device, end_step
        self.store = ImageStore(images, device, budget_gb)
        self.labels = spec.labels.to(device)
        self.labeled_position = torch.from_numpy(spec.labeled_position).to(device)
        self.pool_position = torch.from_numpy(spec.pool_position).to(device)
        # streamed on CUDA: the next step's images are copied on a side stream while this step computes
        self._side = torch.cuda.Stream(device) if self.store.streamed and device.type == "cuda" else None
        self._ahead: tuple[int, tuple[Tensor, Tensor, Tensor | None, Tensor | None]] | None = None

    @property
    def where(self) -> str:
        return self.store.where

    def _load(self, step: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """(labeled indices, labeled uint8, unlabeled indices, unlabeled uint8), all on the device."""
        li, ui = self.spec.indices(step)
        li_t, x_u8 = self.store.index_tensor(li), self.store.gather(li, "labeled")
        if ui is None:
            return li_t, x_u8, None, None
        return li_t, x_u8, self.store.index_tensor(ui), self.store.gather(ui, "unlabeled")

    def _raw(self, step: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        if self._side is None:
            return self._load(step)
        if self._ahead is not None and self._ahead[0] == step:
            raw = self._ahead[1]
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self._side)
            for t in raw:
                if t is not None:
                    t.record_stream(current)  # allocated on the side stream, used on this one
        else:
            raw = self._load(step)
        self._ahead = None
        if self.end_step is None or step + 1 < self.end_step:
            with torch.cuda.stream(self._side):
                self._ahead = (step + 1, self._load(step + 1))
        return raw

    def batch(self, step: int) -> Batch:
        li, x_u8, ui, u_u8 = self._raw(step)
        labeled, unlabeled = self.spec.make_views(x_u8, u_u8, self.spec.generator(step, self.device))
        labeled.update(y=self.labels[li], idx=li, pos=self.labeled_position[li])
        if unlabeled is not None:
            unlabeled["idx"] = self.pool_position[ui]
        return Batch(labeled, unlabeled)

    def close(self) -> None:
        self._ahead = None


class _HostSteps(torch.utils.data.Dataset):
    """Item i = the host-made batch of step `first + i` (what a DataLoader worker computes)."""

    def __init__(self, images: Tensor, spec: FeedSpec, first: int, end: int) -> None:
        self.images, self.spec, self.first, self.end = images, spec, first, end

    def __len__(self) -> int:
        return max(0, self.end - self.first)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return host_batch(self.images, self.spec, self.first + i)


def host_batch(images: Tensor, spec: FeedSpec, step: int) -> dict[str, Any]:
    """The step's batch made on the host, as plain tensors (picklable, pinnable)."""
    li, ui = spec.indices(step)
    u_u8 = take(images, ui) if ui is not None else None
    labeled, unlabeled = spec.make_views(take(images, li), u_u8, spec.generator(step, torch.device("cpu")))
    labeled.update(y=spec.labels[li], idx=torch.from_numpy(li), pos=torch.from_numpy(spec.labeled_position[li]))
    if unlabeled is not None:
        unlabeled["idx"] = torch.from_numpy(spec.pool_position[ui])
    return {"labeled": labeled, "unlabeled": unlabeled}


class HostFeed:
    """The CPU path: views made on the host (in `workers` background processes), then copied to the device."""

    augment_on = "cpu"
    where = "host"

    def __init__(self, images: Tensor, spec: FeedSpec, device: torch.device, workers: int = 0,
                 end_step: int | None = None, prefetch: int = 2) -> None:
        self.images = images  # the memory-mapped cache's view, shared with the workers, never copied whole
        self.spec, self.device, self.workers, self.end_step, self.prefetch = spec, device, workers, end_step, prefetch
        self.pin = device.type == "cuda"
        self._it: Iterator[dict[str, Any]] | None = None
        self._next = -1

    def _start(self, step: int) -> None:
        """(Re)start the workers at `step`: they then run ahead, in order, up to `end_step`."""
        self.close()
        if self.workers > 0 and self.end_step is not None and step < self.end_step:
            loader = torch.utils.data.DataLoader(
                _HostSteps(self.images, self.spec, step, self.end_step), batch_size=None, shuffle=False,
                num_workers=self.workers, pin_memory=self.pin, prefetch_factor=self.prefetch,
                persistent_workers=False)
            self._it = iter(loader)
        self._next = step

    def _to_device(self, group: dict[str, Tensor] | None) -> dict[str, Tensor] | None:
        if group is None:
            return None
        if self.pin and self._it is None:  # the DataLoader pins in its own thread; here it is done inline
            group = {k: v.pin_memory() for k, v in group.items()}
        return {k: v.to(self.device, non_blocking=True) for k, v in group.items()}

    def batch(self, step: int) -> Batch:
        if step != self._next:
            self._start(step)
        item = next(self._it) if self._it is not None else host_batch(self.images, self.spec, step)
        self._next = step + 1
        return Batch(self._to_device(item["labeled"]), self._to_device(item["unlabeled"]))

    def close(self) -> None:
        self._it = None  # dropping the iterator shuts its workers down


def make_feed(cfg: RunConfig, images: Tensor, spec: FeedSpec, device: torch.device) -> BatchFeed | HostFeed:
    """The feed `cfg.data.augment_on` asks for; `images` (N, C, H, W) uint8 in host memory."""
    t = cfg.train
    end = min(t.iterations, t.stop_after) if t.stop_after else t.iterations
    if cfg.data.augment_on == "cpu":
        return HostFeed(images, spec, device, cfg.data.workers, end)
    return BatchFeed(images, spec, device, cfg.data.device_cache_gb, end)
