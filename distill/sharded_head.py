"""The margin head with its class centres split across ranks (distill.shard_classes): each rank holds the
rows of its ClassShard and computes the logits of the global batch against them; optional Partial FC
sampling of the columns (distill.sample_rate, distill.mode none).

It computes what distill.heads.Head computes, in another order (the equality is tested on two gloo ranks):
- the global batch is gathered first (the student's embeddings with their gradient, the teacher's and the
  labels without), so every rank holds every row;
- AdaDistill's lambda = cos(W_y, f_t) reads the centre of each sample's own class: its owner computes it,
  the others add 0, and one [N] all-reduce gives every rank every row's lambda, so alpha, the geometry
  term and the statistics equal the replicated head's;
- the AdaFace norm statistics (an EMA over the global batch) are updated identically on every rank, and
  each rank moves only the centres it holds, from the samples of its classes, in the global batch's order;
- the loss is the cross-entropy across ranks (distill.sharded_softmax), each rank's value the mean over
  its own samples, as the replicated head's per-rank loss.

With distill.mode none the centres are this rank's parameters alone: not in DDP, so no [C x D] gradient
is all-reduced; the optimizer's state of them is per rank too (distill.head_rows saves it).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from .centres import Coefficients, coefficients, rounds_from_host, update_centres
from .class_shard import ClassShard
from .distributed import gather_rows, world_size
from .heads import Head
from .margins import clip_norms, margin_logits
from .sharded_softmax import ShardedLogits, gather_with_grad


class ShardedHead(Head):
    """A Head whose `centres` are the rows [shard.start, shard.stop); forward returns ShardedLogits (the
    training loop's compute_loss takes their cross_entropy). Every rank must call it in every step, in
    training and in eval mode (its forward is collective)."""

    def __init__(self, loss, num_classes, embedding_size, kd, margin, alpha, geom, *, shard: ClassShard,
                 sample_rate: float = 1.0) -> None:
        super().__init__(loss, num_classes, embedding_size, kd, margin, alpha, geom, rows=(shard.start, shard.stop))
        self.shard, self.sample_rate = shard, sample_rate

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, classes=[{self.shard.start}, {self.shard.stop}) of rank "
                f"{self.shard.rank}/{self.shard.world_size}, sample_rate={self.sample_rate}")

    def _forward(self, z_s, labels, teacher_emb, epoch_progress, global_labels=None):
        sh, b = self.shard, z_s.shape[0]
        if world_size() != sh.world_size:
            raise RuntimeError(f"sharded head: built for {sh.world_size} ranks, running on {world_size()}")
        z_all = gather_with_grad(z_s)  # [N, D], N = W*B, rank order
        labels_all = self._global_labels(labels, global_labels, z_all.shape[0])
        owned = (labels_all >= sh.start) & (labels_all < sh.stop)
        local = torch.where(owned, labels_all - sh.start, 0)  # the column of the class where owned
        own = slice(sh.rank * b, (sh.rank + 1) * b)
        # The same, on the host, where the loader handed the global batch's labels: no device sync later
        host = None if global_labels is None else np.asarray(global_labels, dtype=np.int64)
        mine = None if host is None else np.flatnonzero((host >= sh.start) & (host < sh.stop))

        f_s = F.normalize(z_all, dim=1)
        stats = {"cos_st": None, "alpha": None, "margin_scaler": self.margin.m}
        coef = f_t = None
        if self.kd == "adadistill":
            (f_t,) = gather_rows(F.normalize(teacher_emb.detach().float(), dim=1))
            coef = self._coefficients(local, owned, f_s.detach(), f_t)
            stats.update(cos_st=coef.cos_st[own].mean(), alpha=coef.alpha[own].mean(),
                         **{"lambda": coef.lam[own].mean()})
        norms = clip_norms(z_all.norm(dim=1)) if self.margin.uses_norms else None

        if self.training:
            self._update_sharded_state(local, owned, f_t, coef, norms, host, mine)

        z_hat = self._z_hat(norms, coef, epoch_progress)  # the pre-update lambda, as the replicated head
        if z_hat is not None:
            stats["margin_scaler"] = z_hat[own].mean()
        weights, target = self._columns(local, owned, host, mine)
        cos = f_s @ F.normalize(weights, dim=1).t()  # [N, K]
        logits = margin_logits(self.margin, cos, target, z_hat, owned)
        return ShardedLogits(logits, target, owned, (own.start, own.stop)), stats

    @torch.no_grad()
    def _coefficients(self, local, owned, f_s, f_t) -> Coefficients:
        """distill.centres.coefficients for every row of the global batch; lambda from the owner rank."""
        lam = torch.where(owned, (F.normalize(self.centres[local], dim=1) * f_t).sum(dim=1), 0.0)
        if world_size() > 1:
            dist.all_reduce(lam)  # each row's lambda comes from exactly one rank, the others add 0
        return coefficients(None, None, f_s, f_t, self.alpha_mode == "weighted", lam=lam)

    @torch.no_grad()
    def _update_sharded_state(self, local, owned, f_t, coef, norms, host, mine) -> None:
        """The AdaFace EMA from every row (as every rank does), the AdaDistill update of this rank's rows.
        host, mine: the global batch's labels and this rank's rows of it on the host, or None."""
        if norms is not None:
            self._update_norm_stats(norms)
        if coef is None:
            return
        if mine is not None:  # which rows are this rank's, and their rounds, from the host: no sync
            sel = torch.from_numpy(mine).to(local.device, non_blocking=True)
            rounds = rounds_from_host(host[mine] - self.shard.start, local.device)
        else:
            sel, rounds = owned.nonzero().squeeze(1), None  # a host sync; callers with a Batch avoid it
        update_centres(self.centres, local[sel], f_t[sel], coef.alpha[sel], rounds)

    def _columns(self, local, owned, host, mine) -> tuple[torch.Tensor, torch.Tensor]:
        """The centres the logits use, and each row's target column among them.

        Partial FC (arcface_torch partial_fc_v2.py `sample`), in training with sample_rate < 1: this
        rank's classes present in the global batch are always kept, and random others fill up to
        int(sample_rate * rows) columns (all positives when they are more). The softmax then runs over the
        sampled classes only: an approximation of the full softmax, whose gradient reaches only the
        sampled rows (weight decay and momentum still move the others, as in arcface_torch)."""
        if not (self.training and self.sample_rate < 1):
            return self.centres, local
        sh = self.shard
        if mine is not None:
            positive = torch.from_numpy(np.unique(host[mine] - sh.start)).to(local.device, non_blocking=True)
        else:
            positive = torch.unique(local[owned])  # sorted; a host sync
        wanted = max(1, int(self.sample_rate * sh.rows))
        if wanted >= positive.numel():
            score = torch.rand(sh.rows, device=local.device)
            score[positive] = 2.0  # above any draw: the positives are always among the top `wanted`
            index = torch.topk(score, k=wanted).indices.sort().values
        else:
            index = positive
        target = torch.where(owned, torch.searchsorted(index, local), 0)
        return self.centres[index], target
