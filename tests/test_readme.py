"""The README is part of the product: its config reference is the code's, and every command in it works.

Every command of the README's ```bash blocks (and the ones written inline in its prose that need no data:
`make ...`, `huggingface-cli|hf ...`, `python -m bench[.NAME] ...`, `python -m configs.reference`) must be of a
form this module knows how to check; one of any other form fails the test, so none goes in unchecked.
Each is checked as cheaply as it can be for real: conversions, training, teacher caching, export and evaluation run
on tiny synthetic data standing in for the README's placeholder paths; multi-node launch lines are parsed
by torchrun's own parser and their distill part by the config loader (and the one-node line runs as 2
processes on the CPU); `make` targets by `make -n`; the quick benchmark is `make demo`'s (demo.py) job.

The README tells one story (convert -> train -> cache -> evaluate -> audit), so a placeholder that one
command reads (`/data/shards/ms1mv2`, `runs/mbf_ir50`, `/data/cache/ir50`, or a file inside one:
`runs/audit/decisions/...`) is what the README command that writes it produced here. Training is cut
down by overrides appended after the README's own. The hub teacher cannot be downloaded here, so tiny
runs of ours stand in for teachers: one for every `hf:` spec and another for a config's own (local)
teacher, so that a cache built from one teacher and used with the other fails here as it would for a user.
An audit (`python -m evaluate audit`) runs on those tiny stand-ins and must write its report, its page and
the decision files that the README's rebuilds then read; a benchmark script (`python -m bench.NAME`, slow,
run by hand) must answer --help.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

import configs
from configs import reference

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PY = sys.executable
TINY_TRAINING = ("train.max_steps=2", "train.batch_size=8", "model.name=mobilefacenet_s", "eval.targets=[]")
# Sample values for the Slurm example's shell variables (its `head=$(...)` included).
SHELL_SAMPLES = {"SLURM_NNODES": "2", "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node[0-1]", "head": "node0"}
FIXED_PATHS = {"/data/faces_emore": "emore", "/data/my_identities": "identities", "/data/facerec_val": "empty",
               "/data/my_people": "people"}
# The own-data pair sets are cut down to this many pairs (appended after the README's --pairs, which argparse
# lets win), as training is cut down by TINY_TRAINING: the image passes over them stay a few seconds.
TINY_PAIRS = ("--pairs", "40")
PRODUCED = re.compile(r"(/data/shards|/data/cache|runs)/[\w.-]+")  # written by one README command, read by others
FORMS = ("python -m convert rec|folder|verify ...", "python -m distill --config FILE key=value ...",
         "python -m distill cache-teacher ...", "python -m distill plan ...", "python -m evaluate [batch] ...",
         "python -m evaluate embed|pairs|threshold ...", "python -m evaluate audit ...",
         "python -m bench[.SCRIPT] ...",
         "python -m models export ...",
         "python -m configs.reference", "[srun] torchrun ... -m distill ...", "make TARGET ...",
         "huggingface-cli|hf download ...")


@dataclass(frozen=True)
class Command:
    line: int                 # README line where it starts
    text: str                 # as written, continuation lines joined
    argv: tuple[str, ...]     # shell words, sample values substituted for shell variables


def _words(text: str, line: int) -> tuple[str, ...]:
    def value(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        assert name in SHELL_SAMPLES, f"README.md:{line}: shell variable ${name} has no sample value in test_readme.py"
        return SHELL_SAMPLES[name]
    return tuple(re.sub(r"\$\{(\w+)\}|\$(\w+)", value, w) for w in shlex.split(text, comments=True))


def readme_commands(text: str) -> list[Command]:
    found, in_block, pending, start = [], False, "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("```"):
            in_block = stripped == "```bash"
        elif in_block:
            if not pending and (not stripped or stripped.startswith("#")):
                continue  # blank, comment, shebang, #SBATCH
            start = start if pending else number
            pending += stripped.rstrip("\\").strip() + " "
            if not stripped.endswith("\\"):
                command, pending = pending.strip(), ""
                argv = _words(command, start)
                if argv and not re.match(r"[A-Za-z_]\w*=", argv[0]):  # `head=$(...)` only sets a variable
                    found.append(Command(start, command, argv))
        else:
            for span in re.findall(r"`([^`]+)`", raw):
                if re.match(r"(make|huggingface-cli|hf) |python -m (bench|configs\.reference)\b", span):
                    found.append(Command(number, span, _words(span, number)))
    unique = {}
    for command in found:
        unique.setdefault(command.argv, command)  # a command repeated in the prose is checked once
    return list(unique.values())


def kind(argv: tuple[str, ...]) -> Optional[str]:
    """Which check a command gets; None for a form this module does not know."""
    module, sub = (argv[2:3] or ("",))[0], (argv[3:4] or ("",))[0]
    if argv[:2] == ("python", "-m"):
        return {("convert", "rec"): "convert", ("convert", "folder"): "convert", ("convert", "verify"): "convert",
                ("distill", "--config"): "train", ("distill", "cache-teacher"): "cache-teacher",
                ("distill", "plan"): "plan", ("evaluate", "embed"): "own-data", ("evaluate", "pairs"): "own-data",
                ("evaluate", "threshold"): "own-data", ("models", "export"): "export", ("evaluate", "audit"): "audit"}.get(
            (module, sub), module if module in ("evaluate", "bench") else
            "bench-script" if module.startswith("bench.") else
            "reference" if argv[2:] == ("configs.reference",) else None)
    if argv[:1] == ("torchrun",) or argv[:2] == ("srun", "torchrun"):
        return "torchrun"
    if argv[:1] == ("make",) and len(argv) > 1:
        return "make"
    return "hub" if argv[:1] in (("huggingface-cli",), ("hf",)) and argv[1:2] == ("download",) else None


def writes(argv: tuple[str, ...]) -> Optional[str]:
    """The README path a command writes, if any."""
    if kind(argv) == "convert" and argv[3] != "verify":
        from convert.cli import build_parser
        return build_parser().parse_args(argv[3:]).out
    if kind(argv) == "cache-teacher" and "--out" in argv:
        return argv[argv.index("--out") + 1]
    if kind(argv) in ("export", "audit") and "--output" in argv:
        return argv[argv.index("--output") + 1]
    if kind(argv) == "train":
        return next((a.split("=", 1)[1] for a in argv if a.startswith("output=")), None)
    if kind(argv) == "own-data" and argv[3] == "pairs" and "--output" in argv:
        return argv[argv.index("--output") + 1]
    return None


COMMANDS = readme_commands(README.read_text())


def run(argv) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([str(a) for a in argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def expect_ok(done: subprocess.CompletedProcess, what: str) -> None:
    assert done.returncode == 0, (f"{what}\nran: {shlex.join(done.args)}\nexit {done.returncode}; stderr "
                                  f"(tail):\n{done.stderr[-3000:]}\nstdout (tail):\n{done.stdout[-1000:]}")


class World:
    """Tiny data standing in for the README's placeholders, and what its commands produced (each run once)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.emore = root / "faces_emore"  # train.rec/train.idx and lfw.bin, like MS1MV2's folder
        self.identities, self.empty, self.teacher_shards = root / "ids", root / "facerec_val", root / "t_shards"
        self.people = root / "people"  # 20 identities: the fewest whose pair set has 10 identity-disjoint folds
        self.empty.mkdir()
        self._runs: dict = {}
        self._teachers: dict = {}
        for argv in (["synth", self.emore, "--identities", "8", "--per-identity", "6"],
                     ["synth", self.identities, "--identities", "4", "--per-identity", "3", "--format", "folder"],
                     ["synth", self.people, "--identities", "20", "--per-identity", "3", "--format", "folder"],
                     # 100 pairs: each of the 10 folds gets same and different pairs
                     ["synth-bin", self.emore / "lfw.bin", "--identities", "4", "--pairs", "100",
                      "--first-identity", "8"],
                     ["rec", self.emore, self.teacher_shards]):
            expect_ok(run([PY, "-m", "convert", *argv, "--workers", "1"]), "building the test data")

    def teacher(self, spec: str) -> Path:
        """A tiny run of ours standing in for a teacher: one for every hf: spec, another for any other."""
        which = "hub" if spec.startswith("hf:") else "local"
        if which not in self._teachers:
            out = self.root / f"teacher_{which}"
            expect_ok(run([PY, "-m", "distill", "--config", "configs/synthetic_nokd.yaml", f"output={out}",
                           f"data.shards={self.teacher_shards}", f"seed={int(which == 'local')}", *TINY_TRAINING]),
                      f"training the tiny stand-in for teacher {spec!r}")
            self._teachers[which] = out
        return self._teachers[which]

    def path(self, value: str, write: bool = False, copy: bool = False) -> str:
        """The stand-in for one README word: a placeholder dataset, a fresh output path, what a README
        command produced (a copy of it with copy=True), a teacher; any other word unchanged."""
        if value.startswith("hf:"):
            return str(self.teacher(value))
        for placeholder, attr in FIXED_PATHS.items():
            if value == placeholder or value.startswith(placeholder + "/"):
                return str(getattr(self, attr)) + value[len(placeholder):]
        inside = PRODUCED.match(value)
        if inside and value[inside.end():].startswith("/") and not write:  # a file a README command wrote
            return self.path(inside.group(0)) + value[inside.end():]
        if PRODUCED.fullmatch(value):
            if not write:
                writers = [c for c in COMMANDS if writes(c.argv) == value]
                assert writers, f"the README reads {value!r} but none of its commands writes it"
                done, made = self.run_once(writers[0])
                expect_ok(done, f"{value!r} is made by README.md:{writers[0].line}, which failed")
                if not copy:
                    return str(made)
            # named as the README names it: the audit names its sets (decisions/<set>/) after their folders
            fresh = Path(tempfile.mkdtemp(dir=self.root, prefix=re.sub(r"\W+", "_", value) + "-"))
            fresh = fresh / Path(value).name
            if not write:
                shutil.copytree(made, fresh)
            return str(fresh)
        assert not value.startswith("/data/"), f"README path {value!r} has no stand-in in test_readme.py"
        return value

    def localize(self, words, written: Optional[str] = None, copy: bool = False) -> tuple[list, Optional[Path]]:
        """Every word (or key=value override's value) mapped by path(); the written one to a fresh path."""
        done, out = [], None
        for word in words:
            key, value = word.split("=", 1) if re.match(r"[a-z_.]+=", word) else ("", word)
            if written is not None and value == written:
                out = Path(self.path(value, write=True))
                value = str(out)
            elif key and value.startswith("[") and value.endswith("]"):  # a list (data.shards=[a,b]): each item
                value = "[" + ",".join(self.path(v.strip(), copy=copy) for v in value[1:-1].split(",") if v.strip()) + "]"
            else:
                value = self.path(value, copy=copy)
            done.append(f"{key}={value}" if key else value)
        return done, out

    def run_once(self, command: Command) -> tuple[subprocess.CompletedProcess, Optional[Path]]:
        """Run a README command that writes data (convert, cache-teacher, train) once; its result and output."""
        if command not in self._runs:
            k = kind(command.argv)
            if k == "train":
                args, out = distill_args(self, command.argv[3:], command.line)
            else:
                args, out = self.localize(command.argv[3:], writes(command.argv))
            extra = {"convert": ["--workers", "1"] if args[0] != "verify" else [], "cache-teacher": ["--no-progress"],
                     "own-data": list(TINY_PAIRS), "audit": ["--quiet"]}
            self._runs[command] = run([PY, "-m", command.argv[2], *args, *extra.get(k, [])]), out
        return self._runs[command]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return World(tmp_path_factory.mktemp("readme"))


def distill_args(w: World, args: tuple[str, ...], line: int) -> tuple[list[str], Optional[Path]]:
    """`--config FILE key=value ...` with the stand-ins and the tiny sizes appended: what the test runs."""
    assert args[:1] == ("--config",) and len(args) > 1, f"README.md:{line}: expected `--config FILE key=value ...`"
    bad = [a for a in args[2:] if "=" not in a]
    assert not bad, (f"README.md:{line}: {bad} is not a key=value override; write the command out in full "
                     "(a `...` can be run neither by a user nor by this test)")
    cfg = configs.load(ROOT / args[1], args[2:])  # the README's own keys exist and values parse
    overrides, out = w.localize(args[2:], writes(("python", "-m", "distill", *args)))
    extra = list(TINY_TRAINING)
    if cfg.distill.mode != "none" and not any(a.startswith("teacher.spec=") for a in args[2:]):
        # stands in for the config's own teacher; a command naming its teacher keeps its own teacher.network
        extra += [f"teacher.spec={w.teacher(str(cfg.teacher.spec))}", "teacher.network=null"]
    return ["--config", args[1], *overrides, *extra], out


def _ran_two_steps(out: Path, line: int, world_size: int = 1) -> None:
    from distill import checkpoint
    state = checkpoint.load(checkpoint.latest(out))
    assert (state["step"], state["world_size"]) == (2, world_size), \
        f"README.md:{line}: the run stopped at step {state['step']} with {state['world_size']} ranks"


def check_produced(w: World, c: Command) -> None:
    done, out = w.run_once(c)
    expect_ok(done, f"README.md:{c.line}: {c.text}")
    if kind(c.argv) == "train":
        _ran_two_steps(out, c.line)


def check_audit(w: World, c: Command) -> None:
    """It runs, and writes its report, its page and a decision folder per set, named as the README reads them."""
    done, out = w.run_once(c)
    expect_ok(done, f"README.md:{c.line}: {c.text}")
    report = json.loads((out / "audit.json").read_text())
    names = [s["name"] for s in report["sets"]]
    assert (out / "index.html").is_file() and all((out / "decisions" / n).is_dir() for n in names), \
        f"README.md:{c.line}: no index.html, or no decisions/<set>/ for each of {names}, in {out}"


def check_evaluate(w: World, c: Command) -> None:
    args, _ = w.localize(c.argv[3:], copy=True)  # copies: evaluate writes its reports beside the checkpoint
    expect_ok(run([PY, "-m", "evaluate", *args, "--quiet"]), f"README.md:{c.line}: {c.text}")
    batch = args[0] == "batch"
    where = Path(args[args.index("--checkpoint-dir" if batch else "--checkpoint") + 1]) / "reports"
    reports = sorted(where.glob("*.json"))
    assert reports and '"lfw"' in reports[0].read_text(), f"README.md:{c.line}: no report with lfw in {where}"
    assert not batch or (where / "summary.csv").is_file(), f"README.md:{c.line}: no summary.csv in {where}"


def check_own_data(w: World, c: Command) -> None:
    """pairs, threshold and embed as written (pairs cut to TINY_PAIRS), each output checked for what it must hold."""
    import pyarrow.parquet as pq

    if c.argv[3] == "pairs":
        done, out = w.run_once(c)
        expect_ok(done, f"README.md:{c.line}: {c.text}")
        assert out.is_file() and out.with_suffix(".csv").is_file(), f"README.md:{c.line}: no {out} and its .csv"
        return
    args = []
    for before, word in zip(("",) + c.argv[3:], c.argv[3:]):  # the files it writes go to fresh paths
        args.append(w.path(word, write=True) if before in ("--output", "--roc") else w.path(word))
    out = Path(args[args.index("--output") + 1]) if "--output" in args else None
    expect_ok(run([PY, "-m", "evaluate", *args, "--quiet"]), f"README.md:{c.line}: {c.text}")
    if c.argv[3] == "embed":
        assert pq.read_table(out).num_rows == 60, f"README.md:{c.line}: {out} should hold the 60 images"
        return
    if out is not None:
        import json
        fars = [m["results"][name]["thresholds"]["far"] for m in json.loads(out.read_text())["models"]
                for name in m["results"]]
        asked = [c.argv[i + 1] for i, a in enumerate(c.argv) if a == "--far"]
        assert fars and all(f"{float(f):g}" in points for points in fars for f in asked), \
            f"README.md:{c.line}: {out} lacks FAR {asked}: {fars}"
    if "--roc" in args:
        assert Path(args[args.index("--roc") + 1]).read_bytes()[:4] == b"\x89PNG", f"README.md:{c.line}: no ROC"


def check_bench(w: World, c: Command) -> None:
    from bench import cli
    from bench.stages import stage_names

    args = cli._parser(stage_names()).parse_args(w.localize(c.argv[3:])[0])
    cli._stages(args.stages, stage_names())  # every named stage exists
    assert args.data is None or args.data.exists()
    if args.quick:  # the quick run itself is `make demo`'s step 6
        assert re.search(r'"-m", "bench", "--quick"', (ROOT / "demo.py").read_text()), \
            f"README.md:{c.line}: `{c.text}` is said to run in make demo, but demo.py does not run it"


def check_bench_script(w: World, c: Command) -> None:
    """A benchmark script (bench/NAME.py, measured by hand, slow): it exists and its command line parses."""
    expect_ok(run([PY, "-m", c.argv[2], "--help"]), f"README.md:{c.line}: {c.text} (--help)")


def check_reference(w: World, c: Command) -> None:
    done = run([PY, "-m", "configs.reference"])
    expect_ok(done, f"README.md:{c.line}: {c.text}")
    assert done.stdout.strip() == reference.markdown()


def check_torchrun(w: World, c: Command) -> None:
    from torch.distributed.run import config_from_args, get_args_parser

    targs = get_args_parser().parse_args(c.argv[2:] if c.argv[0] == "srun" else c.argv[1:])
    config_from_args(targs)  # node counts, processes per node, rendezvous: torchrun's own checks
    assert targs.module and targs.training_script == "distill", \
        f"README.md:{c.line}: torchrun should run `-m distill`, found {targs.training_script!r}"
    script = tuple(targs.training_script_args)
    assert script[:1] == ("--config",) and (ROOT / script[1]).is_file(), f"README.md:{c.line}: no config in {script}"
    configs.load(ROOT / script[1], script[2:])  # keys exist and values parse
    if targs.standalone:  # one real run as 2 processes on the CPU (gloo)
        args, out = distill_args(w, script, c.line)
        done = run([PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "distill", *args])
        expect_ok(done, f"README.md:{c.line}: {c.text} (as 2 processes on the CPU)")
        _ran_two_steps(out, c.line, world_size=2)


def check_plan(w: World, c: Command) -> None:
    """The schedule preview runs, and the README's ```text block after it is its output, verbatim."""
    done = run([PY, "-m", "distill", *c.argv[3:]])
    expect_ok(done, f"README.md:{c.line}: {c.text}")
    lines = README.read_text().splitlines()
    start = next((i for i in range(c.line, len(lines)) if lines[i].startswith("```text")), None)
    assert start is not None, f"README.md:{c.line}: no ```text block with the output after `{c.text}`"
    end = lines.index("```", start + 1)
    assert "\n".join(lines[start + 1:end]) == done.stdout.rstrip("\n"), (
        f"README.md:{start + 1}: the shown output differs from what `{c.text}` prints now:\n{done.stdout}")


def check_make(w: World, c: Command) -> None:
    expect_ok(run(["make", "-n", *c.argv[1:]]), f"README.md:{c.line}: {c.text} (dry run)")


def check_hub(w: World, c: Command) -> None:
    have = sorted(p.name for p in Path(PY).parent.iterdir() if p.name in ("huggingface-cli", "hf"))
    assert c.argv[0] in have, (f"README.md:{c.line}: `{c.text}`: the installed huggingface_hub has no "
                               f"{c.argv[0]} command; it has {have}")
    expect_ok(run([Path(PY).parent / c.argv[0], "download", "--help"]), f"README.md:{c.line}: {c.text} (--help)")


CHECKS = {"convert": check_produced, "cache-teacher": check_produced, "train": check_produced, "export": check_produced,
          "plan": check_plan, "evaluate": check_evaluate, "own-data": check_own_data, "audit": check_audit,
          "bench-script": check_bench_script, "bench": check_bench, "reference": check_reference,
          "torchrun": check_torchrun, "make": check_make, "hub": check_hub}


def test_config_reference_matches_the_code():
    block = reference.readme_block(README)
    assert block, f"README.md has no {reference.BEGIN} ... {reference.END} block"
    assert block == reference.markdown(), (
        "README.md's config reference differs from configs/schema.py: run `python -m configs.reference` "
        "and paste its output over the block between the config-reference markers")


def test_every_config_key_has_a_meaning():
    missing = [key for key, _, meaning in reference.rows() if not meaning.strip()]
    assert not missing, f"configs/schema.py: no comment (meaning) on the line of {missing}"


def test_every_readme_command_has_a_check():
    assert len(COMMANDS) >= 10, f"found only {len(COMMANDS)} commands in README.md: is the parser broken?"
    unknown = [f"README.md:{c.line}: {c.text}" for c in COMMANDS if kind(c.argv) is None]
    assert not unknown, (f"README commands of a form tests/test_readme.py cannot check (add a check there): "
                         f"{'; '.join(unknown)}. Known forms: {', '.join(FORMS)}")


@pytest.mark.parametrize("command", [c for c in COMMANDS if kind(c.argv)],
                         ids=lambda c: f"L{c.line}:{' '.join(c.argv[:4])}")
def test_readme_command_works(command: Command, world: World):
    CHECKS[kind(command.argv)](world, command)
