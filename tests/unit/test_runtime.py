"""profit_edu.book.runtime: quick mode, scale, Colab detection, device choice, the synthetic-data banner."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from profit_edu.book import runtime


@pytest.mark.parametrize(
    ("env", "gpu", "quick"),
    [({"PROFIT_EDU_QUICK": "1"}, False, True), ({"PROFIT_EDU_QUICK": "1"}, True, True),
     ({"PROFIT_EDU_QUICK": "0"}, False, False), ({"PROFIT_EDU_QUICK": "0"}, True, False),
     ({}, False, True), ({}, True, False), ({"PROFIT_EDU_QUICK": " "}, True, False)],
)
def test_quick_mode_rule(env: dict, gpu: bool, quick: bool) -> None:
    assert runtime.quick_mode(env, cuda_available=gpu) is quick
    assert runtime.scale(env, cuda_available=gpu) == ("quick" if quick else "cifar")


@pytest.mark.parametrize("value", ["yes", "true", "2", "quick"])
def test_quick_mode_rejects_other_values(value: str) -> None:
    with pytest.raises(ValueError, match="PROFIT_EDU_QUICK must be '1'"):
        runtime.quick_mode({"PROFIT_EDU_QUICK": value})


def test_quick_mode_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROFIT_EDU_QUICK", "0")
    assert runtime.quick_mode() is False
    monkeypatch.setenv("PROFIT_EDU_QUICK", "1")
    assert runtime.quick_mode() is True


def test_in_colab(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert runtime.in_colab() is False
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert runtime.in_colab() is True


def test_choose_device() -> None:
    assert runtime.choose_device("cpu") == torch.device("cpu")
    assert runtime.choose_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="prefer must be"):
        runtime.choose_device("tpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            runtime.choose_device("cuda")


def test_describe_mentions_scale_and_device() -> None:
    line = runtime.describe({"PROFIT_EDU_QUICK": "1"})
    assert line.startswith("scale: quick | device: ")
    assert "torch " in line


def test_data_banner(capsys: pytest.CaptureFixture[str]) -> None:
    assert runtime.data_banner(False) is None
    assert runtime.show_data_banner(False) is None
    text = runtime.data_banner(True)
    assert "synthetic" in text and "CIFAR-10" in text
    assert "ImageNet" in runtime.data_banner(True, dataset="ImageNet")
    shown = runtime.show_data_banner(True)  # outside a notebook IPython's display prints a repr
    assert shown == text
