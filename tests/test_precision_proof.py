"""benchmarks/precision_proof.py runs the docs' learning-proof commands: the same options, and a real (short) run."""

import json
import re
import shlex
from pathlib import Path

from benchmarks import precision_proof

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
    assert 0.0 <= rows[0]["eval"] <= 1.0 and rows[0]["val"] is not None
    # a second call reuses the finished run: no training subprocess
    calls = []
    real = precision_proof._vtk
    monkeypatch.setattr(precision_proof, "_vtk", lambda args, log: calls.append(args[:2]) or real(args, log))
    assert precision_proof.main(["--task", "colin27", "--precision", "32", "--steps", "2", "--out", str(out)]) == 0
    assert calls == []
    assert "| colin27 | 32 | 0 |" in capsys.readouterr().out
