"""Pretrained float checkpoints: where quick-scale quantization starts, as PROFIT starts from pretrained weights.

Quantization-aware training is fine-tuning: PROFIT (and every method it compares with) starts from a trained
float network. Training the shipped one on CIFAR-10 took 75 epochs and 77 minutes on a shared 2-core CPU (the
epoch times are in its ``checkpoint.json`` history), so the repository ships the result
of one ``profit-edu train`` run, released with :func:`~profit_edu.checkpoint.release_checkpoint` (weights only),
in ``data/pretrained/<name>/``. Its tensor file's sha256 is pinned in :data:`PRETRAINED` (and in
``data/pretrained/<name>/SHA256SUMS``), and its top-1 is a line of the ledger with the command that trained it.

>>> sorted(PRETRAINED)
['cifar10-mobilenet_v2-w0.5-s2']

:func:`pretrained_dir` finds a checkpoint (``data/pretrained`` of the source checkout, when ``profit_edu`` runs
from one, else the download cache, else, with ``download=True``, the repository's copy on GitHub), checks its
pinned sha256 and returns the run directory, which ``profit-edu evaluate`` and the accuracy benchmark's
``--init`` take as it is.
:func:`load_pretrained` builds the float model and loads the weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from . import _paths
from .atomic import atomic_write_bytes
from .checkpoint import JSON_NAME, Checkpoint, CheckpointError, load_checkpoint
from .data import default_cache_dir
from .models import get_model

__all__ = ["BASE_URL", "PRETRAINED", "Pretrained", "fetch_weights", "load_pretrained", "pretrained_dir"]

#: The repository's raw files (its URL is the one in the book's ``_config.yml``; a test checks they agree).
BASE_URL = "https://raw.githubusercontent.com/profit-edu/profit_edu/main/data/pretrained"


@dataclass(frozen=True)
class Pretrained:
    """One shipped float checkpoint.

    Attributes:
        name: its directory name under ``data/pretrained``.
        model_args: the builder and its arguments, as ``profit-edu train`` records them.
        sha256: of its tensor file (pinned: a different file is refused).
        ledger_id: the ledger line that holds its measured top-1 on the CIFAR-10 test split, and its command.
    """

    name: str
    model_args: dict[str, Any]
    sha256: str
    ledger_id: str


PRETRAINED: dict[str, Pretrained] = {
    p.name: p for p in [
        Pretrained(
            name="cifar10-mobilenet_v2-w0.5-s2",
            model_args={"model": "mobilenet_v2", "num_classes": 10, "width_mult": 0.5, "cifar_stem": True,
                        "stem_stride": 2, "negative_padding": False, "weight_bits": None, "act_bits": None},
            sha256="0875a721e6f573c1fa42b492d1a7a3e2afa905b579ea1139cef32d5db53cea6f",
            ledger_id="pretrained/cifar10-mobilenet_v2-w0.5-s2/top1",
        ),
    ]
}


def _lookup(name: str) -> Pretrained:
    if name not in PRETRAINED:
        raise KeyError(f"no pretrained checkpoint {name!r}; shipped: {sorted(PRETRAINED)}")
    return PRETRAINED[name]


def _verified(directory: Path, entry: Pretrained) -> Checkpoint:
    """The checkpoint in ``directory`` if it loads (sizes and sha256 checked) and is the pinned one; else an error."""
    state = load_checkpoint(directory)
    recorded = json.loads(state.path.read_text())["tensors"]["sha256"]
    if recorded != entry.sha256:
        raise CheckpointError(f"{directory}: tensor sha256 {recorded[:12]}... is not the pinned "
                              f"{entry.sha256[:12]}... of {entry.name!r}; delete it to fetch the right one")
    if {k: state.meta.get("model_args", {}).get(k) for k in entry.model_args} != entry.model_args:
        raise CheckpointError(f"{directory}: its model arguments are not those of {entry.name!r}")
    return state


def _fetch(url: str, target: Path) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:  # https, or a test's file:// URL
        blob = response.read()
    atomic_write_bytes(target, blob)
    return blob


#: torchvision's weight files carry the start of their sha256 in their name: ``resnet101-cd907fc2.pth``.
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z]+$")


def fetch_weights(url: str, directory: str | os.PathLike[str] | None = None) -> Path:
    """A weights file (e.g. torchvision's ResNet-101, the PROFIT teacher), downloaded once; returns its path.

    The file goes to ``directory`` (default: torch hub's checkpoint cache, ``$TORCH_HOME/hub/checkpoints``, where
    torchvision keeps its weights, so a file torchvision fetched before is reused) through the atomic writer. When
    its name carries a sha256 prefix, as torchvision's do, the bytes must match it, downloaded or cached.
    ``file://`` URLs work too (a copy on a shared disk of a cluster without internet).

    Raises:
        CheckpointError: the file's sha256 does not match the prefix in its name.
        OSError: the URL cannot be read or the folder not written.
    """
    import torch

    name = url.rsplit("/", 1)[-1]
    path = (Path(directory) if directory is not None else Path(torch.hub.get_dir()) / "checkpoints") / name
    expected = _HASH_IN_NAME.search(name)
    if path.is_file():
        if expected and not hashlib.sha256(path.read_bytes()).hexdigest().startswith(expected[1]):
            raise CheckpointError(f"{path}: its sha256 does not start with {expected[1]}, as its name says: the file "
                                  "is damaged; delete it to download it again")
        return path
    with urllib.request.urlopen(url, timeout=60) as response:
        blob = response.read()
    if expected and not hashlib.sha256(blob).hexdigest().startswith(expected[1]):
        raise CheckpointError(f"the file downloaded from {url} does not have the sha256 its name promises "
                              f"({expected[1]}...): try again, or download it by hand to {path}")
    atomic_write_bytes(path, blob)
    return path


def pretrained_dir(name: str, *, download: bool = False, base_url: str = BASE_URL,
                   cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The verified run directory of the shipped checkpoint ``name`` (see :func:`_locate`)."""
    return _locate(name, download=download, base_url=base_url, cache_dir=cache_dir).path.parent


def _locate(name: str, *, download: bool = False, base_url: str = BASE_URL,
            cache_dir: str | os.PathLike[str] | None = None) -> Checkpoint:
    """The loaded, verified checkpoint ``name``.

    Looks in ``data/pretrained/<name>`` of the source checkout (only when running from one:
    :func:`profit_edu._paths.source_checkout`), then in ``<cache dir>/pretrained/<name>`` (``cache_dir``, default
    :func:`~profit_edu.data.default_cache_dir`); with
    ``download=True`` it fetches ``checkpoint.json`` and the tensor file from ``base_url/<name>/`` into the cache
    (pip installs, Colab). Either way the tensor file must have the pinned sha256.

    Raises:
        KeyError: an unknown name (the message lists the shipped ones).
        FileNotFoundError: not found and ``download`` is False (the message says where it looked).
        CheckpointError: found or downloaded, but damaged or not the pinned file.
    """
    entry = _lookup(name)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    checkout = _paths.source_checkout()
    candidates = [cache / "pretrained" / name]
    if checkout is not None:
        candidates.insert(0, checkout / "data" / "pretrained" / name)
    for directory in candidates:
        if (directory / JSON_NAME).is_file():
            return _verified(directory, entry)
    if not download:
        raise FileNotFoundError(f"pretrained checkpoint {name!r} not found in {', '.join(map(str, candidates))}; "
                                "pass download=True to fetch it from the repository")
    target = candidates[-1]
    target.mkdir(parents=True, exist_ok=True)
    doc = json.loads(_fetch(f"{base_url}/{name}/{JSON_NAME}", target / (JSON_NAME + ".part")))
    file_name = Path(doc["tensors"]["file"]).name
    blob = _fetch(f"{base_url}/{name}/{file_name}", target / file_name)
    if hashlib.sha256(blob).hexdigest() != entry.sha256:
        (target / file_name).unlink()
        raise CheckpointError(f"the downloaded {file_name} does not have the pinned sha256 of {name!r}")
    os.replace(target / (JSON_NAME + ".part"), target / JSON_NAME)
    return _verified(target, entry)


def load_pretrained(name: str, **kwargs: Any) -> nn.Module:
    """Build the float model of the shipped checkpoint ``name`` and load its weights (``kwargs``: see
    :func:`pretrained_dir`). Returns it in eval mode."""
    entry = _lookup(name)
    state = _locate(name, **kwargs)  # loaded and verified once
    args = entry.model_args
    model = get_model(args["model"], num_classes=args["num_classes"], width_mult=args["width_mult"],
                      cifar_stem=args["cifar_stem"], stem_stride=args["stem_stride"])
    state.restore(model)
    return model.eval()
