"""What DALI can do on one CUDA device: run its GPU graph at all, decode JPEG with nvJPEG, and with the
hardware JPEG decoder (the NVJPG engines of A100, A30, H100, H200, ...).

DALI's mixed decoder goes through nvImageCodec, whose nvJPEG extension loads libnvjpeg.so.<CUDA major>
(the nvidia-nvjpeg wheel first, by its RUNPATH) and uses the hardware decoder exactly when
`nvjpegCreateEx(NVJPEG_BACKEND_HARDWARE)` succeeds (nvImageCodec, extensions/nvjpeg/hw_decoder.cpp,
`isPlatformSupported`). Where nvJPEG cannot be loaded, DALI still "decodes on the GPU" without a word: the
JPEGs go to its CPU fallback (libjpeg-turbo) and only the pixels are copied over. DALI does not report
which decoder it used, so this module asks the same library the same questions, once per device.
"""
from __future__ import annotations

import ctypes
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import nvidia.dali as dali
import torch
from nvidia.dali import backend as dali_backend

_NVJPEG_BACKEND_DEFAULT, _NVJPEG_BACKEND_HARDWARE = 0, 3  # nvjpeg.h, nvjpegBackend_t
_NVJPEG_STATUS = {1: "NOT_INITIALIZED", 2: "INVALID_PARAMETER", 5: "ALLOCATOR_FAILURE", 6: "EXECUTION_FAILED",
                  7: "ARCH_MISMATCH", 8: "INTERNAL_ERROR", 9: "IMPLEMENTATION_NOT_SUPPORTED"}


@dataclass(frozen=True)
class DaliCuda:
    """DALI on one CUDA device. `problem`: why DALI cannot run its GPU graph there (None: it can).
    `nvjpeg_problem`: why nvJPEG cannot decode there (None: it can). `hw_engines` x `hw_cores`: the
    hardware JPEG decoder (0 x 0: none). `default_hw_decoder_load`: DALI's default share for it."""

    device: int
    problem: Optional[str]
    nvjpeg_problem: Optional[str]
    hw_engines: int
    hw_cores: int
    default_hw_decoder_load: float


def cuda_major() -> int:
    """The CUDA major version DALI was built for (`__cuda_version__` is the digits of e.g. '12.9.86')."""
    return int(str(dali.__cuda_version__)[:2])


def default_hw_decoder_load() -> float:
    """DALI's own default of fn.decoders.image's hw_decoder_load (0.65 in DALI 2.4)."""
    return float(dali_backend.GetSchema("decoders__Image").GetArgumentDefaultValueString("hw_decoder_load"))


def _nvjpeg_candidates(major: int) -> list[str]:
    """Where nvImageCodec's nvJPEG extension finds libnvjpeg: LD_LIBRARY_PATH, then its RUNPATH (the
    nvidia-nvjpeg wheel), then the loader's cache, then /usr/local/cuda."""
    name = f"libnvjpeg.so.{major}"
    dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    dirs.append(str(Path(dali.__file__).resolve().parent.parent / "nvjpeg" / "lib"))
    found = [str(Path(d) / name) for d in dirs if (Path(d) / name).is_file()]
    return found + [name, f"/usr/local/cuda/lib64/{name}"]


def _load_nvjpeg(major: int) -> ctypes.CDLL:
    errors = []
    for candidate in _nvjpeg_candidates(major):
        try:
            lib = ctypes.CDLL(candidate)
        except OSError as err:
            errors.append(str(err))
            continue
        lib.nvjpegCreateEx.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint,
                                       ctypes.POINTER(ctypes.c_void_p)]
        lib.nvjpegDestroy.argtypes = [ctypes.c_void_p]
        lib.nvjpegGetHardwareDecoderInfo.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint),
                                                     ctypes.POINTER(ctypes.c_uint)]
        return lib
    raise OSError("; ".join(dict.fromkeys(errors)))


def _nvjpeg_handle(lib: ctypes.CDLL, backend: int) -> tuple[int, ctypes.c_void_p]:
    handle = ctypes.c_void_p()
    status = lib.nvjpegCreateEx(backend, None, None, 0, ctypes.byref(handle))
    return int(status), handle


def _probe_nvjpeg(index: int) -> tuple[Optional[str], int, int]:
    """(why nvJPEG cannot decode on device `index` or None, hardware engines, cores per engine)."""
    major = cuda_major()
    if dali_backend.GetNvimgcodecVersion() < 0:
        return (f"DALI finds no nvImageCodec, through which it decodes (pip install nvidia-nvimgcodec-cu{major})",
                0, 0)
    try:
        lib = _load_nvjpeg(major)
    except OSError as err:
        return f"libnvjpeg.so.{major} cannot be loaded ({err}; pip install nvidia-nvjpeg-cu{major})", 0, 0
    # nvJPEG's CUDA runtime uses the context current on this thread: make it the rank's device, so that the
    # probe neither runs on nor allocates a context on device 0.
    with torch.cuda.device(index):
        status, handle = _nvjpeg_handle(lib, _NVJPEG_BACKEND_DEFAULT)
        if status != 0:
            return (f"nvjpegCreateEx failed on cuda:{index} with status {status} "
                    f"({_NVJPEG_STATUS.get(status, 'unknown')})"), 0, 0
        lib.nvjpegDestroy(handle)
        status, handle = _nvjpeg_handle(lib, _NVJPEG_BACKEND_HARDWARE)
        if status != 0:  # ARCH_MISMATCH / IMPLEMENTATION_NOT_SUPPORTED: no NVJPG engine on this GPU
            return None, 0, 0
        engines, cores = ctypes.c_uint(0), ctypes.c_uint(0)
        info = lib.nvjpegGetHardwareDecoderInfo(handle, ctypes.byref(engines), ctypes.byref(cores))
        lib.nvjpegDestroy(handle)
        if info != 0:  # as nvImageCodec: a hardware backend that reports no engines gets no load
            return None, 0, 0
        return None, int(engines.value), int(cores.value)


@functools.lru_cache(maxsize=None)
def probe(index: int) -> DaliCuda:
    """What DALI can do on CUDA device `index`; asked once per process (each loader built, and each test, would ask anew)."""
    default = default_hw_decoder_load()
    built = f"DALI {dali.__version__} (built for CUDA {cuda_major()})"
    try:
        count = dali_backend.GetCUDADeviceCount()
    except RuntimeError as err:  # no driver DALI can use, or a DALI build without CUDA
        return DaliCuda(index, f"{built} cannot use CUDA here ({err})", None, 0, 0, default)
    if index >= count:
        return DaliCuda(index, f"{built} sees {count} CUDA device(s), so not cuda:{index} that torch uses",
                        None, 0, 0, default)
    nvjpeg_problem, engines, cores = _probe_nvjpeg(index)
    return DaliCuda(index, None, nvjpeg_problem, engines, cores, default)
