"""Which backend and which JPEG decoder a loader gets: DALI (nvJPEG on the GPU, or its CPU graph) or torch.

No silent fallback. `backend="dali"` on a CUDA device that DALI cannot use (a DALI without CUDA support,
one that does not see the device, or without nvJPEG for JPEG shards, where its mixed decoder would quietly
decode on the CPU) is a PipelineDeviceError naming what is missing and the wheel that brings it.
`backend="auto"` falls back to the torch backend instead, with one RuntimeWarning per process and reason,
and the loader's `decoder` says so. The decoder in use is described in a few words (`Choice.decoder`,
shown as `loader.decoder`) for the training log.
"""
from __future__ import annotations

import typing
import warnings
from dataclasses import dataclass
from typing import Optional

import torch

import configs
from pipeline.device import PipelineDeviceError

BACKENDS = typing.get_args(configs.field_type("data.backend"))  # the config's choices: ("auto", "dali", "torch")
TORCH_DECODER = "libjpeg-turbo (torch backend)"
DALI_CPU_DECODER = "libjpeg-turbo (DALI CPU)"
FALLBACK_DECODER = "libjpeg-turbo (torch backend, DALI fallback)"
NVJPEG_CUDA_DECODER = "nvJPEG CUDA (mixed)"

_warned: set[str] = set()  # the fallback warnings already given in this process


class DaliUnavailableError(PipelineDeviceError, ImportError):
    """backend='dali' was asked for, and DALI cannot be imported."""


@dataclass(frozen=True)
class Choice:
    backend: str  # "dali" or "torch"
    decoder: str  # the decoder in use, in a few words: "nvJPEG hardware (mixed, hw_decoder_load=0.65)", ...


def wheel_hint() -> str:
    """How to get a DALI that can use this machine's GPU."""
    cuda = torch.version.cuda
    wheel = f"nvidia-dali-cuda{cuda.split('.')[0]}0" if cuda else "nvidia-dali-cuda<CUDA major>0"
    return (f"install the DALI wheel for this machine's CUDA (torch here is built for CUDA {cuda}: "
            f"pip install {wheel}, which brings nvJPEG and nvImageCodec), or pass backend='torch'")


def _raw(where: str) -> str:
    return f"raw pixels, no decoding ({where})"


def _fallback(device: torch.device, encoding: str, reason: str) -> Choice:
    message = (f"pipeline: backend='auto' on {device}: {reason}; falling back to the torch backend (DataLoader "
               f"workers decoding with libjpeg-turbo on the CPU). To fix: {wheel_hint()} (data.backend=torch)")
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)
    return Choice("torch", _raw("torch backend, DALI fallback") if encoding == "raw" else FALLBACK_DECODER)


def _mixed_decoder(encoding: str, hw_engines: int, hw_decoder_load: float) -> str:
    if encoding == "raw":
        return _raw("DALI mixed")
    if hw_engines > 0 and hw_decoder_load > 0:
        return f"nvJPEG hardware (mixed, hw_decoder_load={hw_decoder_load:g})"
    return NVJPEG_CUDA_DECODER


def choose(backend: str, device: torch.device, encoding: str, hw_decoder_load: Optional[float]) -> Choice:
    """The backend for `backend` ("auto", "dali", "torch") on `device` (resolved), for shards of `encoding`."""
    if backend == "torch":
        return Choice("torch", _raw("torch backend") if encoding == "raw" else TORCH_DECODER)
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as err:
        if backend == "dali":
            raise DaliUnavailableError(f"backend='dali': DALI cannot be imported ({err}); {wheel_hint()}") from err
        return _fallback(device, encoding, f"DALI cannot be imported ({err})")
    if device.type != "cuda":
        return Choice("dali", _raw("DALI CPU") if encoding == "raw" else DALI_CPU_DECODER)
    from pipeline.dali_probe import probe  # imports DALI

    cap = probe(device.index)
    missing = cap.problem or (cap.nvjpeg_problem if encoding == "jpeg" else None)
    if missing is not None:
        if backend == "dali":
            raise PipelineDeviceError(f"backend='dali' on {device}: {missing}; {wheel_hint()}")
        return _fallback(device, encoding, missing)
    load = cap.default_hw_decoder_load if hw_decoder_load is None else hw_decoder_load
    return Choice("dali", _mixed_decoder(encoding, cap.hw_engines, load))
