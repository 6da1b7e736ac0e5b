"""Fixtures shared by the distill tests."""
import pytest
import torch


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
