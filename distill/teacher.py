"""Where the loop's teacher embeddings come from: the frozen teacher run online, or its cache.

`teacher.spec` is anything models.load_teacher understands (hf:<repo>, a local file or directory, one of
our run directories). `TeacherSource(batch)` is the one call the training step makes for the teacher's
embeddings; with `distill.teacher_cache` a `teacher_cache.CachedTeacher` stands in for it (same call),
and the teacher network is loaded only to check the cache's weight hash, then dropped.
"""
from __future__ import annotations

import typing
from typing import Optional, Union

import torch
from torch import nn

import configs
import models
from configs import RunConfig
from distill import teacher_cache


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """`train.precision` on `device`: bf16 or fp16 autocast, None for fp32. "auto": fp32 on the CPU; on CUDA
    bf16 where the GPU supports it (Ampere and later), else fp16 (V100, T4), trained with loss scaling."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


PRECISIONS = typing.get_args(configs.field_type("train.precision"))  # the config's: auto, fp32, bf16, fp16


def precision_name(dtype: Optional[torch.dtype]) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


class TeacherSource:
    """The frozen teacher, run without autograd; `__call__(batch) -> [B, D]` raw embeddings (float32)."""

    def __init__(self, network: nn.Module, *, device: torch.device, autocast_dtype: Optional[torch.dtype],
                 channels_last: bool) -> None:
        self.network = network.to(device).eval().requires_grad_(False)
        if channels_last:
            self.network = self.network.to(memory_format=torch.channels_last)
        self.device, self.autocast_dtype, self.channels_last = device, autocast_dtype, channels_last
        self.precision = precision_name(autocast_dtype)

    def __call__(self, batch) -> torch.Tensor:
        return self.embed(batch.images)

    @torch.no_grad()  # not inference_mode: the head keeps teacher tensors next to autograd tensors
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """[B, D] float32 raw embeddings of normalised images [B, 3, H, W], at the source's precision."""
        images = images.contiguous(memory_format=torch.channels_last) if self.channels_last else images
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            return self.network(images).float()


TeacherLike = Union[TeacherSource, teacher_cache.CachedTeacher]


def build_source(cfg: RunConfig, device: torch.device, *, autocast_dtype: Optional[torch.dtype],
                 channels_last: bool) -> Optional[TeacherLike]:
    """The teacher for `distill.mode: adadistill` (online, or from the cache), None for `none`; raises
    models.CheckpointError or TeacherCacheError (naming the spec and why) before any training step."""
    if cfg.distill.mode == "none":
        return None
    network = models.load_teacher(cfg.teacher.spec, network=cfg.teacher.network)
    if cfg.distill.teacher_cache is not None:
        return open_cache(cfg, network, device)
    return TeacherSource(network, device=device, autocast_dtype=autocast_dtype, channels_last=channels_last)


def open_cache(cfg: RunConfig, network: nn.Module, device: torch.device) -> teacher_cache.CachedTeacher:
    """The cached teacher for `distill.teacher_cache`, after checking that the cache was built from these
    shards and from this teacher's weights (`network`, loaded once for the hash and then dropped). Raises
    teacher_cache.TeacherCacheError naming both hashes otherwise. That flip is the only augmentation (a
    cache holds two views a sample) is a rule of the config (configs.RunConfig)."""
    path = cfg.distill.teacher_cache
    manifest = teacher_cache.CacheManifest.load(path)
    teacher_cache.check_matches(path, manifest, teacher_sha256=teacher_cache.weights_sha256(network),
                                teacher_spec=str(cfg.teacher.spec), shards=cfg.data.shards)
    return teacher_cache.CachedTeacher(path, manifest, device)
