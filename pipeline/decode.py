"""decode_images: encoded images (JPEG, PNG, ...) to a normalized float batch on the device, with DALI."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from pipeline.device import resolve_device


def decode_images(encoded: Sequence[bytes], *, size: int = 112, device: str | torch.device = "auto",
                  batch_size: int = 256) -> torch.Tensor:
    """Decode `encoded` into float32 [N,3,size,size], RGB, (x - 127.5) / 127.5, on `device`.

    Images that are not size x size are resized. The evaluator's embedding pass feeds its images
    through here so that evaluation sees the decoder and normalization that training saw.
    """
    from pipeline.dali_graph import build_decode_graph, to_torch  # DALI is imported only when used

    dev = resolve_device(device)
    if size < 1 or batch_size < 1:
        raise ValueError(f"decode_images: expected size >= 1 and batch_size >= 1, found {size}, {batch_size}")
    arrays = []
    for i, item in enumerate(encoded):
        if not isinstance(item, (bytes, bytearray, memoryview, np.ndarray)) or len(item) == 0:
            raise ValueError(f"decode_images: item {i}: expected non-empty encoded bytes, found "
                             f"{type(item).__name__} of length {len(item) if hasattr(item, '__len__') else '?'}")
        arrays.append(np.frombuffer(item, np.uint8))
    if not arrays:
        return torch.empty((0, 3, size, size), dtype=torch.float32, device=dev)
    chunks = iter(range(0, len(arrays), batch_size))

    def source() -> list:
        start = next(chunks)  # StopIteration ends the pipeline's input
        return arrays[start:start + batch_size]

    pipe = build_decode_graph(source, batch_size=min(batch_size, len(arrays)), size=size, device=dev)
    out = torch.empty((len(arrays), 3, size, size), dtype=torch.float32, device=dev)
    done = 0
    try:
        while done < len(arrays):
            try:
                (images,) = pipe.run()
            except StopIteration:
                break
            except RuntimeError as err:
                raise ValueError(f"decode_images: DALI could not decode an image among items "
                                 f"{done}..{min(done + batch_size, len(arrays)) - 1}: {err}") from err
            part = to_torch(images, dev, torch.float32)
            out[done:done + len(part)] = part
            done += len(part)
    finally:
        del pipe
    if done != len(arrays):
        raise RuntimeError(f"decode_images: DALI returned {done} images for {len(arrays)} inputs")
    return out
