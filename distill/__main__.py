"""`python -m distill --config CFG [key=value ...]` (also under torchrun): train; errors exit non-zero."""
import sys

from distill.cli import run

if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
