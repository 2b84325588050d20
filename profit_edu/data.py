"""Data: CIFAR-10 (offline JPEG copy or checksummed download), ImageNet folders, a synthetic task, a GPU loader.

PROFIT (Park & Yoo, ECCV 2020) reports ImageNet results; this book reproduces the phenomena on CIFAR-10 and,
when no real data is at hand, on a synthetic ten-class task. Everything a chapter trains on is an
:class:`ImageArrays`: the whole data set as one ``uint8`` tensor plus its labels. At 32x32 pixels all of CIFAR-10
is 150 MB, small enough to sit in GPU memory, so the :class:`DeviceLoader` shuffles, crops and flips whole
batches there with tensor ops instead of decoding images in worker processes.

Where CIFAR-10 comes from (:func:`cifar10`), first match wins:

1. a *decoded cache*: ``cifar10-<split>.safetensors`` in the cache directory, holding the images as ``uint8``.
   It records where it was decoded from (path, file count, size, modification time); when that source is
   present but has changed, the cache is rebuilt rather than silently reused;
2. a *local copy* under a root folder, in any of three layouts: ``<split>/<class>/*.jpg`` folders,
   ``<split>.tar.gz`` tarballs of those folders (the offline copy in ``../shared/data/cifar10-jpeg``), or the
   official python format ``cifar-10-batches-py/``;
3. the *official download* (``download=True``), through torchvision, checked against its MD5 checksum.

The root is the ``root`` argument, else the environment variable ``PROFIT_EDU_CIFAR10``, else the first of
``<cache dir>/cifar10`` and the repository's ``../shared/data/cifar10-jpeg`` that holds the split. The cache
directory is ``PROFIT_EDU_DATA`` if set, else ``<repo>/data/cache`` in a source checkout, else
``~/.cache/profit_edu``. Decoding the 60,000 JPEGs takes about 10 s on two cores, once; a cached load
takes well under a second.

Glossary:

``split``
    ``"train"`` or ``"test"`` for CIFAR-10 (50,000 / 10,000 images), ``"train"`` or ``"val"`` for ImageNet.
``N, C, H, W``
    images, channels (3, RGB), height, width. Images are stored ``(N, 3, H, W)`` as ``uint8`` in 0..255.
``mean, std``
    per-channel statistics in units of the [0, 1] range: a loader feeds ``(x / 255 - mean) / std`` to the model.
    CIFAR-10's are 125.3/122.9/113.9 and 62.5/61.9/66.5 out of 255 (:data:`CIFAR10_MEAN`, :data:`CIFAR10_STD`).
``seed, epoch``
    every random choice (synthetic images, subsets, shuffling, crops, flips) is a pure function of a seed, and in
    a loader of ``(seed, epoch)``, so a run resumed at epoch ``e`` sees exactly the batches of an unbroken run.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import operator
import os
import tarfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

if TYPE_CHECKING:  # torchvision is imported where it is used: `import profit_edu` stays fast
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import Compose

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DeviceLoader",
    "ImageArrays",
    "channel_stats",
    "cifar10",
    "cifar10_or_synthetic",
    "default_cache_dir",
    "imagenet_folder",
    "imagenet_transforms",
    "subset",
    "synthetic",
]

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------------------

#: CIFAR-10's class names in label order (Krizhevsky, 2009). Sorted by name, so class folders sorted by name
#: give the standard labels.
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

#: Per-channel mean and standard deviation of the CIFAR-10 train split, in [0, 1] units (of 255: 125.3, 122.9,
#: 113.9 and 62.5, 61.9, 66.5), as in the data README; :func:`channel_stats` on the offline JPEG copy's train split
#: gives 125.27, 122.93, 113.86 and 62.53, 61.91, 66.46.
CIFAR10_MEAN: tuple[float, float, float] = (125.3 / 255, 122.9 / 255, 113.9 / 255)
CIFAR10_STD: tuple[float, float, float] = (62.5 / 255, 61.9 / 255, 66.5 / 255)

#: The ImageNet statistics every torchvision classifier (and PROFIT's code) normalises with.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

CIFAR10_ENV = "PROFIT_EDU_CIFAR10"  # a root folder holding CIFAR-10 in one of the layouts above
CACHE_ENV = "PROFIT_EDU_DATA"  # the cache directory

_REPO_ROOT = Path(__file__).resolve().parents[1]  # the checkout holding profit_edu/ (site-packages when installed)
_SHARED_CIFAR10 = _REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg"  # the development machines' offline copy
_CACHE_FORMAT = "profit_edu.cifar10.uint8/1"  # bump when the cache's content changes meaning
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_TARBALL_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_PYTHON_FOLDER = "cifar-10-batches-py"  # the official python-format release, as torchvision extracts it
_CIFAR10_SIZES = {"train": 50_000, "test": 10_000}


# ---------------------------------------------------------------------------------------------------------------
# The data set container
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ImageArrays:
    """A whole image-classification data set in memory: ``uint8`` images and ``int64`` labels.

    Shapes: ``images: (N, 3, H, W) uint8``, ``labels: (N,) int64`` with values in ``0..len(classes)-1``.

    Args:
        images: the pixels, 0..255.
        labels: the class index of each image.
        classes: the class names, in label order.
        source: where the data came from (a path, ``"synthetic(...)"``, a cache file), for logs and banners.

    Raises:
        TypeError: when ``images`` or ``labels`` is not a tensor of the right dtype.
        ValueError: when the shapes disagree or a label is out of range.

    >>> data = synthetic(20, seed=0)
    >>> len(data), tuple(data[0][0].shape), data.num_classes
    (20, (3, 32, 32), 10)
    """

    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]
    source: str

    def __post_init__(self) -> None:
        if not isinstance(self.images, Tensor) or self.images.dtype != torch.uint8:
            raise TypeError(f"images must be a uint8 tensor (N, 3, H, W), got {_describe(self.images)}")
        if not isinstance(self.labels, Tensor) or self.labels.dtype != torch.int64:
            raise TypeError(f"labels must be an int64 tensor (N,), got {_describe(self.labels)}")
        if self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must have shape (N, 3, H, W), got {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must have shape ({self.images.shape[0]},) to match images, got {tuple(self.labels.shape)}"
            )
        if not isinstance(self.classes, tuple) or not all(isinstance(c, str) for c in self.classes):
            raise TypeError(f"classes must be a tuple of str, got {self.classes!r}")
        if len(self.labels) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classes)):
            raise ValueError(
                f"labels must lie in 0..{len(self.classes) - 1} (one per class name), "
                f"got {int(self.labels.min())}..{int(self.labels.max())}"
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        """Return ``(image, label)``: a ``(3, H, W) uint8`` tensor and an int, as a torch ``Dataset`` does."""
        i = operator.index(index)
        return self.images[i], int(self.labels[i])

    @property
    def num_classes(self) -> int:
        """The number of classes, ``len(classes)``."""
        return len(self.classes)

    def class_counts(self) -> list[int]:
        """Return the number of images of each class, in label order."""
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def sha256(self) -> str:
        """A digest of the content: shapes, class names, pixels and labels, in order; not where they were read from.

        The same images decoded from a tarball, a folder or the cache give the same digest (``profit-edu train``
        records it, so that a resumed run can check it trains on the images it started on).

        >>> synthetic(8, seed=0).sha256() == synthetic(8, seed=0).sha256() != synthetic(8, seed=1).sha256()
        True
        """
        h = hashlib.sha256(repr((tuple(self.images.shape), self.classes)).encode())
        for t in (self.images, self.labels):
            h.update(t.contiguous().numpy().data)
        return h.hexdigest()

    def select(self, indices: Tensor, source: str | None = None) -> ImageArrays:
        """Return the images at ``indices`` (an int64 tensor) as a new :class:`ImageArrays`."""
        return ImageArrays(self.images[indices], self.labels[indices], self.classes, source or self.source)


def _describe(x: object) -> str:
    return f"a {x.dtype} tensor" if isinstance(x, Tensor) else f"{type(x).__name__}"


# ---------------------------------------------------------------------------------------------------------------
# Seeds and statistics
# ---------------------------------------------------------------------------------------------------------------


def _mix_seed(*parts: object) -> int:
    """Hash ``parts`` (ints, strings) to a 63-bit seed: nearby inputs give unrelated generators."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {low}, got {value!r} ({type(value).__name__})")
    if value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value}")
    return value


def channel_stats(data: ImageArrays) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of ``data``'s pixels, in [0, 1] units.

    Math: ``mean_c = E[x_c] / 255``, ``std_c = sqrt(E[x_c^2] - E[x_c]^2) / 255`` over all images and pixels.

    Args:
        data: the images.

    Returns:
        ``(mean, std)``, each a tuple with one float per channel, ready for :class:`DeviceLoader`.

    >>> mean, std = channel_stats(synthetic(64, seed=0))
    >>> len(mean), all(0 < s < 1 for s in std)
    (3, True)
    """
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    for start in range(0, len(data), 4096):  # float64 chunks: exact enough, bounded memory
        x = data.images[start : start + 4096].to(torch.float64)
        total += x.sum(dim=(0, 2, 3))
        total_sq += x.square().sum(dim=(0, 2, 3))
    count = len(data) * data.images.shape[2] * data.images.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    return tuple((mean / 255).tolist()), tuple((std / 255).tolist())


# ---------------------------------------------------------------------------------------------------------------
# CIFAR-10: where to look
# ---------------------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """The directory for downloads and decoded arrays.

    ``$PROFIT_EDU_DATA`` if set, else ``<repo>/data/cache`` when running from a source checkout (one whose
    ``data/README.md`` exists), else ``~/.cache/profit_edu``.
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    if (_REPO_ROOT / "data" / "README.md").is_file():
        return _REPO_ROOT / "data" / "cache"
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
    return [(cache_dir / "cifar10", "under the cache directory"), (_SHARED_CIFAR10, "the offline copy")], False


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
# CIFAR-10: reading and decoding
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
# CIFAR-10: the decoded cache (safetensors, never pickle)
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
    """Write ``data`` to ``path`` atomically (temp file + rename); a failure only costs speed, so it is logged."""
    from safetensors.torch import save_file

    meta = {"format": _CACHE_FORMAT, "fingerprint": fingerprint, "source": data.source,
            "classes": json.dumps(list(data.classes))}  # fmt: skip
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"images": data.images.contiguous(), "labels": data.labels.contiguous()}, str(tmp), metadata=meta)
        os.replace(tmp, path)
    except OSError as err:
        logger.warning("could not write the decoded cache %s (%s); the next load will decode again", path, err)
        tmp.unlink(missing_ok=True)


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
# CIFAR-10: the public loaders
# ---------------------------------------------------------------------------------------------------------------


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
            default candidates ``<cache_dir>/cifar10`` and ``<repo>/../shared/data/cifar10-jpeg``.
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
        if folder.is_dir():
            state = f"no {split}/, {split}.tar.gz or {_PYTHON_FOLDER}/ inside"
        else:
            state = "a file, not a folder" if folder.exists() else "no such folder"
        looked.append(f"  {folder} ({why}): {state}")
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
        _check_int("n", n, 1)
    try:
        data = cifar10(train=train)
    except FileNotFoundError as err:
        logger.warning("CIFAR-10 not found, using the synthetic task instead: %s", str(err).splitlines()[0])
        size = n if n is not None else _CIFAR10_SIZES[split]
        return synthetic(size, seed=_mix_seed("synthetic", split, seed)), True
    return (subset(data, n, seed=seed) if n is not None else data), False


# ---------------------------------------------------------------------------------------------------------------
# ImageNet folders
# ---------------------------------------------------------------------------------------------------------------


def imagenet_transforms(train: bool, image_size: int = 224) -> Compose:
    """The standard ImageNet preprocessing (as in torchvision's references and PROFIT's code).

    Train: ``RandomResizedCrop(image_size, bicubic)``, ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``.
    Val: ``Resize(round(image_size * 256 / 224), bicubic)`` (the short side), ``CenterCrop(image_size)``,
    ``ToTensor``, ``Normalize`` with :data:`IMAGENET_MEAN` and :data:`IMAGENET_STD`.

    Shapes: a PIL image of any size -> ``(3, image_size, image_size) float32``.

    Args:
        train: the training (random) or the evaluation (deterministic) pipeline.
        image_size: the side of the square crop, >= 8.

    Raises:
        TypeError, ValueError: for a bad ``train`` or ``image_size``.

    >>> imagenet_transforms(False, 224).transforms[0].size
    256
    """
    from torchvision import transforms as T

    if not isinstance(train, bool):
        raise TypeError(f"train must be a bool, got {train!r}")
    _check_int("image_size", image_size, 8)
    bicubic = T.InterpolationMode.BICUBIC
    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if train:
        return T.Compose([T.RandomResizedCrop(image_size, interpolation=bicubic), T.RandomHorizontalFlip(),
                          T.ToTensor(), normalize])  # fmt: skip
    resize = round(image_size * 256 / 224)  # 224 -> 256: the usual 0.875 centre-crop ratio
    return T.Compose([T.Resize(resize, interpolation=bicubic), T.CenterCrop(image_size), T.ToTensor(), normalize])


def imagenet_folder(root: str | os.PathLike[str], split: str, *, image_size: int = 224) -> ImageFolder:
    """An ImageNet-layout folder ``root/<split>/<wnid>/*.JPEG`` as a torchvision ``ImageFolder``.

    Images are read with PIL and converted to RGB (ImageNet and Tiny-ImageNet hold some grayscale JPEGs), then
    go through :func:`imagenet_transforms`; labels are the class folders sorted by name.

    Args:
        root: the folder holding ``train/`` and ``val/`` (``val/`` sorted into class folders, as torchvision's
            ``ImageNet`` and the Tiny-ImageNet copy in ``../shared/data`` have it).
        split: ``"train"`` or ``"val"``.
        image_size: the side of the square crop.

    Returns:
        A ``torchvision.datasets.ImageFolder`` yielding ``(float32 (3, image_size, image_size), int)``.

    Raises:
        ValueError: for an unknown split.
        FileNotFoundError: when ``root/split`` is not a folder.
    """
    from torchvision.datasets import ImageFolder

    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    folder = Path(root).expanduser() / split
    if not folder.is_dir():
        raise FileNotFoundError(
            f"ImageNet {split} folder {folder} not found: expected {Path(root) / split}/<class>/<image>.JPEG "
            f"(root must hold train/ and val/ sorted into class folders)"
        )
    return ImageFolder(str(folder), transform=imagenet_transforms(split == "train", image_size))


# ---------------------------------------------------------------------------------------------------------------
# A synthetic ten-class task
# ---------------------------------------------------------------------------------------------------------------


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """Vectorised HSV -> RGB; ``h`` in turns (0..1), all ``(N,)``; returns ``(N, 3)`` in [0, 1]."""
    k = (torch.tensor([5.0, 3.0, 1.0]) + h[:, None] * 6) % 6  # (N, 3)
    return v[:, None] - v[:, None] * s[:, None] * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def _render(labels: Tensor, num_classes: int, size: int, gen: torch.Generator) -> Tensor:
    """Draw one image per label: coloured oriented stripes over a dark background, a distractor blob, noise."""
    n = labels.shape[0]

    def uniform(low: float, high: float, *shape: int) -> Tensor:
        return low + (high - low) * torch.rand(n, *shape, generator=gen)

    n_hues = math.ceil(num_classes / 2)
    hue = ((labels % n_hues) + uniform(-0.4, 0.4)) / n_hues  # the class's hue, +-40% of the gap to the next
    angle = (labels // n_hues) * (math.pi / 2) + uniform(-math.pi / 6, math.pi / 6)  # near-horizontal/vertical
    period = uniform(3.5, 7.0) * size / 32
    phase = uniform(0, 2 * math.pi)  # shifts the stripes: no fixed pixel carries the class
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")  # fmt: skip
    along = xx * torch.sin(angle)[:, None, None] + yy * torch.cos(angle)[:, None, None]  # (N, H, W)
    contrast = uniform(0.25, 1.0)[:, None, None]  # faint stripes make some images hard
    stripes = 0.5 + 0.5 * contrast * torch.cos(2 * math.pi * along / period[:, None, None] + phase[:, None, None])
    fg = _hsv_to_rgb(hue, uniform(0.6, 1.0), uniform(0.7, 1.0))  # (N, 3)
    bg = uniform(0.0, 0.35, 3)
    image = bg[:, :, None, None] + (fg - bg)[:, :, None, None] * stripes[:, None]  # (N, 3, H, W)
    centre, radius = uniform(0, size, 2), uniform(2.0, 5.0) * size / 32  # a blob of random colour, anywhere
    dist2 = (xx - centre[:, 0, None, None]) ** 2 + (yy - centre[:, 1, None, None]) ** 2
    blob = torch.exp(-dist2 / (2 * radius[:, None, None] ** 2))[:, None] * 0.8
    image = image * (1 - blob) + uniform(0, 1, 3)[:, :, None, None] * blob
    image = image + 0.12 * torch.randn(image.shape, generator=gen)
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def synthetic(n: int = 2048, *, num_classes: int = 10, image_size: int = 32, seed: int = 0) -> ImageArrays:
    """A seeded image-classification task that a small CNN learns in seconds, for tests and offline chapters.

    Class ``k`` is a hue (one of ``ceil(num_classes / 2)`` evenly spaced around the colour wheel, jittered) and a
    stripe orientation (near-horizontal for the first half of the classes, near-vertical for the second), drawn
    over a random dark background with random stripe width and phase (a random shift), a distractor blob of
    random colour at a random place, and Gaussian pixel noise. Neither colour nor orientation alone suffices.

    Shapes: ``images (n, 3, image_size, image_size) uint8``, ``labels (n,) int64``, balanced (counts differ by
    at most one).

    Args:
        n: the number of images, >= 1.
        num_classes: 2..20.
        image_size: the image side, >= 8.
        seed: the same seed gives the same images; different seeds give independent draws.

    Returns:
        The data set; ``classes`` are names like ``"hue072-vertical"``.

    Raises:
        TypeError, ValueError: for a bad ``n``, ``num_classes``, ``image_size`` or ``seed``.

    >>> a, b = synthetic(8, seed=1), synthetic(8, seed=1)
    >>> torch.equal(a.images, b.images), a.images.dtype
    (True, torch.uint8)
    """
    _check_int("n", n, 1)
    _check_int("num_classes", num_classes, 2)
    if num_classes > 20:
        raise ValueError(f"num_classes must be in 2..20 (distinct hues run out), got {num_classes}")
    _check_int("image_size", image_size, 8)
    _check_int("seed", seed, 0)
    gen = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]
    images = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
    for start in range(0, n, 4096):  # bounded float memory for large n
        images[start : start + 4096] = _render(labels[start : start + 4096], num_classes, image_size, gen)
    n_hues = math.ceil(num_classes / 2)
    classes = tuple(f"hue{round(360 * (k % n_hues) / n_hues):03d}-{('horizontal', 'vertical')[k // n_hues]}"
                    for k in range(num_classes))  # fmt: skip
    source = f"synthetic(n={n}, num_classes={num_classes}, image_size={image_size}, seed={seed})"
    return ImageArrays(images, labels, classes, source)


def subset(data: ImageArrays, n: int, *, seed: int = 0, stratified: bool = True) -> ImageArrays:
    """A seeded random subset of ``n`` images, class-balanced by default (for quick runs).

    With ``stratified=True`` every class gets ``n // C`` images and ``n % C`` classes (chosen by the seed) get one
    more. The kept images stay in their original order.

    Args:
        data: the full data set.
        n: how many images to keep, 1..len(data).
        seed: chooses which images.
        stratified: balance the classes (else a plain uniform sample).

    Returns:
        The subset, with ``source`` noting how it was made.

    Raises:
        ValueError: if ``n`` is out of range or a class has fewer images than its share.

    >>> part = subset(synthetic(100, seed=0), 20)
    >>> len(part), part.class_counts()
    (20, [2, 2, 2, 2, 2, 2, 2, 2, 2, 2])
    """
    _check_int("n", n, 1)
    if n > len(data):
        raise ValueError(f"n must be at most len(data) = {len(data)}, got {n}")
    gen = torch.Generator().manual_seed(_mix_seed("subset", seed))
    if not stratified:
        keep = torch.randperm(len(data), generator=gen)[:n]
    else:
        classes = data.num_classes
        share = torch.full((classes,), n // classes, dtype=torch.int64)
        share[torch.randperm(classes, generator=gen)[: n % classes]] += 1
        picks = []
        for k in range(classes):
            members = torch.nonzero(data.labels == k).flatten()
            if len(members) < share[k]:
                raise ValueError(
                    f"class {k} ({data.classes[k]!r}) has {len(members)} images, fewer than its share {int(share[k])} "
                    f"of n={n}; use a smaller n or stratified=False"
                )
            picks.append(members[torch.randperm(len(members), generator=gen)[: share[k]]])
        keep = torch.cat(picks)
    how = "stratified" if stratified else "uniform"
    return data.select(torch.sort(keep).values, f"{data.source}, {how} subset n={n} seed={seed}")


# ---------------------------------------------------------------------------------------------------------------
# A loader that keeps the data on the device
# ---------------------------------------------------------------------------------------------------------------


class DeviceLoader:
    """Batches of a whole in-memory data set, shuffled and augmented on ``device`` with batched tensor ops.

    The ``uint8`` images move to ``device`` once. Each training epoch draws, from a CPU ``torch.Generator``
    seeded by ``(seed, epoch)``, a permutation, one crop offset and one flip per image; each batch is then cut
    out with one gather from a view holding every possible crop (``Tensor.unfold``), no loop over images. So the
    batches depend only on ``(seed, epoch)``, not on the device or on whether earlier epochs ran: call
    :meth:`set_epoch` before each epoch, as with ``DistributedSampler``; without it every epoch repeats epoch 0.

    Augmentation (train only), the standard CIFAR recipe: pad by ``crop_padding`` pixels and crop back to
    ``H x W`` at a random offset, then flip left-right with probability 1/2. Padding is ``"zeros"`` by default
    (black pixels, as torchvision's ``RandomCrop(32, padding=4)`` and most CIFAR recipes), or ``"reflect"``
    (mirror the border without repeating it). The training loader keeps the padded images, 1.56x the memory for
    CIFAR-10 (240 MB).

    Shapes: yields ``x (B, 3, H, W) float32`` normalised as ``(x / 255 - mean) / std`` and ``y (B,) int64``.

    Args:
        data: the data set.
        batch_size: images per batch, >= 1.
        train: shuffle and augment (and by default drop the last partial batch); if False, the batches are the
            data in order, unaugmented, with the last partial batch kept: every image exactly once.
        device: where the data lives and the batches are made.
        seed: seeds the shuffles and augmentations.
        mean, std: per-channel normalisation in [0, 1] units; default CIFAR-10's (see :func:`channel_stats`).
        crop_padding: pixels of padding for the random crop; 0 turns cropping off.
        flip: random horizontal flips.
        padding_mode: ``"zeros"`` or ``"reflect"``.
        drop_last: drop the last partial batch; default True when training, False otherwise.

    Raises:
        TypeError, ValueError: for bad arguments, e.g. ``drop_last=True`` with ``train=False`` (evaluation must see
            every image) or a training set smaller than one batch with ``drop_last``.

    >>> loader = DeviceLoader(synthetic(10, seed=0), 4, train=False, mean=(0.5,) * 3, std=(0.25,) * 3)
    >>> [tuple(x.shape) for x, y in loader], len(loader)
    ([(4, 3, 32, 32), (4, 3, 32, 32), (2, 3, 32, 32)], 3)
    """

    def __init__(
        self,
        data: ImageArrays,
        batch_size: int,
        *,
        train: bool,
        device: str | torch.device = "cpu",
        seed: int = 0,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
        crop_padding: int = 4,
        flip: bool = True,
        padding_mode: Literal["zeros", "reflect"] = "zeros",
        drop_last: bool | None = None,
    ) -> None:
        if not isinstance(data, ImageArrays):
            raise TypeError(f"data must be an ImageArrays, got {type(data).__name__}")
        self.batch_size = _check_int("batch_size", batch_size, 1)
        if not isinstance(train, bool):
            raise TypeError(f"train must be a bool, got {train!r}")
        self.seed = _check_int("seed", seed, 0)
        self.crop_padding = _check_int("crop_padding", crop_padding, 0)
        if padding_mode not in ("zeros", "reflect"):
            raise ValueError(f"padding_mode must be 'zeros' or 'reflect', got {padding_mode!r}")
        height, width = data.images.shape[2:]
        if padding_mode == "reflect" and crop_padding >= min(height, width):
            raise ValueError(
                f"reflect padding needs crop_padding < image side {min(height, width)}, got {crop_padding}"
            )
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std must hold 3 numbers (one per channel), std > 0; got {mean}, {std}")
        if drop_last is None:
            drop_last = train
        if drop_last and not train:
            raise ValueError("drop_last=True with train=False would skip evaluation images; leave drop_last=None")
        if drop_last and len(data) < batch_size:
            raise ValueError(f"with drop_last, batch_size {batch_size} exceeds the {len(data)} images: no batches")
        self.train, self.flip, self.padding_mode, self.drop_last = train, flip, padding_mode, drop_last
        self.device = torch.device(device)
        self.num_samples, self.image_size = len(data), (height, width)
        self.labels = data.labels.to(self.device)
        self.classes = data.classes
        # uint8 on the device: 4x smaller than float. A training loader stores the images already padded (once, on
        # the CPU), so every crop is a window of a view: _windows[i, :, dy, dx] is image i cropped at (dy, dx).
        p = crop_padding if train else 0
        torch_mode = "constant" if padding_mode == "zeros" else "reflect"
        self._padded = (F.pad(data.images, (p, p, p, p), mode=torch_mode) if p else data.images).to(self.device)
        self._windows = self._padded.unfold(2, height, 1).unfold(3, width, 1)  # (N, 3, 2p+1, 2p+1, H, W), a view
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose shuffle and augmentation the next iteration uses (a pure function of it)."""
        self.epoch = _check_int("epoch", epoch, 0)

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = self.num_samples
        if not self.train:
            for start in range(0, n, self.batch_size):
                stop = start + self.batch_size
                yield self._normalize(self._padded[start:stop]), self.labels[start:stop]
            return
        # all of the epoch's randomness, drawn on the CPU: the same batches on every device
        gen = torch.Generator().manual_seed(_mix_seed("DeviceLoader", self.seed, self.epoch))
        order = torch.randperm(n, generator=gen)
        offsets = torch.randint(0, 2 * self.crop_padding + 1, (n, 2), generator=gen)  # (dy, dx) into the padding
        flips = torch.rand(n, generator=gen) < 0.5
        order, offsets, flips = order.to(self.device), offsets.to(self.device), flips.to(self.device)
        for b in range(len(self)):
            rows = slice(b * self.batch_size, (b + 1) * self.batch_size)
            index = order[rows]
            x = self._augment(index, offsets[rows], flips[rows])
            yield self._normalize(x), self.labels[index]

    def _augment(self, index: Tensor, offsets: Tensor, flips: Tensor) -> Tensor:
        """Crop images ``index`` at ``offsets`` (B, 2) and flip where ``flips``: ``(B, 3, H, W) uint8``."""
        if self.crop_padding:
            x = self._windows[index, :, offsets[:, 0], offsets[:, 1]]  # one gather: each image's own window
        else:
            x = self._padded[index]
        if self.flip:
            x = torch.where(flips[:, None, None, None], x.flip(-1), x)
        return x

    def _normalize(self, x: Tensor) -> Tensor:
        return (x.to(torch.float32) / 255 - self._mean) / self._std
