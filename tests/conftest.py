"""Shared test set-up: CPU, deterministic, a small thread count."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
