"""CIFAR-10 from an offline JPEG copy, the official python batches or a checksummed download, with a decoded cache.

PROFIT (Park & Yoo, ECCV 2020) reports ImageNet results; this book reproduces the phenomena on CIFAR-10. Where
CIFAR-10 comes from (:func:`cifar10`), first match wins:

1. a *decoded cache*: ``cifar10-<split>.safetensors`` in the cache directory, holding the images as ``uint8``.
   It records where it was decoded from (path, file count, size, modification time); when that source is
   present but has changed, the cache is rebuilt rather than silently reused;
2. a *local copy* under a root folder, in any of three layouts: ``<split>/<class>/*.jpg`` folders,
   ``<split>.tar.gz`` tarballs of those folders (the development machines' offline copy
   ``<shared data>/cifar10-jpeg``), or the official python format ``cifar-10-batches-py/``;
3. the *official download* (``download=True``), through torchvision, checked against its MD5 checksum.

Where to look, resolved each time :func:`cifar10` is called:

``root``
    the argument, else ``$PROFIT_EDU_CIFAR10`` (then the only place searched), else the first of
    ``<cache dir>/cifar10`` and ``<shared data>/cifar10-jpeg`` that holds the split.
``<cache dir>``
    ``$PROFIT_EDU_DATA`` if set, else ``<checkout>/data/cache`` in a source checkout, else ``~/.cache/profit_edu``
    (:func:`default_cache_dir`).
``<shared data>``
    ``$PROFIT_EDU_SHARED_DATA`` if set, else ``<checkout>/../shared/data`` in a source checkout, else none
    (:func:`profit_edu._paths.shared_data_dir`).

Decoding the 60,000 JPEGs takes about 10 s on two cores, once; a cached load takes well under a second.
:func:`cifar10_or_synthetic` never downloads: without a copy it returns the synthetic task, and
:func:`data_banner` says so.

``split``
    ``"train"`` or ``"test"`` (50,000 / 10,000 images).
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
import torch
from PIL import Image

from .. import _paths
from .._validate import check_int
from .arrays import ImageArrays, _mix_seed, subset, synthetic
from .constants import CIFAR10_CLASSES

__all__ = ["CACHE_ENV", "CIFAR10_ENV", "cifar10", "cifar10_or_synthetic", "data_banner", "default_cache_dir"]

logger = logging.getLogger(__name__)

CIFAR10_ENV = "PROFIT_EDU_CIFAR10"  # a root folder holding CIFAR-10 in one of the layouts above
CACHE_ENV = "PROFIT_EDU_DATA"  # the cache directory

_CACHE_FORMAT = "profit_edu.cifar10.uint8/1"  # bump when the cache's content changes meaning
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_TARBALL_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_PYTHON_FOLDER = "cifar-10-batches-py"  # the official python-format release, as torchvision extracts it
_SHARED_NAME = "cifar10-jpeg"  # the offline copy's folder inside the shared data folder
_CIFAR10_SIZES = {"train": 50_000, "test": 10_000}


# ---------------------------------------------------------------------------------------------------------------
# Where to look
# ---------------------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """The directory for downloads and decoded arrays, resolved when called.

    ``$PROFIT_EDU_DATA`` if set, else ``<checkout>/data/cache`` when running from a source checkout
    (:func:`profit_edu._paths.source_checkout`), else ``~/.cache/profit_edu``.
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    checkout = _paths.source_checkout()
    if checkout is not None:
        return checkout / "data" / "cache"
    return Path.home() / ".cache" / "profit_edu"


@dataclass(frozen=True)
class _Source:
    """One split of CIFAR-10 on disk: a ``<split>/`` folder, a tarball, or a ``cifar-10-batches-py/`` folder."""

    kind: Literal["folder", "tarball", "python"]
    path: Path
    split: str

    def describe(self) -> str:
        what = {"folder": "JPEG folder", "tarball": "JPEG tarball", "python": "official python batches"}[self.kind]
        return f"CIFAR-10 {self.split} ({what} {self.path})"


def _find_split(root: Path, split: str) -> _Source | None:
    """Return the first layout of ``split`` found under ``root``, or None."""
    if (root / split).is_dir():  # an extracted folder wins over a tarball beside it
        return _Source("folder", root / split, split)
    for suffix in _TARBALL_SUFFIXES:
        if (root / f"{split}{suffix}").is_file():
            return _Source("tarball", root / f"{split}{suffix}", split)
    if (root / _PYTHON_FOLDER).is_dir():
        return _Source("python", root / _PYTHON_FOLDER, split)
    return None


def _candidate_roots(root: str | os.PathLike[str] | None, cache_dir: Path) -> tuple[list[tuple[Path, str]], bool]:
    """Return ``([(folder, why it is a candidate), ...], explicit)``; explicit roots are the only candidate."""
    if root is not None:
        return [(Path(root).expanduser(), "the root argument")], True
    env = os.environ.get(CIFAR10_ENV)
    if env:
        return [(Path(env).expanduser(), f"${CIFAR10_ENV}")], True
    candidates = [(cache_dir / "cifar10", "under the cache directory")]
    shared = _paths.shared_data_dir()
    if shared is not None:
        candidates.append((shared / _SHARED_NAME, "the offline copy"))
    return candidates, False


def _fingerprint(source: _Source) -> str:
    """A JSON string that changes when the source's files change: path, file count, total size, newest mtime."""
    if source.kind == "folder":
        files = [e for d in os.scandir(source.path) if d.is_dir() for e in os.scandir(d.path) if e.is_file()]
    elif source.kind == "tarball":
        files = [source.path]
    else:
        names = _python_batches(source.split)
        files = [source.path / name for name in names if (source.path / name).is_file()]
    stats = [os.stat(f) for f in files]
    return json.dumps(
        {
            "kind": source.kind,
            "path": str(source.path.resolve()),
            "files": len(stats),
            "bytes": sum(s.st_size for s in stats),
            "mtime_ns": max((s.st_mtime_ns for s in stats), default=0),
        },
        sort_keys=True,
    )


# ---------------------------------------------------------------------------------------------------------------
# Reading and decoding
# ---------------------------------------------------------------------------------------------------------------


def _decode_jpeg(blob: bytes, name: str) -> np.ndarray:
    """Decode one image file's bytes to an ``(H, W, 3) uint8`` RGB array (PIL; grayscale becomes RGB)."""
    try:
        with Image.open(io.BytesIO(blob)) as image:
            return np.asarray(image.convert("RGB"))
    except OSError as err:
        raise ValueError(f"cannot decode image {name}: {err}") from err


def _is_image(name: str) -> bool:
    return name.lower().endswith(_IMAGE_SUFFIXES) and not name.startswith(".")


def _read_folder(split_dir: Path) -> list[tuple[str, str, bytes]]:
    """Return ``[(class, file name, bytes)]`` for every image in ``split_dir/<class>/``."""
    entries = []
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        for path in sorted(class_dir.iterdir()):
            if path.is_file() and _is_image(path.name):
                entries.append((class_dir.name, path.name, path.read_bytes()))
    return entries


def _read_tarball(tar_path: Path, split: str) -> list[tuple[str, str, bytes]]:
    """Return ``[(class, file name, bytes)]`` for members ``[./]<split>/<class>/<file>`` of a tarball."""
    entries = []
    with tarfile.open(tar_path, "r:*") as tar:
        for member in tar:  # streams the archive once
            parts = PurePosixPath(member.name).parts
            if member.isfile() and len(parts) >= 3 and parts[-3] == split and _is_image(parts[-1]):
                blob = tar.extractfile(member)
                assert blob is not None  # a regular file always has content
                entries.append((parts[-2], parts[-1], blob.read()))
    return entries


def _check_classes(found: Sequence[str], where: str) -> None:
    if tuple(found) != CIFAR10_CLASSES:
        raise ValueError(
            f"{where}: expected one folder per CIFAR-10 class {list(CIFAR10_CLASSES)}, found {list(found)}"
        )


def _decode_entries(entries: list[tuple[str, str, bytes]], source: _Source) -> ImageArrays:
    """Decode JPEG entries (sorted by class, then file name) into an :class:`ImageArrays`."""
    where = source.describe()
    if not entries:
        raise ValueError(f"{where}: no images found; expected files {source.split}/<class>/*.jpg")
    entries = sorted(entries, key=lambda e: (e[0], e[1]))
    classes = sorted({e[0] for e in entries})
    _check_classes(classes, where)
    label_of = {name: i for i, name in enumerate(classes)}
    start = time.perf_counter()
    images = np.empty((len(entries), 32, 32, 3), dtype=np.uint8)
    for i, (class_name, file_name, blob) in enumerate(entries):
        pixels = _decode_jpeg(blob, f"{class_name}/{file_name}")
        if pixels.shape != (32, 32, 3):
            raise ValueError(f"{where}: image {class_name}/{file_name} is {pixels.shape[:2]}, expected 32x32")
        images[i] = pixels
    logger.info("decoded %d images from %s in %.1f s", len(entries), source.path, time.perf_counter() - start)
    labels = torch.tensor([label_of[e[0]] for e in entries], dtype=torch.int64)
    return ImageArrays(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels, CIFAR10_CLASSES, where)


def _python_batches(split: str) -> list[str]:
    from torchvision.datasets import CIFAR10

    return [name for name, _ in (CIFAR10.train_list if split == "train" else CIFAR10.test_list)]


def _read_python(source: _Source) -> ImageArrays:
    """Load the official python-format batches through torchvision.

    The batches are pickles, and unpickling can run code: torchvision's ``CIFAR10`` checks the MD5 of every batch
    (and of ``batches.meta``) against the official checksums *before* it unpickles anything.
    """
    from torchvision.datasets import CIFAR10

    try:
        raw = CIFAR10(str(source.path.parent), train=source.split == "train", download=False)
    except RuntimeError as err:
        raise RuntimeError(
            f"{source.describe()} failed torchvision's MD5 check; delete {source.path} and load again "
            "with download=True"
        ) from err
    _check_classes(raw.classes, source.describe())
    images = torch.from_numpy(np.ascontiguousarray(raw.data)).permute(0, 3, 1, 2).contiguous()  # HWC -> CHW
    return ImageArrays(images, torch.tensor(raw.targets, dtype=torch.int64), CIFAR10_CLASSES, source.describe())


def _read_source(source: _Source) -> ImageArrays:
    if source.kind == "folder":
        return _decode_entries(_read_folder(source.path), source)
    if source.kind == "tarball":
        return _decode_entries(_read_tarball(source.path, source.split), source)
    return _read_python(source)


def _download(target: Path, split: str) -> _Source:
    """Download the official python-format CIFAR-10 into ``target`` with torchvision.

    torchvision fetches ``cifar-10-python.tar.gz`` (163 MB), checks its MD5 (``CIFAR10.tgz_md5``) and extracts it;
    :func:`_read_python` then checks each pickle batch's MD5 before loading it.
    """
    from torchvision.datasets import CIFAR10

    logger.info("downloading CIFAR-10 from %s into %s", CIFAR10.url, target)
    CIFAR10(str(target), train=split == "train", download=True)
    return _Source("python", target / _PYTHON_FOLDER, split)


# ---------------------------------------------------------------------------------------------------------------
# The decoded cache (safetensors, never pickle)
# ---------------------------------------------------------------------------------------------------------------


def _cache_path(cache_dir: Path, split: str) -> Path:
    return cache_dir / f"cifar10-{split}.safetensors"


def _read_cache(path: Path, fingerprint: str | None) -> ImageArrays | None:
    """Load a cache file; None if it is missing, unreadable, or (when ``fingerprint`` is given) stale."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != _CACHE_FORMAT:
                logger.info("ignoring cache %s: format %r, expected %r", path, meta.get("format"), _CACHE_FORMAT)
                return None
            if fingerprint is not None and meta.get("fingerprint") != fingerprint:
                logger.info("cache %s is stale (its source changed); decoding again", path)
                return None
            images, labels = f.get_tensor("images"), f.get_tensor("labels")
    except Exception as err:  # a truncated or foreign file: the cache is disposable, so rebuild it
        logger.warning("ignoring unreadable cache %s: %s", path, err)
        return None
    return ImageArrays(images, labels, tuple(json.loads(meta["classes"])), f"cache {path} of {meta['source']}")


def _write_cache(path: Path, data: ImageArrays, fingerprint: str) -> None:
    """Write ``data`` to ``path`` atomically (the checkpoints' writer); a failure only costs speed, so it is logged."""
    from safetensors.torch import save

    from ..atomic import atomic_write_bytes

    meta = {"format": _CACHE_FORMAT, "fingerprint": fingerprint, "source": data.source,
            "classes": json.dumps(list(data.classes))}  # fmt: skip
    try:
        blob = save({"images": data.images.contiguous(), "labels": data.labels.contiguous()}, metadata=meta)
        atomic_write_bytes(path, blob)
        logger.info("decoded %d CIFAR-10 images once into the cache %s (%.0f MB; $%s moves the cache, deleting it "
                    "only costs the next decode)", len(data), path, len(blob) / 1e6, CACHE_ENV)
    except OSError as err:
        logger.warning("could not write the decoded cache %s (%s); the next load will decode again", path, err)


def _load_cached(source: _Source, cache_dir: Path) -> ImageArrays:
    """Return ``source`` from the cache if it is fresh, else read it and refresh the cache."""
    path, fingerprint = _cache_path(cache_dir, source.split), _fingerprint(source)
    start = time.perf_counter()
    data = _read_cache(path, fingerprint)
    if data is not None:
        logger.info("loaded %s from cache %s in %.2f s", source.describe(), path, time.perf_counter() - start)
        return data
    data = _read_source(source)
    _write_cache(path, data, fingerprint)
    return data


# ---------------------------------------------------------------------------------------------------------------
# The public loaders
# ---------------------------------------------------------------------------------------------------------------


def _why_not(folder: Path, split: str) -> str:
    """Why ``folder`` holds no CIFAR-10 ``split``, for the error that lists every place searched."""
    if folder.is_dir():
        return f"no {split}/, {split}.tar.gz or {_PYTHON_FOLDER}/ inside"
    return "a file, not a folder" if folder.exists() else "no such folder"


def cifar10(
    root: str | os.PathLike[str] | None = None,
    train: bool = True,
    *,
    download: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ImageArrays:
    """Load a CIFAR-10 split as ``uint8`` arrays, from the cache, a local copy, or the official download.

    Shapes: ``images (N, 3, 32, 32) uint8``, ``labels (N,) int64``; N = 50,000 (train) or 10,000 (test).

    Order of sources (see the module docstring): a fresh decoded cache in ``cache_dir``; a local copy under the
    root (``<split>/<class>/*.jpg`` folders, ``<split>.tar.gz``, or ``cifar-10-batches-py/``); the official
    download when ``download=True``. A root given by argument or ``$PROFIT_EDU_CIFAR10`` is the only place
    searched, and is where a download goes; otherwise the default candidates are searched, then any cache left
    from a source that has since disappeared, and a download goes to ``<cache_dir>/cifar10``.

    Args:
        root: a folder holding CIFAR-10 in one of the layouts above; default ``$PROFIT_EDU_CIFAR10`` or the
            default candidates ``<cache_dir>/cifar10`` and ``<shared data>/cifar10-jpeg`` (module docstring).
        train: the 50,000-image train split if True, else the 10,000-image test split.
        download: fetch the official python-format release (163 MB, MD5-checked) when no local copy is found.
        cache_dir: where decoded arrays (and downloads) live; default :func:`default_cache_dir`.

    Returns:
        The split, with labels in the standard order :data:`CIFAR10_CLASSES` (class folders sorted by name).

    Raises:
        TypeError: if ``train`` or ``download`` is not a bool.
        FileNotFoundError: when no source is found; the message lists every place searched.
        ValueError: when a local copy has other class folders or images that are not 32x32.
        RuntimeError: when python-format batches fail their MD5 check.
    """
    for name, flag in (("train", train), ("download", download)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {flag!r} ({type(flag).__name__})")
    split = "train" if train else "test"
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    candidates, explicit = _candidate_roots(root, cache)
    looked = []
    for folder, why in candidates:
        source = _find_split(folder, split) if folder.is_dir() else None
        if source is not None:
            return _load_cached(source, cache)
        looked.append(f"  {folder} ({why}): {_why_not(folder, split)}")
    if not explicit:
        leftover = _read_cache(_cache_path(cache, split), None)
        if leftover is not None:
            logger.info("no CIFAR-10 source found; using %s", leftover.source)
            return leftover
        looked.append(f"  {_cache_path(cache, split)} (decoded cache): missing or unreadable")
    if download:
        target = candidates[0][0] if explicit else cache / "cifar10"
        return _load_cached(_download(target, split), cache)
    raise FileNotFoundError(
        f"CIFAR-10 {split} split not found. Looked in:\n" + "\n".join(looked) + "\n"
        f"Either call cifar10(..., download=True) to fetch the official release (163 MB, MD5-checked) into "
        f"{candidates[0][0] if explicit else cache / 'cifar10'}, or point root= or ${CIFAR10_ENV} at a folder "
        f"holding {split}/<class>/*.jpg, {split}.tar.gz, or {_PYTHON_FOLDER}/."
    )


def cifar10_or_synthetic(train: bool, *, n: int | None = None, seed: int = 0) -> tuple[ImageArrays, bool]:
    """Real CIFAR-10 when a local copy or cache exists (never downloads), else the synthetic task.

    Args:
        train: the train split if True, else the test split.
        n: keep a class-balanced :func:`subset` of ``n`` images (seeded by ``seed``); default the whole split.
            The synthetic fallback has ``n`` images, or as many as the CIFAR-10 split (50,000 / 10,000).
        seed: seeds the subset, or the synthetic images (train and test draws are independent).

    Returns:
        ``(data, fell_back)``: ``fell_back`` is True when ``data`` is synthetic; the book then shows a banner.

    >>> data, fell_back = cifar10_or_synthetic(False, n=100)
    >>> len(data), data.num_classes
    (100, 10)
    """
    split = "train" if train else "test"
    if n is not None:
        check_int("n", n, 1)
    try:
        data = cifar10(train=train)
    except FileNotFoundError as err:
        logger.warning("CIFAR-10 not found, using the synthetic task instead: %s", str(err).splitlines()[0])
        size = n if n is not None else _CIFAR10_SIZES[split]
        return synthetic(size, seed=_mix_seed("synthetic", split, seed)), True
    return (subset(data, n, seed=seed) if n is not None else data), False



def data_banner(fell_back: bool, *, dataset: str = "CIFAR-10") -> str | None:
    """The warning to show when synthetic data replaced ``dataset`` (e.g. :func:`cifar10_or_synthetic`'s
    ``fell_back``); None when it did not. ``profit-edu train`` prints it; chapters show it in a box.

    >>> data_banner(False) is None
    True
    >>> "synthetic" in data_banner(True)
    True
    """
    if not fell_back:
        return None
    return (
        f"No {dataset} copy was found (neither the offline copy nor a download), so this runs on "
        "synthetic data: random images whose labels follow a simple hidden rule. The code paths and "
        "the shapes of the curves are real; the accuracies are not comparable to real "
        f"{dataset} numbers. To use {dataset}: set ${CIFAR10_ENV} to a folder holding train/ and test/ class "
        f"folders, train.tar.gz and test.tar.gz, or {_PYTHON_FOLDER}/ (profit-edu: --cifar-root DIR), or "
        "download it (profit-edu train --download; data.cifar10(download=True))."
    )
