"""Where the library looks for files that live outside the package: the source checkout and its neighbours.

An installed ``profit_edu`` (``pip install``, Colab) is a folder of Python files in ``site-packages``; it cannot
assume a repository around it. A *source checkout* (``git clone`` then ``pip install -e .``, or running from the
repository root) has one: ``pyproject.toml`` and ``data/README.md`` beside the ``profit_edu/`` folder. Code that
wants a checkout's files (the ledger, the shipped pretrained checkpoints, the development machines' offline data
in ``../shared/data``) asks :func:`source_checkout` *when it runs* and takes an argument or an environment
variable first:

``PROFIT_EDU_SHARED_DATA``
    a folder of offline data sets (``cifar10-jpeg/`` ...); default ``<checkout>/../shared/data`` in a source
    checkout, none otherwise (:func:`shared_data_dir`).

The other variables belong to the modules that read them: ``PROFIT_EDU_DATA`` and ``PROFIT_EDU_CIFAR10``
(:mod:`profit_edu.data`), ``PROFIT_EDU_LEDGER`` (:mod:`profit_edu.ledger`).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["SHARED_DATA_ENV", "shared_data_dir", "source_checkout"]

SHARED_DATA_ENV = "PROFIT_EDU_SHARED_DATA"


def source_checkout() -> Path | None:
    """The repository root when ``profit_edu`` runs from a source checkout, else None (an installed package).

    A checkout is recognised by ``pyproject.toml`` and ``data/README.md`` beside the ``profit_edu/`` folder.
    """
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "data" / "README.md").is_file():
        return root
    return None


def shared_data_dir() -> Path | None:
    """The folder of offline data sets: ``$PROFIT_EDU_SHARED_DATA``, else ``<checkout>/../shared/data``, else None.

    The default is the development machines' layout (the repository beside a ``shared/`` folder); it only
    counts in a source checkout. Nothing checks that the folder exists: callers look inside it.
    """
    env = os.environ.get(SHARED_DATA_ENV)
    if env:
        return Path(env).expanduser()
    root = source_checkout()
    return root.parent / "shared" / "data" if root is not None else None
