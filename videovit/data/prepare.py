"""``vtk data prepare kinetics400``: a re-encoded copy of a Kinetics folder and the manifest that replaces probing.

Training on Kinetics is I/O bound when the videos are decoded at their download size (PySlowFast users report
5-7 days on 8 GPUs until they re-encode to a short side of 320 px, as PySlowFast's and mmaction2's own data
scripts do). :func:`prepare_kinetics` re-encodes every video file below ``src`` into ``out`` at the same relative
path (short side ``short_side``, never upscaled; H.264, same frame rate, no audio) in ``workers`` processes, copies
every other file (split lists, annotations, class lists) as is, and writes ``out/manifest.json``:

``{"format", "source", "short_side", "splits": {split: {"layout", "listed", "present", "missing", "corrupt"}},
"videos": {relative path: {"status": "present"|"corrupt", "frames", "fps", "width", "height", "error"?}},
"missing": {split: [relative path]}}``.

A video that fails to decode or encode is listed as ``corrupt`` (with the reason) and never stops the others; a
listed video without a file is ``missing``. Each output file and the manifest are written atomically, and the
manifest is rewritten as work completes, so an interrupted run loses nothing: a second run reuses every video the
manifest already lists as present.

``vtk data check`` then reads the manifest instead of opening every video (:func:`check_with_manifest`), and
training and evaluation drop the videos it lists as corrupt (:func:`apply_manifest`) instead of retrying them.
Decoders are opened inside each worker process (and, for training, inside each DataLoader worker by the datasets'
``__getitem__``), never in the parent before it forks.

Example::

    >>> from videovit.data.prepare import prepare_kinetics
    >>> m = prepare_kinetics("data/k400", "data/k400-320", short_side=320, workers=8)
    >>> m["splits"]["val"]["corrupt"]
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from engine.errors import UserError
from engine.io import atomic_write, atomic_write_json

__all__ = ["MANIFEST", "FORMAT", "prepare_kinetics", "reencode_video", "load_manifest", "apply_manifest",
           "check_with_manifest"]

MANIFEST = "manifest.json"
FORMAT = "vtk-video-manifest/1"
PathLike = Union[str, os.PathLike]
_CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "matroska",
               ".avi": "avi"}


def _scaled(width: int, height: int, short_side: int) -> Tuple[int, int]:
    """``(w, h)`` with the short side ``short_side`` (never larger than the input), both even (yuv420p)."""
    scale = min(1.0, short_side / min(width, height))
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def reencode_video(src: PathLike, dst: PathLike, short_side: int = 320, crf: int = 23) -> Dict[str, Any]:
    """Re-encode ``src`` into ``dst`` (atomic) at short side ``short_side``: H.264, same frame rate, no audio.

    The container follows ``dst``'s suffix (``.webm`` becomes Matroska, which holds H.264; decoders probe the
    content, not the name).

    Returns:
        ``{"status": "present", "frames", "fps", "width", "height"}``, or ``{"status": "corrupt", "error"}`` when
        ``src`` does not decode (no partial ``dst`` is left).
    """
    import av

    src, dst = Path(src), Path(dst)
    info: Dict[str, Any] = {}

    def write(f) -> None:
        with av.open(str(src)) as inp:
            if not inp.streams.video:
                raise ValueError("no video stream")
            ist = inp.streams.video[0]
            ist.thread_type = "AUTO"
            rate = ist.average_rate or ist.guessed_rate or 30
            fmt = _CONTAINERS.get(dst.suffix.lower(), "mp4")
            with av.open(f, mode="w", format=fmt) as out:
                ost, n = None, 0
                for frame in inp.decode(ist):
                    if ost is None:
                        w, h = _scaled(frame.width, frame.height, short_side)
                        ost = out.add_stream("libx264", rate=rate)
                        ost.width, ost.height, ost.pix_fmt = w, h, "yuv420p"
                        ost.options = {"crf": str(crf), "preset": "veryfast"}
                    picture = frame.reformat(width=ost.width, height=ost.height, format="yuv420p")
                    picture.pts = None
                    for packet in ost.encode(picture):
                        out.mux(packet)
                    n += 1
                if ost is None:
                    raise ValueError("no decodable video frames")
                for packet in ost.encode():
                    out.mux(packet)
        info.update(status="present", frames=n, fps=float(rate), width=ost.width, height=ost.height)

    try:
        atomic_write(dst, write)
    except Exception as e:  # noqa: BLE001 - av.error.* and friends: the file is corrupt, never fatal
        text = " ".join(str(e).split())[:200] or type(e).__name__
        return {"status": "corrupt", "error": f"{type(e).__name__}: {text}"}
    return info


def load_manifest(root: PathLike) -> Optional[Dict[str, Any]]:
    """``root/manifest.json`` (written by :func:`prepare_kinetics`), or ``None`` when there is none.

    Raises:
        UserError: The manifest exists but is unreadable or of another format.
    """
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable manifest ({' '.join(str(e).split())[:160]})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{path}: not a vtk video manifest (format {FORMAT!r})")
    return manifest


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _splits(src: Path, layout: str, splits: Sequence[str]):
    from .layouts import load_dataset

    out = {}
    for split in splits:
        try:
            out[split] = load_dataset("kinetics400", src, split, layout=layout)
        except UserError:
            if split == splits[0]:
                raise
    return out


def prepare_kinetics(src: PathLike, out: PathLike, short_side: int = 320, workers: int = 4, layout: str = "auto",
                     splits: Sequence[str] = ("train", "val"),
                     progress: Optional[Callable[[int, int], None]] = None) -> Dict[str, Any]:
    """Re-encode every video below ``src`` into ``out`` in parallel and write ``out/manifest.json``.

    Args:
        src: The Kinetics folder (any layout of :mod:`videovit.data.layouts`).
        out: The copy (created; may not be ``src`` or inside it).
        short_side: Short side of the copies in pixels (videos already smaller keep their size).
        workers: Encoding processes.
        layout: Kinetics layout used to find the listed (and so the missing) videos.
        splits: Splits whose listings are read.
        progress: ``progress(done, total)`` after each video.

    Returns:
        The manifest.

    Raises:
        UserError: ``src`` has no Kinetics listing, ``out`` overlaps ``src``, or a bad ``short_side``/``workers``.
    """
    from .layouts import VIDEO_EXTS

    src, out = Path(src), Path(out)
    if short_side < 2 or workers < 1:
        raise UserError(f"--short-side {short_side} must be >= 2 and --workers {workers} >= 1")
    if not src.is_dir():
        raise UserError(f"{src}: no such folder")
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise UserError(f"--out {out}: must not be --src {src} or inside it (the copy would be re-read)")
    listed = _splits(src, layout, splits)
    files = sorted(p for p in src.rglob("*") if p.is_file())
    videos = [p for p in files if p.suffix.lower() in VIDEO_EXTS]
    for p in files:  # split lists, annotations, class names: copied as they are
        if p.suffix.lower() not in VIDEO_EXTS and p.name != MANIFEST:
            dst = out / p.relative_to(src)
            if not dst.is_file() or dst.stat().st_size != p.stat().st_size:
                atomic_write(dst, lambda f, p=p: shutil.copyfileobj(p.open("rb"), f))
    old = (load_manifest(out) or {}).get("videos", {})
    entries: Dict[str, Dict[str, Any]] = {}
    todo = []
    for p in videos:
        rel = p.relative_to(src).as_posix()
        prev = old.get(rel, {})
        if prev.get("status") == "present" and prev.get("short_side") == short_side and (out / rel).is_file():
            entries[rel] = prev  # done by an earlier run
        else:
            todo.append(rel)

    def manifest() -> Dict[str, Any]:
        return _manifest(src, out, short_side, listed, entries)

    done, last_write = len(entries), time.monotonic()
    ctx = multiprocessing.get_context("fork")  # the parent holds no decoder: each worker opens its own
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = {pool.submit(reencode_video, src / rel, out / rel, short_side): rel for rel in todo}
        for fut in as_completed(futures):
            rel = futures[fut]
            try:
                entries[rel] = {**fut.result(), "short_side": short_side}
            except Exception as e:  # noqa: BLE001 - a worker that died (out of memory, a decoder crash)
                entries[rel] = {"status": "corrupt", "error": f"worker failed: {type(e).__name__}: {e}"[:200]}
            done += 1
            if progress is not None:
                progress(done, len(videos))
            if time.monotonic() - last_write > 10:  # keep finished work on disk while the rest runs
                atomic_write_json(out / MANIFEST, manifest())
                last_write = time.monotonic()
    result = manifest()
    atomic_write_json(out / MANIFEST, result)
    return result


def _manifest(src: Path, out: Path, short_side: int, listed, entries) -> Dict[str, Any]:
    splits, missing = {}, {}
    for split, vl in listed.items():
        rels = [_rel(p, src) for p, _ in vl.samples]
        corrupt = sum(1 for r in rels if entries.get(r, {}).get("status") == "corrupt")
        missing[split] = [_rel(p, src) for p in vl.missing]
        splits[split] = {"layout": vl.layout, "listed": len(rels) + len(vl.missing),
                         "present": sum(1 for r in rels if entries.get(r, {}).get("status") == "present"),
                         "missing": len(vl.missing), "corrupt": corrupt}
    return {"format": FORMAT, "source": str(src), "short_side": short_side, "splits": splits,
            "videos": dict(sorted(entries.items())), "missing": missing}


def apply_manifest(videos, root: PathLike):
    """``videos`` (a :class:`~videovit.data.layouts.VideoList` of ``root``) without the ones ``root``'s manifest
    lists as corrupt; those join ``videos.missing``. Unchanged when ``root`` has no manifest."""
    manifest = load_manifest(root)
    if manifest is None:
        return videos
    entries, root = manifest["videos"], Path(root)
    bad = [p for p, _ in videos.samples if entries.get(_rel(p, root), {}).get("status") == "corrupt"]
    if bad:
        drop = set(bad)
        videos.samples = [(p, y) for p, y in videos.samples if p not in drop]
        videos.missing = list(videos.missing) + bad
    return videos


def check_with_manifest(data_dir: PathLike, layout: str = "auto", splits: Sequence[str] = ("train", "val")):
    """``vtk data check`` from the manifest: missing files by ``stat``, corrupt ones from the manifest, and only
    videos the manifest does not know (added after ``prepare``) are opened.

    Returns:
        A :class:`videovit.data.check.CheckResult`, or ``None`` when ``data_dir`` has no manifest.
    """
    from .check import CheckResult, probe_video
    from .layouts import load_dataset

    manifest = load_manifest(data_dir)
    if manifest is None:
        return None
    root, entries = Path(data_dir), manifest["videos"]
    summary: List[Tuple[Any, ...]] = []
    problems: List[Tuple[str, str, str]] = []
    for split in splits:
        vl = load_dataset("kinetics400", root, split, layout=layout)
        for p in vl.missing:  # a source video that did not re-encode has no copy: say why
            entry = entries.get(_rel(p, root), {})
            problems.append((split, str(p), f"corrupt in {MANIFEST}: {entry.get('error', '')}"
                             if entry.get("status") == "corrupt" else "missing"))
        bad = []
        for p, _ in vl.samples:
            entry = entries.get(_rel(p, root))
            why = probe_video(p) if entry is None else (
                None if entry["status"] == "present" else f"corrupt in {MANIFEST}: {entry.get('error', '')}")
            if why is not None:
                bad.append((split, str(p), why))
        problems += bad
        summary.append((split, vl.layout, len(vl.samples) + len(vl.missing), len(vl.missing), len(bad),
                        len(vl.classes)))
    return CheckResult(summary, problems)
