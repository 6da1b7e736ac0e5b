"""The margin head: class centres, AdaFace norm statistics and the AdaDistill update, behind one
constructor (`build_head`) and one call (`head(student_emb, labels, teacher_emb, epoch_progress)`)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from configs import GeomConfig

from .centres import coefficients, rounds_from_host, update_centres
from .class_shard import ClassShard
from .distributed import gather_rows, rank, world_size
from .margins import MARGINS, clip_norms, norm_scaler

KD_MODES = ("none", "adadistill")
CENTRE_UPDATES = ("global", "per_rank")
ALPHA_MODES = ("weighted", "plain")
INIT_BLOCK = 4096  # classes per seeded block of the initial centres (init_centres)


def init_centres(start: int, stop: int, embedding_size: int, seed: int) -> torch.Tensor:
    """Rows [start, stop) of the initial centres N(0, 0.01^2), as the originals draw them.

    Drawn in blocks of INIT_BLOCK classes, block b from its own generator (seed, b): a rank that holds
    only some classes (distill.shard_classes) draws its rows without the other ranks' (2M x 512 floats
    would be 4 GB), and they equal the replicated head's rows, so both start alike."""
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


class Head(nn.Module):
    """Normalised-softmax head with a margin, class centres [C, D] and optional AdaDistill centres.

    kd="none": `centres` is an nn.Parameter, trained by the optimizer.
    kd="adadistill": `centres` is a buffer (no gradient, not in `parameters()`) that every training
    call first moves towards this step's teacher embeddings (distill.centres); the logits then use the
    updated centres, as in both original codes (AdaDistill and AdaFace KD).

    State changes (centres, AdaFace EMA) happen only in training mode; in eval mode the head computes
    logits from its current state. When torch.distributed runs with several ranks, the state updates
    use the global batch (all ranks' samples, gathered in rank order), so every rank holds the same
    state and the result equals one process seeing the concatenated batch. Every rank must therefore
    call the head in every training step.

    The head always computes in float32 with autocast off: in bf16 a cosine carries ~4e-3 of error,
    which s=64 turns into a quarter of a logit.
    """

    def __init__(self, loss: str, num_classes: int, embedding_size: int, kd: str, margin,
                 alpha: str, geom: GeomConfig | None, rows: tuple[int, int] | None = None) -> None:
        """`rows`: the classes [start, stop) whose centres this head holds (a sharded head); None: all."""
        super().__init__()
        self.loss, self.kd, self.margin, self.alpha_mode, self.geom = loss, kd, margin, alpha, geom
        self.num_classes, self.embedding_size = num_classes, embedding_size
        self.centre_update = "global"  # AdaDistill centres from the global batch; build_head sets it
        start, stop = rows or (0, num_classes)
        if torch.empty(0).device.type == "meta":  # shapes only (`python -m distill plan`): draw nothing
            init = torch.empty(stop - start, embedding_size)
        else:  # one draw from torch's generator: every rank seeded alike draws the same centres
            init = init_centres(start, stop, embedding_size, int(torch.randint(0, 2 ** 62, ())))
        if kd == "none":
            self.centres = nn.Parameter(init)
        else:
            self.register_buffer("centres", init)
        if margin.uses_norms:
            # mk-minchul/AdaFace head.py starts the EMA at mean 20, std 100.
            self.register_buffer("batch_mean", torch.tensor(20.0))
            self.register_buffer("batch_std", torch.tensor(100.0))

    def extra_repr(self) -> str:
        return (f"loss={self.loss}, num_classes={self.num_classes}, embedding_size={self.embedding_size}, "
                f"kd={self.kd}, margin={self.margin}, alpha={self.alpha_mode}, geom={self.geom}")

    def _check_inputs(self, student_emb, labels, teacher_emb) -> None:
        if student_emb.dim() != 2 or student_emb.shape[1] != self.embedding_size:
            raise ValueError(f"head: student_emb must be [B, {self.embedding_size}], found {tuple(student_emb.shape)}")
        if labels.shape != (student_emb.shape[0],) or labels.dtype != torch.int64:
            raise ValueError(f"head: labels must be int64 [{student_emb.shape[0]}], found {labels.dtype} "
                             f"{tuple(labels.shape)}")
        if self.kd == "adadistill":
            if teacher_emb is None:
                raise ValueError("head: kd='adadistill' needs teacher_emb (the frozen teacher's embeddings of "
                                 "this batch); found None")
            if teacher_emb.shape != student_emb.shape:
                raise ValueError(f"head: teacher_emb must have the student's shape {tuple(student_emb.shape)}, "
                                 f"found {tuple(teacher_emb.shape)}")

    def forward(self, student_emb: torch.Tensor, labels: torch.Tensor, teacher_emb: torch.Tensor | None = None,
                epoch_progress: float = 0.0, global_labels: np.ndarray | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """`global_labels`: the host's copy of the global batch's labels (all ranks, in rank order), when
        the caller has one (pipeline.Batch.global_labels): the centre update then needs no host sync."""
        self._check_inputs(student_emb, labels, teacher_emb)
        with torch.autocast(device_type=student_emb.device.type, enabled=False):
            return self._forward(student_emb.float(), labels, teacher_emb, float(epoch_progress), global_labels)

    def _forward(self, z_s, labels, teacher_emb, epoch_progress, global_labels=None):
        f_s = F.normalize(z_s, dim=1)
        stats: dict[str, Any] = {"cos_st": None, "alpha": None, "margin_scaler": self.margin.m}
        coef = f_t = None
        if self.kd == "adadistill":
            f_t = F.normalize(teacher_emb.detach().float(), dim=1)
            coef = coefficients(self.centres, labels, f_s.detach(), f_t, self.alpha_mode == "weighted")
            stats.update(cos_st=coef.cos_st.mean(), alpha=coef.alpha.mean(), **{"lambda": coef.lam.mean()})
        norms = clip_norms(z_s.norm(dim=1)) if self.margin.uses_norms else None

        if self.training:
            self._update_state(labels, f_t, coef, norms, global_labels)

        z_hat = self._z_hat(norms, coef, epoch_progress)
        if z_hat is not None:
            stats["margin_scaler"] = z_hat.mean()
        cos = f_s @ F.normalize(self.centres, dim=1).t()  # [B, C]
        return self.margin.logits(cos, labels, z_hat), stats

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

    def _global_labels(self, labels, global_labels, n) -> torch.Tensor:
        """The global batch's labels on the device: from the host's copy (no collective), else gathered."""
        if global_labels is None:
            return gather_rows(labels)[0]
        if len(global_labels) != n:
            raise ValueError(f"head: global_labels holds {len(global_labels)} labels, the gathered batch {n}")
        if world_size() == 1:
            return labels  # the same labels, already on the device
        host = torch.from_numpy(np.asarray(global_labels, dtype=np.int64))
        if labels.device.type == "cuda":
            host = host.pin_memory()
        return host.to(labels.device, non_blocking=True)

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
    def _update_state(self, labels, f_t, coef, norms, global_labels=None) -> None:
        """AdaFace EMA and AdaDistill centres from the global batch (one gather for both); with
        centre_update "per_rank" the centres from this rank's own samples (the original code's DDP
        behaviour: each rank's copy of the centres drifts from the others')."""
        own = coef is not None and self.centre_update == "per_rank"
        columns = []
        if norms is not None:
            columns.append(norms[:, None])
        if coef is not None and not own:
            columns += [coef.alpha[:, None], f_t]
        if columns:
            (packed,) = gather_rows(torch.cat(columns, dim=1))
        if norms is not None:
            all_norms, packed = packed[:, 0], packed[:, 1:]
            self._update_norm_stats(all_norms)
        if own:
            n = labels.shape[0]
            host = None if global_labels is None else np.asarray(global_labels)[rank() * n:(rank() + 1) * n]
            rounds = rounds_from_host(host, self.centres.device) if host is not None else None
            update_centres(self.centres, labels, f_t, coef.alpha, rounds)
        elif coef is not None:
            # the labels of the global batch: the host's copy where the loader handed one (no gather)
            all_labels = self._global_labels(labels, global_labels, packed.shape[0])
            rounds = rounds_from_host(global_labels, self.centres.device) if global_labels is not None else None
            update_centres(self.centres, all_labels, packed[:, 1:], packed[:, 0], rounds)


def build_head(loss: str, num_classes: int, embedding_size: int = 512, kd: str = "none", *,
               shard: ClassShard | None = None, sample_rate: float = 1.0, centre_update: str = "global",
               **options: Any) -> Head:
    """Make a margin head.

    centre_update: "global" (every rank moves the AdaDistill centres with the whole global batch: the copies
    stay equal) or "per_rank" (each rank with its own samples, as the original code; not with a shard).
    shard: this rank's classes (distill.class_shard) for a sharded head (distill.sharded_head), whose
    centres are only those rows; sample_rate < 1: Partial FC sampling (a sharded head with kd="none").

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
    unknown = sorted(set(options) - {"s", "m", "h", "t_alpha", "alpha", "geom"})
    if unknown:
        raise ValueError(f"build_head: unknown options {unknown}; known: s, m, h, t_alpha, alpha, geom")
    margin_cls = MARGINS[loss]
    fields = {"s", "m"} | ({"h", "t_alpha"} if margin_cls.uses_norms else set())
    for name in ("h", "t_alpha"):
        if name not in fields and options.get(name) is not None:
            raise ValueError(f"build_head: option {name} applies to adaface only; loss is {loss!r}, found {name}="
                             f"{options[name]!r}")
    margin = margin_cls(**{k: v for k, v in options.items() if k in fields and v is not None})

    alpha = options.get("alpha") or "weighted"
    geom = options.get("geom")
    if kd == "none":
        alpha, geom = None, None
    elif alpha not in ALPHA_MODES:
        raise ValueError(f"build_head: option alpha must be one of {list(ALPHA_MODES)}, found {alpha!r}")
    if geom is not None:
        if not margin_cls.uses_norms:
            raise ValueError(f"build_head: option geom (the geometry-aware margin) needs loss 'adaface', found {loss!r}")
        geom = _geometry(geom)
    if not (isinstance(sample_rate, (int, float)) and 0 < sample_rate <= 1):
        raise ValueError(f"build_head: sample_rate must be in (0, 1], found {sample_rate!r}")
    if sample_rate < 1 and (kd != "none" or shard is None):
        raise ValueError(f"build_head: sample_rate {sample_rate} (Partial FC) needs kd='none' and a shard; found "
                         f"kd={kd!r}, shard={shard}")
    if centre_update not in CENTRE_UPDATES:
        raise ValueError(f"build_head: centre_update must be one of {list(CENTRE_UPDATES)}, found {centre_update!r}")
    if shard is None:
        head = Head(loss, num_classes, embedding_size, kd, margin, alpha, geom)
        head.centre_update = centre_update
        return head
    if centre_update != "global":
        raise ValueError(f"build_head: centre_update {centre_update!r} needs every centre on every rank; the centres "
                         f"are sharded (distill.shard_classes): set distill.shard_classes=false")
    if shard.num_classes != num_classes:
        raise ValueError(f"build_head: the shard splits {shard.num_classes} classes, the head has {num_classes}")
    from .sharded_head import ShardedHead  # it subclasses Head: imported here, not at the top (a cycle)
    return ShardedHead(loss, num_classes, embedding_size, kd, margin, alpha, geom, shard=shard,
                       sample_rate=float(sample_rate))


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
