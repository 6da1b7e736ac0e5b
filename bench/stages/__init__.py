"""The benchmark's stages, in data-flow order; each measures the project's public functions against a baseline.

`STAGES[name](settings, data) -> list` of harness.Result (the pairs measured) and harness.Skipped (the
contenders left out on this machine, with the reason). Importing a stage module registers it.

Modules:
- registry.py: `@register(name)` and the data-flow order of the stages.
- convert.py: `.rec` -> JPEG shards with convert.convert_rec (and its validation pass alone) vs copying the .rec.
- read.py: every sample's bytes out of the shards vs the same images out of the .rec.
- decode.py: pipeline.decode_batches and decode_images vs a plain DALI graph, the decode ceiling and
  torchvision's decode_jpeg.
- loader.py: the pipeline stage, epochs of pipeline.build_loader batches vs DALI's own webdataset reader, the
  insightface-style DataLoader, the decode ceiling and a torchvision decode_jpeg loop.
- step.py: the distillation step fed by the pipeline vs the reference step, with the data wait.
- growth.py: convert's time and memory and the loader's time to first batch and memory at 100k and 1M records,
  extrapolated to MS1MV2 and WebFace42M (only when --stages names it; `STAGES["growth"]` returns one
  growth.Growth instead of Results).
"""
from bench.stages.registry import STAGES, default_stages, needs_shared_data, stage_names
from bench.stages import convert, read, decode, loader, step, growth  # noqa: F401,E402  (registration)

__all__ = ["STAGES", "default_stages", "needs_shared_data", "stage_names"]
