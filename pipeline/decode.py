"""decode_images: encoded images (JPEG, PNG, ...) to a normalized float batch on the device, with DALI."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from pipeline.device import resolve_device
from pipeline.image_check import UndecodableImageError, dali_reason, first_undecodable, header_problem


def decode_images(encoded: Sequence[bytes], *, size: int = 112, device: str | torch.device = "auto",
                  batch_size: int = 256) -> torch.Tensor:
    """Decode `encoded` into float32 [N,3,size,size], RGB, (x - 127.5) / 127.5, on `device`.

    Images that are not size x size are resized. The evaluator's embedding pass feeds its images
    through here so that evaluation sees the decoder and normalization that training saw. An image that
    does not decode raises UndecodableImageError with its position (`item`) and the reason: every
    header is checked before DALI sees it (see pipeline/image_check.py), and a batch DALI still refuses
    is searched for the culprit.
    """
    from pipeline.dali_graph import build_decode_graph, to_torch  # DALI is imported only when used

    dev = resolve_device(device)
    if size < 1 or batch_size < 1:
        raise ValueError(f"decode_images: expected size >= 1 and batch_size >= 1, found {size}, {batch_size}")
    arrays = []
    for i, item in enumerate(encoded):
        problem = header_problem(item)
        if problem is not None:
            raise UndecodableImageError(f"decode_images: item {i} of {len(encoded)} does not decode ({problem})",
                                        item=i, reason=problem)
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
                raise _refused(arrays, done, err) from err
            part = to_torch(images, dev, torch.float32)
            out[done:done + len(part)] = part
            done += len(part)
    finally:
        del pipe
    if done != len(arrays):
        raise RuntimeError(f"decode_images: DALI returned {done} images for {len(arrays)} inputs")
    return out


def _refused(arrays: list, done: int, err: RuntimeError) -> UndecodableImageError:
    """The error for a batch DALI refused: the culprit among the images not yet returned (the graph
    prefetches, so the failing batch may be a later one than the next expected)."""
    found = first_undecodable(arrays, done)
    if found is None:
        reason = f"DALI could not decode one of them: {dali_reason(err)}"
        return UndecodableImageError(f"decode_images: items {done}..{len(arrays) - 1} of {len(arrays)}: {reason}",
                                     reason=reason)
    item, problem = found
    return UndecodableImageError(f"decode_images: item {item} of {len(arrays)} does not decode ({problem})",
                                 item=item, reason=problem)
