"""The README and the docs/ pages are part of the product: the config reference is the code's, every command
in them works, and every relative link in them leads to a file (and heading) that exists.

The pages are README.md and docs/*.md but DESIGN.md (whose commands are contract forms with `...`, not
examples; its links are checked). Every command of their ```bash blocks (and the ones written inline in their
prose that need no data: `make ...`, `huggingface-cli|hf ...`, `python -m bench[.NAME] ...`,
`python -m configs.reference`) must be of a form this module knows how to check; one of any other form fails
the test, so none goes in unchecked. (```sh blocks are shown, not checked: the Slurm preemption script.)
Each is checked as cheaply as it can be for real: conversions, training, teacher caching, export and evaluation run
on tiny synthetic data standing in for the README's placeholder paths; multi-node launch lines are parsed
by torchrun's own parser and their distill part by the config loader (and the one-node line runs as 2
processes on the CPU); `make` targets by `make -n`; the quick benchmark is `make demo`'s (demo.py) job.

The pages tell one story (convert -> train -> cache -> evaluate -> audit), so a placeholder that one
command reads (`/data/shards/ms1mv2`, `runs/mbf_ir50`, `/data/cache/ir50`, or a file inside one:
`runs/audit/decisions/...`) is what the command that writes it, on whichever page, produced here. Training is cut
down by overrides appended after the README's own. The hub teacher cannot be downloaded here, so tiny
runs of ours stand in for teachers: one for every `hf:` spec and another for a config's own (local)
teacher, so that a cache built from one teacher and used with the other fails here as it would for a user.
An audit (`python -m evaluate audit`) runs on those tiny stand-ins and must write its report, its page and
the decision files that the README's rebuilds then read; a benchmark script (`python -m bench.NAME`, slow,
run by hand) must answer --help; a `pip install` line is parsed by pip's own parser, its requirements by
packaging's, and its local project's extras must exist (an install needs the network, which tests lack).
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
DOCS = ROOT / "docs"
CONFIG_PAGE = DOCS / "configuration.md"  # holds the generated config table
# The pages whose commands are checked, the README first (a command repeated on a later page is checked once,
# where it first appears); DESIGN.md's commands are contract forms (`python -m bench ...`), not examples.
PAGES = [README] + sorted(p for p in DOCS.glob("*.md") if p.name != "DESIGN.md")
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
         "huggingface-cli|hf download ...", "pip install ...")


@dataclass(frozen=True)
class Command:
    line: int                 # line of its page where it starts
    text: str                 # as written, continuation lines joined
    argv: tuple[str, ...]     # shell words, sample values substituted for shell variables
    page: str = "README.md"   # the page (relative to the repository) that holds it

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def _words(text: str, where: str) -> tuple[str, ...]:
    def value(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        assert name in SHELL_SAMPLES, f"{where}: shell variable ${name} has no sample value in test_readme.py"
        return SHELL_SAMPLES[name]
    return tuple(re.sub(r"\$\{(\w+)\}|\$(\w+)", value, w) for w in shlex.split(text, comments=True))


def page_commands(text: str, page: str = "README.md") -> list[Command]:
    """Every command of one page, in order, as written (continuation lines joined)."""
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
                argv = _words(command, f"{page}:{start}")
                if argv and not re.match(r"[A-Za-z_]\w*=", argv[0]):  # `head=$(...)` only sets a variable
                    found.append(Command(start, command, argv, page))
        else:
            for span in re.findall(r"`([^`]+)`", raw):
                if re.match(r"(make|huggingface-cli|hf) |python -m (bench|configs\.reference)\b", span):
                    found.append(Command(number, span, _words(span, f"{page}:{number}"), page))
    return found


def all_commands(pages=PAGES) -> list[Command]:
    unique = {}
    for page in pages:
        for command in page_commands(page.read_text(), str(page.relative_to(ROOT))):
            unique.setdefault(command.argv, command)  # a command repeated in the prose or on a page is checked once
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
    if argv[:2] == ("pip", "install"):
        return "pip"
    return "hub" if argv[:1] in (("huggingface-cli",), ("hf",)) and argv[1:2] == ("download",) else None


def writes(argv: tuple[str, ...]) -> Optional[str]:
    """The placeholder path a command writes, if any."""
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


COMMANDS = all_commands()


def run(argv) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([str(a) for a in argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def expect_ok(done: subprocess.CompletedProcess, what: str) -> None:
    assert done.returncode == 0, (f"{what}\nran: {shlex.join(done.args)}\nexit {done.returncode}; stderr "
                                  f"(tail):\n{done.stderr[-3000:]}\nstdout (tail):\n{done.stdout[-1000:]}")


class World:
    """Tiny data standing in for the pages' placeholders, and what their commands produced (each run once)."""

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
        """The stand-in for one word of a page: a placeholder dataset, a fresh output path, what a page's
        command produced (a copy of it with copy=True), a teacher; any other word unchanged."""
        if value.startswith("hf:"):
            return str(self.teacher(value))
        for placeholder, attr in FIXED_PATHS.items():
            if value == placeholder or value.startswith(placeholder + "/"):
                return str(getattr(self, attr)) + value[len(placeholder):]
        inside = PRODUCED.match(value)
        if inside and value[inside.end():].startswith("/") and not write:  # a file a page's command wrote
            return self.path(inside.group(0)) + value[inside.end():]
        if PRODUCED.fullmatch(value):
            if not write:
                writers = [c for c in COMMANDS if writes(c.argv) == value]
                assert writers, f"the pages read {value!r} but none of their commands writes it"
                done, made = self.run_once(writers[0])
                expect_ok(done, f"{value!r} is made by {writers[0].where}, which failed")
                if not copy:
                    return str(made)
            # named as the page names it: the audit names its sets (decisions/<set>/) after their folders
            fresh = Path(tempfile.mkdtemp(dir=self.root, prefix=re.sub(r"\W+", "_", value) + "-"))
            fresh = fresh / Path(value).name
            if not write:
                shutil.copytree(made, fresh)
            return str(fresh)
        assert not value.startswith("/data/"), f"path {value!r} of the pages has no stand-in in test_readme.py"
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
        """Run a page's command that writes data (convert, cache-teacher, train) once; its result and output."""
        if command not in self._runs:
            k = kind(command.argv)
            if k == "train":
                args, out = distill_args(self, command.argv[3:], command.where)
            else:
                args, out = self.localize(command.argv[3:], writes(command.argv))
            extra = {"convert": ["--workers", "1"] if args[0] != "verify" else [], "cache-teacher": ["--no-progress"],
                     "own-data": list(TINY_PAIRS), "audit": ["--quiet"]}
            self._runs[command] = run([PY, "-m", command.argv[2], *args, *extra.get(k, [])]), out
        return self._runs[command]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return World(tmp_path_factory.mktemp("readme"))


def distill_args(w: World, args: tuple[str, ...], where: str) -> tuple[list[str], Optional[Path]]:
    """`--config FILE key=value ...` with the stand-ins and the tiny sizes appended: what the test runs."""
    assert args[:1] == ("--config",) and len(args) > 1, f"{where}: expected `--config FILE key=value ...`"
    bad = [a for a in args[2:] if "=" not in a]
    assert not bad, (f"{where}: {bad} is not a key=value override; write the command out in full "
                     "(a `...` can be run neither by a user nor by this test)")
    cfg = configs.load(ROOT / args[1], args[2:])  # the page's own keys exist and values parse
    overrides, out = w.localize(args[2:], writes(("python", "-m", "distill", *args)))
    extra = list(TINY_TRAINING)
    if cfg.distill.mode != "none" and not any(a.startswith("teacher.spec=") for a in args[2:]):
        # stands in for the config's own teacher; a command naming its teacher keeps its own teacher.network
        extra += [f"teacher.spec={w.teacher(str(cfg.teacher.spec))}", "teacher.network=null"]
    return ["--config", args[1], *overrides, *extra], out


def _ran_two_steps(out: Path, where: str, world_size: int = 1) -> None:
    from distill import checkpoint
    state = checkpoint.load(checkpoint.latest(out))
    assert (state["step"], state["world_size"]) == (2, world_size), \
        f"{where}: the run stopped at step {state['step']} with {state['world_size']} ranks"


def check_produced(w: World, c: Command) -> None:
    done, out = w.run_once(c)
    expect_ok(done, f"{c.where}: {c.text}")
    if kind(c.argv) == "train":
        _ran_two_steps(out, c.where)


def check_audit(w: World, c: Command) -> None:
    """It runs, and writes its report, its page and a decision folder per set, named as the pages read them."""
    done, out = w.run_once(c)
    expect_ok(done, f"{c.where}: {c.text}")
    report = json.loads((out / "audit.json").read_text())
    names = [s["name"] for s in report["sets"]]
    assert (out / "index.html").is_file() and all((out / "decisions" / n).is_dir() for n in names), \
        f"{c.where}: no index.html, or no decisions/<set>/ for each of {names}, in {out}"


def check_evaluate(w: World, c: Command) -> None:
    args, _ = w.localize(c.argv[3:], copy=True)  # copies: evaluate writes its reports beside the checkpoint
    expect_ok(run([PY, "-m", "evaluate", *args, "--quiet"]), f"{c.where}: {c.text}")
    batch = args[0] == "batch"
    where = Path(args[args.index("--checkpoint-dir" if batch else "--checkpoint") + 1]) / "reports"
    reports = sorted(where.glob("*.json"))
    assert reports and '"lfw"' in reports[0].read_text(), f"{c.where}: no report with lfw in {where}"
    assert not batch or (where / "summary.csv").is_file(), f"{c.where}: no summary.csv in {where}"


def check_own_data(w: World, c: Command) -> None:
    """pairs, threshold and embed as written (pairs cut to TINY_PAIRS), each output checked for what it must hold."""
    import pyarrow.parquet as pq

    if c.argv[3] == "pairs":
        done, out = w.run_once(c)
        expect_ok(done, f"{c.where}: {c.text}")
        assert out.is_file() and out.with_suffix(".csv").is_file(), f"{c.where}: no {out} and its .csv"
        return
    args = []
    for before, word in zip(("",) + c.argv[3:], c.argv[3:]):  # the files it writes go to fresh paths
        args.append(w.path(word, write=True) if before in ("--output", "--roc") else w.path(word))
    out = Path(args[args.index("--output") + 1]) if "--output" in args else None
    expect_ok(run([PY, "-m", "evaluate", *args, "--quiet"]), f"{c.where}: {c.text}")
    if c.argv[3] == "embed":
        assert pq.read_table(out).num_rows == 60, f"{c.where}: {out} should hold the 60 images"
        return
    if out is not None:
        import json
        fars = [m["results"][name]["thresholds"]["far"] for m in json.loads(out.read_text())["models"]
                for name in m["results"]]
        asked = [c.argv[i + 1] for i, a in enumerate(c.argv) if a == "--far"]
        assert fars and all(f"{float(f):g}" in points for points in fars for f in asked), \
            f"{c.where}: {out} lacks FAR {asked}: {fars}"
    if "--roc" in args:
        assert Path(args[args.index("--roc") + 1]).read_bytes()[:4] == b"\x89PNG", f"{c.where}: no ROC"


def check_bench(w: World, c: Command) -> None:
    from bench import cli
    from bench.stages import stage_names

    args = cli._parser(stage_names()).parse_args(w.localize(c.argv[3:])[0])
    cli._stages(args.stages, stage_names())  # every named stage exists
    assert args.data is None or args.data.exists()
    if args.quick:  # the quick run itself is `make demo`'s step 6
        assert re.search(r'"-m", "bench", "--quick"', (ROOT / "demo.py").read_text()), \
            f"{c.where}: `{c.text}` is said to run in make demo, but demo.py does not run it"


def check_bench_script(w: World, c: Command) -> None:
    """A benchmark script (bench/NAME.py, measured by hand, slow): it exists and its command line parses."""
    expect_ok(run([PY, "-m", c.argv[2], "--help"]), f"{c.where}: {c.text} (--help)")


def check_reference(w: World, c: Command) -> None:
    done = run([PY, "-m", "configs.reference"])
    expect_ok(done, f"{c.where}: {c.text}")
    assert done.stdout.strip() == reference.markdown()


def check_torchrun(w: World, c: Command) -> None:
    from torch.distributed.run import config_from_args, get_args_parser

    targs = get_args_parser().parse_args(c.argv[2:] if c.argv[0] == "srun" else c.argv[1:])
    config_from_args(targs)  # node counts, processes per node, rendezvous: torchrun's own checks
    assert targs.module and targs.training_script == "distill", \
        f"{c.where}: torchrun should run `-m distill`, found {targs.training_script!r}"
    script = tuple(targs.training_script_args)
    assert script[:1] == ("--config",) and (ROOT / script[1]).is_file(), f"{c.where}: no config in {script}"
    configs.load(ROOT / script[1], script[2:])  # keys exist and values parse
    if targs.standalone:  # one real run as 2 processes on the CPU (gloo)
        args, out = distill_args(w, script, c.where)
        done = run([PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "distill", *args])
        expect_ok(done, f"{c.where}: {c.text} (as 2 processes on the CPU)")
        _ran_two_steps(out, c.where, world_size=2)


def check_plan(w: World, c: Command) -> None:
    """The schedule preview runs, and the ```text block after it on its page is its output, verbatim."""
    done = run([PY, "-m", "distill", *c.argv[3:]])
    expect_ok(done, f"{c.where}: {c.text}")
    lines = (ROOT / c.page).read_text().splitlines()
    start = next((i for i in range(c.line, len(lines)) if lines[i].startswith("```text")), None)
    assert start is not None, f"{c.where}: no ```text block with the output after `{c.text}`"
    end = lines.index("```", start + 1)
    assert "\n".join(lines[start + 1:end]) == done.stdout.rstrip("\n"), (
        f"{c.page}:{start + 1}: the shown output differs from what `{c.text}` prints now:\n{done.stdout}")


def check_make(w: World, c: Command) -> None:
    expect_ok(run(["make", "-n", *c.argv[1:]]), f"{c.where}: {c.text} (dry run)")


def check_hub(w: World, c: Command) -> None:
    have = sorted(p.name for p in Path(PY).parent.iterdir() if p.name in ("huggingface-cli", "hf"))
    assert c.argv[0] in have, (f"{c.where}: `{c.text}`: the installed huggingface_hub has no "
                               f"{c.argv[0]} command; it has {have}")
    expect_ok(run([Path(PY).parent / c.argv[0], "download", "--help"]), f"{c.where}: {c.text} (--help)")


def check_pip(w: World, c: Command) -> None:
    """pip's own parser takes the line, each requirement parses, an index named is https, and a local project
    (`-e ".[test]"`) is this one with those extras: all but the download, which needs the network."""
    import configparser

    from packaging.requirements import Requirement
    from pip._internal.commands import create_command

    options, requirements = create_command("install").parse_args(list(c.argv[2:]))
    for spec in requirements:
        Requirement(spec)  # raises InvalidRequirement, naming it
    urls = [c.argv[i + 1] for i, a in enumerate(c.argv[:-1]) if a in ("--index-url", "-i", "--extra-index-url")]
    assert all(u.startswith("https://") for u in urls), f"{c.where}: an index that is not https: {urls}"
    extras = configparser.ConfigParser()
    extras.read(ROOT / "setup.cfg")
    for editable in options.editables:
        path, _, wanted = editable.partition("[")
        assert (ROOT / path / "setup.cfg").is_file(), f"{c.where}: {editable}: {path} is not this project"
        missing = set(wanted.rstrip("]").split(",")) - set(extras["options.extras_require"]) - {""}
        assert not missing, f"{c.where}: {editable}: setup.cfg has no extra {sorted(missing)}"


CHECKS = {"convert": check_produced, "cache-teacher": check_produced, "train": check_produced, "export": check_produced,
          "plan": check_plan, "evaluate": check_evaluate, "own-data": check_own_data, "audit": check_audit,
          "bench-script": check_bench_script, "bench": check_bench, "reference": check_reference,
          "torchrun": check_torchrun, "make": check_make, "hub": check_hub, "pip": check_pip}


def test_config_reference_matches_the_code():
    block = reference.page_block(CONFIG_PAGE)
    assert block, f"docs/configuration.md has no {reference.BEGIN} ... {reference.END} block"
    assert block == reference.markdown(), (
        "docs/configuration.md's config reference differs from configs/schema.py: run `python -m configs.reference` "
        "and paste its output over the block between the config-reference markers")


def test_every_config_key_has_a_meaning():
    missing = [key for key, _, meaning in reference.rows() if not meaning.strip()]
    assert not missing, f"configs/schema.py: no comment (meaning) on the line of {missing}"


def test_every_readme_command_has_a_check():
    assert len(COMMANDS) >= 10, f"found only {len(COMMANDS)} commands in README.md and docs/: is the parser broken?"
    unknown = [f"{c.where}: {c.text}" for c in COMMANDS if kind(c.argv) is None]
    assert not unknown, (f"commands of a form tests/test_readme.py cannot check (add a check there): "
                         f"{'; '.join(unknown)}. Known forms: {', '.join(FORMS)}")


def test_readme_shows_the_two_commands_and_the_four_main_ones():
    """The five-minute README: `make demo`, `make test`, and one example each of convert, train, evaluate, bench."""
    shown = page_commands(README.read_text())
    made = {c.argv[1] for c in shown if kind(c.argv) == "make"}
    kinds = {kind(c.argv) for c in shown}
    assert {"demo", "test"} <= made, f"README.md: no `make demo` or `make test` among {sorted(made)}"
    assert {"convert", "train", "evaluate", "bench"} <= kinds, f"README.md: of the four main commands it shows {kinds}"


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)


def _prose(page: Path):
    """(line number, line) of a page outside its ``` blocks."""
    fenced = False
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if line.strip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            yield number, line


def _anchors(page: Path) -> set:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    return {re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            for _, line in _prose(page) if re.match(r"#+ ", line)}


def test_every_relative_link_resolves():
    """Each relative link of README.md and docs/*.md names a file that exists, and a heading of it for #anchor."""
    bad, seen = [], 0
    for page in [README, *sorted(DOCS.glob("*.md"))]:
        for number, line in _prose(page):
            for target in LINK.findall(line):
                if re.match(r"[a-z]+:", target):  # https:, mailto:
                    continue
                seen += 1
                path, _, anchor = target.partition("#")
                dest = (page.parent / path) if path else page
                where = f"{page.relative_to(ROOT)}:{number}: {target}"
                if not dest.exists():
                    bad.append(f"{where}: no {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
                elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                    bad.append(f"{where}: no heading #{anchor} in {dest.name}")
    assert seen >= 10, f"found only {seen} relative links in README.md and docs/: is the pattern broken?"
    assert not bad, "broken links:\n" + "\n".join(bad)


@pytest.mark.parametrize("command", [c for c in COMMANDS if kind(c.argv)],
                         ids=lambda c: f"{Path(c.page).stem}:L{c.line}:{' '.join(c.argv[:4])}")
def test_readme_command_works(command: Command, world: World):
    CHECKS[kind(command.argv)](world, command)
