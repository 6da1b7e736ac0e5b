"""Fixtures shared by the distill tests."""
from pathlib import Path

import pytest
import torch

import convert
from convert.synthetic import write_synthetic


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    """8 synthetic identities x 8 images (64 samples: 4 steps of 16 an epoch), converted once for the session;
    tests only read them (a module may define its own `shards` of another size)."""
    root = tmp_path_factory.mktemp("tiny_shards")
    write_synthetic(root / "rec", 8, 8, seed=0, workers=1)
    convert.convert_rec(root / "rec", root / "shards", workers=1, progress=False)
    return root / "shards"


@pytest.fixture
def one_process(monkeypatch):
    """A single process, as `python -m distill` without torchrun (no rank variables left by another test),
    on one thread: two cores shared with other work, where OpenMP's spinning threads slow a run tenfold."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
