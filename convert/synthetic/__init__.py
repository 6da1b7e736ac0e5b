"""Synthetic face identities: a data source for the demo, the tests and the benchmark, written in the
formats real datasets come in, so that they go through the converter like any other.

Modules:
- faces.py: render 112x112 face-like RGB images, a stable template per identity, varied per image.
- writers.py: write them (JPEG, in parallel) as an insightface-layout .rec, identity folders, or a .bin pair set
  (write_bin, insightface's .bin format, which `python -m evaluate pairs` writes too).

`python -m convert synth` and `python -m convert synth-bin` (convert/cli.py) call the writers.
"""
from convert.synthetic.faces import render
from convert.synthetic.writers import SynthError, write_bin, write_pairs_bin, write_synthetic

__all__ = ["SynthError", "render", "write_bin", "write_pairs_bin", "write_synthetic"]
