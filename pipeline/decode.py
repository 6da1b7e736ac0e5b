"""decode_images and decode_batches: encoded images (JPEG, PNG, ...) to normalized float batches on the device,
with DALI.

The graph is built once per (size, device, batch size, resize or not) and kept for the process: the evaluator
and the teacher cache call these many times, and building a DALI pipeline costs tens of milliseconds. Each call
feeds its images through the kept graph, reads it to the end of its input and resets it for the next call.
Images that already have the target size skip the resize (a resize to the same size is exact, but costs a
pass over every pixel); a call with any other image uses the graph with the resize.
"""
from __future__ import annotations

import traceback
from collections import deque
from typing import Iterator, Sequence

import numpy as np
import torch

from pipeline.device import resolve_device
from pipeline.kept_graphs import KeptGraphs
from pipeline.image_check import UndecodableImageError, dali_reason, first_undecodable, header_problem, jpeg_size

def decode_images(encoded: Sequence[bytes], *, size: int = 112, device: str | torch.device = "auto",
                  batch_size: int = 256) -> torch.Tensor:
    """Decode `encoded` into float32 [N,3,size,size], RGB, (x - 127.5) / 127.5, on `device`.

    Images that are not size x size are resized. The evaluator's embedding pass feeds its images
    through here so that evaluation sees the decoder and normalization that training saw. An image that
    does not decode raises UndecodableImageError with its position (`item`) and the reason: every
    header is checked before DALI sees it (see pipeline/image_check.py), and a batch DALI still refuses
    is searched for the culprit. Up to `batch_size` images come back without a copy (decode_batches'
    one batch); more are joined into one tensor (a copy of every image: iterate decode_batches instead
    where batches will do).
    """
    dev = resolve_device(device)
    return joined(decode_batches(encoded, size=size, device=dev, batch_size=batch_size), size, dev)


def joined(batches: Iterator[torch.Tensor], size: int, device: torch.device) -> torch.Tensor:
    """Batches of [n, 3, size, size] as one tensor: a lone batch as it is, none as an empty one."""
    parts = list(batches)
    if not parts:
        return torch.empty((0, 3, size, size), dtype=torch.float32, device=device)
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def decode_batches(encoded: Sequence[bytes], *, size: int = 112, device: str | torch.device = "auto",
                   batch_size: int = 256) -> Iterator[torch.Tensor]:
    """decode_images in batches: float32 [<= batch_size, 3, size, size] tensors, in order, each DALI's own
    output memory on the CPU (no copy; the tensor keeps it alive). Every header is checked before the first
    batch is decoded, so an undecodable image raises before anything is yielded (UndecodableImageError, as
    decode_images)."""
    dev = resolve_device(device)
    if size < 1 or batch_size < 1:
        raise ValueError(f"decode_images: expected size >= 1 and batch_size >= 1, found {size}, {batch_size}")
    arrays, all_sized = _checked(encoded, size)
    if arrays:
        yield from _run(arrays, size=size, device=dev, batch_size=batch_size, resize=not all_sized)


def _checked(encoded: Sequence[bytes], size: int) -> tuple[list[np.ndarray], bool]:
    """(each item as a uint8 array, whether every one is a JPEG of size x size), or UndecodableImageError for
    the first item DALI must not see. A JPEG's header is parsed once for both answers (about 1 us)."""
    arrays, all_sized = [], True
    for i, item in enumerate(encoded):
        data = item if isinstance(item, np.ndarray) and item.dtype == np.uint8 else None
        if data is None and isinstance(item, (bytes, bytearray, memoryview)):
            data = np.frombuffer(item, np.uint8)
        side = jpeg_size(data) if data is not None else None
        if side is None:  # not a JPEG whose header parses: another format DALI takes, or why not
            problem = header_problem(item)
            if problem is not None:
                raise UndecodableImageError(f"decode_images: item {i} of {len(encoded)} does not decode "
                                            f"({problem})", item=i, reason=problem)
        all_sized = all_sized and side == (size, size)  # another format: its size is DALI's to find (resize)
        arrays.append(data)
    return arrays, all_sized


def _run(arrays: list, *, size: int, device: torch.device, batch_size: int, resize: bool) -> Iterator[torch.Tensor]:
    """`arrays` through the kept graph for (size, device, batch_size, resize): its input is a queue this call
    fills with its batches; the source raises StopIteration when the queue is empty (DALI's end of input),
    the call reads every output and resets the graph, then gives it back (pipeline/kept_graphs.py). A graph
    whose run failed, or whose reader stopped early, is dropped."""
    from pipeline.dali_graph import to_torch  # DALI is imported only when used

    key = (size, device, batch_size, resize)
    pipe, queue = graph = _KEPT.take(key, lambda: _build(*key))
    queue.extend(arrays[s:s + batch_size] for s in range(0, len(arrays), batch_size))
    done, finished = 0, False
    try:
        while True:
            try:
                (images,) = pipe.run()
            except StopIteration:
                break
            except RuntimeError as err:
                traceback.clear_frames(err.__traceback__)  # DALI's frames hold the graph: see the finally below
                raise _refused(arrays, done, err) from err
            part = to_torch(images, device, torch.float32)
            done += len(part)
            yield part
        finished = True
    finally:
        if finished:
            pipe.reset()  # ready for the next call's images
            _KEPT.give_back(key, graph)
        else:  # dropped now, not kept alive by an error's traceback until a garbage collection, which a
            queue.clear()  # forked DataLoader worker may run (DALI's shutdown hangs or crashes there)
            del pipe, graph
    if done != len(arrays):
        raise RuntimeError(f"decode_images: DALI returned {done} images for {len(arrays)} inputs")


def _build(size: int, device: torch.device, batch_size: int, resize: bool) -> tuple:
    """(a decode graph, the queue its source reads)."""
    from pipeline.dali_graph import build_decode_graph

    queue: deque = deque()

    def source() -> list:
        if not queue:
            raise StopIteration  # the end of this call's images
        return queue.popleft()

    return build_decode_graph(source, batch_size=batch_size, size=size, device=device, resize=resize), queue


_KEPT = KeptGraphs(keep=4)  # one per (size, device, batch size, resize) in use


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
