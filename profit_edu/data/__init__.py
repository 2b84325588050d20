"""Data: CIFAR-10 (offline JPEG copy or checksummed download), ImageNet folders, a synthetic task, a device loader.

Modules, in reading order:

* :mod:`.constants` - CIFAR-10's class names and statistics, ImageNet's statistics (defined once);
* :mod:`.arrays` - :class:`ImageArrays` (a whole data set as ``uint8`` tensors), :func:`synthetic`,
  :func:`subset`, :func:`pixel_stats`;
* :mod:`.loader` - :class:`DeviceLoader`: shuffling and augmentation on the device, seeded by ``(seed, epoch)``;
* :mod:`.cifar` - :func:`cifar10` from a cache, a local copy or the official download;
  :func:`cifar10_or_synthetic` and its :func:`data_banner`; where it looks (``$PROFIT_EDU_CIFAR10``,
  ``$PROFIT_EDU_DATA``, ``$PROFIT_EDU_SHARED_DATA``) is in its docstring;
* :mod:`.imagenet` - :func:`imagenet_folder` and :func:`imagenet_transforms`; :func:`check_imagenet_root` (the
  layout and class count, before a long run) and :class:`SeededImages` (augmentation seeded per image).

>>> data = synthetic(8, seed=0)
>>> [tuple(x.shape) for x, _ in DeviceLoader(data, 8, train=False)]
[(8, 3, 32, 32)]
"""

from .arrays import ImageArrays, pixel_stats, subset, synthetic
from .cifar import CACHE_ENV, CIFAR10_ENV, cifar10, cifar10_or_synthetic, data_banner, default_cache_dir
from .constants import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD
from .imagenet import ImageNetFolderError, SeededImages, check_imagenet_root, imagenet_folder, imagenet_transforms
from .loader import DeviceLoader

__all__ = [
    "CACHE_ENV",
    "CIFAR10_CLASSES",
    "CIFAR10_ENV",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DeviceLoader",
    "ImageArrays",
    "ImageNetFolderError",
    "SeededImages",
    "check_imagenet_root",
    "cifar10",
    "cifar10_or_synthetic",
    "data_banner",
    "default_cache_dir",
    "imagenet_folder",
    "imagenet_transforms",
    "pixel_stats",
    "subset",
    "synthetic",
]
