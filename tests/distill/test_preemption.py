"""Preemption: SIGTERM to one of two gloo ranks mid-epoch stops both after the same step with one checkpoint
and exit status 75, and the same command resumes it to the uninterrupted run's weights bit for bit; one
SIGINT stops at a checkpoint, a second one aborts at once."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from distill import checkpoint, cli, preemption, train
from tests.distill.test_train import _config, _free_port, shards, teacher_run  # noqa: F401  (fixtures)

STEPS, SIGNAL_AT = 8, 3  # 8 steps an epoch: the signal comes mid-epoch


def _worker(rank: int, port: int, argv: list, signal_rank: int, signal_at: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    step_fn = train.train_step

    def step_and_signal(run, batch, pos):
        result = step_fn(run, batch, pos)
        if rank == signal_rank and pos.step + 1 == signal_at:
            os.kill(os.getpid(), signal.SIGTERM)  # as Slurm or torchrun would send it, to this rank only
        return result

    train.train_step = step_and_signal
    status = cli.run(argv)
    if rank == 0:  # the run's newest checkpoint, for the parent to compare
        run_dir = Path(argv[1]).with_suffix("")
        state = checkpoint.load(checkpoint.latest(run_dir))
        torch.save({"student": state["student"], "head": state["head"], "step": state["step"]},
                   run_dir.parent / f"{run_dir.name}.final.pt")
    sys.exit(status)


def _spawn(argv: list, *, signal_at: int = -1) -> None:
    mp.start_processes(_worker, args=(_free_port(), argv, 1, signal_at), nprocs=2, join=True, start_method="spawn")


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_both_at_a_checkpoint_and_the_rerun_resumes_exactly(tmp_path, shards,
                                                                                      teacher_run):
    whole = _config(tmp_path, shards, teacher_run, "whole", max_steps=STEPS)
    _spawn(["--config", str(whole)])
    reference = torch.load(tmp_path / "whole.final.pt", weights_only=True)
    assert reference["step"] == STEPS

    cfg = _config(tmp_path, shards, teacher_run, "stopped", max_steps=STEPS)
    with pytest.raises(mp.ProcessExitedException) as info:
        _spawn(["--config", str(cfg)], signal_at=SIGNAL_AT)
    assert info.value.exit_code == preemption.EXIT_PREEMPTED
    stopped = tmp_path / "stopped"
    # the signal came after step 3's flag was all-reduced: step 4 carried it, and both ranks stopped after it
    assert [p.name for p in sorted((stopped / "checkpoints").glob("step-*.pt"))] == ["step-000000004.pt"]
    saved = checkpoint.load(checkpoint.latest(stopped))
    assert (saved["step"], saved["epoch"], saved["epoch_step"]) == (4, 0, 4)

    _spawn(["--config", str(cfg)])  # the same command: resumes from step 4
    resumed = torch.load(tmp_path / "stopped.final.pt", weights_only=True)
    assert resumed["step"] == STEPS
    for part in ("student", "head"):
        for key, value in reference[part].items():
            assert torch.equal(value, resumed[part][key]), f"resumed run differs in {part}.{key}"


@pytest.mark.slow
@pytest.mark.usefixtures("one_process")
@pytest.mark.parametrize("interrupts", [1, 2])
def test_one_sigint_stops_at_a_checkpoint_a_second_aborts_at_once(tmp_path, shards, monkeypatch, interrupts):
    step_fn = train.train_step

    def interrupt_at_2(run, batch, pos):
        result = step_fn(run, batch, pos)
        if pos.step + 1 == 2:
            for _ in range(interrupts):
                os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(train, "train_step", interrupt_at_2)
    cfg = _config(tmp_path, shards, None, "interrupted", max_steps=6, batch_size=16)
    handler = signal.getsignal(signal.SIGINT)
    status = cli.run(["--config", str(cfg)])
    assert signal.getsignal(signal.SIGINT) is handler  # put back
    latest = checkpoint.latest(tmp_path / "interrupted")
    if interrupts == 1:
        assert status == preemption.EXIT_PREEMPTED and checkpoint.load(latest)["step"] == 3
    else:
        assert status == 130 and latest is None  # aborted within step 2: no checkpoint
