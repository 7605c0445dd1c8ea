"""Where the training split's uint8 images live for the device path, and how a batch of them is gathered.

Resident: the whole prepared cache is copied once to the accelerator (RAF-DB at 112 px is ~0.5 GB) and a
batch is one `index_select` there, with the indices sent to the device. Streamed (the cache does not fit
the budget, e.g. AffectNet): the cache stays memory-mapped, never copied whole; a batch is gathered on the
host into a pinned staging buffer and copied with `non_blocking=True`, so the copy overlaps compute (the feed
issues it one step ahead on a side CUDA stream). On a CPU-only host the device is the host itself: the
images are "resident" in the memory-mapped cache and nothing is copied.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

#: the default budget is this share of the accelerator's free memory (models and activations need the rest)
DEFAULT_FREE_FRACTION = 0.5


def device_budget_bytes(device: torch.device, budget_gb: float | None) -> float:
    """Bytes of `device` memory the image cache may take."""
    if budget_gb is not None:
        return float(budget_gb) * 2**30
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return DEFAULT_FREE_FRACTION * free
    return float("inf")  # CPU host: the images are in host memory already


class _Staging:
    """Two pinned host buffers used in turn, each reused only after its last copy has finished."""

    def __init__(self) -> None:
        self.buffers: list[Tensor] = []
        self.events: list[torch.cuda.Event | None] = [None, None]
        self.turn = 0

    def next(self, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[Tensor, int]:
        i = self.turn
        self.turn ^= 1
        if len(self.buffers) < 2:
            self.buffers.append(torch.empty(shape, dtype=dtype).pin_memory())
        if self.events[i] is not None:
            self.events[i].synchronize()  # the copy out of this buffer two gathers ago is over
        buf = self.buffers[i]
        return (buf if tuple(buf.shape) == shape else torch.empty(shape, dtype=dtype).pin_memory()), i

    def copied(self, i: int) -> None:
        event = torch.cuda.Event()
        event.record()
        self.events[i] = event


def take(images: Tensor, idx: np.ndarray | Tensor) -> Tensor:
    """images[idx] as a contiguous (n, C, H, W) batch. `index_select`, not `images[idx]`: on the cache's
    (N, C, H, W) view of (N, H, W, C) memory, indexing would keep channels-last strides, and a batch's layout
    must not depend on where its images came from."""
    index = idx if isinstance(idx, Tensor) else torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64))
    return images.index_select(0, index.to(images.device))


class ImageStore:
    """uint8 images (N, C, H, W) held on `device` when they fit `budget_gb`, else left where they are (the
    memory-mapped cache) and gathered batch by batch through pinned staging buffers."""

    def __init__(self, images: Tensor, device: torch.device, budget_gb: float | None = None) -> None:
        self.device = device
        self.nbytes = images.numel() * images.element_size()
        if self.nbytes <= device_budget_bytes(device, budget_gb):
            self.where = "device"
            # a dense view copies as it is, with no host-side copy first; on a CPU host it stays where it is
            self.images = images.to(device)
        else:  # left in the memory-mapped cache, never copied whole: a dataset need not fit in memory twice
            self.where = "host"
            self.images = images
        self._staging: dict[str, _Staging] = {}

    @property
    def streamed(self) -> bool:
        return self.where != "device"

    def index_tensor(self, idx: np.ndarray) -> Tensor:
        """Indices on the device (from pinned memory on CUDA, so the copy does not block)."""
        t = torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64))
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t

    def gather(self, idx: np.ndarray, name: str = "batch") -> Tensor:
        """images[idx] on the device; `name` keeps one staging pair per stream (labeled, unlabeled)."""
        if not self.streamed:
            return take(self.images, self.index_tensor(idx))
        host_idx = torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64))
        if self.device.type != "cuda":
            return take(self.images, host_idx)
        staging = self._staging.setdefault(name, _Staging())
        buf, slot = staging.next((len(idx), *self.images.shape[1:]), self.images.dtype)
        torch.index_select(self.images, 0, host_idx, out=buf)
        out = buf.to(self.device, non_blocking=True)
        staging.copied(slot)  # recorded on the current (possibly side) stream, after the copy
        return out
