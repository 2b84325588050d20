"""A loader that keeps a whole data set on the device and makes every batch with a few tensor ops.

At 32x32 pixels all of CIFAR-10 is 150 MB of ``uint8``: it fits on a GPU, so :class:`DeviceLoader` moves it there
once and shuffles, crops and flips whole batches with tensor ops, instead of decoding and augmenting images one
by one in worker processes. Every random choice is a pure function of ``(seed, epoch)``, so a run resumed at
epoch ``e`` sees exactly the batches of an unbroken run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validate import check_int
from .arrays import ImageArrays, _mix_seed
from .constants import CIFAR10_MEAN, CIFAR10_STD

__all__ = ["DeviceLoader"]


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
        mean, std: per-channel normalisation in [0, 1] units; default CIFAR-10's (see
            :func:`~profit_edu.data.pixel_stats`).
        crop_padding: pixels of padding for the random crop; 0 turns cropping off.
        flip: random horizontal flips.
        padding_mode: ``"zeros"`` or ``"reflect"``.
        drop_last: drop the last partial batch; default True when training, False otherwise.

    Raises:
        TypeError, ValueError: for bad arguments, e.g. ``drop_last=True`` with ``train=False`` (evaluation must see
            every image) or a training set smaller than one batch with ``drop_last``.

    >>> from profit_edu.data import synthetic
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
        self.batch_size = check_int("batch_size", batch_size, 1)
        if not isinstance(train, bool):
            raise TypeError(f"train must be a bool, got {train!r}")
        self.seed = check_int("seed", seed, 0)
        self.crop_padding = check_int("crop_padding", crop_padding, 0)
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
        self.epoch = check_int("epoch", epoch, 0)

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

