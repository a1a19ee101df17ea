"""benchmarks/precision_proof.py runs the docs' learning-proof commands: the same options, and a real (short) run."""

import json
import re
import shlex
from pathlib import Path

from benchmarks import precision_proof
from benchmarks._common import last_step

ROOT = Path(__file__).resolve().parents[1]


def _docs_command(doc: str, start: str) -> list:
    """The shell command of ``doc`` that begins with ``start`` (backslash continuations joined)."""
    text = (ROOT / "docs" / doc).read_text().replace("\\\n", " ")
    line = next(x for x in text.splitlines() if x.lstrip("$ ").startswith(start))
    return shlex.split(line.lstrip("$ ").removeprefix("time "))


def test_colin27_args_are_the_docs_command():
    docs = _docs_command("medvit.md", "time vtk seg train --model unetr --data decathlon")
    ours = precision_proof.colin27_train_args(Path("runs/colin27"), 600)
    ours[ours.index("--data-dir") + 1] = "medvit/assets/colin27"
    assert ["vtk", *ours] == docs


def test_motion_args_are_the_docs_command():
    text = (ROOT / "docs" / "videovit.md").read_text().replace("\\\n", " ")
    env = {k: v for k, v in re.findall(r'^(TINY|D)="(.*?)"', text, re.M)}
    line = next(x for x in text.splitlines() if x.startswith("vtk video train --model timesformer $D --out runs/ts8 "))
    docs = shlex.split(line.replace("$TINY", env["TINY"]).replace("$D", env["D"]))
    ours = ["vtk", *precision_proof.motion_train_args(Path("runs/ts8"), Path("data/motion4"), 1000), "--seed", "0"]
    assert _options(ours) == _options(docs)


def _options(argv: list) -> list:
    """``argv`` as sorted (option, value) pairs (value ``None`` for a flag): the same command in any order."""
    pairs, i = [], 0
    while i < len(argv):
        takes = i + 1 < len(argv) and not argv[i + 1].startswith("--")
        pairs.append((argv[i], argv[i + 1] if takes else None))
        i += 2 if takes else 1
    return sorted(pairs, key=str)


def test_short_proof_trains_evaluates_and_resumes(tmp_path, monkeypatch, capsys):
    out = tmp_path / "proof"
    json_path = tmp_path / "rows.json"
    assert precision_proof.main(["--task", "colin27", "--precision", "32", "--steps", "2", "--out", str(out),
                                 "--json", str(json_path)]) == 0
    rows = json.loads(json_path.read_text())["rows"]
    assert [(r["task"], r["precision"], r["seed"]) for r in rows] == [("colin27", "32", 0)]
    err = capsys.readouterr().err  # the training's steps, polled from its metrics.jsonl, with an ETA
    assert re.search(r"colin27-32-s0 train: 2/2 steps [\d.]+ steps/s eta ", err), err
    assert 0.0 <= rows[0]["eval"] <= 1.0 and rows[0]["val"] is not None
    # a second call reuses the finished run: no training subprocess
    calls = []
    real = precision_proof.run_vtk
    monkeypatch.setattr(precision_proof, "run_vtk",
                        lambda args, log, progress=None: calls.append(args[:2]) or real(args, log, progress))
    assert precision_proof.main(["--task", "colin27", "--precision", "32", "--steps", "2", "--out", str(out)]) == 0
    assert calls == []
    assert "| colin27 | 32 | 0 |" in capsys.readouterr().out


def test_last_step_skips_the_line_a_run_is_still_writing(tmp_path):
    assert last_step(tmp_path) == 0  # no metrics.jsonl yet
    (tmp_path / "metrics.jsonl").write_text('{"step": 10, "train/loss": 1.4}\n{"step": 20, "val/top1": 0.3}\n'
                                            '{"step": 30, "trai')
    assert last_step(tmp_path) == 20


def test_motion_set_is_synthesised_again_unless_its_marker_is_there(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(precision_proof, "run_vtk", lambda args, log, progress=None: calls.append((args, progress)))
    data = tmp_path / "motion4"
    (data / "annotations").mkdir(parents=True)  # a synthesis that stopped after its training split
    assert precision_proof._motion_data(tmp_path, None, tmp_path / "log") == data
    assert len(calls) == 1 and calls[0][0][:3] == ["data", "synth", "kinetics400"]
    assert calls[0][1][1] == 3200  # 2560 train + 640 validation videos: the progress total
    (data / "vtk_synth.json").write_text("{}")
    assert precision_proof._motion_data(tmp_path, None, tmp_path / "log") == data
    assert len(calls) == 1
