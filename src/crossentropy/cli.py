"""The ``crossentropy`` command: ``explain``, ``plot`` and ``score``.

``crossentropy explain`` works with NumPy alone (plain-text tables; rich tables when the
'cli' extra is installed); ``plot`` needs matplotlib (the 'plot' extra); ``score`` reads
CSV, .npy and .npz with NumPy alone and Parquet with pyarrow (the 'io' extra).  Each
command says which extra to install when one is missing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO

__all__ = ["build_parser", "main"]

_EXPLAIN_FORMATS = ("table", "rich", "text", "markdown", "latex", "json")

_MAIN_EPILOG = """\
commands:
  explain   the article's arithmetic step by step, or any sigmoid, softmax,
            cross-entropy or binary cross-entropy you give it
  plot      plots (PNG, PDF, SVG, JPEG, ...) of the sigmoid, softmax, binary and
            categorical cross-entropy, with the article's example points labelled
  score     cross-entropy, perplexity, accuracy, per-class breakdown and
            calibration (ECE, reliability diagram) of a file of predictions
  calibrate fit a temperature (or Platt scaling) to a file of predictions, report
            the metrics before and after, write the calibrated predictions
  warm-up   compile the fast CPU kernels now (once per install: about a minute of CPU),
            or with --status say where they stand

examples:
  crossentropy explain                       # the article's whole worked example
  crossentropy explain sigmoid 1 9 424.5 -3 -243
  crossentropy explain cross-entropy --scores 9.8 3.7 0.2 --target cat \\
      --classes cat,dog,bird --base 2 --format markdown
  crossentropy plot sigmoid -o sigmoid.png
  crossentropy score predictions.csv --label label --base 2 --json

Run 'crossentropy COMMAND --help' for each command's options.
optional extras, installed from a clone of the repository (not on PyPI yet):
  pip install ".[cli]" (rich tables), ".[plot]" (matplotlib), ".[io]" (pyarrow, Parquet)
"""

_EXPLAIN_EPILOG = """\
With no topic, prints the article's whole worked example in order: the sigmoid of
x = 1, 9, 424.5, -3, -243; the softmax of [3, 0.6, 6.3]; the cat/dog/bird network
(scores [9.8, 3.7, 0.2], their softmax, one-hot targets, cross-entropy in bits);
binary cross-entropy for the cat and the dog.  Every number is recomputed, and each
number the article printed is listed next to the true value (ok, TRUNCATED, WRONG).

topics:
  sigmoid X [X ...]          sigmoid of each x, with the stable branch taken
  softmax Z [Z ...]          softmax: the max subtracted, each exp, the sum, log p
  cross-entropy              H(p, q) = -sum p log q, term by term
  bce                        binary cross-entropy -(y log p + (1-y) log(1-p))
  article                    the article's worked example (the default)

formats (--format): table (rich on a terminal when installed, else plain text),
  rich, text, markdown, latex, json

examples:
  crossentropy explain softmax 3 0.6 6.3 --format latex
  crossentropy explain cross-entropy --scores 9.8 3.7 0.2 --target cat \\
      --classes cat,dog,bird --base 2
  crossentropy explain bce --prob 0.997694 0.002237 --label 1 0 --base 2
  crossentropy explain bce --logit 40 --label 0
"""

_SCORE_EPILOG = """\
input files (the format comes from the suffix, or --file-format):
  .csv/.tsv   a header line of column names, then one row per sample
  .parquet    columns as in CSV (needs pyarrow: the 'io' extra, see 'crossentropy --help')
  .npy        an (N, C) array of predictions; labels in their own .npy (--label FILE)
  .npz        arrays by key: predictions (--columns KEY; default probs/logits/...),
              labels (--label KEY; default label/labels/y/target), weights (--weight KEY)

columns (CSV and Parquet): --label names the label column (default: the column called
label, labels, y, target or class); the prediction columns are all the others unless
--columns selects them (names, 0-based indices, ranges a:b, globs like 'p_*', comma-separated).
Labels are class indices (0-based) or class names (the prediction column names, or --classes).

what it prints: cross-entropy (--base: nats by default, 2 for bits), perplexity
exp(mean cross-entropy in nats), accuracy, top-k accuracy (--top-k), Brier score,
expected calibration error over --bins equal-width confidence bins (confidence 1 in the
last bin; empty bins add nothing), the same over equal-mass bins (adaptive ECE), the
maximum calibration error (MCE), the classwise ECE, and a per-class table (support,
recall, precision, mean cross-entropy = NLL per class).  With --multilabel: binary
cross-entropy per label against 0/1 target columns (--targets), accuracy at 0.5,
exact-match ratio.  In JSON an undefined value (an empty bin's accuracy) is null.

The file is read in chunks (constant memory, any size).  Malformed input (a missing
column, a non-numeric cell, probabilities outside [0, 1] or rows not summing to 1, an
unknown label) stops with an error naming the file, line (or row group), and column, and
exit status 1; nothing is written then.

examples:
  crossentropy score preds.csv                      # columns cat,dog,bird,label
  crossentropy score preds.csv --logits --base 2 --reliability rel.png
  crossentropy score preds.parquet --columns 'p_*' --label y --weight w --json
  crossentropy score logits.npy --label labels.npy --logits
  crossentropy score tags.csv --multilabel --columns 'p_*' --targets 'y_*'
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=100)


#: A number written with a leading minus: -3, -1.5, -.5, -1e9, -1E+9, -inf, -nan.  argparse
#: itself takes only -3 and -1.5 for numbers, and anything else that starts with '-' for an
#: option ("-inf: unrecognized argument").  None of our options looks like a number.
_NEGATIVE_NUMBER = re.compile(
    r"^-(?:(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:e[-+]?\d+)?|inf|infinity|nan)$",
    re.IGNORECASE)


def _one_line(text: str) -> str:
    """`text` with every line break and other unprintable character escaped (as repr does):
    an error message is always exactly one line."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


class _Parser(argparse.ArgumentParser):
    """argparse with negative numbers of every spelling taken as values, and usage errors
    printed as one line (``PROG: error: MESSAGE``) instead of the usage block."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # argparse asks this pattern whether '-x' is a negative number rather than an option
        self._negative_number_matcher = _NEGATIVE_NUMBER

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see '{self.prog} --help')\n")


def _fmt_parent(default: Any) -> _Parser:
    p = _Parser(add_help=False)
    p.add_argument("--format", "-f", choices=_EXPLAIN_FORMATS, default=default,
                   help="output format (default: table: rich on a terminal if installed, "
                        "else plain text)")
    p.add_argument("--output", "-o", metavar="FILE",
                   default=None if default == "table" else default,
                   help="write to FILE instead of standard output")
    return p


def _base_arg(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--base", "-b", default=default, metavar="B",
                   help=f"log base: e (nats), 2 (bits), 10, or any positive number other "
                        f"than 1 (default: {default})")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``crossentropy`` command (all subcommands)."""
    from crossentropy import __version__

    parser = _Parser(
        prog="crossentropy",
        description="Sigmoid, softmax and cross-entropy, worked by hand and applied to files.",
        epilog=_MAIN_EPILOG, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"crossentropy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    # ----------------------------------------------------------------- explain
    ex = sub.add_parser(
        "explain", help="the article's arithmetic, step by step, for any input",
        description="Work sigmoid, softmax and cross-entropy out step by step, as the "
                    "article does by hand: every intermediate, and a note wherever a "
                    "numerically stable form is used and why.",
        epilog=_EXPLAIN_EPILOG, formatter_class=_Formatter, parents=[_fmt_parent("table")])
    ex.set_defaults(topic="article")
    topics = ex.add_subparsers(dest="topic", metavar="TOPIC")
    leaf = _fmt_parent(argparse.SUPPRESS)
    topics.add_parser("article", help="the article's whole worked example (the default)",
                      parents=[leaf], formatter_class=_Formatter,
                      description="The article's worked example, every number checked.")
    sg = topics.add_parser("sigmoid", help="sigmoid of each X", parents=[leaf],
                           formatter_class=_Formatter,
                           description="sigmoid(x) = 1 / (1 + e^-x) for each x, computed with "
                                       "the branch that cannot overflow: 1 / (1 + e^-x) for "
                                       "x >= 0, e^x / (1 + e^x) for x < 0.",
                           epilog="example: crossentropy explain sigmoid 1 9 424.5 -3 -243")
    sg.add_argument("x", nargs="+", type=float, metavar="X", help="the inputs")
    sm = topics.add_parser("softmax", help="softmax of the scores Z", parents=[leaf],
                           formatter_class=_Formatter,
                           description="softmax(z)_j = e^(z_j - m) / sum e^(z - m) with "
                                       "m = max z: each exponential, the sum, p and log p.",
                           epilog="example: crossentropy explain softmax 3 0.6 6.3")
    sm.add_argument("z", nargs="+", type=float, metavar="Z", help="the scores (logits)")
    sm.add_argument("--names", metavar="A,B,...", help="names of the entries (default z1, z2, ...)")
    cx = topics.add_parser(
        "cross-entropy", aliases=["ce"], parents=[leaf], formatter_class=_Formatter,
        help="categorical cross-entropy H(p, q), term by term",
        description="H(p, q) = -sum_j p_j log q_j: the prediction q is softmax(--scores) or "
                    "--probs; the target p is a class (--target, one-hot) or a distribution "
                    "(--target-probs).",
        epilog="examples:\n"
               "  crossentropy explain cross-entropy --scores 9.8 3.7 0.2 --target cat "
               "--classes cat,dog,bird --base 2\n"
               "  crossentropy explain cross-entropy --probs 0.7 0.2 0.1 --target-probs "
               "0.5 0.5 0")
    pred = cx.add_mutually_exclusive_group(required=True)
    pred.add_argument("--scores", nargs="+", type=float, metavar="Z",
                      help="raw scores (logits); q = softmax(scores)")
    pred.add_argument("--probs", nargs="+", type=float, metavar="Q",
                      help="predicted probabilities (must sum to 1; see --normalize)")
    tg = cx.add_mutually_exclusive_group(required=True)
    tg.add_argument("--target", metavar="CLASS",
                    help="the true class: a name from --classes or a 0-based index")
    tg.add_argument("--target-probs", nargs="+", type=float, metavar="P",
                    help="a target distribution (soft labels), one number per class")
    cx.add_argument("--classes", metavar="A,B,...",
                    help="class names, comma-separated (default 0, 1, 2, ...)")
    cx.add_argument("--normalize", action="store_true",
                    help="divide --probs by their sum first (for rounded probabilities)")
    _base_arg(cx, "e")
    bc = topics.add_parser(
        "bce", aliases=["binary-cross-entropy"], parents=[leaf], formatter_class=_Formatter,
        help="binary cross-entropy of (p, y) pairs",
        description="loss = -(y log p + (1 - y) log(1 - p)) for each pair, from probabilities "
                    "(--prob) or from logits (--logit, p = sigmoid(x)).",
        epilog="examples:\n"
               "  crossentropy explain bce --prob 0.997694 --label 1 --base 2\n"
               "  crossentropy explain bce --prob 0.997694 0.002237 --label 1 0 --base 2\n"
               "  crossentropy explain bce --logit 40 -3 --label 0 1")
    bp = bc.add_mutually_exclusive_group(required=True)
    bp.add_argument("--prob", "--probs", nargs="+", type=float, metavar="P",
                    help="predicted probabilities of label 1")
    bp.add_argument("--logit", "--logits", nargs="+", type=float, metavar="X",
                    help="logits: p = sigmoid(x), computed without forming 1 - p")
    bc.add_argument("--label", "--labels", nargs="+", type=float, required=True, metavar="Y",
                    help="labels in [0, 1], one per prediction")
    bc.add_argument("--names", metavar="A,B,...", help="row names (default 1, 2, ...)")
    _base_arg(bc, "e")

    # ----------------------------------------------------------------- plot
    pl = sub.add_parser(
        "plot", help="plots of the curves, with the article's points labelled",
        formatter_class=_Formatter,
        description="Draw a curve as an image file (PNG, or the format its suffix names; "
                    "needs matplotlib: the 'plot' extra, see 'crossentropy --help'), with the "
                    "article's example points marked and labelled.",
        epilog="what each plot shows:\n"
               "  sigmoid        sigmoid on [-10, 10] with x = 1, 9, -3; and the tails in log10\n"
               "                 with x = 424.5 and -243\n"
               "  softmax        bars of softmax([3, 0.6, 6.3]) and softmax([9.8, 3.7, 0.2])\n"
               "  bce            -log2 p and -log2(1 - p) with the cat and the dog\n"
               "  cross-entropy  -log2 q of the true class with the cat image's q marked\n"
               "  all            all four, into --outdir\n"
               "  reliability    the reliability diagram of a saved score or calibrate JSON\n"
               "                 report (--report), with per-bin counts\n\n"
               "example: crossentropy plot sigmoid -o sigmoid.png")
    pl.add_argument("what", choices=["sigmoid", "softmax", "bce", "cross-entropy", "all",
                                     "reliability"],
                    help="which plot ('reliability': from a saved JSON report, --report)")
    pl.add_argument("--report", metavar="REPORT.json",
                    help="for 'reliability': a JSON report of score (-o) or calibrate "
                         "(--report); a calibrate report gives the before/after figure")
    pl.add_argument("--output", "-o", metavar="FILE.png",
                    help="output file; its suffix picks the format: .png, .pdf, .svg, .jpg, "
                         ".eps, .ps, .tif (default: WHAT.png in --outdir)")
    pl.add_argument("--outdir", default=".", metavar="DIR",
                    help="directory for the default file names (default: .)")
    pl.add_argument("--dpi", type=int, default=100, help="resolution (default: 100)")

    # ----------------------------------------------------------------- warm-up
    wu = sub.add_parser(
        "warm-up", help="compile the fast CPU kernels now, with a progress bar",
        formatter_class=_Formatter,
        description="Compile the numba CPU kernels into numba's on-disk cache now (the first "
                    "time on a machine: about a minute of CPU, spread over the cores), or load "
                    "them when they are compiled already.  Without it the first large call "
                    "starts the compile in the background and runs on the exact NumPy core "
                    "meanwhile.")
    wu.add_argument("--status", action="store_true",
                    help="only say where the compiled kernels stand")

    # ----------------------------------------------------------------- score
    sc = sub.add_parser(
        "score", help="score a file of predictions against labels",
        formatter_class=_Formatter,
        description="Score predictions against labels: cross-entropy, perplexity, accuracy, "
                    "per-class breakdown and calibration, streaming the file in constant "
                    "memory.",
        epilog=_SCORE_EPILOG)
    sc.add_argument("file", metavar="FILE", help="CSV, TSV, Parquet, .npy or .npz")
    sc.add_argument("--logits", action="store_true",
                    help="the columns are logits (scores), not probabilities")
    sc.add_argument("--label", metavar="COL",
                    help="label column (name or index); for .npz a key, for .npy a file")
    sc.add_argument("--columns", metavar="SPEC",
                    help="prediction columns: names, indices, a:b ranges, globs (default: all "
                         "other columns); for .npz the key")
    sc.add_argument("--classes", metavar="A,B,...",
                    help="class names for the prediction columns (default: their names)")
    sc.add_argument("--weight", metavar="COL",
                    help="sample-weight column (for .npz a key, for .npy a file)")
    sc.add_argument("--multilabel", action="store_true",
                    help="independent binary labels: binary cross-entropy per column")
    sc.add_argument("--targets", metavar="SPEC",
                    help="with --multilabel: the 0/1 target columns, paired in order with "
                         "the prediction columns (for .npz a key, for .npy a file)")
    _base_arg(sc, "e")
    sc.add_argument("--bins", type=int, default=15,
                    help="confidence bins for the calibration error (default: 15)")
    sc.add_argument("--reliability", metavar="FILE.png",
                    help="also write a reliability diagram (needs matplotlib; the suffix "
                         "picks the format, as for plot)")
    sc.add_argument("--json", action="store_true", help="print the report as JSON")
    sc.add_argument("--output", "-o", metavar="FILE",
                    help="also write the JSON report to FILE")
    sc.add_argument("--per-class", default="20", metavar="N|all",
                    help="classes shown in the per-class table (default: 20, the ones with "
                         "the highest cross-entropy when there are more); JSON has them all")
    sc.add_argument("--sum-tolerance", type=float, default=1e-3, metavar="TOL",
                    help="probability rows must sum to 1 within TOL (default: 1e-3, for "
                         "rounded probabilities); each row is then divided by its sum")
    sc.add_argument("--delimiter", default=",",
                    help="CSV delimiter, one character; 'tab' or '\\t' for a tab (default: ',', "
                         "a tab for .tsv)")
    sc.add_argument("--file-format", choices=["csv", "parquet", "npy", "npz"],
                    help="read FILE as this format, whatever its suffix")
    sc.add_argument("--chunk-rows", type=int, metavar="N",
                    help="rows per chunk (default: about a million numbers per chunk)")
    prog = sc.add_mutually_exclusive_group()
    prog.add_argument("--progress", dest="progress", action="store_true", default=None,
                      help="show a progress bar on standard error (default: only on a terminal)")
    prog.add_argument("--no-progress", dest="progress", action="store_false",
                      help="never show a progress bar")
    sc.add_argument("--top-k", metavar="K[,K...]",
                    help="also report top-k accuracy for each K (e.g. 1,5)")
    sc.add_argument("--max-footer-mb", type=float, default=20.0, metavar="MB",
                    help="largest Parquet footer that pyarrow decodes whole (default: 20; "
                         "it needs ~10x that); a larger one is read row group by row group")

    # ----------------------------------------------------------------- calibrate
    from crossentropy.score.command import add_calibrate_parser

    add_calibrate_parser(sub, _Formatter, _base_arg)
    return parser


# --------------------------------------------------------------------------- helpers


class _UsageError(Exception):
    pass


def _n(k: int, word: str) -> str:
    """'1 label', '2 labels', '1 entry', '3 entries', '2 classes'."""
    if k == 1:
        return f"1 {word}"
    if word.endswith("y"):
        return f"{k} {word[:-1]}ies"
    return f"{k} {word}{'es' if word.endswith('s') else 's'}"


def _split_names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",")]
    if any(not n for n in names):
        raise _UsageError(f"empty name in {text!r}")
    return names


def _base(text: str) -> float | None:
    from crossentropy.explain.steps import parse_base

    try:
        return parse_base(text)
    except (ValueError, TypeError) as exc:
        raise _UsageError(str(exc)) from None


def _check_unit_interval(values: Sequence[float], option: str, hint: str = "") -> None:
    """Each value in [0, 1] (NaN is not): a one-line error naming the option and position."""
    for i, v in enumerate(values):
        if not 0.0 <= v <= 1.0:
            pos = f" (value {i + 1} of {len(values)})" if len(values) > 1 else ""
            raise _UsageError(f"{option} {v!r}{pos} is not in [0, 1]{hint}")


def _check_sums_to_one(values: Sequence[float], option: str, hint: str) -> None:
    # fsum is exact: a sum of decimals meant to be 1 lands within a few ulps of 1
    s = math.fsum(values)
    if abs(s - 1.0) > 16 * 2.0**-52 * max(len(values), 16):
        raise _UsageError(f"{option} sum to {s!r}, not 1; a distribution must sum to 1{hint}")


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:  # name the file asked for, not the temporary one
        raise OSError(exc.errno, exc.strerror, path) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# --------------------------------------------------------------------------- explain


def _explain_tables(args: argparse.Namespace) -> list[Any]:
    from crossentropy.explain import (
        article_tables,
        bce_table,
        cross_entropy_table,
        sigmoid_table,
        softmax_table,
    )

    topic = args.topic or "article"
    if topic == "article":
        return article_tables()
    if topic == "sigmoid":
        return [sigmoid_table(args.x)]
    if topic == "softmax":
        names = _split_names(args.names)
        if names is not None and len(names) != len(args.z):
            raise _UsageError(f"--names gives {_n(len(names), 'name')} for "
                              f"{_n(len(args.z), 'score')}")
        return [softmax_table(args.z, names)]
    if topic in ("cross-entropy", "ce"):
        pred = args.scores if args.scores is not None else args.probs
        c = len(pred)
        classes = _split_names(args.classes)
        if classes is not None and len(classes) != c:
            raise _UsageError(f"--classes names {_n(len(classes), 'class')} but the "
                              f"prediction has {_n(c, 'entry')}")
        if args.target is not None:
            names = classes or [str(j) for j in range(c)]
            t = args.target.strip()
            if t in names:
                idx = names.index(t)
            else:
                try:
                    idx = int(t)
                except ValueError:
                    idx = -1
                if not 0 <= idx < c:
                    raise _UsageError(f"--target {t!r} is not one of the classes "
                                      f"({', '.join(names)}) nor an index 0..{c - 1}")
            target = [1.0 if j == idx else 0.0 for j in range(c)]
        else:
            target = list(args.target_probs)
            if len(target) != c:
                raise _UsageError(f"--target-probs has {_n(len(target), 'entry')}, the "
                                  f"prediction {c}")
            _check_unit_interval(target, "--target-probs")
            _check_sums_to_one(target, "--target-probs", " (a one-hot target: --target CLASS)")
        base = _base(args.base)
        if args.probs is not None:
            _check_unit_interval(args.probs, "--probs", " (for scores use --scores)")
            if args.normalize and not math.fsum(args.probs) > 0.0:
                raise _UsageError("--normalize needs --probs with a positive sum")
            if not args.normalize:
                _check_sums_to_one(args.probs, "--probs", " (pass --normalize to divide by "
                                   "the sum, or give --scores)")
        return [cross_entropy_table(target, scores=args.scores, probs=args.probs,
                                    classes=classes, base=base, normalize=args.normalize)]
    if topic in ("bce", "binary-cross-entropy"):
        pred = args.prob if args.prob is not None else args.logit
        if len(args.label) != len(pred):
            raise _UsageError(f"{_n(len(pred), 'prediction')} but {_n(len(args.label), 'label')} "
                              "(--label needs one per prediction)")
        names = _split_names(args.names)
        if names is not None and len(names) != len(pred):
            raise _UsageError(f"--names gives {_n(len(names), 'name')} for "
                              f"{_n(len(pred), 'row')}")
        if args.prob is not None:
            _check_unit_interval(args.prob, "--prob", " (for scores use --logit)")
        _check_unit_interval(args.label, "--label",
                             ": a label is 0, 1, or a soft label between 0 and 1")
        return [bce_table(args.label, probs=args.prob, logits=args.logit, names=names,
                          base=_base(args.base))]
    raise _UsageError(f"unknown topic {topic!r}")  # pragma: no cover - argparse guards it


def _output_checks(outputs: Sequence[str | None] = (),
                   images: Sequence[tuple[str, str | None]] = ()) -> None:
    """Before any work: each output's folder exists; each image's suffix names a format."""
    from crossentropy.score.command import UsageError, check_image_output, check_output

    try:
        for option, path in images:
            if path:
                check_image_output(path, option)
        for path in outputs:
            if path and path != "-":
                check_output(path)
    except UsageError as exc:
        raise _UsageError(str(exc)) from None


def _cmd_explain(args: argparse.Namespace) -> int:
    from crossentropy.explain import render

    try:
        tables = _explain_tables(args)
    except (ValueError, TypeError) as exc:  # the library's own checks of the values given
        raise _UsageError(str(exc)) from None
    _output_checks([args.output])
    if args.output and args.output != "-":
        import io

        buf = io.StringIO()
        render(tables, "text" if args.format == "table" else args.format, buf)
        _atomic_write(args.output, buf.getvalue())
    else:
        render(tables, args.format, sys.stdout)
    return 0


# --------------------------------------------------------------------------- plot


def _cmd_plot(args: argparse.Namespace) -> int:
    from crossentropy.plot import PLOTS

    if args.what == "reliability" or args.report:
        from crossentropy.score.command import UsageError, plot_report

        try:
            print(plot_report(args))
        except UsageError as exc:
            raise _UsageError(str(exc)) from None
        return 0
    names = list(PLOTS) if args.what == "all" else [args.what]
    if args.output and len(names) > 1:
        raise _UsageError("--output names one file; for 'all' use --outdir")
    if not 10 <= args.dpi <= 600:
        raise _UsageError(f"--dpi must be between 10 and 600, got {args.dpi}")
    _output_checks(images=[("--output", args.output)])
    if not args.output:
        os.makedirs(args.outdir, exist_ok=True)  # 'plot all --outdir figures/' makes figures/
    for name in names:
        path = args.output or os.path.join(args.outdir, f"{name}.png")
        PLOTS[name](path, dpi=args.dpi)
        print(path)
    return 0


# --------------------------------------------------------------------------- score


class _Progress:
    """A one-line progress bar on standard error, redrawn at most 5 times a second."""

    def __init__(self, enabled: bool, label: str, stream: TextIO) -> None:
        self.enabled = enabled
        self.label = label
        self.stream = stream
        self.t0 = time.monotonic()
        self.last = 0.0

    def __call__(self, frac: float, rows: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < 0.2 and frac < 1.0:
            return
        self.last = now
        width = 30
        fill = round(frac * width)
        rate = rows / max(now - self.t0, 1e-9)
        self.stream.write(f"\r{self.label} [{'#' * fill}{'.' * (width - fill)}] "
                          f"{frac * 100:5.1f}%  {rows:,} rows  {rate:,.0f} rows/s")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.last:  # erase the bar, if one was drawn
            self.stream.write("\r\033[K")
            self.stream.flush()


def _fmt(v: Any) -> str:
    from crossentropy.explain.model import fmt

    return fmt(v, 6) if isinstance(v, float) else str(v)


def _score_text(rep: dict[str, Any], per_class: str) -> str:
    from crossentropy.explain.render import _grid

    unit = rep["unit"]
    lines = [
        f"file           {rep['file']} ({rep['format']}, {rep['rows']:,} rows, "
        f"{rep['classes']} {'labels' if rep['task'] == 'multilabel' else 'classes'}, "
        f"{rep['input']})",
        f"cross-entropy  {_fmt(rep['cross_entropy'])} {unit}"
        + ("" if unit == "nats" else f"  ({_fmt(rep['cross_entropy_nats'])} nats)")
        + (" per label" if rep["task"] == "multilabel" else ""),
        f"perplexity     {_fmt(rep['perplexity'])}",
        f"accuracy       {_fmt(rep['accuracy'])}",
    ]
    if rep["task"] == "multilabel":
        lines.append(f"exact match    {_fmt(rep['exact_match'])}")
    lines.append(f"ECE            {_fmt(rep['ece'])} ({rep['bins']} bins)")
    from crossentropy.score.command import metric_lines

    lines += metric_lines(rep)
    if "weight_column" in rep:
        lines.append(f"weights        column {rep['weight_column']!r}, total "
                     f"{_fmt(rep['weight_total'])}")
    if rep["infinite_loss_rows"]:
        lines.append(f"infinite loss  {rep['infinite_loss_rows']} rows gave the true label "
                     "probability 0 (infinite loss)")
    per = rep["per_class"]
    if per_class != "0":
        shown = per
        more = 0
        if per_class != "all":
            k = int(per_class)
            if len(per) > k:
                # the k classes with the highest mean cross-entropy; classes with no
                # samples (NaN) last
                shown = sorted(per, key=lambda r: -r["cross_entropy"]
                               if not math.isnan(r["cross_entropy"]) else math.inf)[:k]
                more = len(per) - k
        lines.append("")
        if rep["task"] == "multilabel":
            head = ["label", "positives", "accuracy", f"BCE ({unit})"]
            rows = [[str(r["class"]), _fmt(r["positives"]), _fmt(r["accuracy"]),
                     _fmt(r["cross_entropy"])] for r in shown]
        else:
            head = ["class", "support", "recall", "precision", f"cross-entropy ({unit})"]
            rows = [[str(r["class"]), _fmt(r["support"]), _fmt(r["recall"]),
                     _fmt(r["precision"]), _fmt(r["cross_entropy"])] for r in shown]
        lines += _grid(head, rows)
        if more:
            lines.append(f"... and {more} more (highest cross-entropy shown; --per-class all "
                         "or --json for every class)")
    return "\n".join(lines) + "\n"


#: spellings of the tab for --delimiter (a shell passes '\t' as backslash + t)
_DELIMITERS = {"\\t": "\t", "tab": "\t", "TAB": "\t"}


def _json_safe(v: Any) -> Any:
    """NaN (an undefined value) becomes null; +-inf the strings "inf", "-inf"."""
    from crossentropy.score.command import json_safe

    return json_safe(v)


def _top_k(text: str | None) -> tuple[int, ...]:
    from crossentropy.score.command import UsageError, parse_top_k

    try:
        return parse_top_k(text)
    except UsageError as exc:
        raise _UsageError(str(exc)) from None


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from crossentropy.score.command import UsageError, run_calibrate

    args.delimiter = _DELIMITERS.get(args.delimiter, args.delimiter)
    try:
        return run_calibrate(args, _base(args.base),
                             lambda label: _Progress(True, label, sys.stderr), _atomic_write)
    except UsageError as exc:
        raise _UsageError(str(exc)) from None


def _cmd_score(args: argparse.Namespace) -> int:
    from crossentropy.score import ColumnSpec, ScoreOptions, score_file

    if not 1 <= args.bins <= 10_000:
        raise _UsageError(f"--bins must be between 1 and 10000, got {args.bins}")
    if args.chunk_rows is not None and args.chunk_rows < 1:
        raise _UsageError("--chunk-rows must be at least 1")
    if not (args.sum_tolerance >= 0.0):
        raise _UsageError("--sum-tolerance must be >= 0")
    if args.per_class != "all" and not args.per_class.isdigit():
        raise _UsageError("--per-class takes a number or 'all'")
    if args.targets is not None and not args.multilabel:
        raise _UsageError("--targets goes with --multilabel")
    if args.top_k is not None and args.multilabel:
        raise _UsageError("--top-k is for multi-class files")
    _output_checks([args.output], [("--reliability", args.reliability)])
    if args.reliability:
        from crossentropy.extras import install_hint

        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ImportError(f"--reliability needs matplotlib: {install_hint('plot')}"
                              ) from None
    opts = ScoreOptions(
        columns=ColumnSpec(pred=args.columns, label=args.label, targets=args.targets,
                           weight=args.weight, multilabel=args.multilabel,
                           delimiter=_DELIMITERS.get(args.delimiter, args.delimiter)),
        logits=args.logits, classes=_split_names(args.classes), base=_base(args.base),
        bins=args.bins, sum_tolerance=args.sum_tolerance, chunk_rows=args.chunk_rows,
        file_format=args.file_format, top_k=_top_k(args.top_k),
        max_footer_mb=args.max_footer_mb)
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    bar = _Progress(bool(show), os.path.basename(args.file), sys.stderr)
    try:
        rep = score_file(args.file, opts, bar)
    finally:
        bar.close()
    safe = _json_safe(rep)
    # Everything is computed: only now is anything written.
    if args.reliability:
        from crossentropy.plot import reliability_diagram

        reliability_diagram(rep, args.reliability)
    if args.output:
        _atomic_write(args.output, json.dumps(safe, indent=2) + "\n")
    if args.json:
        sys.stdout.write(json.dumps(safe, indent=2) + "\n")
    else:
        sys.stdout.write(_score_text(rep, args.per_class))
        if args.reliability:
            sys.stdout.write(f"reliability diagram: {args.reliability}\n")
    return 0


# --------------------------------------------------------------------------- warm-up


class _Bar:
    """A progress bar on a terminal (redrawn in place every second, so the time runs while
    a part compiles), else one line per part done."""

    WIDTH = 24

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.t0 = time.perf_counter()
        self.state = (0, 0, "starting")
        self.stop = threading.Event()

    def __enter__(self) -> _Bar:
        if self.tty:
            threading.Thread(target=self._tick, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.tty:
            self._draw(end="\n")

    def _tick(self) -> None:
        while not self.stop.wait(1.0):
            self._draw()

    def _draw(self, end: str = "") -> None:
        done, total, what = self.state
        fill = self.WIDTH * done // total if total else 0
        bar = "#" * fill + "." * (self.WIDTH - fill)
        took = time.perf_counter() - self.t0
        print(f"\r[{bar}] {done}/{total or '?'} {took:4.0f} s  {what:40.40s}", end=end,
              file=self.stream, flush=True)

    def __call__(self, done: int, total: int, what: str) -> None:
        self.state = (done, total, what)
        if self.tty:
            self._draw()
        else:
            print(f"{done}/{total} done after {time.perf_counter() - self.t0:.0f} s: {what}",
                  file=self.stream, flush=True)


def _cmd_warm_up(args: argparse.Namespace) -> int:
    from crossentropy import kernel_status, warm_up

    if args.status:
        print(kernel_status())
        return 0
    before = kernel_status()
    if before.startswith("numba is not installed"):
        raise ImportError(f"{before}; `pip install numba` gives the fast CPU kernels")
    if not before.startswith("compiled"):
        print("compiling the CPU kernels into numba's cache (about a minute of CPU, once per "
              "install)", file=sys.stderr, flush=True)
    with _Bar(sys.stderr) as bar:
        warm_up(progress=bar)
    print(kernel_status())
    return 0


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``crossentropy`` command; return its exit status.

    0 on success, 1 for bad input data or a missing optional package, 2 for a usage error.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    if args.command is None:
        parser.print_help()
        from crossentropy import kernel_status

        print(f"\nCPU kernels: {kernel_status()}")
        return 0
    from crossentropy.score.readers import ScoreError

    cmd = {"explain": _cmd_explain, "plot": _cmd_plot, "score": _cmd_score,
           "calibrate": _cmd_calibrate, "warm-up": _cmd_warm_up}[args.command]
    prog = f"crossentropy {args.command}"

    def fail(message: str, status: int) -> int:
        print(f"{prog}: error: {_one_line(message)}", file=sys.stderr)
        return status

    try:
        return cmd(args)
    except _UsageError as exc:
        return fail(str(exc), 2)
    except ScoreError as exc:
        return fail(str(exc), 1)
    except ImportError as exc:
        return fail(str(exc), 1)
    except BrokenPipeError:  # e.g. piped into head: not an error
        return 0
    except OSError as exc:
        where = f" {exc.filename}:" if exc.filename else ""
        return fail(f"{where} {exc.strerror or exc}".lstrip(), 1)
    except MemoryError:
        return fail("out of memory (try a smaller --chunk-rows)", 1)
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except Exception as exc:  # never a traceback: one line naming the problem
        if os.environ.get("CROSSENTROPY_DEBUG"):
            raise
        return fail(f"{type(exc).__name__}: {exc} (unexpected: please report it, with the "
                    "command; CROSSENTROPY_DEBUG=1 shows the traceback)", 1)
