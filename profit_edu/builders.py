"""What a recipe names, built: the float model, its trained init, the teacher, the data loaders (chapter 7).

A :class:`~profit_edu.recipe.Recipe` is data; these functions turn its ``model``, ``init``, ``teacher`` and
``data`` sections into the objects :func:`profit_edu.pipeline.run_recipe` trains, and refuse, before any
training, what does not fit (an init of another model, a teacher with other classes).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import data as pdata
from .checkpoint import CheckpointError, load_checkpoint
from .models import load_torchvision_weights
from .models._common import stem_stride_for
from .pretrained import PRETRAINED, pretrained_dir
from .recipe import Recipe, RecipeError

__all__ = ["build_loaders", "build_model", "build_teacher", "load_init"]


def build_model(recipe: Recipe, *, pretrained: bool = True) -> nn.Module:
    """The recipe's float model (with torchvision weights when ``model.pretrained`` says so and ``pretrained``)."""
    m = recipe.model
    model = m.build()
    if pretrained and m.pretrained == "torchvision":
        import torchvision

        weights = torchvision.models.get_model_weights(m.arch).DEFAULT
        if m.num_classes != len(weights.meta["categories"]) or m.width_mult != 1.0:
            raise RecipeError(f"{recipe.where('model', 'pretrained')}: torchvision's {m.arch} weights have "
                              f"{len(weights.meta['categories'])} classes and width 1.0")
        load_torchvision_weights(model, weights.get_state_dict(progress=False))
    return model


def load_init(recipe: Recipe, source: str | os.PathLike | None = None) -> nn.Module:
    """The recipe's float model with the weights of a trained float run: where quantization starts.

    ``source`` (default: the recipe's ``init``) is the name of a shipped pretrained checkpoint (see
    :data:`profit_edu.pretrained.PRETRAINED`; sha256-checked) or a ``profit-edu train`` run directory.

    Raises:
        RecipeError: no source, a source that is not a float run of the recipe's model (every differing field is
            named), or a checkpoint that does not load.
    """
    source = recipe.init if source is None else source
    if source is None:
        raise RecipeError(f"recipe {recipe.name!r} has no init: pass a run directory or one of {sorted(PRETRAINED)}")
    path = pretrained_dir(str(source)) if str(source) in PRETRAINED else Path(source)
    try:
        state = load_checkpoint(path)
    except (CheckpointError, FileNotFoundError) as err:
        raise RecipeError(f"init {source}: {err}") from err
    saved = state.meta.get("model_args") or {}
    m = recipe.model
    want = {"model": m.arch, "num_classes": m.num_classes, "width_mult": m.width_mult, "cifar_stem": m.cifar_stem,
            "stem_stride": stem_stride_for(m.cifar_stem, m.stem_stride), "weight_bits": None, "act_bits": None}
    have = {k: saved.get(k) for k in want}
    if isinstance(have["cifar_stem"], bool) and have["stem_stride"] in (None, 1, 2):
        have["stem_stride"] = stem_stride_for(have["cifar_stem"], have["stem_stride"])
    differ = [f"{k}: {have[k]!r} there, {want[k]!r} in the recipe" for k in want if have[k] != want[k]]
    if differ:
        raise RecipeError(f"init {source} is not a float run of the recipe's model ({'; '.join(differ)})")
    model = build_model(recipe, pretrained=False)
    try:
        state.restore(model)
    except CheckpointError as err:
        raise RecipeError(f"init {source} does not load into the recipe's model: {err}") from err
    return model


def build_teacher(recipe: Recipe) -> nn.Module | None:
    """A frozen torchvision ImageNet classifier for ``teacher: <name>`` (downloads its weights); None for
    ``none`` and ``self`` (:func:`run_recipe` copies the float student after the FP phase for ``self``)."""
    if recipe.teacher in ("none", "self"):
        return None
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(recipe.teacher).DEFAULT
    except ValueError as err:
        raise RecipeError(f"{recipe.where('teacher')}: teacher {recipe.teacher!r} is not a torchvision "
                          "classifier; use none, self, or e.g. resnet101") from err
    if len(weights.meta["categories"]) != recipe.model.num_classes:
        raise RecipeError(f"{recipe.where('teacher')}: teacher {recipe.teacher} predicts "
                          f"{len(weights.meta['categories'])} classes, the student {recipe.model.num_classes}")
    teacher = torchvision.models.get_model(recipe.teacher, weights=weights).eval()
    return teacher.requires_grad_(False)


def build_loaders(recipe: Recipe, *, device: str | torch.device = "cpu", download: bool = False
                  ) -> tuple[Any, Any, str]:
    """(train loader, validation loader, a one-line description of the data) for the recipe's ``data``.

    CIFAR-10 and synthetic data use :class:`~profit_edu.data.DeviceLoader`; ImageNet folders a torch
    ``DataLoader`` with ``workers`` processes. With ``dataset: auto`` the description says when the synthetic
    task replaced a missing CIFAR-10 copy.
    """
    d, seed = recipe.data, recipe.seed
    if d.dataset == "imagenet":
        from torch.utils.data import DataLoader

        train = pdata.imagenet_folder(d.root, "train", image_size=d.image_size)
        val = pdata.imagenet_folder(d.root, "val", image_size=d.image_size)
        common = {"num_workers": d.workers, "pin_memory": torch.device(device).type == "cuda",
                  "persistent_workers": d.workers > 0}
        return (DataLoader(train, d.batch_size, shuffle=True, drop_last=True, **common),
                DataLoader(val, d.batch_size, shuffle=False, **common), f"ImageNet folders in {d.root}")
    if d.dataset == "synthetic":
        n_train, n_val = d.train_images or 2048, d.val_images or 512
        train = pdata.synthetic(n_train, num_classes=recipe.model.num_classes, image_size=d.image_size,
                                seed=2 * seed)
        val = pdata.synthetic(n_val, num_classes=recipe.model.num_classes, image_size=d.image_size,
                              seed=2 * seed + 1)
        what = "synthetic images"
    elif d.dataset == "auto":
        train, fell_back = pdata.cifar10_or_synthetic(True, n=d.train_images, seed=seed)
        val, _ = pdata.cifar10_or_synthetic(False, n=d.val_images, seed=seed)
        what = "SYNTHETIC images (CIFAR-10 not found)" if fell_back else "CIFAR-10"
    else:
        train = pdata.cifar10(train=True, download=download)
        val = pdata.cifar10(train=False, download=download)
        train = pdata.subset(train, d.train_images, seed=seed) if d.train_images else train
        val = pdata.subset(val, d.val_images, seed=seed) if d.val_images else val
        what = "CIFAR-10"
    crop = max(1, d.image_size // 8)
    train_loader = pdata.DeviceLoader(train, d.batch_size, train=True, device=device, seed=seed,
                                      crop_padding=crop, drop_last=len(train) >= d.batch_size)
    val_loader = pdata.DeviceLoader(val, 256, train=False, device=device)
    return train_loader, val_loader, f"{what}: {len(train)} train / {len(val)} test images"
