"""Synthetic motion videos whose classes differ only in motion.

Each video shows a random scene (one bright convex shape of random colour, size and angle on a dark noisy background
of random colour) on a torus that translates (left, right, up, down, diagonals) or rotates (clockwise,
anticlockwise) over time, wrapping around the frame edges. Scene, colours, shape, its position and angle, and the
speed are drawn independently of the class; since a shifted or rotated random scene is again a random scene of the
same distribution, the distribution of any single frame is the same for every class: no single frame can tell the
classes apart, only the change between frames can. This is the control used to show that a video model models time
(Bertasius et al., "Is Space-Time Attention All You Need for Video Understanding?", arXiv:2102.05095).

The videos are real H.264 mp4 files (PyAV, no audio stream) laid out in all Kinetics-400 layouts at once:
``{split}/<class>/<ytid>_<start:06d>_<end:06d>.mp4`` (folder per class), ``train.csv``/``val.csv`` (pytorchvideo and
PySlowFast ``path label``), ``classids.json`` and, optionally, the official ``annotations/{train,validate}.csv``.
"""

from __future__ import annotations

import csv
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from engine.choices import check_choice
from engine.io import atomic_write, atomic_write_json, atomic_write_text

__all__ = ["MOTIONS", "SynthSpec", "render_video", "write_video", "write_kinetics_synth", "write_ucf101_synth"]

# Motion classes: (name, dx, dy, spin) with unit direction / spin sign. Order fixes the class indices.
MOTIONS: Tuple[Tuple[str, float, float, float], ...] = (
    ("move_left", -1.0, 0.0, 0.0),
    ("move_right", 1.0, 0.0, 0.0),
    ("move_up", 0.0, -1.0, 0.0),
    ("move_down", 0.0, 1.0, 0.0),
    ("rotate_cw", 0.0, 0.0, 1.0),
    ("rotate_ccw", 0.0, 0.0, -1.0),
    ("move_up_left", -0.7071, -0.7071, 0.0),
    ("move_up_right", 0.7071, -0.7071, 0.0),
    ("move_down_left", -0.7071, 0.7071, 0.0),
    ("move_down_right", 0.7071, 0.7071, 0.0),
)

# Convex shapes in unit coordinates; none is rotationally symmetric under the per-frame spin (< 30 degrees).
_SHAPES: Tuple[np.ndarray, ...] = (
    np.array([[0.0, -1.0], [0.87, 0.5], [-0.87, 0.5]]),  # triangle
    np.array([[-1.0, -0.35], [1.0, -0.35], [1.0, 0.35], [-1.0, 0.35]]),  # bar
    np.array([[-1.0, 0.0], [0.2, -0.8], [1.0, 0.0], [0.2, 0.8]]),  # kite
)


@dataclass(frozen=True)
class SynthSpec:
    """Size of a synthetic dataset.

    Args:
        classes: Number of motion classes (2 to ``len(MOTIONS)``).
        videos_per_class: Training videos per class; validation gets ``max(1, videos_per_class // 4)``.
        frames: Frames per video.
        size: Frame height and width in pixels (even, for yuv420p).
        fps: Frame rate written into the container.
        seed: Seed of the whole dataset.
    """

    classes: int = 4
    videos_per_class: int = 8
    frames: int = 16
    size: int = 64
    fps: int = 25
    seed: int = 0

    def __post_init__(self) -> None:
        if not 2 <= self.classes <= len(MOTIONS):
            raise ValueError(f"classes={self.classes} must be between 2 and {len(MOTIONS)}")
        if self.videos_per_class < 1 or self.frames < 1:
            raise ValueError(f"videos_per_class={self.videos_per_class} and frames={self.frames} must be >= 1")
        if self.size < 16 or self.size % 2:
            raise ValueError(f"size={self.size} must be an even number >= 16")


def _scene(size: int, rng: np.random.Generator) -> np.ndarray:
    """A random scene on a torus: one bright convex shape on a dark, slightly noisy background; ``(S, S, 3)``.

    Colours, shape, size, position and angle are random; only the polarity is fixed (the shape is always brighter
    than the background), which is the same for every class.
    """
    bg = rng.integers(0, 90, 3)
    scene = np.clip(bg + rng.integers(-12, 13, (size, size, 3)), 0, 255).astype(np.uint8)
    shape = _SHAPES[rng.integers(len(_SHAPES))]
    theta = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    fg = rng.integers(170, 256, 3).astype(np.uint8)
    _draw(scene, shape @ rot.T * rng.uniform(0.22, 0.32) * size, tuple(rng.uniform(0, size, 2)), fg)
    return scene


def _wrapped(coord: np.ndarray, centre: float, size: int) -> np.ndarray:
    """Signed offset of ``coord`` from ``centre`` on a torus of length ``size``."""
    return (coord - centre + size / 2) % size - size / 2


def _draw(frame: np.ndarray, poly: np.ndarray, centre: Tuple[float, float], colour: np.ndarray) -> None:
    """Fill the convex polygon ``poly`` (pixel units, around the origin) at ``centre`` with torus wrapping."""
    S = frame.shape[0]
    ys, xs = np.mgrid[0:S, 0:S].astype(np.float32) + 0.5
    dx, dy = _wrapped(xs, centre[0], S), _wrapped(ys, centre[1], S)
    inside = np.ones((S, S), dtype=bool)
    area = np.cross(poly[1] - poly[0], poly[2] - poly[0])
    for a, b in zip(poly, np.roll(poly, -1, axis=0)):
        cross = (b[0] - a[0]) * (dy - a[1]) - (b[1] - a[1]) * (dx - a[0])  # half-plane test per edge
        inside &= cross * np.sign(area) >= 0
    frame[inside] = colour


def render_video(label: int, frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Render one video of motion class ``label``: a random scene translated or rotated over time.

    The scene lives on a torus, so a translated or rotated scene is again a random scene of the same
    distribution: every single frame has the same distribution for every class.

    Returns:
        uint8 array ``(T, H, W, 3)``.
    """
    _, mx, my, spin = MOTIONS[label]
    scene = _scene(size, rng)
    speed = rng.uniform(0.06, 0.1) * size  # pixels per frame
    omega = np.deg2rad(rng.uniform(10.0, 18.0))  # radians per frame
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    c = size / 2
    video = np.empty((frames, size, size, 3), dtype=np.uint8)
    for t in range(frames):
        a = -spin * omega * t  # inverse map: where each output pixel comes from in the scene
        sx = np.cos(a) * (xs - c) - np.sin(a) * (ys - c) + c - mx * speed * t
        sy = np.sin(a) * (xs - c) + np.cos(a) * (ys - c) + c - my * speed * t
        video[t] = scene[np.floor(sy).astype(int) % size, np.floor(sx).astype(int) % size]
    return video


# Container of each file suffix: PyAV writes into an open temporary file, so the format cannot come from its name.
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".avi": "avi", ".mkv": "matroska", ".webm": "webm"}


def write_video(path: Path, video: np.ndarray, fps: int = 25, codec: str = "libx264",
                audio: bool = False) -> None:
    """Encode ``video`` ``(T, H, W, 3)`` uint8 with PyAV, atomically (:func:`engine.io.atomic_write`).

    Args:
        path: Output file; the container follows the suffix (``.mp4``, ``.avi``, ``.mkv``, ...: :data:`CONTAINERS`).
        video: Frames.
        fps: Frame rate.
        codec: Any encoder in PyAV's ffmpeg: ``libx264``, ``mpeg4``, ``msmpeg4``, ``msmpeg4v2``, ``cinepak``.
        audio: Also write a silent AAC (mp4) / MP3 (avi) audio stream.

    Raises:
        ValueError: A suffix without a known container.
    """
    path = Path(path)
    container = CONTAINERS[check_choice("write_video suffix", path.suffix.lower(), CONTAINERS, error=ValueError)]
    atomic_write(path, lambda f: _encode(f, container, video, fps, codec, audio))


def _encode(f, container: str, video: np.ndarray, fps: int, codec: str, audio: bool) -> None:
    """Mux ``video`` into the open binary file ``f``."""
    import av

    with av.open(f, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = video.shape[2], video.shape[1]
        stream.pix_fmt = "rgb24" if codec == "cinepak" else "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast"}
        astream = _add_audio(out, container) if audio else None
        for frame in video:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        if astream is not None:
            _write_silence(out, astream, seconds=len(video) / fps)


def _add_audio(out, container: str):
    stream = out.add_stream("aac" if container != "avi" else "mp3", rate=44100)
    stream.layout = "mono"
    return stream


def _write_silence(out, stream, seconds: float) -> None:
    import av

    n, chunk = int(seconds * 44100), 1024
    fmt = stream.codec_context.format.name
    dtype = {"fltp": np.float32, "s16p": np.int16, "s32p": np.int32, "s16": np.int16}.get(fmt, np.float32)
    for start in range(0, n, chunk):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, chunk), dtype=dtype), format=fmt, layout="mono")
        frame.sample_rate, frame.pts = 44100, start
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)


def _ytid(rng: np.random.Generator) -> str:
    alphabet = np.array(list(string.ascii_letters + string.digits + "-_"))
    return "".join(rng.choice(alphabet, 11))


def _split_rows(spec: SynthSpec, split: str, rng: np.random.Generator) -> List[Tuple[str, int, int, int]]:
    """Rows ``(ytid, start, end, label)`` for one split."""
    n = spec.videos_per_class if split == "train" else max(1, spec.videos_per_class // 4)
    rows = []
    for label in range(spec.classes):
        for _ in range(n):
            start = int(rng.integers(0, 300))
            rows.append((_ytid(rng), start, start + 10, label))
    return rows


def write_kinetics_synth(out: Path, spec: SynthSpec, annotations: bool = True) -> Dict[str, int]:
    """Write a synthetic Kinetics-400-style dataset in every layout; returns the number of videos per split."""
    out = Path(out)
    names = [m[0] for m in MOTIONS[: spec.classes]]
    rng = np.random.default_rng(spec.seed)
    counts = {}
    for split, ann_split in (("train", "train"), ("val", "validate")):
        rows = _split_rows(spec, split, rng)
        csv_lines, ann_rows = [], []
        for ytid, start, end, label in rows:
            rel = Path(split) / names[label] / f"{ytid}_{start:06d}_{end:06d}.mp4"
            write_video(out / rel, render_video(label, spec.frames, spec.size, rng), fps=spec.fps)
            csv_lines.append(f"{rel.as_posix()} {label}\n")
            ann_rows.append([names[label], ytid, start, end, ann_split])
        atomic_write_text(out / f"{split}.csv", "".join(csv_lines))
        if annotations:
            _write_annotations(out / "annotations" / f"{ann_split}.csv", ann_rows)
        counts[split] = len(rows)
    atomic_write_json(out / "classids.json", {n: i for i, n in enumerate(names)})
    _write_marker(out, spec)
    return counts


def _write_marker(out: Path, spec: SynthSpec) -> None:
    """``vtk_synth.json``: how the set was made, and the data defaults it needs (no flips: motion is directional)."""
    info = {"generator": "vtk data synth", "spec": spec.__dict__,
            "data_args": {"hflip": False, "min_scale": 0.7, "stride": 1}}
    atomic_write_json(out / "vtk_synth.json", info)


def _write_annotations(path: Path, rows: Sequence[Sequence]) -> None:
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
    buf.write("label,youtube_id,time_start,time_end,split,is_cc\n")
    for row in rows:
        writer.writerow(list(row) + [0])
    atomic_write_text(path, buf.getvalue())


def write_ucf101_synth(out: Path, spec: SynthSpec, codec: str = "msmpeg4v2") -> Dict[str, int]:
    """Write the synthetic motion classes in the UCF101 layout (AVI files, ``ucfTrainTestlist`` split 1)."""
    out = Path(out)
    names = ["".join(w.capitalize() for w in m[0].split("_")) for m in MOTIONS[: spec.classes]]
    rng = np.random.default_rng(spec.seed)
    train, test = [], []
    for label, name in enumerate(names):
        for g in range(1, spec.videos_per_class + max(1, spec.videos_per_class // 4) + 1):
            rel = f"{name}/v_{name}_g{g:02d}_c01.avi"
            write_video(out / "UCF-101" / rel, render_video(label, spec.frames, spec.size, rng), spec.fps, codec)
            (train if g <= spec.videos_per_class else test).append((rel, label))
    lists = out / "ucfTrainTestlist"
    atomic_write_text(lists / "classInd.txt", "".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
    atomic_write_text(lists / "trainlist01.txt", "".join(f"{r} {lab + 1}\n" for r, lab in train))
    atomic_write_text(lists / "testlist01.txt", "".join(f"{r}\n" for r, _ in test))
    _write_marker(out, spec)
    return {"train": len(train), "val": len(test)}
