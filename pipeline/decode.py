"""decode_images and decode_batches: encoded images (JPEG, PNG, ...) to normalized float batches on the device,
with DALI.

The graph is built once per (size, device, batch size, resize or not) and kept for the process: the evaluator
and the teacher cache call these many times, and building a DALI pipeline costs tens of milliseconds. Each call
feeds its images through the kept graph, reads it to the end of its input and resets it for the next call.
Images that already have the target size skip the resize (a resize to the same size is exact, but costs a
pass over every pixel); a call with any other image uses the graph with the resize.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Iterator, Sequence

import numpy as np
import simplejpeg
import torch

from pipeline.device import resolve_device
from pipeline.image_check import UndecodableImageError, dali_reason, first_undecodable, header_problem

_JPEG_MAGIC = b"\xff\xd8\xff"


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
    parts = list(decode_batches(encoded, size=size, device=dev, batch_size=batch_size))
    if not parts:
        return torch.empty((0, 3, size, size), dtype=torch.float32, device=dev)
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
        yield from _KEPT.run(arrays, size=size, device=dev, batch_size=batch_size, resize=not all_sized)


def _checked(encoded: Sequence[bytes], size: int) -> tuple[list[np.ndarray], bool]:
    """(each item as a uint8 array, whether every one is a JPEG of size x size), or UndecodableImageError for
    the first item DALI must not see. A JPEG's header is parsed once for both answers (about 1 us)."""
    arrays, all_sized = [], True
    jpeg_header = simplejpeg.decode_jpeg_header
    for i, item in enumerate(encoded):
        data = item if isinstance(item, np.ndarray) and item.dtype == np.uint8 else None
        if data is None and isinstance(item, (bytes, bytearray, memoryview)):
            data = np.frombuffer(item, np.uint8)
        if data is not None and data[:3].tobytes() == _JPEG_MAGIC:
            try:
                height, width, _, _ = jpeg_header(data)
                if height > 0 and width > 0:
                    all_sized = all_sized and height == width == size
                    arrays.append(data)
                    continue
            except ValueError:
                pass  # header_problem says why
        problem = header_problem(item)
        if problem is not None:
            raise UndecodableImageError(f"decode_images: item {i} of {len(encoded)} does not decode ({problem})",
                                        item=i, reason=problem)
        arrays.append(data)
        all_sized = False  # another format: its size is DALI's to find, so the graph with the resize takes it
    return arrays, all_sized


class _KeptGraphs:
    """The decode graphs of this process, one per (size, device, batch size, resize), built on first use; the
    `keep` used last are kept.

    A graph's input is a queue that each call fills with its batches; the source raises StopIteration when
    the queue is empty (DALI's end of input), the call reads every output and then resets the graph. A call
    takes its graph out while it runs and gives it back when it has read it to the end, so calls that
    overlap (two iterators read in turns, other threads) each get a graph of their own; a graph whose run
    failed, or whose reader stopped early, is dropped, not reused."""

    def __init__(self, keep: int = 4) -> None:
        self._idle: dict[tuple, tuple] = {}  # in order of last use: the oldest is dropped beyond `keep`
        self._keep = keep
        self._lock = threading.Lock()

    def _take(self, key: tuple) -> tuple:
        from pipeline.dali_graph import build_decode_graph  # DALI is imported only when used

        with self._lock:
            kept = self._idle.pop(key, None)
        if kept is not None:
            return kept
        size, device, batch_size, resize = key
        queue: deque = deque()

        def source() -> list:
            if not queue:
                raise StopIteration  # the end of this call's images
            return queue.popleft()

        return build_decode_graph(source, batch_size=batch_size, size=size, device=device, resize=resize), queue

    def _give_back(self, key: tuple, graph: tuple) -> None:
        with self._lock:
            self._idle.pop(key, None)
            while len(self._idle) >= self._keep:  # each holds a few batches of buffers
                self._idle.pop(next(iter(self._idle)))
            self._idle[key] = graph

    def run(self, arrays: list, *, size: int, device: torch.device, batch_size: int,
            resize: bool) -> Iterator[torch.Tensor]:
        from pipeline.dali_graph import to_torch

        key = (size, device, batch_size, resize)
        pipe, queue = graph = self._take(key)
        queue.extend(arrays[s:s + batch_size] for s in range(0, len(arrays), batch_size))
        done, finished = 0, False
        try:
            while True:
                try:
                    (images,) = pipe.run()
                except StopIteration:
                    break
                except RuntimeError as err:
                    raise _refused(arrays, done, err) from err
                part = to_torch(images, device, torch.float32)
                done += len(part)
                yield part
            finished = True
        finally:
            if finished:
                pipe.reset()  # ready for the next call's images
                self._give_back(key, graph)
            else:  # failed, or the caller stopped early with batches in flight: dropped
                queue.clear()
        if done != len(arrays):
            raise RuntimeError(f"decode_images: DALI returned {done} images for {len(arrays)} inputs")


_KEPT = _KeptGraphs()


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
