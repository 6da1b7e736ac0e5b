"""`make demo`: the whole product on the built-in synthetic identities, on a CPU in about a quarter of an hour.

Each step is the command a user would type (printed before it runs), so the demo doubles as a check
that the README's commands work. A step whose output is complete is skipped when the demo is run
again; the training runs resume from their newest checkpoint (`resume: auto`). Everything is written
under `demo/` (or DEMO_DIR); `rm -rf demo` starts over.

  1. synthetic identities as an insightface .rec (training identities) and a .bin of pairs of held-out
     identities, in insightface's format;
  2. the .rec converted to shards, and verified;
  3. a teacher (narrow iresnet, AdaFace, no distillation);
  4. the teacher's embeddings cached once (plain and mirrored views), then a student (narrow
     MobileFaceNet) distilled with AdaDistill from the cache, and the same student without KD;
  5. the three evaluated on the held-out pairs; the distilled student exported to ONNX (its parity with
     the checkpoint proven on held-out faces) and evaluated as exported, through onnxruntime; then, as a
     user would with a folder of people (docs/evaluation.md, "Your own data"), the held-out identities'
     images as identity folders, a pair set drawn from them whose 10 folds share no identity, and the distilled
     student's cosine threshold at FAR 1e-3 on it;
  6. the training identities audited (`python -m evaluate overlap`) against the held-out people (the
     folders of step 5), which it must not flag, and against new photos of 100 training people (written in
     this step as identity folders), which it must;
  7. their training curves (loss and lr against step) drawn into one picture (`python -m distill plot`);
  8. the benchmark suite, quick;
  then one summary, linking the curves.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(os.environ.get("DEMO_DIR", "demo"))
# Passive OpenMP waiting for every step: spinning torch threads starve DALI's on a small CPU (docs/troubleshooting.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
PY = sys.executable
TRAIN_IDENTITIES, PER_IDENTITY, HELD_OUT_IDENTITIES, PAIRS = 200, 20, 100, 1000
# FAR 1e-3 needs 1,000 impostor pairs (PAIRS has 500); the held-out images synth-bin draws from (10 a person)
OWN_PAIRS, OWN_PER_IDENTITY = 2000, 10
OVERLAP_IDENTITIES = 100  # the overlapping set: training identities 0..99, photos training never saw

RUNS = {  # name -> (config, extra overrides); the configs' own outputs and shards point under demo/
    "teacher": ("configs/synthetic_teacher.yaml", []),
    "student_adadistill": ("configs/synthetic.yaml", [f"teacher.spec={OUT}/runs/teacher",
                                                      f"distill.teacher_cache={OUT}/teacher_cache"]),
    "student_nokd": ("configs/synthetic_nokd.yaml", []),
}


def step(name: str, done: Path, *commands: list[str]) -> float:
    """Run `commands` unless `done` (a marker written after they all succeed) exists; seconds taken."""
    if done.exists():
        print(f"== {name}: done earlier ({done} exists), skipped", flush=True)
        return 0.0
    print(f"== {name}", flush=True)
    t0 = time.perf_counter()
    for command in commands:
        print("$ " + shlex.join(command), flush=True)
        result = subprocess.run(command)
        if result.returncode != 0:
            sys.exit(f"demo: step '{name}' failed (exit {result.returncode}) in: {shlex.join(command)}\n"
                     f"fix the cause and run `make demo` again: finished steps are skipped, training resumes")
    seconds = time.perf_counter() - t0
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(f"{seconds:.1f}\n")
    return seconds


def run_overrides(name: str) -> list[str]:
    config, extra = RUNS[name]
    return ["--config", config, f"data.shards={OUT}/shards", f"output={OUT}/runs/{name}", *extra]


def main() -> None:
    marks = OUT / ".done"
    synth, val, shards, cache = OUT / "synth", OUT / "val", OUT / "shards", OUT / "teacher_cache"
    seconds = {}
    seconds["data"] = step(
        "1. synthetic identities (.rec) and held-out verification pairs (.bin)", marks / "data",
        [PY, "-m", "convert", "synth", str(synth), "--identities", str(TRAIN_IDENTITIES),
         "--per-identity", str(PER_IDENTITY), "--seed", "0", "--overwrite"],  # a rerun after a kill writes it again
        [PY, "-m", "convert", "synth-bin", str(val / "synthetic_heldout.bin"), "--identities",
         str(HELD_OUT_IDENTITIES), "--pairs", str(PAIRS), "--first-identity", str(TRAIN_IDENTITIES),
         "--seed", "0"])
    seconds["convert"] = step(
        "2. convert the .rec to shards, verify them", marks / "convert",
        [PY, "-m", "convert", "rec", str(synth), str(shards), "--seed", "0"],
        [PY, "-m", "convert", "verify", str(shards)])
    seconds["teacher"] = step(
        "3. train the teacher (iresnet_s, AdaFace)", marks / "teacher",
        [PY, "-m", "distill", *run_overrides("teacher")])
    seconds["cache"] = step(
        "4a. cache the teacher's embeddings (plain and mirrored)", marks / "cache",
        [PY, "-m", "distill", "cache-teacher", "--teacher", f"{OUT}/runs/teacher", "--shards", str(shards),
         "--out", str(cache)])
    seconds["student_adadistill"] = step(
        "4b. distil the student (mobilefacenet_s, AdaDistill, teacher from the cache)",
        marks / "student_adadistill", [PY, "-m", "distill", *run_overrides("student_adadistill")])
    seconds["student_nokd"] = step(
        "4c. train the same student without KD", marks / "student_nokd",
        [PY, "-m", "distill", *run_overrides("student_nokd")])
    seconds["evaluate"] = step(
        "5. evaluate the three on held-out identities", marks / "evaluate",
        *[[PY, "-m", "evaluate", "--checkpoint", f"{OUT}/runs/{name}", "--val-data", str(val),
           "--output", f"{OUT}/reports/{name}.json"] for name in RUNS])
    seconds["export"] = step(
        "5b. export the distilled student (ONNX + model card), checked against its checkpoint", marks / "export",
        [PY, "-m", "models", "export", f"{OUT}/runs/student_adadistill", "--output", f"{OUT}/export/student_adadistill",
         "--check-data", str(val / "synthetic_heldout.bin"), "--force"],  # --force: a rerun after its marker was removed
        [PY, "-m", "evaluate", "--checkpoint", f"{OUT}/export/student_adadistill", "--val-data", str(val),
         "--output", f"{OUT}/reports/student_adadistill_onnx.json"])
    seconds["threshold"] = step(
        "5c. the student's threshold at FAR 1e-3: held-out people as folders, pairs, threshold", marks / "threshold",
        [PY, "-m", "convert", "synth", f"{OUT}/heldout_people", "--identities", str(HELD_OUT_IDENTITIES),
         "--per-identity", str(OWN_PER_IDENTITY), "--first-identity", str(TRAIN_IDENTITIES), "--format", "folder",
         "--seed", "0", "--overwrite"],
        [PY, "-m", "evaluate", "pairs", f"{OUT}/heldout_people", "--output", f"{OUT}/heldout_people.bin",
         "--pairs", str(OWN_PAIRS), "--seed", "0"],
        [PY, "-m", "evaluate", "threshold", "--checkpoint", f"{OUT}/runs/student_adadistill", "--data",
         f"{OUT}/heldout_people.bin", "--far", "1e-3", "--output", f"{OUT}/reports/thresholds.json"])
    # The marker was `overlap_two_sets` while this step audited .bin pair sets: an older demo dir runs it again.
    seconds["overlap"] = step(
        "6. audit the training identities against the held-out people and new photos of trained people "
        "(train/test overlap)", marks / "overlap_people",
        [PY, "-m", "evaluate", "overlap", "--checkpoint", f"{OUT}/runs/teacher", "--shards", str(shards),
         "--people", f"{OUT}/heldout_people", "--output", f"{OUT}/reports/overlap.json", "--write-exclusions",
         f"{OUT}/reports/overlap_exclusions.txt"],
        [PY, "-m", "convert", "synth", f"{OUT}/trained_people", "--identities", str(OVERLAP_IDENTITIES),
         "--per-identity", str(OWN_PER_IDENTITY), "--first-image", str(PER_IDENTITY), "--format", "folder",
         "--seed", "0", "--overwrite"],
        [PY, "-m", "evaluate", "overlap", "--checkpoint", f"{OUT}/runs/teacher", "--shards", str(shards),
         "--people", f"{OUT}/trained_people", "--output", f"{OUT}/reports/overlap_trained.json"])
    seconds["curves"] = step(
        "7. draw the three runs' training curves", marks / "curves",
        [PY, "-m", "distill", "plot", *[f"{OUT}/runs/{name}" for name in RUNS], "--output", f"{OUT}/curves.png"])
    seconds["bench"] = step(
        "8. benchmark suite (quick)", marks / "bench",
        [PY, "-m", "bench", "--quick", "--cache-dir", f"{OUT}/bench-cache", "--json", f"{OUT}/bench.json",
         "--markdown", f"{OUT}/bench.md"])
    summary = summarise(seconds)
    (OUT / "summary.md").write_text(summary)
    print(summary)


def train_speed(run: Path) -> float:
    """Median images/s over the run's logged intervals (metrics.jsonl)."""
    rates = sorted(r["images_per_s"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                   if "images_per_s" in r)
    return rates[len(rates) // 2] if rates else float("nan")


def summarise(seconds: dict) -> str:
    lines = ["# AdaDistill demo: summary", "",
             f"Data: {TRAIN_IDENTITIES} synthetic training identities x {PER_IDENTITY} images; verification on "
             f"{PAIRS} pairs of {HELD_OUT_IDENTITIES} held-out identities (insightface protocol, 10 folds).", "",
             "| run | model | accuracy (held-out pairs) | training img/s |", "|---|---|---|---|"]
    for name in RUNS:
        report = json.loads((OUT / "reports" / f"{name}.json").read_text())
        acc = report["results"]["synthetic_heldout"]
        lines.append(f"| {name} | {report['network']} | {100 * acc['acc']:.2f} +- {100 * acc['std']:.2f} % | "
                     f"{train_speed(OUT / 'runs' / name):.0f} |")
    lines += ["", f"Training curves (loss and lr against step): [{OUT}/curves.png](curves.png); the same scalars in "
              f"TensorBoard: `tensorboard --logdir {OUT}/runs`"]
    model = json.loads((OUT / "reports" / "thresholds.json").read_text())["models"][0]
    result = model["results"]["heldout_people"]
    point = result["thresholds"]["far"]["0.001"]
    lines += ["", f"Operating threshold (docs/evaluation.md, \"Your own data\"; {OUT}/reports/thresholds.json): "
              f"the distilled student accepts a pair of held-out faces at FAR 1e-3 when the cosine of their "
              f"fused, normalised embeddings is >= " + (f"{point['threshold']:.4f} (TAR there {100 * point['tar']:.1f} %)"
                                                         if isinstance(point, dict) else point)
              + f", on {result['pairs']} pairs of the held-out identities whose 10 folds share no identity."]
    exported = json.loads((OUT / "export" / "student_adadistill" / "config.json").read_text())
    onnx_acc = json.loads((OUT / "reports" / "student_adadistill_onnx.json").read_text())["results"]["synthetic_heldout"]
    lines += ["", f"Exported student ({OUT}/export/student_adadistill: model.onnx, model card README.md): onnxruntime "
              f"against the checkpoint on {exported['parity']['images']} held-out faces, worst cosine "
              f"{exported['parity']['worst_cosine']:.7f}, max |diff| {exported['parity']['max_abs_diff']:.3g}; "
              f"evaluated as exported: {100 * onnx_acc['acc']:.2f} +- {100 * onnx_acc['std']:.2f} %."]
    lines += ["", "Train/test overlap audit (the teacher's embeddings, `python -m evaluate overlap`; a person is "
              "taken for a training class when most of their photos match its centre):", "",
              "| test set | people (photos) | photos above the threshold with some class | people taken for a "
              "training class | of them on one photo | expected by chance | flagged training classes |",
              "|---|---|---|---|---|---|---|"]
    warnings = []
    for report, what in (("overlap", "held-out people (none trained on)"),
                         ("overlap_trained", f"new photos of training people 0..{OVERLAP_IDENTITIES - 1} "
                                             f"(deliberate overlap)")):
        audit = json.loads((OUT / "reports" / f"{report}.json").read_text())
        for name, s in audit["sets"].items():
            chance = s["expected_by_chance"]
            lines.append(f"| {name}: {what} | {s['identities']} ({s['images']}) | {s['images_above_threshold']} | "
                         f"{s['identities_flagged']} | "
                         f"{s['single_image_identities_flagged']} | {'-' if chance is None else f'{chance:.1f}'} | "
                         f"{s['classes_flagged']} of {audit['num_classes']} |")
        warnings += [f"Warning from the audit ({OUT}/reports/{report}.json): {w}" for w in audit["warnings"]]
    lines += ["", f"Threshold: {audit['how_the_threshold_was_chosen']}; reports {OUT}/reports/overlap.json and "
              f"overlap_trained.json.", *warnings]
    bench = json.loads((OUT / "bench.json").read_text())
    lines += ["", "Benchmark (quick, this machine; ratios against the baseline measured in the same run):", "",
              "| stage | what | img/s | baseline | baseline img/s | ratio |", "|---|---|---|---|---|---|"]
    for r in bench["results"]:
        lines.append(f"| {r['stage']} | {r['name']} | {r['img_per_s']:.0f} | {r['baseline']} | "
                     f"{r['baseline_img_per_s']:.0f} | {r['ratio']:.2f} |")
    lines += ["", "Seconds per step of this demo (0 = done earlier): "
              + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()), "",
              f"Outputs: shards {OUT}/shards, runs {OUT}/runs/<name> (checkpoints, metrics.jsonl, tensorboard/, "
              f"config.yaml), curves {OUT}/curves.png, reports {OUT}/reports, benchmark {OUT}/bench.md, "
              f"this summary {OUT}/summary.md", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
