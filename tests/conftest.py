"""Shared pytest set-up.

PyTorch's OpenMP threads spin while they wait; beside DALI's threads and the suite's subprocesses on a
small machine that made single training steps up to 50x slower. Passive waiting must be set before
torch is first imported, which is why it happens here, at the top of the first conftest.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
