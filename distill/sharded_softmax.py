"""The softmax cross-entropy over class centres split across ranks (Partial FC's model parallelism,
insightface arcface_torch partial_fc_v2.py): the all-gather of the embeddings with its backward, and the
cross-entropy whose classes live on several ranks. With one shard (every class on every rank: the
replicated head) it is torch's own cross-entropy of this rank's rows, with no collective.

Every rank computes the logits of the global batch (N = W*B rows, rank order) against its own classes,
[N, C_r]. The loss of row i is log(sum_j exp(l_ij)) - l_iy over all classes of all ranks: one all-reduce of
the row maxima (MAX) and one of the exp-sums and target logits (SUM; the target's owner adds it, the
others add 0).

Which gradient. Each rank returns the mean loss of its own B rows, L_r, as the replicated head does, and
DDP averages the student's gradient over ranks: the run minimises J = (1/W) sum_r L_r. So the
cross-entropy's backward sends dJ/dl = (softmax - onehot) / (W*B) to every row of its logits (the rows'
upstream gradients are all-reduced: rank r's only covers its own rows); the class centres this rank holds
then get exactly dJ/dW_r. The gathered embeddings get each rank's part of dJ/dz; the all-gather's backward
sums the parts over ranks and keeps this rank's rows, times W, because DDP divides the student's gradient
by W again (arcface_torch AllGatherFunc does the same). Each rank's student gradient is then dL_r/dtheta,
as with the replicated head.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .distributed import world_size


class _AllGatherRows(torch.autograd.Function):
    """[B, D] on each rank -> [W*B, D] (rank order) on every rank; backward: the sum over ranks of the
    gradient of this rank's rows, times W (see the module's docstring)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ws, rank = dist.get_world_size(), dist.get_rank()
        ctx.ws, ctx.rank, ctx.rows = ws, rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(ws)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone(memory_format=torch.contiguous_format)  # all_reduce works in place on our own copy
        dist.all_reduce(grad)
        mine = grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]
        return mine * ctx.ws


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """The global batch's rows of `x`, with gradient back to this rank's rows; `x` itself on one rank."""
    if world_size() == 1:
        return x
    return _AllGatherRows.apply(x)


@dataclass(frozen=True)
class ShardedLogits:
    """The head's logits (distill.heads.Head.logits): rows of the batch against this rank's classes.

    logits: [N, K] (K: this rank's classes, or the sampled ones); N: the global batch (W*B rows, rank
    order) with several shards, this rank's own B rows with one; target: int64 [N], the column of each
    row's class where `owned`, else 0; owned: bool [N], the row's class is among the K columns;
    own_rows: (start, stop) of this rank's own samples among the N rows; shards: how many ranks the
    classes are split over (1: every class on this rank)."""

    logits: torch.Tensor
    target: torch.Tensor
    owned: torch.Tensor
    own_rows: tuple[int, int]
    shards: int

    def cross_entropy(self) -> torch.Tensor:
        """The mean cross-entropy of this rank's own rows, over every rank's classes (collective with
        several shards). One shard: every row is this rank's and every class is here, so the loss is
        torch's cross-entropy, which is the replicated head's arithmetic to the bit."""
        if self.shards == 1:
            return F.cross_entropy(self.logits, self.target)
        return _ShardedCrossEntropy.apply(self.logits, self.target, self.owned, self.own_rows)


class _ShardedCrossEntropy(torch.autograd.Function):
    """Several shards only, so always on several ranks (Head checks that the world is the shard's); one
    shard takes torch's cross-entropy (ShardedLogits.cross_entropy)."""

    @staticmethod
    def forward(ctx, logits, target, owned, own_rows):
        start, stop = own_rows
        ws = world_size()
        with torch.no_grad():
            row_max = logits.max(dim=1).values
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX)
            probs = (logits - row_max[:, None]).exp_()  # [N, K]: becomes the softmax below (one buffer)
            target_logit = torch.where(owned, logits.gather(1, target[:, None]).squeeze(1), 0.0)
            sums = torch.stack([probs.sum(dim=1), target_logit])  # one all-reduce for both
            dist.all_reduce(sums)
            exp_sum, target_logit = sums[0], sums[1]
            probs /= exp_sum[:, None]
            row_loss = exp_sum.log() + row_max - target_logit
        ctx.save_for_backward(probs, target, owned)
        ctx.own_rows, ctx.ws = own_rows, ws
        return row_loss[start:stop].mean()

    @staticmethod
    def backward(ctx, grad):
        probs, target, owned = ctx.saved_tensors
        start, stop = ctx.own_rows
        # This rank's upstream gradient covers its own rows; every rank's logits feed every rank's loss.
        per_row = probs.new_zeros(probs.shape[0])
        per_row[start:stop] = grad / (stop - start)
        dist.all_reduce(per_row)
        per_row /= ctx.ws  # J is the mean of the ranks' losses (DDP's average)
        grad_logits = probs * per_row[:, None]
        grad_logits.scatter_add_(1, target[:, None], -(per_row * owned)[:, None])
        return grad_logits, None, None, None
