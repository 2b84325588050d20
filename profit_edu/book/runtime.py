"""Where a chapter runs: quick or full mode, Colab or not, which device, and which data.

Every chapter of the book starts by asking this module three questions:

* :func:`quick_mode` - run the small, fast version of each experiment? ``PROFIT_EDU_QUICK=1`` (set by
  ``make book`` and ``make test``) says yes, ``PROFIT_EDU_QUICK=0`` says no. Unset, the answer is "quick
  unless a CUDA GPU is present", so Colab with a GPU runs the real-size experiments and a laptop stays fast.
* :func:`choose_device` - where tensors go (CUDA when present, else the CPU).
* :func:`data_banner` - what to tell the reader when a chapter trains on synthetic data because neither
  the offline CIFAR-10 copy nor a downloaded one was found (defined in :mod:`profit_edu.data`, which
  ``profit-edu train`` prints it from). Chapters show it with :func:`show_data_banner`; it is never silent.

The module has no state: every answer is computed from the environment when asked.
"""

from __future__ import annotations

import html
import importlib.util
import os
import sys
from typing import Literal

import torch

from ..data import data_banner

__all__ = [
    "QUICK_ENV",
    "BookScale",
    "choose_device",
    "data_banner",
    "describe",
    "in_colab",
    "quick_mode",
    "scale",
    "show_data_banner",
]

#: The environment variable that switches quick mode on ("1") or off ("0").
QUICK_ENV = "PROFIT_EDU_QUICK"

#: The book's two experiment scales ("tiny" and "imagenet" live in tests and scripts; ``profit-edu train --scale``
#: has its own :data:`profit_edu.cli.SCALES`).
BookScale = Literal["quick", "cifar"]


def quick_mode(environ: dict[str, str] | None = None, *, cuda_available: bool | None = None) -> bool:
    """True when chapters should run their small, fast experiments.

    Args:
        environ: the environment to read (default ``os.environ``).
        cuda_available: override the GPU check (default ``torch.cuda.is_available()``).

    Returns:
        ``PROFIT_EDU_QUICK=1`` -> True, ``=0`` -> False; unset or empty -> True unless a CUDA GPU is present.

    Raises:
        ValueError: for any other value of ``PROFIT_EDU_QUICK`` (say "1" or "0").

    >>> quick_mode({"PROFIT_EDU_QUICK": "1"}), quick_mode({"PROFIT_EDU_QUICK": "0"})
    (True, False)
    >>> quick_mode({}, cuda_available=True)
    False
    """
    env = os.environ if environ is None else environ
    value = env.get(QUICK_ENV, "").strip()
    if value == "1":
        return True
    if value == "0":
        return False
    if value:
        raise ValueError(f"{QUICK_ENV} must be '1' (quick) or '0' (full) or unset, got {value!r}")
    has_gpu = torch.cuda.is_available() if cuda_available is None else cuda_available
    return not has_gpu


def scale(environ: dict[str, str] | None = None, *, cuda_available: bool | None = None) -> BookScale:
    """The experiment scale a chapter runs at: ``"quick"`` or ``"cifar"`` (see the design's scale table).

    >>> scale({"PROFIT_EDU_QUICK": "1"})
    'quick'
    """
    return "quick" if quick_mode(environ, cuda_available=cuda_available) else "cifar"


def in_colab() -> bool:
    """True inside Google Colab (its ``google.colab`` module is importable there and nowhere else)."""
    if "google.colab" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("google.colab") is not None
    except (ImportError, ValueError):  # a parent package "google" without "colab", or a broken spec
        return False


def choose_device(prefer: str | None = None) -> torch.device:
    """The device chapters put tensors on: ``prefer`` when given, else CUDA when present, else the CPU.

    Raises:
        ValueError: ``prefer="cuda"`` on a machine without a CUDA GPU, or an unknown device string.

    >>> choose_device("cpu")
    device(type='cpu')
    """
    if prefer is not None:
        try:
            dev = torch.device(prefer)
        except RuntimeError as err:
            raise ValueError(f"prefer must be 'cpu', 'cuda' or 'mps' (or None), got {prefer!r}") from err
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("prefer='cuda' but no CUDA GPU is available; use prefer=None or 'cpu'")
        if dev.type not in ("cpu", "cuda", "mps"):
            raise ValueError(f"prefer must be 'cpu', 'cuda' or 'mps' (or None), got {prefer!r}")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def describe(environ: dict[str, str] | None = None) -> str:
    """One line a chapter prints first: scale, device, and whether it runs in Colab.

    >>> describe({"PROFIT_EDU_QUICK": "1"}).startswith("scale: quick")
    True
    """
    dev = choose_device()
    where = "Colab" if in_colab() else "local"
    threads = torch.get_num_threads()
    return f"scale: {scale(environ)} | device: {dev.type} | {where} | torch {torch.__version__}, {threads} CPU threads"


def show_data_banner(fell_back: bool, *, dataset: str = "CIFAR-10") -> str | None:
    """Display :func:`data_banner` as a visible warning box in a notebook (and print it elsewhere).

    Returns the banner text (None when real data is used, in which case nothing is shown).
    """
    text = data_banner(fell_back, dataset=dataset)
    if text is None:
        return None
    try:
        from IPython.display import HTML, display
    except ImportError:  # plain Python: the text is enough
        print(f"WARNING: {text}")
        return text
    box = (
        '<div class="profit-edu-banner" role="alert" style="border-left:6px solid #d9822b;'
        'background:#fff4e5;padding:0.6em 1em;margin:0.5em 0;color:#222">'
        f"<strong>Synthetic data.</strong> {html.escape(text)}</div>"
    )
    display(HTML(box))
    return text
