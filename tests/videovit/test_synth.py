"""The synthetic motion set: classes differ only in motion, and the motion has the class's direction."""

from __future__ import annotations

import numpy as np
import pytest

from videovit.data.synth import MOTIONS, SynthSpec, render_video


def _shift(a: np.ndarray, b: np.ndarray):
    """Integer (dx, dy) that best maps frame ``a`` onto frame ``b`` on the torus."""
    errs = {(dx, dy): np.abs(np.roll(a, (dy, dx), (0, 1)) - b).mean() for dx in range(-5, 6) for dy in range(-5, 6)}
    return min(errs, key=errs.get)


def test_same_seed_same_first_frame_for_every_class():
    videos = [render_video(c, 6, 32, np.random.default_rng(5)) for c in range(len(MOTIONS))]
    for v in videos[1:]:
        assert np.array_equal(v[0], videos[0][0])  # the scene does not depend on the class
    assert not np.array_equal(videos[0][3], videos[1][3])  # only the motion does


@pytest.mark.parametrize("label", range(4))
def test_translation_direction(label):
    name, mx, my, _ = MOTIONS[label]
    v = render_video(label, 4, 32, np.random.default_rng(label)).astype(float)
    dx, dy = _shift(v[0], v[1])
    assert np.sign(dx) == np.sign(mx) and np.sign(dy) == np.sign(my), name


def test_per_frame_statistics_match_across_classes():
    """Mean brightness and the shape's area fraction in frame 5 do not depend on the class (within noise)."""
    stats = []
    for label in (0, 1, 4):
        frames = np.stack([render_video(label, 6, 32, np.random.default_rng(100 + i))[5] for i in range(40)])
        bright = frames.mean(-1) > 150  # (N, H, W)
        stats.append((frames.mean(), bright.mean()))
    for s in stats[1:]:
        assert abs(s[0] - stats[0][0]) < 8 and abs(s[1] - stats[0][1]) < 0.03


def test_spec_validation():
    with pytest.raises(ValueError, match="classes=11"):
        SynthSpec(classes=11)
    with pytest.raises(ValueError, match="size=33"):
        SynthSpec(size=33)
