"""The IJB image pass for one model, then 1:1 verification and (where its files exist) 1:N."""

from __future__ import annotations

from evaluate.embed import embed_batches, embed_encoded, model_device, pass_device
from evaluate.ijb.align import aligned_batches
from evaluate.ijb.metrics import identify, verify_11
from evaluate.ijb.protocol import IJBProtocol


def run(model, protocol: IJBProtocol, *, device=None, batch_size: int = 256, progress: bool = True) -> dict:
    """{"1:1": {config: {far: {tar, threshold}}, "headline": ...}, "1:N": {...}, "images", "pairs"}."""
    desc = f"{protocol.name} images" if progress else None
    if protocol.images is not None:
        emb = embed_encoded(model, protocol.images, device=device, batch_size=batch_size, desc=desc,
                            source=protocol.source or protocol.name)
    else:
        dev = pass_device(model, device)
        emb = embed_batches(model, aligned_batches(protocol.crop_root, protocol.crop_names, protocol.landmarks,
                                                   batch_size=batch_size, device=dev),
                            total=protocol.num_images, desc=desc)
    score_device = model_device(model)
    report = {
        "1:1": verify_11(emb.fused, protocol.faceness, protocol.templates, protocol.medias,
                         protocol.p1, protocol.p2, protocol.labels, device=score_device),
        "images": protocol.num_images, "pairs": int(protocol.p1.size),
    }
    if protocol.galleries and protocol.probes is not None:
        report["1:N"] = identify(emb.fused, protocol.faceness, protocol.templates, protocol.medias,
                                 protocol.galleries, protocol.probes)
    if protocol.notes:
        report["notes"] = list(protocol.notes)
    return report
