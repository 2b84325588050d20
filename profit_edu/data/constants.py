"""The data sets' fixed numbers, defined once: CIFAR-10's class names and statistics, ImageNet's statistics.

Every module that needs one imports it from here (the loaders, the packed-model converter and its command).

``mean, std``
    per-channel statistics in units of the [0, 1] range: a loader feeds ``(x / 255 - mean) / std`` to the model.

>>> CIFAR10_CLASSES[3], round(CIFAR10_MEAN[0] * 255, 1)
('cat', 125.3)
"""

from __future__ import annotations

__all__ = ["CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "IMAGENET_MEAN", "IMAGENET_STD"]

#: CIFAR-10's class names in label order (Krizhevsky, 2009). Sorted by name, so class folders sorted by name
#: give the standard labels.
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

#: Per-channel mean and standard deviation of the CIFAR-10 train split, in [0, 1] units (of 255: 125.3, 122.9,
#: 113.9 and 62.5, 61.9, 66.5), as in the data README; :func:`~profit_edu.data.pixel_stats` on the offline JPEG
#: copy's train split gives 125.27, 122.93, 113.86 and 62.53, 61.91, 66.46.
CIFAR10_MEAN: tuple[float, float, float] = (125.3 / 255, 122.9 / 255, 113.9 / 255)
CIFAR10_STD: tuple[float, float, float] = (62.5 / 255, 61.9 / 255, 66.5 / 255)

#: The ImageNet statistics every torchvision classifier (and PROFIT's code) normalises with.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
