"""Video decoding: PyAV seek readers for clips (the default), decord and PyAV front to back as the fallbacks.

:func:`open_reader` (what the datasets and ``vtk video predict`` use) gives a :class:`SeekReader` for
``backend="auto"``: it seeks to the keyframe before a clip and decodes only what the clip needs. Files PyAV cannot
open that way go to :class:`VideoReader`: ``decord.VideoReader`` (``get_batch(indices)``; it works on files without
an audio stream, where pytorchvideo's decord path goes through ``AVReader`` and fails with "Can't find audio
stream"), then PyAV front to back. decord's global ``bridge`` is never touched: frames come back as numpy arrays.

Frames are addressed by index in presentation order, so variable-frame-rate files sample evenly in frames, not in
time.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any, List, Optional, Sequence, Union

import numpy as np

from engine.errors import UserError
from engine.io import silenced_fd

__all__ = ["VideoReader", "open_video", "read_frames", "list_videos", "index_frame_count", "verify_complete",
           "DecodeStopped", "stream_info", "iter_frames", "SeekReader", "open_reader"]

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
        with _DECORD_LOCK, silenced_fd(2):  # decord's C++ (dmlc) logger prints "ERROR opening ..." itself
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
                    return _as_numpy(self._decord.get_batch(uniq.tolist()))[inverse]
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


def _as_numpy(batch: Any) -> np.ndarray:
    """A decord batch as uint8 numpy, whatever bridge another library set process-wide (pytorchvideo's decord
    path calls ``decord.bridge.set_bridge("torch")``, after which ``get_batch`` returns torch tensors)."""
    if hasattr(batch, "asnumpy"):
        return batch.asnumpy()
    return batch.numpy() if hasattr(batch, "numpy") else np.asarray(batch)


def _quiet_decord(decord) -> None:
    """Silence ffmpeg's log inside decord once (failures are reported as :class:`UserError` instead)."""
    global _QUIET
    if not _QUIET:
        decord.logging.set_level(decord.logging.QUIET)
        _QUIET = True


_QUIET = False


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


# ------------------------------------------------------------------------- streaming (long videos, bounded memory)
class DecodeStopped(UserError):
    """Decoding of ``path`` ended at frame ``frame`` (0-based, the first frame that did not decode) before the end
    its container announced; ``reason`` says why (a decoder error, or the data ran out)."""

    def __init__(self, path: PathLike, frame: int, total: int, fps: float, reason: str) -> None:
        self.path, self.frame, self.total, self.fps, self.reason = Path(path), int(frame), int(total), fps, reason
        at = f" ({frame / fps:.2f} s)" if fps > 0 else ""
        super().__init__(f"{self.path}: decoding stopped at frame {frame}{at} of {total}: {reason}")


def stream_info(path: PathLike) -> "tuple[int, float]":
    """``(frames, fps)`` of the first video stream from the container's header, without decoding (PyAV).

    The frame count is the stream's own (mp4, avi), else duration x rate (mkv, webm). A file whose tail is
    corrupt still reports its full length here; :func:`iter_frames` finds where decoding really stops.

    Raises:
        UserError: Missing, empty or unreadable file, no video stream, or no frame rate.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such video file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UserError(f"{path}: no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0.0)
            frames = int(stream.frames or 0)
            if frames <= 0 and fps > 0:
                seconds = (float(stream.duration * stream.time_base) if stream.duration else
                           (container.duration or 0) / 1e6)
                frames = int(round(seconds * fps))
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - av.error.* subclasses several bases
        raise UserError(f"{path}: cannot open video ({_first_line(e)})") from None
    if fps <= 0:
        raise UserError(f"{path}: the container gives no frame rate")
    if frames <= 0:
        raise UserError(f"{path}: the container gives no frame count or duration")
    return frames, fps


def iter_frames(path: PathLike, wanted: Sequence[int], total: int = 0, fps: float = 0.0):
    """Decode ``path`` once, front to back (PyAV), yielding ``(index, uint8 (H, W, 3))`` for the ``wanted`` frames.

    Only the wanted frames are converted to RGB and none is kept here, so memory does not grow with the video's
    length (a 30,000-frame file is never decoded at once). Decoding stops after the last wanted frame.

    Raises:
        DecodeStopped: After the last frame that decoded, when a wanted frame was never reached (a corrupt or
            truncated tail): ``.frame`` is where it stopped.
    """
    import av

    want = np.unique(np.asarray(wanted, dtype=np.int64))
    if want.size == 0:
        return
    last, k, decoded = int(want[-1]), 0, 0
    reason = "the data ends early (truncated file)"
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                index, decoded = decoded, decoded + 1
                if index == want[k]:
                    yield index, frame.to_ndarray(format="rgb24")
                    k += 1
                    if index >= last:
                        return
    except Exception as e:  # noqa: BLE001 - av.error.InvalidDataError and friends mid-stream
        reason = f"decoder error ({_first_line(e)})"
    raise DecodeStopped(path, decoded, total, fps, reason)


# ------------------------------------------------------------------- random clips: seek + skip (training loaders)
class SeekReader:
    """Random clip access with PyAV that decodes only what a clip needs.

    Opening demuxes the packet timestamps once (no decoding): frame ``i`` is the ``i``-th presentation timestamp,
    so variable frame rates index exactly as a front-to-back decode does. :meth:`get_batch` seeks to the keyframe
    at or before the first wanted frame, decodes forward to the last one (a new seek wherever a keyframe lies between
    two wanted frames), converts only the wanted frames to RGB, and
    tells the decoder to skip the non-reference frames it does not need (``skip_frame = NONREF``: nothing else
    depends on them). Decoding is single-threaded, as suits DataLoader workers.

    Args:
        path: Video file.
        verify: Compare the frames the container's index lists with the packets the file holds
            (:func:`verify_complete`), so a truncated download is unreadable instead of a shorter video.

    Raises:
        UserError: The file is missing, empty, truncated, has no video stream or no frame.
    """

    backend = "seek"

    def __init__(self, path: PathLike, verify: bool = True) -> None:
        import av

        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: no such video file")
        if self.path.stat().st_size == 0:
            raise UserError(f"{self.path}: empty file")
        try:
            self._container = av.open(str(self.path))
            if not self._container.streams.video:
                raise RuntimeError("no video stream")
            self._stream = self._container.streams.video[0]
            self._stream.thread_type = "SLICE"
            self._stream.thread_count = 1
            packets = [(p.pts, p.is_keyframe) for p in self._container.demux(self._stream)
                       if p.pts is not None and p.size > 0]
            pts = sorted(t for t, _ in packets)
        except Exception as e:  # noqa: BLE001 - av.error.* subclasses several bases
            self.close()
            raise UserError(f"{self.path}: cannot decode video (pyav: {_first_line(e)})") from None
        if not pts:
            self.close()
            raise UserError(f"{self.path}: no video frames")
        if verify:
            try:
                verify_complete(self.path, len(pts))
            except UserError:
                self.close()
                raise
        self._pts = np.asarray(pts, dtype=np.int64)
        keys = np.searchsorted(self._pts, sorted(t for t, key in packets if key))  # frame indices of keyframes
        self._keys = keys if keys.size and keys[0] == 0 else np.concatenate([[0], keys]).astype(np.int64)
        self.pixels = int(self._stream.width) * int(self._stream.height)
        self._fps = float(self._stream.average_rate or self._stream.guessed_rate or 0.0)
        self._rgb = _rgb_converter()

    def __len__(self) -> int:
        return len(self._pts)

    @property
    def fps(self) -> float:
        return self._fps

    def close(self) -> None:
        container = getattr(self, "_container", None)
        if container is not None:
            container.close()
            self._container = None

    def get_batch(self, indices: Sequence[int]) -> np.ndarray:
        """Decode the frames at ``indices`` (any order, repeats allowed) as uint8 ``(len(indices), H, W, 3)``."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size == 0 or idx.min() < 0 or idx.max() >= len(self):
            raise ValueError(f"{self.path}: frame indices {idx.tolist()} out of range for {len(self)} frames")
        try:
            return self._decode(idx)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - a file that opens but fails mid-stream
            raise UserError(f"{self.path}: cannot decode frames {idx.tolist()[:4]}... ({_first_line(e)})") from e

    def _decode(self, idx: np.ndarray) -> np.ndarray:
        """Decode ``idx`` run by run (a new run, with its own seek, wherever a keyframe lies between two wanted
        frames: seeking there decodes less than decoding through), each frame written into its rows of the output."""
        uniq = np.unique(idx)
        key = self._keys[np.searchsorted(self._keys, uniq, side="right") - 1]  # keyframe at or before each frame
        starts = np.flatnonzero(np.concatenate([[True], key[1:] > uniq[:-1]]))
        out: "list[Optional[np.ndarray]]" = [None]
        got: dict = {}  # pts -> the first output row written
        for run in np.split(uniq, starts[1:]):
            self._decode_run({int(self._pts[i]): np.flatnonzero(idx == i) for i in run}, len(idx), out, got)
        if len(got) < len(uniq):  # a seek that landed after its frame, or a tail that does not decode
            if not got and uniq[0] == 0:
                raise UserError(f"{self.path}: no decodable video frames")
            return VideoReader(self.path, backend="pyav").get_batch(idx)  # front to back, as far as it decodes
        return out[0]

    def _decode_run(self, rows: dict, n: int, out: list, got: dict) -> None:
        """Seek to the keyframe at or before the first of ``rows`` (pts -> output rows), decode forward to the last
        with the non-reference frames no row needs skipped, and write ``out[0]`` ``(n, H, W, 3)``."""
        cc, skip, fed = self._stream.codec_context, "DEFAULT", 0

        def take(frames) -> None:
            for frame in frames:
                r = rows.get(frame.pts)
                if r is not None and frame.pts not in got:
                    rgb = self._rgb(frame)  # (H, W, 3)
                    if out[0] is None:
                        out[0] = np.empty((n, *rgb.shape), dtype=np.uint8)  # (N, H, W, 3)
                    out[0][r], got[frame.pts] = rgb, r[0]

        self._container.seek(min(rows), stream=self._stream, backward=True, any_frame=False)
        end = len(got) + len(rows)  # ``got`` once every row of this run is written
        try:
            for packet in self._container.demux(self._stream):
                if packet.pts is not None:  # the decoder may drop this packet's frame unless a clip needs it
                    want = "DEFAULT" if packet.pts in rows else "NONREF"
                    fed += want == "DEFAULT"
                    if want != skip:
                        cc.skip_frame = skip = want
                take(packet.decode())
                if fed == len(rows) and len(got) < end:
                    take(cc.decode(None))  # all fed: drain the reordering delay instead of decoding on
                    return  # (a row still missing now did not decode; the caller falls back)
                if len(got) == end:
                    return
        finally:
            cc.skip_frame = "DEFAULT"  # the next seek also ends a drain


def _rgb_converter():
    """``frame -> uint8 (H, W, 3)`` through one reused single-threaded swscale context.

    ``frame.to_ndarray(format="rgb24")`` builds a new reformatter for every frame, and PyAV's default ``threads=0``
    starts a pool of scaler threads each time: ~0.75 ms a 340x256 frame against ~0.05 ms here, same bytes.
    """
    from av.video.reformatter import VideoReformatter

    reformatter = VideoReformatter()
    return lambda frame: reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()


_SEEK_READERS: "dict" = {}
_SEEK_READERS_MAX = 8  # open readers kept per process ...
_SEEK_PIXELS_MAX = 8 * 640 * 480  # ... and at most this many pixels per frame over all of them (decoder buffers)


def open_reader(path: PathLike, backend: str = "auto"):
    """A reader for ``path``: :class:`SeekReader` for ``"auto"`` and ``"seek"``, else :class:`VideoReader`.

    ``"auto"`` falls back to :class:`VideoReader` (decord, then PyAV front to back) when PyAV cannot open the file
    for seeking, so its error names both decoders. Seek readers are reused within a process (the last 8 files, and
    fewer when they are large: an open container and its timestamp index), and only in the process that opened
    them: after a fork, a DataLoader worker opens its own, never sharing a parent's file offset.
    """
    if backend not in ("auto", "seek"):
        return VideoReader(path, backend=backend)
    key = (os.getpid(), str(path))
    reader = _SEEK_READERS.pop(key, None)
    if reader is None:
        for stale in [k for k in _SEEK_READERS if k[0] != key[0]]:
            _SEEK_READERS.pop(stale)  # the parent's: dropped here, never used nor closed (its fd is the parent's)
        try:
            reader = SeekReader(path)
        except UserError:
            if backend == "seek":
                raise
            return VideoReader(path, backend="auto")
        while _SEEK_READERS and (len(_SEEK_READERS) >= _SEEK_READERS_MAX or reader.pixels + sum(
                r.pixels for r in _SEEK_READERS.values()) > _SEEK_PIXELS_MAX):
            _SEEK_READERS.pop(next(iter(_SEEK_READERS))).close()
    _SEEK_READERS[key] = reader  # most recently used last
    return reader
