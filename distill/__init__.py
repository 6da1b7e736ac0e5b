"""distill: margin heads and AdaDistill distillation losses (the training loop is `python -m distill`).

Importing this package builds heads only; it never imports the loop, torch.distributed setup or DALI.
"""

from .heads import Head, build_head
from .margins import MARGINS

__all__ = ["Head", "MARGINS", "build_head"]
