"""nnU-Net v2 beside vtk's UNETR and Swin-UNETR: same split, same CPU-time budget, same scoring.

The split is the cross-subject one of ``benchmarks/seg_cross_subject.py`` (train on Colin27, test on the MNI152
ICBM 2009a template; 4 AAL regions at 3 mm; ``medvit/assets/``). Each method gets the same budget of **CPU
seconds** for training (the trainer process' user + system time, all threads; one thread each, no loader
workers), so the comparison does not depend on how busy the machine is:

* nnU-Net v2 (Isensee et al., Nature Methods 18, 2021; ``pip install nnunetv2``, a benchmark-only dependency,
  installed in its own virtual environment, ``--nnunet-python``): ``nnUNetv2_plan_and_preprocess`` on the
  training case, then the standard ``nnUNetTrainer`` (its network, augmentation, loss and poly schedule) run on
  the CPU until the budget is spent; after the first epoch the poly schedule is stretched over the epochs that fit
  the budget. Epochs are shortened to 10 iterations (nnU-Net: 250) and the budget is checked after every
  iteration. Prediction is
  ``nnUNetPredictor`` (sliding window, step 0.5, Gaussian), without mirroring (``default``) and with it (``TTA``,
  nnU-Net's own default).
* vtk UNETR and Swin-UNETR: ``vtk seg train --preset quick`` with the Colin27 proof's recipe (class-balanced
  crops, class weights, batch Dice, MR z-score, 64^3 ROI, nnU-Net-style augmentation); a 60 CPU-second probe
  measures the step rate after start-up, the cosine schedule
  is set to the steps that fit the budget, and the run is stopped with SIGTERM (which saves) if it exceeds it.
  Prediction is ``vtk seg eval --postprocess none``, without and with ``--tta-axes all`` (all 8 flips, as nnU-Net's
  mirroring; vtk's runs train without flips, so plain ``--tta`` would mirror nothing).

Every mask is scored by vtk's metrics in the label's own grid (Dice, HD95 in mm, NSD at 2 mm).

Usage::

    nice python -m benchmarks.vs_nnunet --budget-s 600 --out /tmp/vs_nnunet --json /tmp/vs_nnunet/rows.json
    python -m benchmarks.vs_nnunet --smoke          # 20 CPU-s each, checks the whole pipeline runs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from benchmarks._common import last_step, run_vtk
from benchmarks.seg_cross_subject import ASSET, TRAIN_ARGS, _f, eval_variants
from engine.io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
COLIN = ROOT / "medvit" / "assets" / "colin27"
CASES = {"train": (ASSET / "imagesTr/colin27_brain.nii.gz", COLIN / "labelsTr/label0001.nii.gz"),
         "test": (ASSET / "imagesTr/mni152.nii.gz", ASSET / "labelsTr/mni152.nii.gz")}
NAMES = ["left cerebral cortex", "right cerebral cortex", "cerebellum", "deep grey matter"]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "nnUNet_n_proc_DA": "0"}
TICK = os.sysconf("SC_CLK_TCK")
PROBE_S = 60.0  # CPU seconds of the step-rate probe (start-up is excluded from the rate)


# --------------------------------------------------------------------------------------------- scoring
def score(mask_path: Path, label_path: Path) -> Dict[str, object]:
    """vtk's Dice / HD95 / NSD of a predicted mask file against the label (the label's grid)."""
    from medvit.evaluate import as_labels
    from medvit.io import read_nifti
    from medvit.metrics import case_metrics, summarize

    lab, pred = read_nifti(label_path), read_nifti(mask_path)
    if pred.data.shape != lab.data.shape or not np.allclose(pred.affine, lab.affine, atol=1e-3):
        raise SystemExit(f"{mask_path}: not in the label's grid ({pred.data.shape} vs {lab.data.shape})")
    m = case_metrics(as_labels(pred.data), as_labels(lab.data), len(NAMES) + 1, lab.spacing, 2.0)
    return summarize([m], NAMES)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def run_with_cpu_budget(cmd: List[str], budget_s: float, env: dict, log: Path,
                        run: Optional[Path] = None) -> Dict[str, float]:
    """Run ``cmd``; SIGTERM it once it has used ``budget_s`` CPU seconds. Returns its CPU and wall seconds, and
    with ``run`` (a vtk run folder) ``rate``: training steps per CPU second after the first logged step (start-up,
    imports and caching excluded), or ``None`` if fewer than two step logs came."""
    t0 = time.time()
    first = last = None  # (cpu_s, step) at the first / latest new logged step
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=fh, stderr=subprocess.STDOUT)
        used, stopped = 0.0, False
        while proc.poll() is None:
            try:
                used = cpu_seconds(proc.pid)
            except (OSError, IndexError):
                pass
            if run is not None:
                step = last_step(run)
                if step and (last is None or step > last[1]):
                    last = (used, step)
                    first = first or last
            if used >= budget_s and not stopped:
                proc.send_signal(signal.SIGTERM)
                stopped = True
            time.sleep(0.5)
    if proc.returncode not in (0, 143, -15):
        raise SystemExit(f"{' '.join(cmd[:6])}... failed ({proc.returncode}); see {log}")
    rate = (last[1] - first[1]) / (last[0] - first[0]) if first and last and last[0] > first[0] else None
    return {"cpu_s": used, "wall_s": time.time() - t0, "stopped": stopped, "rate": rate}


# ------------------------------------------------------------------------------------------------ vtk
def vtk_row(model: str, budget_s: float, out: Path) -> List[dict]:
    """Probe the step rate, train for the steps that fit ``budget_s`` CPU seconds, evaluate on the template."""
    base = [sys.executable, "-m", "cli.main", "seg", "train", "--model", model, *TRAIN_ARGS, "--data-dir",
            str(ASSET), "--val-every", "1000000", "--ckpt-every", "1000000"]
    probe = out / f"{model}-probe"
    shutil.rmtree(probe, ignore_errors=True)
    p = run_with_cpu_budget(base + ["--max-steps", "1000000", "--out", str(probe)], min(PROBE_S, budget_s / 2),
                            ONE_THREAD, out / f"{model}-probe.log", run=probe)
    startup = p["cpu_s"] - last_step(probe) / p["rate"] if p["rate"] else 0.0  # CPU s before the first step
    rate = p["rate"] or max(last_step(probe), 1) / max(p["cpu_s"], 1e-3)  # steps per CPU second
    steps = max(10, int(rate * max(budget_s - startup, 0.0)))
    run = out / model
    shutil.rmtree(run, ignore_errors=True)
    t = run_with_cpu_budget(base + ["--max-steps", str(steps), "--out", str(run)], budget_s, ONE_THREAD,
                            out / f"{model}.log")
    rows = []
    for v in eval_variants():
        if "lcc" in v["args"]:
            continue  # the comparison: plain inference and mirroring TTA (nnU-Net's rows are not postprocessed)
        ev = run / ("eval-" + "-".join(a.strip("-") for a in v["args"]))
        t1 = time.time()
        run_vtk(["seg", "eval", "--checkpoint", str(run), "--device", "cpu", "--out", str(ev), *v["args"]],
                out / f"{model}-eval.log")
        summary = json.loads((ev / "metrics.json").read_text())
        name = "TTA (mirroring)" if "--tta-axes" in v["args"] else "default"
        rows.append(_row(f"vtk {model}", name, summary.get("summary", summary), t, time.time() - t1,
                         steps=last_step(run)))
    return rows


def _row(method: str, variant: str, s: dict, t: dict, infer_s: float, **extra) -> dict:
    return {"method": method, "inference": variant, "dice": s["mean_dice"], "hd95": s["mean_hd95"],
            "nsd": s["mean_nsd"], "train_cpu_s": round(t["cpu_s"], 1), "train_wall_s": round(t["wall_s"], 1),
            "infer_wall_s": round(infer_s, 1), "per_organ": s["per_organ"], **extra}


# -------------------------------------------------------------------------------------------- nnU-Net
def nnunet_raw(raw: Path) -> Path:
    """nnU-Net v2 raw dataset: the training case in imagesTr, the test case in imagesTs."""
    import nibabel as nib

    d = raw / "Dataset900_Colin2MNI"
    shutil.rmtree(d, ignore_errors=True)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (d / sub).mkdir(parents=True)
    img, lab = CASES["train"]
    shutil.copyfile(img, d / "imagesTr" / "colin27_0000.nii.gz")
    lab_img = nib.load(str(lab))  # nnU-Net wants integer labels
    nib.save(nib.Nifti1Image(np.asarray(lab_img.dataobj).astype(np.uint8), lab_img.affine),
             str(d / "labelsTr" / "colin27.nii.gz"))
    shutil.copyfile(CASES["test"][0], d / "imagesTs" / "mni152_0000.nii.gz")
    labels = {"background": 0, **{n: i + 1 for i, n in enumerate(NAMES)}}
    (d / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1"}, "labels": labels, "numTraining": 1,
                                                "file_ending": ".nii.gz", "name": "Colin2MNI"}))
    return d


def nnunet_row(py: str, budget_s: float, out: Path, config: str) -> List[dict]:
    """Plan + preprocess, train under the CPU budget, predict the test case with and without mirroring."""
    env = {**ONE_THREAD, "nnUNet_raw": str(out / "nnUNet_raw"), "nnUNet_preprocessed": str(out / "nnUNet_pre"),
           "nnUNet_results": str(out / "nnUNet_results")}
    raw = nnunet_raw(out / "nnUNet_raw")
    bindir = Path(py).parent
    pre = out / "nnUNet_pre" / raw.name
    if not (pre / f"nnUNetPlans_{config}").is_dir():  # planned and preprocessed once per --out
        _check_run([str(bindir / "nnUNetv2_plan_and_preprocess"), "-d", "900", "-c", config, "-np", "1",
                    "--verify_dataset_integrity"], {**env, "nnUNet_n_proc_DA": "1"})  # 0 breaks its planner
    (pre / "splits_final.json").write_text(json.dumps([{"train": ["colin27"], "val": ["colin27"]}]))
    t = run_with_cpu_budget([py, "-m", "benchmarks.vs_nnunet", "_nnunet-train", "--budget-s", str(budget_s),
                             "--config", config, "--out", str(out)], budget_s + 600, env,
                            out / "nnunet-train.log")  # the trainer stops itself at the budget
    info = json.loads((out / "nnunet-train.json").read_text())
    t["cpu_s"] = info["train_cpu_s"]
    rows = []
    for variant, mirror in (("default", False), ("TTA (mirroring)", True)):
        pred_dir = out / f"nnunet-pred-{'tta' if mirror else 'plain'}"
        t1 = time.time()
        _check_run([py, "-m", "benchmarks.vs_nnunet", "_nnunet-predict", "--config", config, "--out", str(out),
                    "--pred", str(pred_dir)] + (["--mirror"] if mirror else []), env)
        s = score(pred_dir / "mni152.nii.gz", CASES["test"][1])
        rows.append(_row(f"nnU-Net v2 {config}", variant, s, t, time.time() - t1, epochs=info["epochs"],
                         iterations=info["iterations"]))
    return rows


def _check_run(cmd: List[str], env: dict) -> None:
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def _nnunet_train(budget_s: float, config: str, out: Path) -> None:
    """(Runs in the nnU-Net venv.) The standard nnUNetTrainer on the CPU for ``budget_s`` CPU seconds."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    torch.set_num_threads(1)
    pre = Path(nnUNet_preprocessed) / "Dataset900_Colin2MNI"

    class BudgetTrainer(nnUNetTrainer):
        def run_training(self):
            self.on_train_start()
            start, epoch_cpu = time.process_time(), None
            while time.process_time() - start < budget_s:
                t0 = time.process_time()
                self.on_epoch_start()
                self.on_train_epoch_start()
                outs = []
                for _ in range(self.num_iterations_per_epoch):  # the budget is checked every iteration
                    outs.append(self.train_step(next(self.dataloader_train)))
                    self.iterations_done = getattr(self, "iterations_done", 0) + 1
                    if time.process_time() - start >= budget_s:
                        break
                self.on_train_epoch_end(outs)
                with torch.no_grad():
                    self.on_validation_epoch_start()
                    val = [self.validation_step(next(self.dataloader_val))
                           for _ in range(self.num_val_iterations_per_epoch)]
                    self.on_validation_epoch_end(val)
                self.on_epoch_end()
                if epoch_cpu is None:  # stretch the poly schedule over the epochs that fit the budget
                    epoch_cpu = time.process_time() - t0
                    self.num_epochs = max(2, int(budget_s / max(epoch_cpu, 1e-3)))
                    self.lr_scheduler.max_steps = self.num_epochs
            self.on_train_end()

    plans = load_json(str(pre / "nnUNetPlans.json"))
    plans["continue_training"] = False  # what nnunetv2.run.run_training adds
    trainer = BudgetTrainer(plans, config, 0, load_json(str(pre / "dataset.json")), device=torch.device("cpu"))
    trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = 10, 2
    start = time.process_time()
    trainer.run_training()
    cpu = time.process_time() - start
    ckpt_path = Path(trainer.output_folder) / "checkpoint_final.pth"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)  # nnU-Net's own checkpoint format
    ckpt["trainer_name"] = "nnUNetTrainer"  # same network and inference: let nnUNetPredictor rebuild it
    torch.save(ckpt, ckpt_path)
    info = {"train_cpu_s": cpu, "epochs": trainer.current_epoch,
            "iterations": trainer.iterations_done,
            "model_dir": str(Path(trainer.output_folder).parent)}
    (out / "nnunet-train.json").write_text(json.dumps(info))


def _nnunet_predict(config: str, out: Path, pred: Path, mirror: bool) -> None:
    """(Runs in the nnU-Net venv.) nnUNetPredictor on imagesTs, sequentially on the CPU."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    torch.set_num_threads(1)
    info = json.loads((out / "nnunet-train.json").read_text())
    p = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirror,
                        perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                        allow_tqdm=False)
    p.initialize_from_trained_model_folder(info["model_dir"], use_folds=(0,), checkpoint_name="checkpoint_final.pth")
    shutil.rmtree(pred, ignore_errors=True)
    pred.mkdir(parents=True)
    src = out / "nnUNet_raw" / "Dataset900_Colin2MNI" / "imagesTs"
    p.predict_from_files_sequential(str(src), str(pred), save_probabilities=False, overwrite=True)


# ---------------------------------------------------------------------------------------------- table
def table(rows: List[dict], budget_s: float) -> str:
    lines = [f"| method | inference | mean Dice | mean HD95 (mm) | mean NSD (2 mm) | train CPU s (budget "
             f"{budget_s:g}) | train wall s | inference wall s | work done |", "|" + "---|" * 9]
    for r in rows:
        work = f"{r['steps']} steps" if "steps" in r else f"{r.get('iterations')} iterations"
        lines.append(f"| {r['method']} | {r['inference']} | {_f(r['dice'])} | {_f(r['hd95'], 2)} | {_f(r['nsd'])} | "
                     f"{r['train_cpu_s']:.0f} | {r['train_wall_s']:.0f} | {r['infer_wall_s']:.0f} | {work} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", nargs="?", default="bench", choices=("bench", "_nnunet-train", "_nnunet-predict"))
    ap.add_argument("--budget-s", type=float, default=600.0, help="training CPU seconds per method")
    ap.add_argument("--smoke", action="store_true", help="20 CPU-s per method: checks the pipeline end to end")
    ap.add_argument("--out", type=Path, default=Path("/tmp/vs_nnunet"))
    ap.add_argument("--methods", default="nnunet,unetr,swin_unetr")
    ap.add_argument("--config", default="3d_fullres", help="nnU-Net configuration (3d_fullres or 2d)")
    ap.add_argument("--nnunet-python", default="/work/venv-nnunet/bin/python",
                    help="python of a virtual environment with nnunetv2 installed")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--pred", type=Path)
    ap.add_argument("--mirror", action="store_true")
    args = ap.parse_args(argv)
    if args.mode == "_nnunet-train":
        return _nnunet_train(args.budget_s, args.config, args.out)
    if args.mode == "_nnunet-predict":
        return _nnunet_predict(args.config, args.out, args.pred, args.mirror)
    budget = 20.0 if args.smoke else args.budget_s
    args.out.mkdir(parents=True, exist_ok=True)
    rows: List[dict] = []
    for m in args.methods.split(","):
        try:
            rows += nnunet_row(args.nnunet_python, budget, args.out, args.config) if m == "nnunet" else \
                vtk_row(m, budget, args.out)
        except RuntimeError as e:  # a vtk command failed: its log's path and tail
            sys.exit(str(e))
        print(table(rows, budget), flush=True)
        if args.json:
            atomic_write_json(args.json, rows, indent=1)


if __name__ == "__main__":
    main()
