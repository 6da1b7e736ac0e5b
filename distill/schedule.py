"""The run's derived numbers (global batch, scaled lr, steps) and the learning rate at every step."""
from __future__ import annotations

import math
from dataclasses import dataclass

from configs import TrainConfig


@dataclass(frozen=True)
class Plan:
    """Values derived once from the config, the world size and the loader's length.

    The lr is a pure function of the step, so resuming needs only the step, and changing
    `train.max_steps` (where the run stops) never changes the schedule.
    """
    global_batch: int
    steps_per_epoch: int
    epochs: int
    lr: float                     # peak lr: train.lr * global_batch / train.lr_batch
    warmup_steps: int
    decay_steps: tuple[int, ...]  # multistep: the lr is multiplied by decay_factor from each of these steps
    decay_factor: float
    schedule: str
    stop_step: int                # the run stops once this many steps are done

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def lr_at(self, step: int) -> float:
        """The lr for step `step` (0-based): linear warmup to the peak, then multistep or cosine decay."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.schedule == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            done = min(1.0, (step - self.warmup_steps) / span)
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * done))
        passed = sum(1 for d in self.decay_steps if step >= d)
        return self.lr * self.decay_factor ** passed

    def state_dict(self) -> dict:
        """What the checkpoint's `scheduler` entry records (the lr itself is recomputed from the step)."""
        return {"schedule": self.schedule, "lr": self.lr, "warmup_steps": self.warmup_steps,
                "decay_steps": list(self.decay_steps), "decay_factor": self.decay_factor,
                "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps}


def plan(train: TrainConfig, *, world_size: int, steps_per_epoch: int) -> Plan:
    """Derive the Plan. Epoch-valued keys (warmup_epochs, decay_epochs) become steps of this run."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch: expected >= 1, found {steps_per_epoch}")
    global_batch = train.batch_size * world_size
    total = train.epochs * steps_per_epoch
    stop = total if train.max_steps == 0 else train.max_steps
    return Plan(
        global_batch=global_batch,
        steps_per_epoch=steps_per_epoch,
        epochs=train.epochs,
        lr=train.lr * global_batch / train.lr_batch,
        warmup_steps=round(train.warmup_epochs * steps_per_epoch),
        decay_steps=tuple(round(e * steps_per_epoch) for e in train.decay_epochs),
        decay_factor=train.decay_factor,
        schedule=train.schedule,
        stop_step=stop,
    )
