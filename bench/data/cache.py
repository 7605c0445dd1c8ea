"""Prepared-data cache: raw records -> decoded, face-cropped, resized uint8 images, memory-mapped.

Images are decoded once, here. Per split, ids and labels go to an Arrow file (HF `datasets`) and the pixels to
one raw uint8 file, (N, H, W, 3) in C order, which training memory-maps: the operating system pages in the
images a batch touches, and a dataset larger than the job's memory (AffectNet-8 at 224 px: 43 GB) trains
within about one copy of what it reads. (The images are not an Arrow column: a column written in many record
batches can only be turned into one array by copying it, `combine_chunks`, which held the cache in memory
twice or three times.) The cache folder is named by a stamp of the source (ids, labels, splits, boxes, paths,
file sizes and mtimes), the image size and the cache format, so preparing twice reuses it and a changed
source makes a new one.

A prepared dataset's *identity* (`PreparedDataset.fingerprint`, in every split manifest and record) is made of its
content only: the ids, splits, labels and decoded pixels (face boxes act through the pixels they crop), with the
image size and label protocol. The same images in another folder, copied with new times, have the same identity on
every machine; one changed pixel gives another.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from datasets.arrow_writer import ArrowWriter
from PIL import Image

from bench.checks import check_value
from bench.config import ImageSide
from bench.data.datasets import DatasetSpec, get_dataset
from bench.data.records import ReadReport, SampleRecord
from bench.data.splits import IDENTITY
from bench.errors import FERBenchError

PREPARE_VERSION = 1  # what decoding produces: part of the identity, hence of every split manifest
CACHE_FORMAT = 2  # how the folder stores it (2: pixels in a memory-mapped raw file); part of the folder's name
SPLITS = ("train", "test")


def default_workers() -> int:
    """Decoding processes: one core is left to this process, which writes the Arrow file (on 2 cores,
    20,000 100x100 JPEGs prepared at 2,371 images/s with 1 worker and 2,202 with 2)."""
    return max(1, (os.cpu_count() or 1) - 1)


def default_cache_dir(cache_dir: str | None = None) -> Path:
    return Path(cache_dir or os.environ.get("FERBENCH_CACHE") or Path.home() / ".cache" / "ferbench")


@dataclass
class PreparedSplit:
    ids: list[str]
    images: np.ndarray  # (N, H, W, 3) uint8, memory-mapped copy-on-write (np.memmap, mode "c")
    labels: np.ndarray  # (N,) int64 canonical labels
    native_labels: np.ndarray


@dataclass
class PreparedDataset:
    name: str
    path: Path
    class_names: tuple[str, ...]
    fingerprint: str
    info: dict[str, Any]
    train: PreparedSplit
    test: PreparedSplit

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _features() -> datasets.Features:
    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "label": datasets.Value("int16"),
            "native_label": datasets.Value("int16"),
        }
    )


def images_file(folder: Path, split: str) -> Path:
    return folder / f"{split}.images.u8"


class IdentityHash:
    """A dataset's identity, built image by image as the cache is written: sha256 of a salt (image size, label
    protocol) and, per split, each image's id, label, native label and pixels."""

    def __init__(self, salt: str) -> None:
        self._h = hashlib.sha256(f"{IDENTITY}|{salt}".encode())

    def split(self, name: str) -> None:
        self._h.update(f"\n[{name}]\n".encode())

    def add(self, id_: str, label: int, native: int, pixels: np.ndarray) -> None:
        self._h.update(f"{id_}|{int(label)}|{int(native)}\n".encode())
        self._h.update(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def content_identity(splits: dict[str, PreparedSplit], salt: str) -> str:
    """The identity of prepared splits (`IdentityHash` over every image, in order)."""
    h = IdentityHash(salt)
    for name, s in splits.items():
        h.split(name)
        for i, (id_, label, native) in enumerate(zip(s.ids, s.labels, s.native_labels, strict=True)):
            h.add(id_, label, native, s.images[i])
    return h.hexdigest()


def _identity_salt(image_size: int, label_protocol: str, version: int = PREPARE_VERSION) -> str:
    return f"v{version}|size={image_size}|labels={label_protocol}"


def source_fingerprint(records: list[SampleRecord], image_size: int, label_protocol: str = "") -> str:
    """When a cache is rebuilt (its folder's name): the source's ids, labels, boxes, paths, sizes and times."""
    h = hashlib.sha256(f"v{PREPARE_VERSION}|size={image_size}|labels={label_protocol}".encode())
    stamps: dict[str, str] = {}  # formats with inline pixels list one file many times
    for r in records:
        stamp = stamps.get(r.path)
        if stamp is None:
            try:
                st = os.stat(r.path)
                stamp = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                stamp = "missing"
            stamps[r.path] = stamp
        h.update(f"{r.id}|{r.label}|{r.native_label}|{r.split}|{r.box}|{r.path}|{stamp}\n".encode())
    return h.hexdigest()


def decode_image(path: str, size: int, box: tuple[float, float, float, float] | None,
                 pixels: np.ndarray | None = None) -> np.ndarray:
    """Decode (or take the inline `pixels`), crop to the face box if any, resize to size x size RGB uint8.

    Raises OSError/ValueError/SyntaxError on missing or corrupt files, as PIL does.
    """
    with (Image.fromarray(pixels) if pixels is not None else Image.open(path)) as im:
        im = im.convert("RGB")
        if box is not None:
            im = im.crop(tuple(int(round(v)) for v in box))
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


DecodeItem = tuple[str, Any, Any]  # (path, box, inline pixels)


def _decode_chunk(args: tuple[list[DecodeItem], int]) -> list[np.ndarray | str]:
    items, size = args
    out: list[np.ndarray | str] = []
    for path, box, pixels in items:
        try:
            out.append(decode_image(path, size, box, pixels))
        except (OSError, ValueError, SyntaxError) as e:  # PIL raises these for missing/corrupt files
            out.append(f"{type(e).__name__}: {e}")
    return out


def decode_records(records: list[SampleRecord], size: int, workers: int,
                   chunk: int = 256) -> Iterator[np.ndarray | str]:
    """Decoded images (or error strings) of `records`, in order, decoded by `workers` processes."""
    chunks = [
        ([(r.path, r.box, r.pixels) for r in records[i : i + chunk]], size) for i in range(0, len(records), chunk)
    ]
    if workers <= 1:
        for c in chunks:
            yield from _decode_chunk(c)
        return
    # forkserver: safe from a parent that already runs threads (see synthfer's pool)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver"))
    try:
        for res in pool.map(_decode_chunk, chunks):
            yield from res
    finally:  # the consumer may stop early (a bad image under "fail"): drop the queued chunks
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class _Preparation:
    """One dataset being prepared: `prepare_dataset`'s arguments, resolved."""

    name: str
    root: str | None
    options: dict[str, Any] | None
    image_size: int
    protocol: str
    num_classes: int
    on_bad_image: str
    workers: int
    progress: bool


@dataclass
class _Written:
    """What writing the splits gave: per split its image and class counts; the images left out; the identity."""

    counts: dict[str, dict[str, Any]] = field(default_factory=dict)
    bad: list[dict[str, str]] = field(default_factory=list)
    identity: str = ""


def prepare_dataset(
    name: str,
    root: str | None = None,
    image_size: int = 48,
    cache_dir: str | None = None,
    options: dict[str, Any] | None = None,
    on_bad_image: str = "fail",
    *,
    workers: int | None = None,
    progress: bool = False,
    label_protocol: str | None = None,
) -> Path:
    """Build (or reuse) the prepared cache of a dataset and return its folder.

    The folder is complete or absent: it is written under a temporary name and renamed at the end, so an
    error (an unreadable image under on_bad_image="fail") leaves nothing behind.
    """
    if on_bad_image not in ("fail", "skip"):
        raise FERBenchError(f"on_bad_image={on_bad_image!r}: expected 'fail' or 'skip'")
    check_value(image_size, ImageSide, "image_size")
    spec = get_dataset(name)
    protocol = spec.protocol(label_protocol)
    cache = default_cache_dir(cache_dir)
    report = ReadReport()
    records = spec.read_records(root, protocol, options, cache, report)
    if not records:
        raise FERBenchError(f"dataset {name!r} at {root}: the reader found no images")
    fp = source_fingerprint(records, image_size, protocol)
    out = cache / "prepared" / f"{spec.key(protocol)}-{image_size}px-{fp[:16]}-f{CACHE_FORMAT}"
    if (out / "info.json").is_file():
        return out
    prep = _Preparation(name, root, options, image_size, protocol, spec.num_classes_for(protocol), on_bad_image,
                        workers if workers is not None else default_workers(), progress)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        written = _write_splits(tmp, records, prep)
        info = _info(prep, spec, fp, report, written)
        (tmp / "info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        if out.exists():  # another process finished first: keep theirs
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_splits(folder: Path, records: list[SampleRecord], prep: _Preparation) -> _Written:
    """Each split's Arrow file and pixel file under `folder`, hashing the identity as the images go by."""
    written = _Written()
    identity = IdentityHash(_identity_salt(prep.image_size, prep.protocol))
    for split in SPLITS:
        identity.split(split)
        recs = [r for r in records if r.split == split]
        if not recs:
            raise FERBenchError(f"dataset {prep.name!r} at {prep.root}: no {split} images found")
        counts, bad = _write_split(folder, split, recs, prep, identity)
        written.counts[split] = counts
        written.bad += bad
    written.identity = identity.hexdigest()
    return written


def _write_split(folder: Path, split: str, recs: list[SampleRecord], prep: _Preparation,
                 identity: IdentityHash) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """One split: ids and labels to `<split>.arrow`, pixels to its raw file. Returns (counts, images left out)."""
    writer = ArrowWriter(features=_features(), path=str(folder / f"{split}.arrow"))
    batch: dict[str, list] = {"id": [], "label": [], "native_label": []}
    per_class = [0] * prep.num_classes
    bad: list[dict[str, str]] = []
    with open(images_file(folder, split), "wb") as pixels:
        for r, img in zip(recs, _decoded(recs, split, prep)):
            if isinstance(img, str):
                bad.append(_bad_image(r, img, prep.on_bad_image))
                continue
            pixels.write(np.ascontiguousarray(img, dtype=np.uint8).tobytes())
            identity.add(r.id, r.label, r.native_label, img)
            for k, v in (("id", r.id), ("label", r.label), ("native_label", r.native_label)):
                batch[k].append(v)
            per_class[r.label] += 1
            if len(batch["id"]) >= 1024:
                writer.write_batch(batch)
                batch = {k: [] for k in batch}
    if batch["id"]:
        writer.write_batch(batch)
    n, _ = writer.finalize()
    return {"images": n, "per_class": per_class}, bad


def _decoded(recs: list[SampleRecord], split: str, prep: _Preparation) -> Iterator[np.ndarray | str]:
    """The split's decoded images (or error strings), in order, with a progress bar if asked."""
    it = decode_records(recs, prep.image_size, prep.workers)
    if prep.progress:
        from tqdm import tqdm

        it = tqdm(it, total=len(recs), desc=f"prepare {prep.name} {split}", unit="img")
    return it


def _bad_image(r: SampleRecord, error: str, on_bad_image: str) -> dict[str, str]:
    """The entry of an unreadable image in info.json's `bad_images`, or a FERBenchError under "fail"."""
    if on_bad_image == "fail":
        raise FERBenchError(f"{r.path}: unreadable image ({error}); use --on-bad-image skip to leave such images out")
    return {"id": r.id, "path": r.path, "error": error}


def _info(prep: _Preparation, spec: DatasetSpec, fp: str, report: ReadReport, written: _Written) -> dict[str, Any]:
    """info.json: what was prepared, from what, and the dataset's identity."""
    protocol = prep.protocol
    return {
        "dataset": spec.key(protocol),
        "dataset_name": prep.name,
        "label_protocol": protocol,
        "root": str(prep.root) if prep.root else None,
        "options": prep.options or {},
        "image_size": prep.image_size,
        "source_stamp": fp,
        "identity": written.identity,
        "class_names": list(spec.class_names_for(protocol)),
        "native_codes": {str(c): code for c, code in spec.native_codes(protocol).items()},
        "counts": written.counts,
        "dropped": {f"{split}: {reason}": n for (split, reason), n in sorted(report.dropped.items())},
        "reader_notes": report.notes,
        "bad_images": written.bad,
        "prepare_version": PREPARE_VERSION,
        "cache_format": CACHE_FORMAT,
    }


def load_prepared(path: str | Path) -> PreparedDataset:
    path = Path(path)
    info = json.loads((path / "info.json").read_text())
    size = info["image_size"]
    splits = {}
    for split in SPLITS:
        ds = datasets.Dataset.from_file(str(path / f"{split}.arrow"))
        table = ds.data.table
        n = info["counts"][split]["images"]
        splits[split] = PreparedSplit(
            ids=table.column("id").to_pylist(),
            # copy-on-write: writable (torch takes it without a warning) and never written back; no copy is made
            images=np.memmap(images_file(path, split), dtype=np.uint8, mode="c", shape=(n, size, size, 3)),
            labels=table.column("label").to_numpy().astype(np.int64),
            native_labels=table.column("native_label").to_numpy().astype(np.int64),
        )
    identity = info.get("identity")
    if identity is None:  # a cache prepared before identities were made of content: computed once, kept
        identity = content_identity(splits, _identity_salt(info['image_size'], info['label_protocol'],
                                                               info.get('prepare_version', PREPARE_VERSION)))
        info["identity"] = identity
        tmp = path / f"info.json.tmp{os.getpid()}"
        try:
            tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
            os.replace(tmp, path / "info.json")
        except OSError:  # a read-only cache: computed again next time
            tmp.unlink(missing_ok=True)
    return PreparedDataset(
        name=info["dataset"],
        path=path,
        class_names=tuple(info["class_names"]),
        fingerprint=identity,
        info=info,
        train=splits["train"],
        test=splits["test"],
    )
