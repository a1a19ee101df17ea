"""Video decoding: decord as the fast path, PyAV as the fallback.

``decord.VideoReader`` seeks and decodes only the frames asked for (``get_batch(indices)``) and works on files
without an audio stream (pytorchvideo's decord path goes through ``AVReader`` and fails on them with "Can't find
audio stream"). Files decord cannot open are decoded with PyAV. decord's global ``bridge`` is never touched: frames
come back as numpy arrays and are converted here.

Frames are addressed by index in decode order, so variable-frame-rate files sample evenly in frames, not in time.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Union

import numpy as np

from engine.errors import UserError

__all__ = ["VideoReader", "open_video", "read_frames", "list_videos", "index_frame_count", "verify_complete"]

PathLike = Union[str, os.PathLike]
_DECORD_LOCK = threading.Lock()


class VideoReader:
    """Random access to the frames of one video file.

    Args:
        path: Video file (anything ffmpeg reads: mp4/H.264, avi/msmpeg4/cinepak, mkv, webm, ...).
        backend: ``"auto"`` (decord, then PyAV), ``"decord"`` or ``"pyav"``.
        num_threads: Decoder threads for decord (1 is best inside DataLoader workers).
        verify: Compare the frame count of the container's index with the frames the file holds
            (:func:`verify_complete`), so a truncated download is unreadable instead of a shorter video.

    Raises:
        UserError: The file is missing, empty, truncated or undecodable (the message names it).
    """

    def __init__(self, path: PathLike, backend: str = "auto", num_threads: int = 1, verify: bool = True) -> None:
        if backend not in ("auto", "decord", "pyav"):
            raise ValueError(f"backend={backend!r} must be one of 'auto', 'decord', 'pyav'")
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: no such video file")
        if self.path.stat().st_size == 0:
            raise UserError(f"{self.path}: empty file")
        self._decord = None
        self._pyav_len: Optional[int] = None
        self._fps = 0.0
        errors = []
        if backend in ("auto", "decord"):
            try:
                self._open_decord(num_threads)
            except Exception as e:  # noqa: BLE001 - decord raises its own DECORDError or RuntimeError
                errors.append(f"decord: {_first_line(e)}")
        if self._decord is None and backend in ("auto", "pyav"):
            try:
                self._open_pyav()
            except Exception as e:  # noqa: BLE001 - av.error.* subclasses several bases
                errors.append(f"pyav: {_first_line(e)}")
        if self._decord is None and self._pyav_len is None:
            raise UserError(f"{self.path}: cannot decode video ({'; '.join(errors)})")
        self.backend = "decord" if self._decord is not None else "pyav"
        if verify:
            verify_complete(self.path, len(self))

    def _open_decord(self, num_threads: int) -> None:
        import decord

        _quiet_decord(decord)
        with _DECORD_LOCK, _silenced_stderr():  # decord's C++ logger prints "ERROR opening ..." itself
            vr = decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=num_threads)
        if len(vr) < 1:
            raise RuntimeError("no frames")
        self._decord, self._fps = vr, float(vr.get_avg_fps() or 0.0)

    def _open_pyav(self) -> None:
        import av

        with av.open(str(self.path)) as container:
            if not container.streams.video:
                raise RuntimeError("no video stream")
            stream = container.streams.video[0]
            self._fps = float(stream.average_rate or stream.guessed_rate or 0.0)
            count = sum(1 for p in container.demux(stream) if p.size > 0)  # demux only, no decoding
        if count < 1:
            raise RuntimeError("no video frames")
        self._pyav_len = count

    def __len__(self) -> int:
        if self._pyav_len is None:
            self._pyav_len = len(self._decord)
        return self._pyav_len

    @property
    def fps(self) -> float:
        """Average frame rate from the container (0.0 when unknown)."""
        return self._fps

    def get_batch(self, indices: Sequence[int]) -> np.ndarray:
        """Decode the frames at ``indices`` (any order, repeats allowed).

        Returns:
            uint8 array ``(len(indices), H, W, 3)``.
        """
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size == 0 or idx.min() < 0 or idx.max() >= len(self):
            raise ValueError(f"{self.path}: frame indices {idx.tolist()} out of range for {len(self)} frames")
        uniq, inverse = np.unique(idx, return_inverse=True)  # decode each frame once, in stream order
        try:
            if self._decord is not None:
                try:
                    return self._decord.get_batch(uniq.tolist()).asnumpy()[inverse]
                except Exception:  # noqa: BLE001 - decord trips on some streams that ffmpeg via PyAV reads
                    self._decord = None
                    self.backend = "pyav"
            return self._pyav_batch(uniq)[inverse]
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - a file that opens but fails mid-stream
            raise UserError(f"{self.path}: cannot decode frames {idx.tolist()[:4]}... ({_first_line(e)})") from e

    def _pyav_batch(self, idx: np.ndarray) -> np.ndarray:
        """Decode sequentially up to the last wanted frame (PyAV fallback)."""
        import av

        wanted = set(idx.tolist())
        frames = {}
        with av.open(str(self.path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    frames[i] = frame.to_ndarray(format="rgb24")
                if i >= idx.max():
                    break
        if len(frames) < len(wanted):  # the demuxed count overestimated the decodable frames
            last = max(frames) if frames else None
            if last is None:
                raise UserError(f"{self.path}: no decodable video frames")
            frames.update({i: frames[last] for i in wanted if i not in frames})
        return np.stack([frames[i] for i in idx.tolist()])


# Containers whose index lists every sample (ISO BMFF: mp4, mov, m4v, 3gp): AVI counts dropped (empty) frames and
# Matroska/WebM keep no frame count, so only these are compared.
_INDEXED_FORMATS = ("mov", "mp4", "m4a", "3gp", "3g2", "mj2")


def index_frame_count(path: PathLike) -> Optional[int]:
    """The number of video frames the container's index lists (mp4/mov ``stsz``), read without decoding.

    ``None`` when the format keeps no exact per-frame index (AVI, Matroska, WebM) or it cannot be read. With
    ``faststart`` (index before the data) a truncated mp4 still opens and its index still lists every frame,
    which is how :func:`verify_complete` finds it.
    """
    import av

    try:
        with av.open(str(path)) as container:
            names = set(container.format.name.split(","))
            if not names & set(_INDEXED_FORMATS) or not container.streams.video:
                return None
            return int(container.streams.video[0].frames) or None
    except Exception:  # noqa: BLE001 - unreadable files are reported by the decoders with their own message
        return None


def verify_complete(path: PathLike, frames: int) -> None:
    """Raise when the index of ``path`` lists more frames than the ``frames`` its decoder found.

    Raises:
        UserError: ``"<path>: truncated video: its index lists 100 frames but the file holds only 77 ..."``.
    """
    listed = index_frame_count(path)
    if listed is not None and frames < listed:
        raise UserError(f"{path}: truncated video: its index lists {listed} frames but the file holds only "
                        f"{frames} (an incomplete download or copy)")


def _quiet_decord(decord) -> None:
    """Silence ffmpeg's log inside decord once (failures are reported as :class:`UserError` instead)."""
    global _QUIET
    if not _QUIET:
        decord.logging.set_level(decord.logging.QUIET)
        _QUIET = True


_QUIET = False


@contextlib.contextmanager
def _silenced_stderr() -> Iterator[None]:
    """Point file descriptor 2 at ``/dev/null`` for the block: decord's C++ (dmlc) logger writes ``[hh:mm:ss]
    .../video_reader.cc:83: ERROR opening: ...`` straight to it, which ``decord.logging`` does not control. The
    failure itself still reaches the caller as an exception."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real stderr (embedded interpreter): nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


# decord's messages start with "[01:08:03] /github/workspace/src/video/video_reader.cc:486: "
_DMLC_PREFIX = re.compile(r"^\[\d\d:\d\d:\d\d\] \S+:\d+: (Error: )?")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    msg = _DMLC_PREFIX.sub("", text[0]) if text else type(e).__name__
    return msg.replace("failed with 1094995529", "failed (invalid data)")[:200]


def open_video(path: PathLike, backend: str = "auto") -> VideoReader:
    """Open ``path`` for random frame access; see :class:`VideoReader`."""
    return VideoReader(path, backend=backend)


def read_frames(path: PathLike, indices: Sequence[int], backend: str = "auto") -> np.ndarray:
    """Decode the frames at ``indices`` of ``path`` as uint8 ``(T, H, W, 3)``."""
    return VideoReader(path, backend=backend).get_batch(indices)


def list_videos(folder: PathLike, exts: Sequence[str] = (".mp4", ".avi", ".mkv", ".webm", ".mov")) -> List[Path]:
    """Video files directly under ``folder`` or below it, sorted."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in exts and p.is_file())
