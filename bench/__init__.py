"""Benchmarks: every stage's throughput against its baseline, in one interleaved run (`python -m bench`).

Stages (bench/stages/): convert (.rec -> shards vs copying the file), read (shard bytes vs .rec bytes),
decode (pipeline.decode_images vs libjpeg-turbo, one process per core), pipeline (build_loader batches
vs the insightface-style DataLoader, the decode ceiling, raw vs JPEG shards), step (the distillation
step fed by the pipeline vs the seed-style step, with the data wait). bench/harness.py times them
interleaved after a warm-up; bench/report.py prints the table and writes JSON, Markdown and a plot.

    python -m bench [--quick] [--device cpu|cuda] [--stages convert,read,decode,pipeline,step]
                    [--data DIR | --images N] [--json OUT] [--markdown OUT] [--plot OUT.png]

The pipeline's img/s alone on a GPU: `python -m bench --device cuda --stages pipeline`.
Benchmarks are not tests: nothing here asserts a speed, and no other package imports bench.
"""
