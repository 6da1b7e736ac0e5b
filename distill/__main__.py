"""`python -m distill --config CFG [key=value ...]` (also under torchrun): train; `python -m distill
cache-teacher --teacher SPEC --shards DIR --out CACHE`: precompute the teacher's embeddings. Errors exit
non-zero."""
import sys

from distill.cli import run

if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
