"""Shared pytest configuration: float64 reference checks, deterministic seeds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# One thread: small HVPs on 2 shared cores run 10-50x slower with 2 threads (bench/README.md).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def root() -> Path:
    return ROOT
