"""Plots of the article's curves with its example points, and reliability diagrams.

Needs matplotlib (the 'plot' extra), imported only when a plot is drawn.  Each function
draws with the library's own functions, writes the image in the format the file's suffix
names (:data:`IMAGE_FORMATS`: PNG, PDF, SVG, JPEG, EPS, PS, TIFF), atomically (to a
temporary name, then renamed), and returns the path.  The title and the description name the
curves and the labelled points, so a program can check what a file shows: in a PNG as its
``Title`` and ``Description`` text chunks, in a PDF as ``Title`` and ``Subject``, in an SVG
as ``<dc:title>`` and ``<dc:description>``, in PS and EPS as the ``%%Title`` comment (JPEG and
TIFF carry none: matplotlib writes no metadata into them).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

import crossentropy as ce
from crossentropy.extras import install_hint

__all__ = ["IMAGE_FORMATS", "PLOTS", "image_format", "plot_bce", "plot_cross_entropy",
           "plot_sigmoid", "plot_softmax", "reliability_before_after", "reliability_diagram",
           "reliability_from_report"]

#: The suffixes an output file may have, and the matplotlib format each one names (JPEG and
#: TIFF are written by Pillow, a dependency of matplotlib).
IMAGE_FORMATS = {"png": "png", "pdf": "pdf", "svg": "svg", "jpg": "jpeg", "jpeg": "jpeg",
                 "eps": "eps", "ps": "ps", "tif": "tiff", "tiff": "tiff"}

_SUFFIXES = ".png, .pdf, .svg, .jpg (.jpeg), .eps, .ps, .tif (.tiff)"


def image_format(path: str) -> str:
    """The image format that the suffix of `path` names (any case); ValueError for a file
    name without one of the suffixes of :data:`IMAGE_FORMATS`.

    >>> image_format("figures/sigmoid.png"), image_format("fig.JPG"), image_format("r.tif")
    ('png', 'jpeg', 'tiff')
    """
    suffix = os.path.splitext(os.path.basename(path))[1]
    fmt = IMAGE_FORMATS.get(suffix[1:].lower())
    if fmt is None:
        what = (f"cannot write a {suffix!r} image; the suffix picks the image format"
                if suffix else "the file name needs a suffix to pick the image format")
        raise ValueError(f"{path}: {what}: one of {_SUFFIXES}")
    return fmt


def _metadata(fmt: str, title: str, description: str) -> dict[str, str] | None:
    """The title and description in the fields that format has for them (None: it has none
    that matplotlib writes)."""
    software = f"crossentropy {ce.__version__}"
    if fmt == "png":
        return {"Title": title, "Description": description, "Software": software}
    if fmt == "pdf":
        return {"Title": title, "Subject": description, "Creator": software}
    if fmt == "svg":
        return {"Title": title, "Description": description, "Creator": software}
    if fmt in ("eps", "ps"):
        # matplotlib's PostScript writer takes only a Creator (its %%Title is the file name,
        # and none when it writes to an open file, as here)
        return {"Creator": software}
    return None


def _figure(ncols: int = 1, width: float = 7.0) -> tuple[Any, Any]:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(f"plotting needs matplotlib: {install_hint('plot')}") from None
    fig = Figure(figsize=(width, 4.5), dpi=100, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _save(fig: Any, path: str, title: str, points: Sequence[str], dpi: int) -> str:
    import logging

    fmt = image_format(path)
    tmp = f"{path}.tmp{os.getpid()}"
    # The PostScript writer logs that it draws the translucent fills (the grid, the shaded
    # gaps) opaque: a note on standard error after a successful command, so kept quiet.
    ps_log = logging.getLogger("matplotlib.backends.backend_ps")
    level = ps_log.level
    try:
        ps_log.setLevel(logging.ERROR)
        with open(tmp, "wb") as f:  # a file object: no temporary name inside the file
            fig.savefig(f, format=fmt, dpi=dpi,
                        metadata=_metadata(fmt, title, "; ".join(points)))
        os.replace(tmp, path)
    except OSError as exc:  # name the file asked for, not the temporary one
        raise OSError(exc.errno, exc.strerror, path) from None
    finally:
        ps_log.setLevel(level)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def plot_sigmoid(path: str, *, dpi: int = 100) -> str:
    """The sigmoid with the article's x = 1, 9, 424.5, -3, -243 marked and labelled.

    Left: sigmoid(x) on [-10, 10] with x = 1, 9, -3.  Right: log10 of sigmoid(x) and of
    1 - sigmoid(x) = sigmoid(-x) on [-300, 450], where x = 424.5 and -243 live.
    """
    fig, (a, b) = _figure(2, 11.0)
    x = np.linspace(-10, 10, 801)
    a.plot(x, ce.sigmoid(x), color="C0", label="sigmoid(x)")
    labels = []
    # label offsets (points) that keep each label off the curve: above-left of x = 1 and
    # x = -3 (where the curve is lower), below-left of x = 9 (where it is flat at 1)
    offsets = {1.0: (-62, 10), 9.0: (-60, -28), -3.0: (-40, 22)}
    for xi in (1.0, 9.0, -3.0):
        s = float(ce.sigmoid(xi))
        a.plot([xi], [s], "o", color="C3")
        a.annotate(f"x = {xi:g}\nσ = {s:.4g}", (xi, s), textcoords="offset points",
                   xytext=offsets[xi], fontsize=9)
        labels.append(f"sigmoid({xi:g}) = {s:.6g}")
    a.set_xlabel("x")
    a.set_ylabel("sigmoid(x)")
    a.set_title("sigmoid(x) = 1 / (1 + e^-x)")
    a.grid(alpha=0.3)
    xw = np.linspace(-300, 450, 1501)
    b.plot(xw, np.asarray(ce.log_sigmoid(xw)) / np.log(10), color="C0", label="log10 σ(x)")
    b.plot(xw, np.asarray(ce.log_sigmoid(-xw)) / np.log(10), color="C1",
           label="log10 (1 - σ(x)) = log10 σ(-x)")
    for xi in (424.5, -243.0):
        s, sc = float(ce.sigmoid(xi)), float(ce.sigmoid(-xi))
        y = float(ce.log_sigmoid(xi if xi < 0 else -xi)) / np.log(10)
        text = (f"x = {xi:g}: σ = {s:.3g}" if xi < 0 else f"x = {xi:g}: 1 - σ = {sc:.3g}")
        b.plot([xi], [y], "o", color="C3")
        b.annotate(text, (xi, y), textcoords="offset points",
                   xytext=(-190 if xi > 0 else 10, 10), fontsize=9,
                   arrowprops={"arrowstyle": "->"} if xi > 0 else None)
        labels.append(f"sigmoid({xi:g}) = {s:.6g}, 1 - sigmoid = {sc:.6g}")
    b.set_xlabel("x")
    b.set_ylabel("log10 of the probability")
    b.set_title("the tails: σ(-243) ≈ 2.93e-106, not 2.99e-98")
    b.legend(fontsize=8)
    b.grid(alpha=0.3)
    return _save(fig, path, "sigmoid", labels, dpi)


def plot_softmax(path: str, *, dpi: int = 100) -> str:
    """Bars of softmax([3, 0.6, 6.3]) and of the cat image's softmax([9.8, 3.7, 0.2])."""
    fig, axes = _figure(2, 10.0)
    labels = []
    for ax, z, names, title in (
        (axes[0], [3.0, 0.6, 6.3], ["Z1 = 3", "Z2 = 0.6", "Z3 = 6.3"], "softmax([3, 0.6, 6.3])"),
        (axes[1], [9.8, 3.7, 0.2], ["cat 9.8", "dog 3.7", "bird 0.2"],
         "cat image: softmax([9.8, 3.7, 0.2])"),
    ):
        p = np.asarray(ce.softmax(z))
        bars = ax.bar(names, p, color=["C0", "C1", "C2"])
        for bar, pj, nm in zip(bars, p.tolist(), names, strict=True):
            ax.annotate(f"{pj:.6g}", (bar.get_x() + bar.get_width() / 2, pj),
                        ha="center", va="bottom", fontsize=9)
            labels.append(f"{title}: {nm} -> {pj:.6g}")
        ax.set_ylim(0, 1.1)
        ax.set_ylabel("probability")
        ax.set_title(title)
    return _save(fig, path, "softmax", labels, dpi)


def plot_bce(path: str, *, dpi: int = 100) -> str:
    """Binary cross-entropy in bits against p, for y = 1 and y = 0, with the cat and dog."""
    fig, (a,) = _figure(1, 7.0)
    p = np.linspace(1e-4, 1 - 1e-4, 999)
    a.plot(p, ce.binary_cross_entropy(p, np.ones_like(p), base=2, reduction="none"),
           color="C0", label="y = 1: -log2 p")
    a.plot(p, ce.binary_cross_entropy(p, np.zeros_like(p), base=2, reduction="none"),
           color="C1", label="y = 0: -log2(1 - p)")
    labels = []
    for name, pi, yi, off in (("cat", 0.997694, 1.0, (-150, 30)), ("dog", 0.002237, 0.0, (10, 30))):
        loss = float(ce.binary_cross_entropy(pi, yi, base=2))
        # the loss is about 0.003 bits, on the axis: drawn over it, not half cut off
        a.plot([pi], [loss], "o", color="C3", clip_on=False, zorder=5)
        a.annotate(f"{name}: p = {pi}, y = {yi:g}\nloss = {loss:.4g} bits", (pi, loss),
                   textcoords="offset points", xytext=off, fontsize=9,
                   arrowprops={"arrowstyle": "->"})
        labels.append(f"{name}: p = {pi}, y = {yi:g}, loss = {loss:.6g} bits")
    a.set_xlabel("predicted probability p")
    a.set_ylabel("loss (bits)")
    a.set_title("binary cross-entropy")
    a.set_ylim(0, 14)
    a.legend()
    a.grid(alpha=0.3)
    return _save(fig, path, "binary cross-entropy", labels, dpi)


def plot_cross_entropy(path: str, *, dpi: int = 100) -> str:
    """-log2 q of the true class, with the cat image's three probabilities marked."""
    fig, (a,) = _figure(1, 7.0)
    q = np.logspace(-5, 0, 600)
    a.semilogx(q, -np.log2(q), color="C0", label="-log2 q (true class)")
    z = [9.8, 3.7, 0.2]
    probs = np.asarray(ce.softmax(z))
    labels = []
    for j, (name, off) in enumerate((("cat", (-250, 22)), ("dog", (10, 15)),
                                     ("bird", (10, 15)))):
        loss = float(ce.cross_entropy(z, j, base=2))
        a.plot([probs[j]], [loss], "o", color="C3")
        a.annotate(f"true class {name}: q = {probs[j]:.4g}\nH = {loss:.4g} bits",
                   (probs[j], loss), textcoords="offset points", xytext=off, fontsize=9,
                   arrowprops={"arrowstyle": "->"} if name == "cat" else None)
        labels.append(f"if the image were a {name}: q = {probs[j]:.6g}, H = {loss:.6g} bits")
    a.set_xlabel("predicted probability of the true class q")
    a.set_ylabel("cross-entropy (bits)")
    a.set_title("categorical cross-entropy, scores [9.8, 3.7, 0.2]")
    a.legend()
    a.grid(alpha=0.3)
    return _save(fig, path, "cross-entropy", labels, dpi)


def _num(v: Any) -> float:
    """A report value as a float: null (undefined, from a saved JSON) and "nan" are NaN."""
    if v is None:
        return float("nan")
    return float(v)


def _reliability_panel(a: Any, h: Any, report: dict[str, Any], title: str) -> list[str]:
    """Accuracy against confidence per bin on `a`, the per-bin weight histogram on `h`."""
    bins = report["reliability"]
    lo = np.array([_num(b["lo"]) for b in bins])
    hi = np.array([_num(b["hi"]) for b in bins])
    acc = np.array([_num(b["accuracy"]) for b in bins])
    conf = np.array([_num(b["confidence"]) for b in bins])
    weight = np.array([_num(b["weight"]) for b in bins])
    keep = np.isfinite(acc)
    width = hi - lo
    a.bar(lo[keep], acc[keep], width=width[keep], align="edge", color="C0", edgecolor="k",
          label="observed accuracy")
    # the gap from the accuracy to the mean confidence, hatched so that it reads the same
    # above the bar (over-confident) and inside it (under-confident)
    a.bar(lo[keep], conf[keep] - acc[keep], bottom=acc[keep], width=width[keep], align="edge",
          facecolor=(0.84, 0.15, 0.16, 0.25), edgecolor="C3", hatch="//", linewidth=0.8,
          label="gap to mean confidence")
    a.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    a.set_xlim(0, 1)
    a.set_ylim(0, 1)
    multiclass = report["task"] == "multiclass"
    a.set_ylabel("accuracy" if multiclass else "fraction positive")
    a.set_title(title)
    a.legend(loc="upper left", fontsize=8)
    a.tick_params(labelbottom=False)
    total = float(np.sum(weight))
    share = weight / total if total else weight
    h.bar(lo, share, width=width, align="edge", color="C7", edgecolor="k")
    for x, sh, n in zip(lo + width / 2, share, weight, strict=True):
        if n > 0:
            h.annotate(f"{n:.0f}" if n == round(n) else f"{n:.3g}", (x, sh), ha="center",
                       va="bottom", fontsize=7)
    h.set_xlim(0, 1)
    h.set_ylim(0, max(float(np.max(share)) * 1.3, 1e-9) if share.size else 1)
    h.set_xlabel("top-class confidence" if multiclass else "predicted P(label = 1)")
    h.set_ylabel("share of rows" if multiclass else "share of entries")
    return [f"bin [{_num(b['lo']):.3g}, {_num(b['hi']):.3g}): confidence "
            f"{_num(b['confidence']):.4g}, accuracy {_num(b['accuracy']):.4g}, weight "
            f"{_num(b['weight']):g}" for b in bins if _num(b["weight"]) > 0]


def _reliability_figure(ncols: int) -> tuple[Any, Any]:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(f"plotting needs matplotlib: {install_hint('plot')}") from None
    fig = Figure(figsize=(5.5 * ncols, 6.0), dpi=100, layout="constrained")
    axes = fig.subplots(2, ncols, squeeze=False, sharex="col",
                        gridspec_kw={"height_ratios": [3, 1]})
    return fig, axes


def reliability_diagram(report: dict[str, Any], path: str, *, dpi: int = 100) -> str:
    """The reliability diagram of a ``score`` report: accuracy against confidence per bin,
    above a histogram of the share of rows (their weight) in each bin, counts labelled."""
    fig, axes = _reliability_figure(1)
    ece = _num(report["ece"])
    points = _reliability_panel(axes[0, 0], axes[1, 0], report,
                                f"reliability: ECE = {ece:.4f} ({report['rows']} rows)")
    return _save(fig, path, f"reliability diagram, ECE = {ece:.6g}", points, dpi)


def reliability_before_after(report: dict[str, Any], path: str, *, dpi: int = 100) -> str:
    """Reliability diagrams before and after calibration, side by side, from a
    ``calibrate`` report (its ``before`` and ``after`` score reports)."""
    fig, axes = _reliability_figure(2)
    if report.get("method") == "temperature":
        what = f"T = {_num(report['temperature']):.4g}"
    else:
        a, b = report["platt"]["a"], report["platt"]["b"]
        what = (f"Platt a = {_num(a[0]):.4g}, b = {_num(b[0]):.4g}" if len(a) == 1
                else f"Platt scaling, {len(a)} labels")
    points = []
    for col, key, head in ((0, "before", "before"), (1, "after", "after")):
        rep = report[key]
        ece = _num(rep["ece"])
        ce_ = _num(rep["cross_entropy"])
        title = f"{head}: ECE = {ece:.4f}, CE = {ce_:.4g} {report.get('unit', '')}"
        points += [f"{key} {p}" for p in _reliability_panel(axes[0, col], axes[1, col], rep,
                                                            title)]
    fig.suptitle(f"{report.get('applied_to', report.get('file', ''))}: calibration, {what}")
    eb, ea = _num(report["before"]["ece"]), _num(report["after"]["ece"])
    return _save(fig, path, f"reliability before/after, ECE {eb:.6g} -> {ea:.6g}", points, dpi)


def reliability_from_report(report_path: str, path: str, *, dpi: int = 100) -> str:
    """Draw the reliability diagram of a saved JSON report: a ``calibrate`` report gives
    the before/after figure, a ``score`` report the single diagram."""
    import json

    try:
        with open(report_path, encoding="utf-8") as f:
            report = json.load(f)
    except ValueError as exc:
        raise ValueError(f"{report_path}: not a JSON report: {exc}") from None
    if not isinstance(report, dict):
        raise ValueError(f"{report_path}: not a score or calibrate report")
    if "before" in report and "after" in report:
        return reliability_before_after(report, path, dpi=dpi)
    if "reliability" in report and "task" in report:
        return reliability_diagram(report, path, dpi=dpi)
    raise ValueError(f"{report_path}: not a score or calibrate report (no 'reliability' "
                     "bins)")


PLOTS = {"sigmoid": plot_sigmoid, "softmax": plot_softmax, "bce": plot_bce,
         "cross-entropy": plot_cross_entropy}
