"""`python -m distill --config CFG [key=value ...]` (also under torchrun): train; `python -m distill
cache-teacher --teacher SPEC --shards DIR --out CACHE`: precompute the teacher's embeddings; `python -m
distill plan --config CFG --world-size W`: print the schedule without training; `python -m distill plot RUN
[RUN ...] --output curves.png`: draw runs' curves. Errors exit 2 with one line."""
import sys

from distill.cli import run

if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
