"""Shared Hypothesis strategies: bit widths, grid modes, positive scalars and float tensors."""

import torch
from hypothesis import strategies as st

bits = st.integers(min_value=2, max_value=8)
modes = st.sampled_from(["signed", "unsigned", "hswish"])
positive = st.floats(min_value=1e-2, max_value=1e2, allow_nan=False, allow_infinity=False)
finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def float_tensors(draw, min_size=1, max_size=256):
    values = draw(st.lists(finite, min_size=min_size, max_size=max_size))
    return torch.tensor(values, dtype=torch.float64)
