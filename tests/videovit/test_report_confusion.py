"""videovit.report.plot_confusion stays readable and bounded for Kinetics-400-sized class lists."""

import numpy as np
from PIL import Image

from videovit.report import MAX_CONFUSION_CLASSES, most_confused, plot_confusion


def _confusion(k, confused):
    cm = np.diag(np.full(k, 5))
    for a, b in confused:  # a true class predicted as b, 3 times
        cm[a, b] += 3
    return cm


def test_most_confused_picks_the_classes_with_errors():
    k = 400
    pairs = [(i, i + 1) for i in range(0, 2 * MAX_CONFUSION_CLASSES, 4)]  # 20 pairs = 40 classes with errors
    keep = most_confused(_confusion(k, pairs))
    assert keep == sorted({c for p in pairs for c in p})
    assert most_confused(np.eye(7)) == list(range(7))


def test_plot_confusion_400_classes_is_bounded(tmp_path):
    k = 400
    cm = _confusion(k, [(10, 390), (200, 3)])
    out = plot_confusion(cm, [f"class {i}" for i in range(k)], tmp_path / "confusion.png")
    w, h = Image.open(out).size
    assert w * h < 4000 * 4000, (w, h)  # the full 400 x 400 layout would be ~18000 px square
    small = plot_confusion(_confusion(5, [(0, 1)]), list("abcde"), tmp_path / "small.png")
    assert Image.open(small).size[0] < w
