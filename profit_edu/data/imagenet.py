"""ImageNet: an ``ImageFolder`` over ``root/<split>/<class>/*.JPEG`` with the standard preprocessing.

The paper's results are on ImageNet (``profit-edu reproduce --recipe mobilenet_v2_w4a4_imagenet``). Unlike
CIFAR-10, ImageNet does not fit in memory: its images are decoded and augmented per batch in DataLoader worker
processes.

``split``
    ``"train"`` or ``"val"`` (``val/`` sorted into class folders, as torchvision's ``ImageNet`` prepares it).

Before a run of days, :func:`check_imagenet_root` checks the folder layout and the class count. During it,
:class:`SeededImages` augments image i of epoch e with random numbers seeded by (seed, e, i): the same crops and
flips however many processes or loader workers read the data, and after a resume. An image that cannot be read
stops the run with its file name (``bad_images="raise"``, the default), or is replaced by the next readable
image and counted (``"skip"``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .._validate import check_int
from .arrays import _mix_seed
from .constants import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:  # torchvision is imported where it is used: `import profit_edu` stays fast
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import Compose

__all__ = ["BAD_IMAGE_POLICIES", "ImageNetFolderError", "SeededImages", "check_imagenet_root", "imagenet_folder",
           "imagenet_transforms"]

log = logging.getLogger(__name__)

#: What :class:`SeededImages` does with an image it cannot read.
BAD_IMAGE_POLICIES = ("raise", "skip")
#: How many following images ``bad_images="skip"`` tries before it gives up.
MAX_SKIPS = 100


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
    check_int("image_size", image_size, 8)
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
            ``ImageNet`` and the development machines' Tiny-ImageNet copy have it).
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



# --------------------------------------------------------------------------------------------
# Checking the folders before a long run
# --------------------------------------------------------------------------------------------
class ImageNetFolderError(ValueError):
    """An ImageNet folder that cannot train the recipe: the message says what is wrong and what to do."""


def _class_folders(folder: Path, extensions: tuple[str, ...]) -> dict[str, int]:
    """{class folder name: number of images in it}; raises for loose images or empty classes."""
    entries = sorted(os.scandir(folder), key=lambda e: e.name)
    classes = [e for e in entries if e.is_dir() and not e.name.startswith(".")]
    loose = [e.name for e in entries if e.is_file() and e.name.lower().endswith(extensions)]
    if loose and not classes:
        raise ImageNetFolderError(f"{folder} holds {len(loose)} images but no class folders: sort them into one "
                                  f"folder per class ({folder}/<wnid>/{loose[0]}), as torchvision's ImageNet does")
    if not classes:
        raise ImageNetFolderError(f"{folder} holds no class folders: expected {folder}/<class>/<image>.JPEG")
    counts = {}
    for c in classes:
        counts[c.name] = sum(1 for f in os.scandir(c.path) if f.is_file() and f.name.lower().endswith(extensions))
    empty = [name for name, n in counts.items() if n == 0]
    if empty:
        raise ImageNetFolderError(f"{folder}: {len(empty)} class folder(s) hold no images ({', '.join(empty[:3])}"
                                  f"{' ...' if len(empty) > 3 else ''}); images end in {', '.join(extensions)}")
    return counts


def check_imagenet_root(root: str | os.PathLike[str], num_classes: int | None = None) -> dict[str, int]:
    """Check an ImageNet-layout folder before training: both splits, their class folders, the class count.

    Checked: ``root/train`` and ``root/val`` exist and hold class folders (not loose images: an unsorted
    ``val/``), no class folder is empty, both splits have the same classes, there are ``num_classes`` of them,
    and the first image of each split decodes. Nothing is cached; it lists every file once (seconds for
    ImageNet on a local disk).

    Returns:
        ``{"classes": C, "train": images, "val": images}``.

    Raises:
        FileNotFoundError: ``root`` or one of its splits is not a folder.
        ImageNetFolderError: anything else above, saying what to do.
    """
    from PIL import Image
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"ImageNet folder {root} not found: pass the folder that holds train/ and val/")
    found: dict[str, dict[str, int]] = {}
    for split in ("train", "val"):
        folder = root / split
        if not folder.is_dir():
            raise FileNotFoundError(f"ImageNet {split} folder {folder} not found: {root} must hold train/ and val/, "
                                    "each with one folder per class")
        found[split] = _class_folders(folder, IMG_EXTENSIONS)
    only = sorted(set(found["train"]) ^ set(found["val"]))
    if only:
        raise ImageNetFolderError(f"train/ and val/ of {root} have different classes ({len(only)} in one only, e.g. "
                                  f"{only[:3]}): both need the same class folders")
    if num_classes is not None and len(found["train"]) != num_classes:
        raise ImageNetFolderError(f"{root} has {len(found['train'])} classes, but the model predicts {num_classes}: "
                                  "use the matching data (ImageNet has 1000) or a recipe with that num_classes")
    for split in ("train", "val"):
        first_class = next(iter(found[split]))
        first = next(f for f in sorted(os.listdir(root / split / first_class)) if f.lower().endswith(IMG_EXTENSIONS))
        try:
            with Image.open(root / split / first_class / first) as im:
                im.convert("RGB")
        except OSError as err:
            raise ImageNetFolderError(f"cannot decode {root / split / first_class / first}: {err}") from err
    return {"classes": len(found["train"]), "train": sum(found["train"].values()), "val": sum(found["val"].values())}


# --------------------------------------------------------------------------------------------
# Images augmented by (seed, epoch, index)
# --------------------------------------------------------------------------------------------
class SeededImages(torch.utils.data.Dataset):
    """An ``ImageFolder`` whose random augmentation is a function of (seed, epoch, index) alone.

    Indexed by ``(index, epoch)`` pairs (the samplers of :mod:`profit_edu.distributed` yield image indices; the
    reproduce loader pairs them with the epoch) or by a plain index (epoch 0). The transform runs with torch's
    generator seeded by a hash of (``seed``, epoch, index), inside ``torch.random.fork_rng``, so the caller's
    generator is untouched and the crops and flips of an image do not depend on which process or worker reads it.

    Returns ``(image, label, replaced)``: ``replaced`` is 1 when the image could not be read and the next readable
    one was returned in its place (``bad_images="skip"``), else 0.

    Args:
        folder: an ``ImageFolder`` (its own ``transform`` is not used).
        transform: the augmentation (:func:`imagenet_transforms`).
        seed: the run's seed.
        bad_images: ``"raise"`` (an error naming the file) or ``"skip"`` (log it, use the next image, count it).

    Raises:
        ValueError: an unknown ``bad_images``; with ``"raise"``, an unreadable image (on reading it).
    """

    def __init__(self, folder: ImageFolder, transform: Callable[[Any], Tensor], *, seed: int,
                 bad_images: str = "raise") -> None:
        if bad_images not in BAD_IMAGE_POLICIES:
            raise ValueError(f"bad_images must be one of {BAD_IMAGE_POLICIES}, got {bad_images!r}")
        self.folder, self.transform, self.seed, self.bad_images = folder, transform, seed, bad_images

    def __len__(self) -> int:
        return len(self.folder.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, int, int]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        image, label, replaced = self._read(index)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_mix_seed("imagenet", self.seed, epoch, index))
            return self.transform(image), label, replaced

    def _read(self, index: int) -> tuple[Any, int, int]:
        for tries in range(MAX_SKIPS + 1):
            path, label = self.folder.samples[(index + tries) % len(self)]
            try:
                return self.folder.loader(path), label, int(tries > 0)
            except OSError as err:
                if self.bad_images == "raise":
                    raise ValueError(f"cannot read image {path}: {err}. Replace or delete the file, or train on "
                                     "with bad_images='skip' (--bad-images skip), which uses the next image in "
                                     "its place and counts it") from err
                log.warning("cannot read image %s (%s): using the next image in its place", path, err)
        raise ValueError(f"{MAX_SKIPS + 1} images in a row from index {index} cannot be read: is "
                         f"{self.folder.root} damaged?")
