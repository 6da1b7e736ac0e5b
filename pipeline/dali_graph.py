"""The DALI graphs: encoded bytes (or raw pixels) in, flipped, augmented, normalized NCHW tensors out.

The only module of the project that builds DALI operators. One graph serves both devices: on a GPU the
decoder runs "mixed" (nvJPEG, and the hardware JPEG decoder where present) and every later op on the
GPU; without one, DALI runs the same graph on the CPU (`device_id=None`).

Samples come in through one `fn.external_source` whose callable returns a whole batch (encoded bytes,
mirror flags, augmentation parameters) at once; flips and augmentation parameters are inputs, not DALI
random ops, so that a batch is a function of (seed, epoch, step, rank) alone (see pipeline/order.py).
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from nvidia.dali import backend as dali_backend
from nvidia.dali import fn, types
from nvidia.dali.pipeline import Pipeline
from nvidia.dali.plugin.pytorch import feed_ndarray

from pipeline.augment import Augment
from pipeline.device import PipelineDeviceError, dali_threads

# Batches DALI works on ahead of the one being read. Fed by an external source, the graph only starts a
# batch when run() asks for an earlier one, so a deeper queue is what keeps DALI's threads busy while the
# caller (the Python feed, the training step) holds the GIL: 4 measured ~10% faster than DALI's default 2 on
# the CPU graph (bench pipeline stage), for 3 more batches of buffers.
PREFETCH = 4
# One value for every channel: DALI's CPU kernel takes a scalar mean and std by a faster path than a
# per-channel list of the same values (the same output, bit for bit; tested).
_MEAN = 127.5
_STD = 127.5


def _device_id(device: torch.device):
    """DALI's device_id: the GPU's index, or None for DALI's CPU-only mode."""
    if device.type != "cuda":
        return None
    try:
        count = dali_backend.GetCUDADeviceCount()
    except RuntimeError as err:  # no driver, or a DALI build without CUDA
        raise PipelineDeviceError(f"device={device}: DALI cannot use CUDA here ({err})") from err
    if device.index >= count:
        raise PipelineDeviceError(f"device={device}: DALI sees {count} CUDA device(s) "
                                  f"(DALI built for CUDA {dali_backend.__cuda_version__})")
    return device.index


def _decode(encoded, on_gpu: bool, size: int, hw_decoder_load: Optional[float] = None):
    if on_gpu:
        # Preallocate nvJPEG's buffers for our small faces so the first batches do not reallocate.
        # hw_decoder_load: the share of a batch for the hardware JPEG decoder (None: DALI's default).
        extra = {} if hw_decoder_load is None else {"hw_decoder_load": float(hw_decoder_load)}
        return fn.decoders.image(encoded, device="mixed", output_type=types.RGB,
                                 preallocate_width_hint=size, preallocate_height_hint=size,
                                 device_memory_padding=16 << 20, host_memory_padding=8 << 20, **extra)
    return fn.decoders.image(encoded, device="cpu", output_type=types.RGB)  # no hardware decoder on the CPU


def _augment(images, aug: Augment, params: dict, size: int):
    """Crop-and-resize back, low resolution, photometric jitter: each with per-sample parameters."""
    if aug.crop > 0:
        images = fn.resize(images, resize_x=size, resize_y=size, roi_start=params["roi_start"],
                           roi_end=params["roi_end"], roi_relative=True, antialias=False)
    if aug.low_res > 0:
        side = params["low_res_side"]
        small = fn.resize(images, resize_x=side, resize_y=side, antialias=True)
        images = fn.resize(small, resize_x=size, resize_y=size, antialias=False)
    if aug.photometric > 0:
        images = fn.color_twist(images, brightness=params["brightness"], contrast=params["contrast"],
                                saturation=params["saturation"])
    return images


AUGMENT_INPUTS = ("roi_start", "roi_end", "low_res_side", "brightness", "contrast", "saturation")


def build_train_graph(source: Callable[[], tuple], *, encoding: str, batch_size: int, size: int,
                      device: torch.device, aug: Augment, num_threads: Optional[int] = None,
                      prefetch: int = PREFETCH, hw_decoder_load: Optional[float] = None,
                      channels_last: bool = False) -> Pipeline:
    """The loader's graph. `source()` returns (images, mirror[, *AUGMENT_INPUTS when aug.any]) as lists
    of per-sample arrays (or dense batch arrays), raises StopIteration at the epoch's end, and keeps what it
    returned alive until the batch's output has been returned by `run()` (inputs are not copied).
    The output is NCHW float, or NHWC with `channels_last` (to_torch makes either a [B,3,H,W] tensor).
    `hw_decoder_load` reaches the mixed decoder only (None: DALI's default); the CPU graph has no use for it."""
    on_gpu = device.type == "cuda"
    pipe = Pipeline(batch_size=batch_size, num_threads=num_threads or dali_threads(),
                    device_id=_device_id(device), prefetch_queue_depth=prefetch,
                    exec_dynamic=True)
    names = ("images", "mirror") + (AUGMENT_INPUTS if aug.any else ())
    dtypes = [types.UINT8, types.INT32] + [types.FLOAT] * (len(names) - 2)
    layouts = ["HWC" if encoding == "raw" else "", ""] + [""] * (len(names) - 2)
    with pipe:
        # no_copy: the encoded bytes are views of the memory-mapped tars, handed to DALI as they are;
        # the caller keeps every batch it returned alive until that batch's output has come back.
        inputs = fn.external_source(source=source, num_outputs=len(names), batch=True, dtype=dtypes,
                                    layout=layouts, no_copy=True)
        params = dict(zip(names, inputs))
        images = params["images"]
        if encoding == "raw":
            images = images.gpu() if on_gpu else images  # already HWC uint8: no decoding at all
        else:
            images = _decode(images, on_gpu, size, hw_decoder_load)
        if aug.any:
            images = _augment(images, aug, params, size)
        # Flip and normalize in one pass, straight into NCHW float (or NHWC: the decoder's own layout).
        out = fn.crop_mirror_normalize(images, mirror=params["mirror"], mean=_MEAN, std=_STD,
                                       output_layout="HWC" if channels_last else "CHW", dtype=types.FLOAT)
        pipe.set_outputs(out)
    pipe.build()
    return pipe


def build_decode_graph(source: Callable[[], list], *, batch_size: int, size: int, device: torch.device,
                       num_threads: Optional[int] = None, resize: bool = True) -> Pipeline:
    """decode_images' graph: any encoded image (JPEG, PNG, ...), resized to size x size when `resize`
    (without it every image must already have that size), normalized. `source()` returns a batch of at most
    `batch_size` encoded images and raises StopIteration at the end of its input."""
    on_gpu = device.type == "cuda"
    pipe = Pipeline(batch_size=batch_size, num_threads=num_threads or dali_threads(),
                    device_id=_device_id(device), prefetch_queue_depth=PREFETCH, exec_dynamic=True)
    with pipe:
        encoded = fn.external_source(source=source, batch=True, dtype=types.UINT8)
        images = _decode(encoded, on_gpu, size)
        if resize:
            images = fn.resize(images, resize_x=size, resize_y=size, antialias=True)
        out = fn.crop_mirror_normalize(images, mean=_MEAN, std=_STD, output_layout="CHW", dtype=types.FLOAT)
        pipe.set_outputs(out)
    pipe.build()
    return pipe


def to_torch(tensor_list, device: torch.device, dtype: torch.dtype, channels_last: bool = False) -> torch.Tensor:
    """A DALI output batch as a torch tensor on `device`: [B,C,H,W] from a CHW batch, or from an HWC batch
    with `channels_last` ([B,H,W,C] memory seen as [B,C,H,W] in torch.channels_last format: no copy).

    CPU: zero-copy. With the dynamic executor (`exec_dynamic=True`, set on every graph here) each output
    batch owns its memory, which the returned tensor keeps alive through numpy's buffer reference, so
    DALI never recycles it under us (tested: a kept batch still equals its reference decode after later
    batches ran). Copying instead costs ~40 MB of fresh, page-faulting memory per 256-image float batch,
    which measured as most of the CPU graph's time. GPU: one device copy on torch's current stream.
    """
    if not tensor_list.is_dense_tensor():
        shapes = sorted({tuple(s) for s in tensor_list.shape()})
        raise ValueError(f"DALI batch: images of different shapes {shapes[:4]}; expected one size for all")
    if device.type == "cuda":
        shape = (len(tensor_list),) + tuple(tensor_list.shape()[0])
        out = torch.empty(shape, dtype=torch.float32, device=device)
        feed_ndarray(tensor_list.as_tensor(), out, cuda_stream=torch.cuda.current_stream(device))
    else:
        out = torch.from_numpy(np.asarray(tensor_list.as_tensor()))
    if channels_last:
        out = out.permute(0, 3, 1, 2)  # a view; .to(dtype) below keeps the channels_last strides
    return out if dtype == torch.float32 else out.to(dtype)
