"""distill: the margin heads, AdaDistill and AdaFace-KD distillation, and the DDP training loop
(`python -m distill`).

Modules:
  margins.py        the margin logits (ArcFace, CosFace, AdaFace), registered by name
  centres.py        AdaDistill's teacher-driven class centres: mixing coefficients and the update
  heads.py          the head: its class centres (all, or this rank's shard), AdaFace norm statistics, the
                    geometry-aware margin, Partial FC sampling (sample_rate); forward returns the loss; build_head
  class_shard.py    which class centres a rank holds (distill.shard_classes): ClassShard, shard_for_run
  sharded_softmax.py the cross-entropy across ranks and the all-gather of embeddings with its backward
  head_rows.py      the head's rows in checkpoints: per-rank files (sharded runs), re-sharded on load
  optim.py          the recipe: the lr at every step (plan) and SGD with the originals' weight decay
  teacher.py        where the teacher's embeddings come from: online (TeacherSource) or the cache
  teacher_cache.py  the teacher embedding cache: its format on disk, its build, its reading in the loop
  distributed.py    ranks: process-group setup from torchrun's environment, and the collectives
  checkpoint.py     saving and resuming a run, and the RNG states that make a resume exact
  metrics.py        rank 0's record of the run: progress bar, metrics.jsonl, TensorBoard events
  verify.py         the every-N-epochs verification on .bin sets and the IJB/TinyFace benchmarks (rank 0)
  student_init.py   fine-tuning: the student's backbone from trained weights before step 0 (student.init)
  preemption.py     SIGTERM/SIGUSR1/SIGINT: a stop request the ranks agree on, a checkpoint, exit 75
  train.py          the loop: build_run, train_step, _train
  preview.py        `python -m distill plan`: the schedule and the head's memory before a GPU is spent
  curves.py         `python -m distill plot`: loss, lr and accuracy of runs against step, as a PNG
  cli.py            the command line (training, cache-teacher, plan, plot) and its one-line errors

Importing this package builds heads only; it never imports the loop, torch.distributed setup or DALI.
"""

from .heads import Head, build_head
from .margins import MARGINS

__all__ = ["Head", "MARGINS", "build_head"]
