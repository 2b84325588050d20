"""Data sets as in-memory arrays: :class:`ImageArrays`, a seeded synthetic task, seeded subsets, pixel statistics.

Everything a chapter trains on is an :class:`ImageArrays`: the whole data set as one ``uint8`` tensor plus its
labels. At 32x32 pixels all of CIFAR-10 is 150 MB, small enough to sit in memory (and in GPU memory, where the
:class:`~profit_edu.data.DeviceLoader` shuffles and augments it). When no real data is at hand, :func:`synthetic`
makes a ten-class task that a small CNN learns in seconds.

Glossary:

``N, C, H, W``
    images, channels (3, RGB), height, width. Images are stored ``(N, 3, H, W)`` as ``uint8`` in 0..255.
``seed``
    every random choice (synthetic images, subsets) is a pure function of a seed: the same seed gives the same
    data on every machine.
"""

from __future__ import annotations

import hashlib
import math
import operator
from dataclasses import dataclass

import torch
from torch import Tensor

from .._validate import check_int

__all__ = ["ImageArrays", "pixel_stats", "subset", "synthetic"]


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


def pixel_stats(data: ImageArrays) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of ``data``'s pixels, in [0, 1] units (for normalisation).

    Math: ``mean_c = E[x_c] / 255``, ``std_c = sqrt(E[x_c^2] - E[x_c]^2) / 255`` over all images and pixels.

    Args:
        data: the images.

    Returns:
        ``(mean, std)``, each a tuple with one float per channel, ready for :class:`~profit_edu.data.DeviceLoader`.

    >>> mean, std = pixel_stats(synthetic(64, seed=0))
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
# A synthetic ten-class task, and subsets
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
    check_int("n", n, 1)
    check_int("num_classes", num_classes, 2)
    if num_classes > 20:
        raise ValueError(f"num_classes must be in 2..20 (distinct hues run out), got {num_classes}")
    check_int("image_size", image_size, 8)
    check_int("seed", seed, 0)
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
    check_int("n", n, 1)
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

