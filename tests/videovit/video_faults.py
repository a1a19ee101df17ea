"""Real faults for video tests: a truncated mp4 whose index sits at the front ("faststart")."""

from __future__ import annotations

from pathlib import Path

__all__ = ["truncate_faststart"]


def truncate_faststart(src: Path, dst: Path, keep: float = 0.5) -> int:
    """Remux ``src`` to ``dst`` with its index (``moov``) first, then cut the file after ``keep`` of its frames.

    The cut falls on a packet boundary, so every frame left decodes and the file opens as a shorter video: only its
    index still lists every frame (what an interrupted download of a web-optimised mp4 looks like).

    Returns:
        The number of frames left in ``dst``.
    """
    import av

    full = dst.with_name(dst.name + ".full.mp4")
    with av.open(str(src)) as inp, av.open(str(full), "w", options={"movflags": "faststart"}) as out:
        stream = inp.streams.video[0]
        target = out.add_stream_from_template(stream)
        for packet in inp.demux(stream):
            if packet.dts is None:  # the flush packet
                continue
            packet.stream = target
            out.mux(packet)
    data = full.read_bytes()
    with av.open(str(full)) as c:
        packets = [(p.pos, p.size) for p in c.demux(c.streams.video[0]) if p.size]
    full.unlink()
    assert data.index(b"moov") < data.index(b"mdat"), "faststart remux did not move the index first"
    left = max(1, int(len(packets) * keep))
    pos, size = packets[left - 1]
    dst.write_bytes(data[:pos + size])
    return left
