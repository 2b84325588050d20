"""ImageNet: an ``ImageFolder`` over ``root/<split>/<class>/*.JPEG`` with the standard preprocessing.

The paper's results are on ImageNet (``profit-edu train --recipe mobilenet_v2_w4a4_imagenet``). Unlike CIFAR-10,
ImageNet does not fit in memory: its images are decoded and augmented per batch in DataLoader worker processes.

``split``
    ``"train"`` or ``"val"`` (``val/`` sorted into class folders, as torchvision's ``ImageNet`` prepares it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .._validate import check_int
from .constants import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:  # torchvision is imported where it is used: `import profit_edu` stays fast
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import Compose

__all__ = ["imagenet_folder", "imagenet_transforms"]


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

