"""Shared fixtures. Tests import the package the way a user does (``micronet.*``)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield
