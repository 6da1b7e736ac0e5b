"""The margin head: class centres (all of them, or this rank's shard), AdaFace norm statistics, the
AdaDistill update and the cross-entropy, behind one constructor (`build_head`) and one call
(`loss, stats = head(student_emb, labels, teacher_emb, epoch_progress, global_labels=...)`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from configs import GeomConfig

from .centres import Coefficients, coefficients, host_to_device, rounds_from_host, update_centres
from .class_shard import ClassShard
from .distributed import gather_rows, rank, world_size
from .margins import MARGINS, clip_norms, margin_logits, norm_scaler
from .sharded_softmax import ShardedLogits, gather_with_grad

KD_MODES = ("none", "adadistill")
CENTRE_UPDATES = ("global", "per_rank")
ALPHA_MODES = ("weighted", "plain")
INIT_BLOCK = 4096  # classes per seeded block of the initial centres (init_centres)


def init_centres(start: int, stop: int, embedding_size: int, seed: int) -> torch.Tensor:
    """Rows [start, stop) of the initial centres N(0, 0.01^2), as the originals draw them.

    Drawn in blocks of INIT_BLOCK classes, block b from its own generator (seed, b): a rank that holds
    only some classes (distill.shard_classes) draws its rows without the other ranks' (2M x 512 floats
    would be 4 GB), and they equal the rows of a head of one shard, so both start alike."""
    out = torch.empty(stop - start, embedding_size)
    for block in range(start // INIT_BLOCK, (stop + INIT_BLOCK - 1) // INIT_BLOCK if stop > start else 0):
        lo, hi = block * INIT_BLOCK, (block + 1) * INIT_BLOCK
        g = torch.Generator().manual_seed((seed * 1_000_003 + block) % 2 ** 63)
        rows = torch.empty(INIT_BLOCK, embedding_size).normal_(0.0, 0.01, generator=g)
        a, b = max(lo, start), min(hi, stop)
        out[a - start:b - start] = rows[a - lo:b - lo]
    return out


def geometry_weight(geom: GeomConfig, epoch_progress: float) -> float:
    """w_eff of AdaFace KD's geometry-aware margin (the AdaptiveAAdaFace head of the AdaFace-KD code):
    z_hat gains w_eff * k * ReLU(lambda - cos_st) * lambda, w_eff = w * min(1, epoch_progress /
    warmup_epochs), so a sample whose student is further from its teacher than the teacher is from its
    class centre gets a larger (harder) margin, ramped in over the warmup."""
    if geom.warmup_epochs == 0:
        return float(geom.w)
    return float(geom.w) * min(1.0, max(0.0, float(epoch_progress)) / geom.warmup_epochs)


def _geometry(value: GeomConfig | Mapping[str, Any]) -> GeomConfig:
    if isinstance(value, GeomConfig):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"option geom must be None or a mapping with keys w, k, warmup_epochs; found {value!r}")
    unknown = sorted(set(value) - {"w", "k", "warmup_epochs"})
    if unknown:
        raise ValueError(f"option geom: unknown keys {unknown}; known: w, k, warmup_epochs")
    return GeomConfig(**value)


@dataclass(frozen=True)
class _Rows:
    """The batch rows a rank's logits cover, with their classes. With several shards they are the global
    batch (each rank scores every sample against its own classes); with one, this rank's own samples."""

    gathered: bool                # the global batch (several shards), else this rank's own rows
    host: np.ndarray              # int64 [N], their labels on the host
    labels: torch.Tensor          # int64 [N], their labels on the device
    owned: torch.Tensor           # bool [N], the row's class is one of this rank's
    local: torch.Tensor           # int64 [N], the row of the class among this rank's where owned, else 0
    mine: np.ndarray              # the positions of the owned rows, on the host
    own: slice                    # this rank's own samples among the N rows
    batch_host: np.ndarray        # int64 [W*B], the global batch's labels on the host (every rank's)


class Head(nn.Module):
    """Normalised-softmax head with a margin: the class centres of `shard` and optional AdaDistill centres;
    forward returns the loss (as insightface arcface_torch's PartialFC does) and the step's statistics.

    shard: the classes [shard.start, shard.stop) whose centres this rank holds, of shard.world_size ranks.
    One shard (ClassShard(0, 1, C), the default) is the replicated head: every rank holds every centre and
    takes the logits of its own samples; the loss is torch's cross-entropy. Several shards
    (distill.shard_classes): the global batch is gathered (the student's embeddings with their gradient,
    the teacher's without), every rank takes its logits against its own classes, and the loss is the
    cross-entropy across ranks (distill.sharded_softmax); each rank's value the mean over its own samples,
    as with one shard (tests/distill/test_sharded.py compares the two on two gloo ranks).

    kd="none": `centres` is an nn.Parameter, trained by the optimizer. With one shard DDP all-reduces its
    gradient; with several each rank's rows get their whole gradient from the cross-entropy across ranks,
    so they stay out of DDP, and so does the optimizer's state of them (distill.head_rows saves it).
    kd="adadistill": `centres` is a buffer (no gradient, not in `parameters()`) that every training
    call first moves towards this step's teacher embeddings (distill.centres); the logits then use the
    updated centres, as in both original codes (AdaDistill and AdaFace KD). AdaDistill's lambda =
    cos(W_y, f_t) reads the centre of each sample's own class: with several shards its owner computes it,
    the others add 0, and one [N] all-reduce gives every rank every row's lambda.

    State changes (centres, AdaFace EMA) happen only in training mode; in eval mode the head computes
    logits from its current state. When torch.distributed runs with several ranks, the state updates
    use the global batch (all ranks' samples, gathered in rank order), so every rank holds the same
    state and the result equals one process seeing the concatenated batch; each rank moves only the
    centres it holds. Every rank must therefore call the head in every training step (and, with several
    shards, in eval mode too: the forward is collective).

    The head always computes in float32 with autocast off: in bf16 a cosine carries ~4e-3 of error,
    which s=64 turns into a quarter of a logit.
    """

    def __init__(self, loss: str, num_classes: int, embedding_size: int, kd: str, margin, alpha: str,
                 geom: GeomConfig | None, *, shard: ClassShard, sample_rate: float = 1.0,
                 centre_update: str = "global") -> None:
        super().__init__()
        self.loss, self.kd, self.margin, self.alpha_mode, self.geom = loss, kd, margin, alpha, geom
        self.num_classes, self.embedding_size = num_classes, embedding_size
        self.shard, self.sample_rate, self.centre_update = shard, sample_rate, centre_update
        if torch.empty(0).device.type == "meta":  # shapes only (`python -m distill plan`): draw nothing
            init = torch.empty(shard.rows, embedding_size)
        else:  # one draw from torch's generator: every rank seeded alike draws the same centres
            init = init_centres(shard.start, shard.stop, embedding_size, int(torch.randint(0, 2 ** 62, ())))
        if kd == "none":
            self.centres = nn.Parameter(init)
        else:
            self.register_buffer("centres", init)
        if margin.uses_norms:
            # mk-minchul/AdaFace head.py starts the EMA at mean 20, std 100.
            self.register_buffer("batch_mean", torch.tensor(20.0))
            self.register_buffer("batch_std", torch.tensor(100.0))

    def extra_repr(self) -> str:
        sh = self.shard
        return (f"loss={self.loss}, num_classes={self.num_classes}, embedding_size={self.embedding_size}, "
                f"kd={self.kd}, margin={self.margin}, alpha={self.alpha_mode}, geom={self.geom}, classes=[{sh.start}, "
                f"{sh.stop}) of shard {sh.rank}/{sh.world_size}, sample_rate={self.sample_rate}")

    def _check_inputs(self, student_emb, labels, teacher_emb, global_labels) -> None:
        if student_emb.dim() != 2 or student_emb.shape[1] != self.embedding_size:
            raise ValueError(f"head: student_emb must be [B, {self.embedding_size}], found {tuple(student_emb.shape)}")
        b = student_emb.shape[0]
        if labels.shape != (b,) or labels.dtype != torch.int64:
            raise ValueError(f"head: labels must be int64 [{b}], found {labels.dtype} {tuple(labels.shape)}")
        n = world_size() * b
        if not isinstance(global_labels, np.ndarray) or global_labels.shape != (n,):
            found = f"{global_labels.dtype} {global_labels.shape}" if isinstance(global_labels, np.ndarray) else \
                type(global_labels).__name__
            raise ValueError(f"head: global_labels must be the global batch's labels on the host, a numpy array "
                             f"[{n}] (every rank's, in rank order: pipeline.Batch.global_labels); found {found}")
        if self.kd == "adadistill":
            if teacher_emb is None:
                raise ValueError("head: kd='adadistill' needs teacher_emb (the frozen teacher's embeddings of "
                                 "this batch); found None")
            if teacher_emb.shape != student_emb.shape:
                raise ValueError(f"head: teacher_emb must have the student's shape {tuple(student_emb.shape)}, "
                                 f"found {tuple(teacher_emb.shape)}")
        if self.shard.world_size > 1 and world_size() != self.shard.world_size:
            raise RuntimeError(f"sharded head: built for {self.shard.world_size} ranks, running on {world_size()}")

    def forward(self, student_emb: torch.Tensor, labels: torch.Tensor, teacher_emb: torch.Tensor | None = None,
                epoch_progress: float = 0.0, *, global_labels: np.ndarray) -> tuple[torch.Tensor, dict[str, Any]]:
        """The mean cross-entropy of this rank's samples (collective with several shards), and the statistics
        cos_st, alpha, lambda and margin_scaler (means over this rank's samples). `global_labels`: the host's
        copy of the global batch's labels (all ranks, in rank order: pipeline.Batch.global_labels), which
        spares the centre update and the sharded logits every host sync."""
        with torch.autocast(device_type=student_emb.device.type, enabled=False):
            out, stats = self.logits(student_emb, labels, teacher_emb, epoch_progress, global_labels=global_labels)
            return out.cross_entropy(), stats

    def logits(self, student_emb: torch.Tensor, labels: torch.Tensor, teacher_emb: torch.Tensor | None = None,
               epoch_progress: float = 0.0, *, global_labels: np.ndarray) -> tuple[ShardedLogits, dict[str, Any]]:
        """What forward takes the loss of: the margin logits of the rows against this rank's classes (in
        training: after the state update), and the statistics."""
        self._check_inputs(student_emb, labels, teacher_emb, global_labels)
        with torch.autocast(device_type=student_emb.device.type, enabled=False):
            return self._logits(student_emb.float(), labels, teacher_emb, float(epoch_progress), global_labels)

    def _logits(self, z_s, labels, teacher_emb, epoch_progress, global_labels):
        rows = self._rows(labels, global_labels)
        z = gather_with_grad(z_s) if rows.gathered else z_s  # [N, D]
        f_s = F.normalize(z, dim=1)
        stats: dict[str, Any] = {"cos_st": None, "alpha": None, "margin_scaler": self.margin.m}
        coef = f_t = None
        if self.kd == "adadistill":
            f_t = F.normalize(teacher_emb.detach().float(), dim=1)
            if rows.gathered:
                (f_t,) = gather_rows(f_t)
            coef = self._coefficients(rows, f_s.detach(), f_t)
            stats.update(cos_st=coef.cos_st[rows.own].mean(), alpha=coef.alpha[rows.own].mean(),
                         **{"lambda": coef.lam[rows.own].mean()})
        norms = clip_norms(z.norm(dim=1)) if self.margin.uses_norms else None

        if self.training:
            self._update_state(rows, f_t, coef, norms)

        z_hat = self._z_hat(norms, coef, epoch_progress)  # the pre-update lambda (the one that weighted alpha)
        if z_hat is not None:
            stats["margin_scaler"] = z_hat[rows.own].mean()
        weights, target = self._columns(rows)
        cos = f_s @ F.normalize(weights, dim=1).t()  # [N, K]
        logits = margin_logits(self.margin, cos, target, z_hat, rows.owned)
        return ShardedLogits(logits, target, rows.owned, (rows.own.start, rows.own.stop), self.shard.world_size), stats

    def _rows(self, labels: torch.Tensor, global_labels: np.ndarray) -> _Rows:
        """The rows of the logits and their classes; the host's copy of the labels gives every index
        computed from them (which rows are this rank's, Partial FC's positives) without a device sync."""
        sh, b = self.shard, labels.shape[0]
        batch_host = np.asarray(global_labels, dtype=np.int64)
        own = slice(rank() * b, (rank() + 1) * b)
        if sh.world_size > 1:  # every rank's samples against this rank's classes
            gathered, host, row_labels = True, batch_host, host_to_device(batch_host, labels.device)
        else:  # every class on this rank: its own samples
            gathered, host, row_labels, own = False, batch_host[own], labels, slice(0, b)
        owned = (row_labels >= sh.start) & (row_labels < sh.stop)
        local = torch.where(owned, row_labels - sh.start, 0)
        mine = np.flatnonzero((host >= sh.start) & (host < sh.stop))
        return _Rows(gathered, host, row_labels, owned, local, mine, own, batch_host)

    @torch.no_grad()
    def _coefficients(self, rows: _Rows, f_s, f_t) -> Coefficients:
        """distill.centres.coefficients for every row; lambda from the rank that holds the row's class."""
        lam = torch.where(rows.owned, (F.normalize(self.centres[rows.local], dim=1) * f_t).sum(dim=1), 0.0)
        if self.shard.world_size > 1:
            dist.all_reduce(lam)  # each row's lambda comes from exactly one rank, the others add 0
        return coefficients(None, None, f_s, f_t, self.alpha_mode == "weighted", lam=lam)

    def _z_hat(self, norms, coef, epoch_progress):
        """AdaFace's normalised feature norms (None for a margin without them), shifted by the geometry term
        where configured; the geometry uses the pre-update lambda (the one that weighted alpha), and cos_st."""
        if not self.margin.uses_norms:
            return None
        shift = 0.0
        if self.geom is not None:
            geom = self.geom.k * torch.relu(coef.lam - coef.cos_st) * coef.lam
            shift = geometry_weight(self.geom, epoch_progress) * geom
        return norm_scaler(norms, self.batch_mean, self.batch_std, self.margin.h, shift)

    @torch.no_grad()
    def _update_norm_stats(self, all_norms: torch.Tensor) -> None:
        """AdaFace's EMA of the feature norms over the global batch: this batch first, then z_hat
        (mk-minchul/AdaFace head.py); unbiased std."""
        if all_norms.numel() < 2:
            raise ValueError("adaface: the (global) batch must hold at least 2 samples to estimate the "
                             f"std of the feature norms; found {all_norms.numel()}")
        t = self.margin.t_alpha
        self.batch_mean.copy_(all_norms.mean() * t + (1 - t) * self.batch_mean)
        self.batch_std.copy_(all_norms.std() * t + (1 - t) * self.batch_std)

    @torch.no_grad()
    def _update_state(self, rows: _Rows, f_t, coef, norms) -> None:
        """AdaFace EMA and AdaDistill centres from the global batch; each rank moves the centres it holds,
        from the samples of their classes, in the global batch's order. With centre_update "per_rank" the
        centres move with this rank's own samples (the original code's DDP behaviour: each rank's copy of
        the centres drifts from the others')."""
        per_rank = coef is not None and self.centre_update == "per_rank"
        labels, host = rows.labels, rows.host
        alpha = coef.alpha if coef is not None else None
        if not rows.gathered:  # this rank's rows only: gather the global batch's (one collective for all)
            columns = [] if norms is None else [norms[:, None]]
            if coef is not None and not per_rank:
                columns += [alpha[:, None], f_t]
            if columns:
                (packed,) = gather_rows(torch.cat(columns, dim=1))
            if norms is not None:
                norms, packed = packed[:, 0], packed[:, 1:]
            if coef is not None and not per_rank:
                alpha, f_t, host = packed[:, 0], packed[:, 1:], rows.batch_host
                # the global batch's labels on the device: from the host's copy (no collective)
                labels = labels if world_size() == 1 else host_to_device(host, labels.device)
        if norms is not None:
            self._update_norm_stats(norms)
        if coef is None:
            return
        sh = self.shard
        # one shard holds every class; with several, only the samples of this rank's classes (rows.mine)
        if rows.gathered and rows.mine.size < host.size:
            sel = host_to_device(rows.mine, labels.device)
            labels, f_t, alpha, host = labels[sel], f_t[sel], alpha[sel], host[rows.mine]
        update_centres(self.centres, labels - sh.start, f_t, alpha, rounds_from_host(host - sh.start, labels.device))

    def _columns(self, rows: _Rows) -> tuple[torch.Tensor, torch.Tensor]:
        """The centres the logits use, and each row's target column among them.

        Partial FC (arcface_torch partial_fc_v2.py `sample`), in training with sample_rate < 1: this
        rank's classes present in the global batch are always kept, and random others fill up to
        int(sample_rate * rows) columns (all positives when they are more). The softmax then runs over the
        sampled classes only: an approximation of the full softmax, whose gradient reaches only the
        sampled rows (weight decay and momentum still move the others, as in arcface_torch)."""
        if not (self.training and self.sample_rate < 1):
            return self.centres, rows.local
        sh, device = self.shard, rows.local.device
        positive = host_to_device(np.unique(rows.host[rows.mine] - sh.start), device)
        wanted = max(1, int(self.sample_rate * sh.rows))
        if wanted >= positive.numel():
            score = torch.rand(sh.rows, device=device)
            score[positive] = 2.0  # above any draw: the positives are always among the top `wanted`
            index = torch.topk(score, k=wanted).indices.sort().values
        else:
            index = positive
        target = torch.where(rows.owned, torch.searchsorted(index, rows.local), 0)
        return self.centres[index], target


def build_head(loss: str, num_classes: int, embedding_size: int = 512, kd: str = "none", *,
               shard: ClassShard | None = None, sample_rate: float = 1.0, centre_update: str = "global",
               **options: Any) -> Head:
    """Make a margin head.

    centre_update: "global" (every rank moves the AdaDistill centres with the whole global batch: the copies
    stay equal) or "per_rank" (each rank with its own samples, as the original code; not with a shard).
    shard: this rank's classes (distill.class_shard), whose centres are the only rows this head holds; None:
    every class (one shard); sample_rate < 1: Partial FC sampling (with kd="none" and a given shard).

    loss: a registered margin ("arcface", "cosface", "adaface"); kd: "none" or "adadistill".
    options: s, m (every loss; defaults 64 and 0.5 / 0.35 / 0.4), h, t_alpha (adaface only; defaults
    0.333, 0.01), alpha ("weighted" default, or "plain") and geom (None, or a mapping w, k,
    warmup_epochs; adaface with kd="adadistill" only). alpha and geom describe the distillation and are
    ignored with kd="none", so `distill.mode=none` can run any distillation config as a baseline.
    A None option means its default.
    """
    if loss not in MARGINS:
        raise ValueError(f"build_head: unknown loss {loss!r}; known: {sorted(MARGINS)}")
    if kd not in KD_MODES:
        raise ValueError(f"build_head: unknown kd {kd!r}; known: {list(KD_MODES)}")
    if not (isinstance(num_classes, int) and num_classes > 0):
        raise ValueError(f"build_head: num_classes must be a positive int, found {num_classes!r}")
    if not (isinstance(embedding_size, int) and embedding_size > 0):
        raise ValueError(f"build_head: embedding_size must be a positive int, found {embedding_size!r}")
    margin = _margin(loss, options)
    alpha, geom = _distillation(loss, kd, options)
    shard = _rows(num_classes, kd, shard, sample_rate, centre_update)
    return Head(loss, num_classes, embedding_size, kd, margin, alpha, geom, shard=shard, sample_rate=float(sample_rate),
                centre_update=centre_update)


def _margin(loss: str, options: dict) -> Any:
    """The margin of `loss` with the options that are its own (build_head's options)."""
    unknown = sorted(set(options) - {"s", "m", "h", "t_alpha", "alpha", "geom"})
    if unknown:
        raise ValueError(f"build_head: unknown options {unknown}; known: s, m, h, t_alpha, alpha, geom")
    margin_cls = MARGINS[loss]
    fields = {"s", "m"} | ({"h", "t_alpha"} if margin_cls.uses_norms else set())
    for name in ("h", "t_alpha"):
        if name not in fields and options.get(name) is not None:
            raise ValueError(f"build_head: option {name} applies to adaface only; loss is {loss!r}, found {name}="
                             f"{options[name]!r}")
    return margin_cls(**{k: v for k, v in options.items() if k in fields and v is not None})


def _distillation(loss: str, kd: str, options: dict) -> tuple:
    """(alpha, geom) of AdaDistill's options; both None with kd="none" (a distillation config as a baseline)."""
    alpha = options.get("alpha") or "weighted"
    geom = options.get("geom")
    if kd == "none":
        return None, None
    if alpha not in ALPHA_MODES:
        raise ValueError(f"build_head: option alpha must be one of {list(ALPHA_MODES)}, found {alpha!r}")
    if geom is not None:
        if not MARGINS[loss].uses_norms:
            raise ValueError(f"build_head: option geom (the geometry-aware margin) needs loss 'adaface', found {loss!r}")
        geom = _geometry(geom)
    return alpha, geom


def _rows(num_classes: int, kd: str, shard: ClassShard | None, sample_rate: float, centre_update: str) -> ClassShard:
    """The head's class rows: `shard`, or every class as one shard (the replicated head), checked against the
    Partial FC rate and the centre update."""
    if not (isinstance(sample_rate, (int, float)) and 0 < sample_rate <= 1):
        raise ValueError(f"build_head: sample_rate must be in (0, 1], found {sample_rate!r}")
    if sample_rate < 1 and (kd != "none" or shard is None):
        raise ValueError(f"build_head: sample_rate {sample_rate} (Partial FC) needs kd='none' and a shard; found "
                         f"kd={kd!r}, shard={shard}")
    if centre_update not in CENTRE_UPDATES:
        raise ValueError(f"build_head: centre_update must be one of {list(CENTRE_UPDATES)}, found {centre_update!r}")
    if shard is None:  # one shard: every class on this rank (the replicated head)
        shard = ClassShard(0, 1, num_classes)
    if centre_update != "global" and shard.world_size > 1:
        raise ValueError(f"build_head: centre_update {centre_update!r} needs every centre on every rank; the centres "
                         f"are sharded (distill.shard_classes): set distill.shard_classes=false")
    if shard.num_classes != num_classes:
        raise ValueError(f"build_head: the shard splits {shard.num_classes} classes, the head has {num_classes}")
    return shard


def head_from_config(cfg, num_classes: int, shard: ClassShard | None = None) -> Head:
    """The head a run's config (configs.RunConfig) describes, for `num_classes` classes; a margin left
    null (distill.m) takes its loss's default. `shard`: this rank's classes when the run shards them
    (distill.class_shard.shard_for_run)."""
    d = cfg.distill
    adaface = d.loss == "adaface"
    return build_head(d.loss, num_classes, embedding_size=cfg.model.embedding_size,
                      kd="adadistill" if d.mode == "adadistill" else "none", shard=shard,
                      centre_update=d.centre_update,
                      sample_rate=d.sample_rate if shard is not None else 1.0, s=d.s, m=d.m,
                      h=d.h if adaface else None, t_alpha=d.t_alpha if adaface else None, alpha=d.alpha, geom=d.geom)
