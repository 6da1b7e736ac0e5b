"""configs.load: the shipped YAML files, typed overrides, and errors that name the key."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import configs
from configs import ConfigError
from distill import optim as schedule

CONFIG_DIR = Path(configs.__file__).parent
SHIPPED = sorted(CONFIG_DIR.glob("*.yaml"))
REQUIRED = ("data.shards", "output", "train.batch_size", "train.max_steps", "train.log_every", "distill.mode",
            "teacher.spec")


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


MINIMAL = "output: runs/x\ndata: {shards: shards/x}\ndistill: {mode: none}\n"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_load_and_state_the_required_keys(path):
    import yaml
    raw = yaml.safe_load(path.read_text())
    for dotted in REQUIRED:
        node = raw
        for part in dotted.split("."):
            assert part in node, f"{path.name} does not state {dotted}"
            node = node[part]
    cfg = configs.load(path)
    assert configs.from_dict(configs.to_dict(cfg)) == cfg
    for dotted in REQUIRED[:-1]:  # each is overridable from the command line
        configs.field_type(dotted)


def test_paper_and_seed_configs_hold_their_recipes():
    paper = configs.load(CONFIG_DIR / "ms1mv2_mbf_ir50_adaarcdistill.yaml")
    assert (paper.distill.loss, paper.distill.s, paper.distill.m, paper.distill.alpha) == ("arcface", 64.0, 0.45,
                                                                                           "weighted")
    assert paper.train.epochs == 26 and paper.train.decay_epochs == (8, 14, 20, 25) and paper.train.lr == 0.1
    plan = schedule.plan(paper.train, world_size=512 // paper.train.batch_size, steps_per_epoch=100)
    assert plan.global_batch == 512 and plan.lr == pytest.approx(0.1)
    seed = configs.load(CONFIG_DIR / "ms1mv2_mbf_cvlface_adafacekd_geom.yaml")
    d = seed.distill
    assert (d.loss, d.m, d.h, d.s, d.t_alpha) == ("adaface", 0.4, 0.333, 64.0, 0.01)
    assert d.geom == configs.GeomConfig(w=1.0, k=3.0, warmup_epochs=1.0)
    assert seed.teacher.spec == "hf:minchul/cvlface_adaface_ir50_webface4m"


def test_overrides_parse_into_the_declared_types(tmp_path):
    cfg = configs.load(_write(tmp_path, MINIMAL), [
        "train.batch_size=64", "train.lr=5e-4", "train.decay_epochs=[2, 4]", "teacher.spec=12",
        "output=runs/y", "train.channels_last=true", "distill.mode=adadistill", "eval.targets=[a.bin]",
        "distill.loss=adaface", "distill.geom.k=2", "train.max_steps=0"])
    assert cfg.train.batch_size == 64 and isinstance(cfg.train.batch_size, int)
    assert cfg.train.lr == 5e-4 and isinstance(cfg.train.lr, float)
    assert cfg.train.decay_epochs == (2.0, 4.0)
    assert cfg.teacher.spec == "12"            # a string field takes the text verbatim
    assert cfg.output == "runs/y" and cfg.train.channels_last is True
    assert cfg.eval.targets == ("a.bin",)
    assert cfg.distill.geom == configs.GeomConfig(w=1.0, k=2.0, warmup_epochs=1.0)  # null section from defaults
    with pytest.raises(Exception):
        cfg.train = None  # frozen


@pytest.mark.parametrize("override, words", [
    ("train.bs=3", ["train.bs", "train.batch_size"]),
    ("trian.batch_size=3", ["trian.batch_size"]),
    ("train.batch_size.x=3", ["train.batch_size.x"]),
    ("train.batch_size=abc", ["train.batch_size", "int", "abc"]),
    ("train.batch_size=2.5", ["train.batch_size", "int"]),
    ("train.batch_size=0", ["train.batch_size", "> 0"]),
    ("distill.mode=kd", ["distill.mode", "adadistill", "kd"]),
    ("train.channels_last=maybe", ["train.channels_last", "bool"]),
    ("train.batch_size", ["key=value"]),
])
def test_bad_overrides_name_the_key(tmp_path, override, words):
    with pytest.raises(ConfigError) as info:
        configs.load(_write(tmp_path, MINIMAL), [override])
    for word in words:
        assert word in str(info.value)


def test_file_errors_name_the_file_and_key(tmp_path):
    with pytest.raises(ConfigError, match=r"run\.yaml.*unknown key 'train\.batch'"):
        configs.load(_write(tmp_path, MINIMAL + "train: {batch: 3}\n"))
    with pytest.raises(ConfigError, match=r"run\.yaml.*unknown key 'foo'"):
        configs.load(_write(tmp_path, MINIMAL + "foo: 1\n"))
    with pytest.raises(ConfigError, match=r"missing required key 'data\.shards'"):
        configs.load(_write(tmp_path, "output: runs/x\ndistill: {mode: none}\n"))
    with pytest.raises(ConfigError, match=r"teacher\.spec"):
        configs.load(_write(tmp_path, "output: runs/x\ndata: {shards: s}\n"))  # adadistill needs a teacher
    with pytest.raises(ConfigError, match=r"distill\.geom"):
        configs.load(_write(tmp_path, MINIMAL), ["distill.geom.w=1"])  # geom needs adaface + adadistill
    with pytest.raises(ConfigError, match="cannot read config"):
        configs.load(tmp_path / "absent.yaml")


def test_schedule_warmup_multistep_and_cosine():
    train = configs.TrainConfig(batch_size=64, lr=0.1, lr_batch=512, epochs=4, warmup_epochs=1,
                                decay_epochs=(3, 4), decay_factor=0.1)  # 1-based
    plan = schedule.plan(train, world_size=2, steps_per_epoch=10)
    assert plan.lr == pytest.approx(0.025) and plan.stop_step == 40
    assert [plan.lr_at(s) for s in (0, 9)] == pytest.approx([0.0025, 0.025])
    assert [plan.lr_at(s) for s in (10, 19, 20, 29, 30, 39)] == pytest.approx(
        [0.025, 0.025, 0.0025, 0.0025, 0.00025, 0.00025])
    cosine = schedule.plan(configs.TrainConfig(epochs=2, schedule="cosine", max_steps=5), world_size=4,
                           steps_per_epoch=10)
    assert cosine.stop_step == 5 and cosine.lr_at(0) == pytest.approx(0.1)
    assert cosine.lr_at(10) == pytest.approx(0.05) and cosine.lr_at(19) < 0.002
    values = [cosine.lr_at(s) for s in range(20)]
    assert values == sorted(values, reverse=True)
    assert torch.tensor(values).isfinite().all()


@pytest.mark.parametrize("loss, default", [("arcface", 0.5), ("cosface", 0.35), ("adaface", 0.4)])
def test_a_margin_left_unset_takes_its_losses_default(tmp_path, loss, default):
    """distill.m: null (the schema's default) means the loss's own margin; a set one is used as it is."""
    from distill.heads import head_from_config

    cfg = configs.load(_write(tmp_path, MINIMAL), [f"distill.loss={loss}", "distill.mode=none"])
    assert cfg.distill.m is None and head_from_config(cfg, 3).margin.m == default
    cfg = configs.load(_write(tmp_path, MINIMAL), [f"distill.loss={loss}", "distill.mode=none", "distill.m=0.2"])
    assert head_from_config(cfg, 3).margin.m == 0.2
    with pytest.raises(ConfigError, match=r"distill\.m: expected"):
        configs.load(_write(tmp_path, MINIMAL), [f"distill.loss={loss}", "distill.m=2.0"])


def test_data_shards_takes_a_list_of_directories(tmp_path):
    listed = "output: runs/x\ndata: {shards: [/d/a, /d/b], weights: [2, 0.5]}\ndistill: {mode: none}\n"
    cfg = configs.load(_write(tmp_path, listed))
    assert cfg.data.shards == ("/d/a", "/d/b") and cfg.data.weights == (2.0, 0.5)
    assert cfg.data.shard_dirs == ("/d/a", "/d/b")
    assert configs.from_dict(configs.to_dict(cfg)) == cfg and configs.to_dict(cfg)["data"]["shards"] == ["/d/a", "/d/b"]
    over = configs.load(_write(tmp_path, MINIMAL), ["data.shards=[/d/a, /d/b]", "data.weights=[1, 0]"])
    assert over.data.shards == ("/d/a", "/d/b") and over.data.weights == (1.0, 0.0)
    # One directory, in a list or not, is the same config; weights of 1 are the default's null.
    for override in ("data.shards=[shards/x]", "data.shards=shards/x"):
        one = configs.load(_write(tmp_path, MINIMAL), [override, "data.weights=[1]"])
        assert one.data.shards == "shards/x" and one.data.weights is None and one.data.shard_dirs == ("shards/x",)
        assert one == configs.load(_write(tmp_path, MINIMAL))
    assert configs.load(_write(tmp_path, MINIMAL), ["data.shards=12"]).data.shards == "12"  # text stays verbatim


@pytest.mark.parametrize("overrides, words", [
    (["data.shards=[a, b]", "data.weights=[1]"], ["data.weights", "(2)", "(1.0,)"]),
    (["data.shards=[a, b]", "data.weights=[1, -1]"], ["data.weights", ">= 0"]),
    (["data.shards=[a, b]", "data.weights=[0, 0]"], ["data.weights", "not all 0"]),
    (["data.shards=[a, b]", "data.weights=[1, .inf]"], ["data.weights", "inf"]),
    (["data.shards=[a, b]", "data.weights=[1, x]"], ["data.weights", "float", "'x'"]),
    (["data.weights=[2, 1]"], ["data.weights", "(1)"]),
    (["data.shards=[a, a]"], ["data.shards", "each directory once"]),
    (["data.shards=[]"], ["data.shards", "non-empty"]),
    (["data.shards=[1, 2]"], ["data.shards", "str or a list of str"]),
])
def test_bad_data_shards_or_weights_name_the_key(tmp_path, overrides, words):
    with pytest.raises(ConfigError) as info:
        configs.load(_write(tmp_path, MINIMAL), overrides)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("overrides, words", [
    # rules shared with the pipeline's own arguments (configs/rules.py)
    (["data.shards=[a, ./a]"], ["data.shards", "'./a' listed twice (also as 'a')", "data.weights"]),
    (["data.hw_decoder_load=1.5"], ["data.hw_decoder_load", "[0, 1]", "1.5"]),
    (["data.hw_decoder_load=.nan"], ["data.hw_decoder_load", "[0, 1]", "nan"]),
    # across sections: a teacher cache holds the plain and mirrored views only (was distill.teacher.open_cache's)
    (["distill.teacher_cache=cache", "data.augment.low_res=0.2"],
     ["distill.teacher_cache", "flip", "'low_res': 0.2"]),
])
def test_rules_of_the_parts_are_checked_when_the_config_is_loaded(tmp_path, overrides, words):
    with pytest.raises(ConfigError) as info:
        configs.load(_write(tmp_path, MINIMAL), overrides)
    for word in words:
        assert word in str(info.value)
    assert configs.load(_write(tmp_path, MINIMAL), ["distill.teacher_cache=cache", "data.augment.low_res=0",
                                                    "data.hw_decoder_load=1"]).data.hw_decoder_load == 1.0


def test_the_parts_take_their_choices_from_the_config():
    import typing

    from distill import teacher
    from pipeline import backend_choice

    assert teacher.PRECISIONS == typing.get_args(configs.field_type("train.precision")) == ("auto", "fp32", "bf16",
                                                                                              "fp16")
    assert backend_choice.BACKENDS == typing.get_args(configs.field_type("data.backend"))


def test_configs_imports_no_other_package_of_the_project_and_not_torch():
    import subprocess
    import sys

    code = ("import sys, configs; bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', "
            "'common', 'convert', 'pipeline', 'models', 'distill', 'evaluate', 'bench')); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(configs.__file__).parents[1])
