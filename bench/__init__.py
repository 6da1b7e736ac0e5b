"""Benchmarks: every stage's throughput against its baseline, in one interleaved run (`python -m bench`).

Stages (bench/stages/): convert (.rec -> shards vs copying the file), read (shard bytes vs .rec bytes),
decode (pipeline.decode_images vs libjpeg-turbo, one process per core, and torchvision's decode_jpeg),
pipeline (build_loader batches vs the insightface-style DataLoader, the decode ceiling, raw vs JPEG
shards, and a torchvision decode_jpeg loop: nvJPEG on CUDA), step (the distillation step fed by the
pipeline vs the reference step: the original research code's fp32, eager step with an online teacher and
the insightface-style loader, with the data wait; online vs cached teacher). On request only (`--stages growth`,
minutes): growth, convert's seconds and memory and the loader's time to first batch and memory at 100k and 1M
records, extrapolated to MS1MV2 and WebFace42M. A contender that cannot run
on the machine (torchvision missing, or unable to decode there) is left out with its reason in the report.

Modules:
- cli.py: the command line; prepares the data, runs the chosen stages, prints and writes the reports.
- settings.py: what one run measures with (sizes, rounds, device, models), and BenchError (an InputError:
  `python -m bench: error: ...`, exit 2).
- data.py: the benchmark's data, one .rec and its JPEG and raw shards, made once and cached.
- environment.py: the hardware and software header of every report.
- harness.py: interleaved timing of contenders after a warm-up, the pairs compared, the contenders left out.
- report.py: the stdout table, JSON, Markdown and the optional plot.
- baseline_loader.py: the insightface-style baseline, a torch DataLoader over the .rec with Pillow.
- ceiling.py: the decode ceiling, libjpeg-turbo alone in one process per core.
- torchvision_decode.py: the torchvision_nvjpeg baseline (batched decode_jpeg, flip, normalize); the only
  module that imports torchvision (optional: `pip install -e '.[gpu]'`).
- step_rig.py: the training loop's step put together from distill's public pieces, to time it.
- growth_data.py: the growth stage's .rec of N records over C classes, re-using a few encoded faces.
- growth_job.py: one growth job (convert, or the loader's first batch) in a fresh process, its time and memory.
- stages/: one module per stage, registered in data-flow order.
- gpu_check.sh: the GPU checks in one call on a machine lent with a GPU (environment, GPU tests, a training
  run and its resume, the GPU benchmark), or on a CPU with tiny sizes (`run --cpu-dry-run`, in make test).
- env_report.py, fresh_teacher.py, resume_check.py: gpu_check.sh's Python steps (`python -m bench.NAME`): the
  environment and decoders in use, a freshly initialised teacher file, and whether a run resumed.
- class_search.py: the data audit's class-by-class similarity search at MS1M's size (`python -m bench.class_search`).
- planted_audit.py: the data audit on a planted case of synthetic faces, with a trained model through the CLI
  (`python -m bench.planted_audit --checkpoint RUN`): shared identities and wrong labels found, false alarms.

    python -m bench [--quick] [--device cpu|cuda] [--stages convert,read,decode,pipeline,step]
                    [--data DIR | --images N] [--json OUT] [--markdown OUT] [--plot OUT.png]
    python -m bench --stages growth [--growth-records 100000,1000000] [--growth-classes 85742]

The pipeline's img/s alone on a GPU: `python -m bench --device cuda --stages pipeline`.
Benchmarks are not tests: nothing here asserts a speed, and no other package imports bench.
"""
