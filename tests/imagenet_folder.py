"""A tiny ImageNet-layout folder and recipe for the tests of ``profit-edu reproduce``.

The images are the synthetic task of :func:`profit_edu.data.synthetic` (a class is a shape and colour family, so
a small network learns it), saved as JPEG files in ``root/{train,val}/n<class>/``.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from profit_edu.data import synthetic

#: A recipe of three phases on that folder: activations to 4 bits (calibrated), then the PROFIT stage at 4-bit
#: weights (one sampling epoch, a fine-tune with the top third of the AIWQ ranking frozen). Its float start is a
#: trained run (``--init``), as PROFIT's is, so that it trains in a well-conditioned regime.
TINY_RECIPE = """\
version: 1
name: tiny_imagenet
teacher: none
seed: 0
model: {arch: mobilenet_v1, num_classes: 4, width_mult: 0.25, cifar_stem: true}
data: {dataset: imagenet, root: unused, batch_size: 16, image_size: 32, workers: 0, calibration_images: 32}
train: {lr: 0.005, weight_decay: 4.0e-5, ema_decay: 0.9}
schedule: {fp_epochs: 0, warmup_epochs: 0, act_bits: [4], weight_bits: [4], profit_bits: [4], bn_stabilize: false,
           ft_epochs: 2, sampling_epochs: 1, freeze_fractions: ["1/3"]}
aiwq: {ema: 0.9}
reproduce: {lr_scaling: linear}
"""


def make_imagenet_folder(root: str | Path, *, classes: int = 4, train: int = 16, val: int = 4, size: int = 40,
                         seed: int = 0) -> Path:
    """``root/train/n0000000k/*.JPEG`` (``train`` images a class) and ``root/val/...`` (``val``); returns root."""
    root = Path(root)
    data = synthetic(classes * (train + val), num_classes=classes, image_size=size, seed=seed)
    seen: dict[int, int] = {}
    for i in range(len(data)):
        label = int(data.labels[i])
        k = seen[label] = seen.get(label, 0) + 1
        folder = root / ("train" if k <= train else "val") / f"n{label:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(data.images[i].permute(1, 2, 0).numpy()).save(folder / f"img_{i}.JPEG", quality=90)
    return root


def write_recipe(path: str | Path, text: str = TINY_RECIPE) -> Path:
    path = Path(path)
    path.write_text(text)
    return path
