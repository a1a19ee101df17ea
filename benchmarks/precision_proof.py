"""The documented learning proofs re-run in bf16 against fp32: is ``--precision auto`` (bf16 on this CPU) safe?

Each proof is the exact command of its docs section, run through the CLI in a fresh interpreter once per
precision and seed, with only ``--precision``, ``--seed`` and ``--out`` changed; the evaluation runs at the
training precision (what a user of the default gets end to end):

* ``colin27``: UNETR on the shipped Colin27 MRI (docs/medvit.md, "Proof that it learns"), 600 steps;
  ``vtk seg eval`` on the held-out case: mean Dice over the four regions.
* ``motion``: TimeSformer, 8 frames, on the four-direction motion set (docs/videovit.md, "Proof of temporal
  modelling"), 1000 steps; ``vtk video eval --views 2x3``: top-1 on 640 held-out videos. The set is synthesised
  once under ``--out`` (or taken from ``--motion-data``).

It prints one row per run (the last in-training validation metric, the evaluation metric, wall time) and, with
``--json``, writes the rows. Runs that finished are reused (``<run>.done`` beside the run folder, written when
its training exited 0), so a proof that was stopped goes on with the runs it had not finished. While a run trains,
its steps (read from its ``metrics.jsonl``) show on stderr with an ETA.

Usage::

    python -m benchmarks.precision_proof --task all --precision 32,bf16 --seeds 0,1 --out /tmp/proof --json p.json
    python -m benchmarks.precision_proof --task colin27 --steps 20 --out /tmp/proof   # a one-minute smoke
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a source checkout

from benchmarks._common import last_step, run_vtk  # noqa: E402
from engine.io import atomic_write_json, atomic_write_text  # noqa: E402
from engine.metrics import read_metrics  # noqa: E402

__all__ = ["main", "colin27_train_args", "motion_train_args", "last_val", "run_proof"]

TASKS = ("colin27", "motion")
COLIN27 = ROOT / "medvit" / "assets" / "colin27"
MOTION_CLASSES, MOTION_PER_CLASS = 4, 640  # docs/videovit.md's motion set


def colin27_train_args(out: Path, steps: int) -> List[str]:
    """docs/medvit.md's Colin27 command (its ``--val-every``/``--ckpt-every`` scaled to ``steps``/3)."""
    every = str(max(1, steps // 3))
    return ["seg", "train", "--model", "unetr", "--data", "decathlon", "--data-dir", str(COLIN27),
            "--img-size", "32", "--feature-size", "8", "--model-arg", "embed_dim=96", "--model-arg", "depth=4",
            "--model-arg", "num_heads=4", "--model-arg", "patch_size=8", "--data-arg", "spacing=[3,3,3]",
            "--data-arg", "a_min=0", "--data-arg", "a_max=255", "--data-arg", "flip_prob=0",
            "--data-arg", "rot90_prob=0", "--data-arg", "overlap=0.25", "--data-arg", "crop=classes",
            "--data-arg", "ratios=[1,1,1,1,4]", "--data-arg", "class_weights=[1,1,1,1,3]",
            "--data-arg", "dice_batch=true", "--max-steps", str(steps), "--batch-size", "1", "--num-samples", "2",
            "--lr", "1e-3", "--warmup-steps", "5", "--val-every", every, "--ckpt-every", every, "--out", str(out),
            "--device", "cpu", "--num-workers", "0", "--cache", "--quiet"]


def motion_train_args(out: Path, data: Path, steps: int) -> List[str]:
    """docs/videovit.md's 8-frame TimeSformer command (validation every ``steps``/10)."""
    return ["video", "train", "--model", "timesformer", "--data", "kinetics400", "--data-dir", str(data),
            "--out", str(out), "--num-frames", "8", "--max-steps", str(steps),
            "--val-every", str(max(1, steps // 10)), "--img-size", "32", "--patch-size", "8",
            "--model-arg", "embed_dim=64", "--model-arg", "depth=4", "--model-arg", "num_heads=4",
            "--model-arg", "drop_path_rate=0.0", "--batch-size", "32", "--lr", "1e-3", "--warmup-steps", "50",
            "--num-workers", "1", "--quiet"]


def last_val(run: Path, key: str) -> Optional[float]:
    """The last value of ``key`` in ``run/metrics.jsonl`` (``None`` when it never was logged)."""
    values = [r[key] for r in read_metrics(run) if key in r]
    return float(values[-1]) if values else None


def _motion_data(out: Path, given: Optional[Path], log: Path) -> Path:
    """The motion set: ``given``, or synthesised under ``out`` unless a finished synthesis is there
    (``vtk_synth.json`` is written last, so a synthesis that stopped part-way is made again)."""
    if given is not None:
        return given
    data = out / "motion4"
    if not (data / "vtk_synth.json").is_file():
        print(f"synthesising the motion set into {data} ...", flush=True)
        videos = MOTION_CLASSES * MOTION_PER_CLASS * 5 // 4  # train + a quarter as many for validation
        run_vtk(["data", "synth", "kinetics400", "--out", str(data), "--classes", str(MOTION_CLASSES),
              "--videos-per-class", str(MOTION_PER_CLASS), "--frames", "16", "--size", "32", "--seed", "0"], log,
             ("synth motion4", videos, "videos", lambda: sum(1 for _ in data.rglob("*.mp4"))))
    return data


def run_proof(task: str, precision: str, seed: int, out: Path, steps: Optional[int] = None,
              motion_data: Optional[Path] = None) -> Dict[str, object]:
    """Train and evaluate one proof at one precision and seed under ``out``; the row of the table."""
    run = out / f"{task}-{precision}-s{seed}"
    log = out / f"{task}-{precision}-s{seed}.log"
    common = ["--precision", precision, "--seed", str(seed)]
    if task == "colin27":
        train = colin27_train_args(run, steps or 600) + common
        evaluate = ["seg", "eval", "--checkpoint", str(run), "--device", "cpu", "--precision", precision]
        val_key, metrics, eval_key = "val/dice", run / "eval" / "metrics.json", "mean_dice"
    elif task == "motion":
        data = _motion_data(out, motion_data, log)
        train = motion_train_args(run, data, steps or 1000) + common
        evaluate = ["video", "eval", "--checkpoint", str(run), "--views", "2x3", "--num-workers", "1",
                    "--precision", precision]
        val_key, metrics, eval_key = "val/top1", run / "eval-val-2x3" / "metrics.json", "top1"
    else:
        raise ValueError(f"task {task!r} is not one of {TASKS}")
    done = out / f"{run.name}.done"
    if not done.exists():
        if run.exists():  # an earlier attempt stopped part-way: start that run again
            shutil.rmtree(run)
        print(f"{task} {precision} seed {seed}: training (log {log}) ...", flush=True)
        total = int(train[train.index("--max-steps") + 1])
        train_s = run_vtk(train, log, (f"{run.name} train", total, "steps", lambda: last_step(run)))
        atomic_write_text(done, f"{train_s:.1f}\n")
    train_s = float(done.read_text())
    if not metrics.exists():
        print(f"{task} {precision} seed {seed}: evaluating (log {log}) ...", flush=True)
        run_vtk(evaluate, log)
    record = json.loads(metrics.read_text())
    return {"task": task, "precision": precision, "seed": seed, "val_key": val_key, "val": last_val(run, val_key),
            "eval_key": eval_key, "eval": record[eval_key], "train_s": train_s, "run": str(run)}


def _table(rows: Sequence[Dict[str, object]]) -> str:
    lines = ["| proof | precision | seed | last val | eval | train wall |", "|---|---|---|---|---|---|"]
    for r in rows:
        wall = f"{r['train_s'] / 60:.1f} min"
        lines.append(f"| {r['task']} | {r['precision']} | {r['seed']} | {r['val_key']} {r['val']:.4f} | "
                     f"{r['eval_key']} {r['eval']:.4f} | {wall} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="all", help=f"comma-separated: {', '.join(TASKS)} (default all)")
    p.add_argument("--precision", default="32,bf16", help="comma-separated training precisions (default 32,bf16)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    p.add_argument("--steps", type=int, default=None, help="train steps (default: the docs' 600 / 1000)")
    p.add_argument("--out", type=Path, required=True, help="folder for the runs, their logs and the motion set")
    p.add_argument("--motion-data", type=Path, default=None, help="an existing motion set (vtk data synth)")
    p.add_argument("--json", type=Path, default=None, help="write the rows here (atomically)")
    a = p.parse_args(argv)
    tasks = list(TASKS) if a.task == "all" else [t.strip() for t in a.task.split(",")]
    for t in tasks:
        if t not in TASKS:
            p.error(f"--task: {t!r} is not one of {', '.join(TASKS)}")
    try:
        seeds = [int(s) for s in a.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds: {a.seeds!r} is not a comma-separated list of integers")
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for task in tasks:
        for seed in seeds:
            for precision in [x.strip() for x in a.precision.split(",")]:
                rows.append(run_proof(task, precision, seed, a.out, a.steps, a.motion_data))
                print(_table(rows[-1:]).splitlines()[-1], flush=True)
    print(_table(rows))
    if a.json is not None:
        atomic_write_json(a.json, {"argv": list(argv or sys.argv[1:]), "rows": rows}, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
