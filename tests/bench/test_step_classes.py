"""The step stage's --num-classes: parsed into the settings, checked, and shown in the contender's label."""
from pathlib import Path

import pytest

from bench import cli
from bench.settings import BenchError, Settings


def test_num_classes_reaches_the_step_settings():
    args = cli._parser(["step"]).parse_args(["--num-classes", "2059906", "--device", "cpu"])
    settings = cli._settings(args, "cpu", Path("/tmp"))
    assert settings.step_num_classes == 2_059_906
    default = cli._settings(cli._parser(["step"]).parse_args([]), "cpu", Path("/tmp"))
    assert default.step_num_classes is None


def test_num_classes_below_one_is_refused():
    with pytest.raises(BenchError, match="--num-classes"):
        Settings(device="cpu", repeats=1, warmup=0, batch_size=1, step_batch_size=1, step_steps=1, student="s",
                 teacher="t", workers=1, scratch=Path("/tmp"), step_num_classes=0)
