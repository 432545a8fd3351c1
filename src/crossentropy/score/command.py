"""The ``crossentropy calibrate`` subcommand: its options, its run and its text report.

Kept here, beside the code it drives, so that ``crossentropy/cli.py`` only registers it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from typing import Any

from crossentropy.extras import install_hint
from crossentropy.score.readers import ScoreError

__all__ = ["CALIBRATE_EPILOG", "UsageError", "add_calibrate_parser", "calibrate_text",
           "check_image_output", "check_output", "json_safe", "metric_lines", "parse_top_k",
           "plot_report", "run_calibrate"]


class UsageError(ValueError):
    """A bad combination of options (exit status 2)."""


def check_output(path: str) -> None:
    """ScoreError (exit status 1) unless `path` can be created: its folder exists and it is
    not itself a folder.  Checked before any work, so that a long run does not end on a
    missing folder, and named as the user gave it (the file is written under a temporary
    name first, which is no concern of theirs).

    >>> check_output("report.json")  # in the current folder
    >>> try:
    ...     check_output("no/such/folder/r.json")
    ... except ScoreError as exc:
    ...     print(exc)
    no/such/folder/r.json: the folder 'no/such/folder' does not exist
    """
    folder = os.path.dirname(path)
    if folder and not os.path.exists(folder):
        raise ScoreError(f"{path}: the folder {folder!r} does not exist")
    if folder and not os.path.isdir(folder):
        raise ScoreError(f"{path}: {folder!r} is a file, not a folder")
    if os.path.isdir(path):
        raise ScoreError(f"{path}: is a folder; name a file to write")


def check_image_output(path: str, option: str) -> None:
    """:func:`check_output`, and the suffix must name an image format (UsageError, exit
    status 2, listing the suffixes accepted)."""
    from crossentropy.plot import image_format

    try:
        image_format(path)
    except ValueError as exc:
        raise UsageError(f"{option} {exc}") from None
    check_output(path)


CALIBRATE_EPILOG = """\
what it fits:
  multi-class   one temperature T > 0: softmax(z / T), z the logits (--logits) or
                log p; T > 1 softens over-confident predictions.  The accuracy is unchanged.
  --multilabel  Platt scaling per label (a binary file is one label): sigmoid(a x + b),
                x the logit (or logit(p)), unregularised.
The fit minimises the weighted mean cross-entropy by safeguarded Newton steps on the exact
gradient and Hessian, to 1e-9 relative; each step is one pass over the file (constant
memory, any size); the report says how many passes.

held-out data: fit on one file, apply to another:
  crossentropy calibrate val.csv --apply-to test.csv -o test_calibrated.csv
  crossentropy calibrate val.csv --report cal.json        # save the fit ...
  crossentropy calibrate test.csv --apply cal.json -o test_calibrated.csv   # ... reuse it

examples:
  crossentropy calibrate preds.csv --logits
  crossentropy calibrate logits.npy --label labels.npy --logits --json
  crossentropy calibrate preds.csv --apply 1.7 -o calibrated.csv
  crossentropy calibrate val.parquet --reliability before_after.png
  crossentropy calibrate tags.csv --multilabel --columns 'p_*' --targets 'y_*'
"""


def parse_top_k(text: str | None) -> tuple[int, ...]:
    """``--top-k 1,5`` -> (1, 5).

    >>> parse_top_k("5,1")
    (1, 5)
    """
    if text is None:
        return ()
    try:
        ks = sorted({int(t) for t in text.split(",")})
    except ValueError:
        raise UsageError(f"--top-k takes whole numbers, comma-separated (got {text!r})"
                         ) from None
    if not ks or ks[0] < 1:
        raise UsageError("--top-k values must be at least 1")
    return tuple(ks)


def json_safe(v: Any) -> Any:
    """JSON-ready: NaN (undefined) becomes null, +-inf the strings "inf" and "-inf".

    >>> json_safe({"a": float("nan"), "b": [float("inf"), 1.0]})
    {'a': None, 'b': ['inf', 1.0]}
    """
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    return v


def add_calibrate_parser(sub: Any, formatter: type[argparse.HelpFormatter],
                         base_arg: Callable[[argparse.ArgumentParser, str], None]
                         ) -> argparse.ArgumentParser:
    """Register ``calibrate`` on the subparsers `sub` of the ``crossentropy`` command."""
    cp: argparse.ArgumentParser = sub.add_parser(
        "calibrate", help="fit a temperature (or Platt scaling) to a file of predictions",
        formatter_class=formatter,
        description="Fit the temperature T (multi-class) or Platt's a, b (multi-label) that "
                    "minimise the cross-entropy of a file of predictions, and report "
                    "cross-entropy, ECE and Brier score before and after.  Reads the same "
                    "files with the same options as 'crossentropy score'.",
        epilog=CALIBRATE_EPILOG)
    cp.add_argument("file", metavar="FILE", help="CSV, TSV, Parquet, .npy or .npz (fitted on)")
    cp.add_argument("--logits", action="store_true",
                    help="the columns are logits (scores), not probabilities")
    cp.add_argument("--label", metavar="COL",
                    help="label column (name or index); for .npz a key, for .npy a file")
    cp.add_argument("--columns", metavar="SPEC", help="prediction columns (as in score)")
    cp.add_argument("--classes", metavar="A,B,...", help="class names for the columns")
    cp.add_argument("--weight", metavar="COL", help="sample-weight column")
    cp.add_argument("--multilabel", action="store_true",
                    help="independent binary labels: Platt scaling per label")
    cp.add_argument("--targets", metavar="SPEC", help="with --multilabel: the 0/1 columns")
    base_arg(cp, "e")
    cp.add_argument("--bins", type=int, default=15, help="calibration bins (default: 15)")
    cp.add_argument("--top-k", metavar="K[,K...]", help="also report top-k accuracy")
    cp.add_argument("--apply", metavar="T|a,b|REPORT.json",
                    help="do not fit: apply this temperature, Platt 'a,b', or the fit saved "
                         "in a JSON report")
    cp.add_argument("--apply-to", metavar="FILE2",
                    help="apply the calibration fitted on FILE to FILE2 (held-out data): "
                         "report FILE2 before/after, write FILE2's predictions with -o")
    cp.add_argument("--output", "-o", metavar="OUT",
                    help="write the calibrated predictions, in the input's format (logits "
                         "stay logits, probabilities stay probabilities)")
    cp.add_argument("--report", metavar="FILE.json", help="also write the JSON report")
    cp.add_argument("--json", action="store_true", help="print the report as JSON")
    cp.add_argument("--reliability", metavar="FILE.png",
                    help="reliability diagrams before and after, in one figure")
    cp.add_argument("--sum-tolerance", type=float, default=1e-3, metavar="TOL",
                    help="probability rows must sum to 1 within TOL (default: 1e-3)")
    cp.add_argument("--delimiter", default=",", help="CSV delimiter (default: ',')")
    cp.add_argument("--file-format", choices=["csv", "parquet", "npy", "npz"],
                    help="read FILE as this format, whatever its suffix")
    cp.add_argument("--chunk-rows", type=int, metavar="N", help="rows per chunk")
    cp.add_argument("--max-footer-mb", type=float, default=20.0, metavar="MB",
                    help="largest Parquet footer decoded whole (default: 20); a larger "
                         "one is read row group by row group")
    prog = cp.add_mutually_exclusive_group()
    prog.add_argument("--progress", dest="progress", action="store_true", default=None,
                      help="show a progress bar on standard error")
    prog.add_argument("--no-progress", dest="progress", action="store_false",
                      help="never show a progress bar")
    return cp


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.6g}"
    return str(v)


def metric_lines(rep: dict[str, Any]) -> list[str]:
    """The lines of ``score``'s text report after the ECE: the other calibration metrics,
    the Brier score and top-k accuracy."""
    out = [
        f"adaptive ECE   {_fmt(rep.get('adaptive_ece'))} ({rep['bins']} equal-mass bins)",
        f"MCE            {_fmt(rep.get('mce'))}",
        f"RMSCE          {_fmt(rep.get('rmsce'))}",
        f"classwise ECE  {_fmt(rep.get('classwise_ece'))}",
        f"Brier          {_fmt(rep.get('brier'))}",
    ]
    for k, v in rep.get("top_k_accuracy", {}).items():
        out.append(f"{'top-' + k + ' accuracy':15}{_fmt(v)}")
    return out


def calibrate_text(rep: dict[str, Any]) -> str:
    """The plain-text report of ``crossentropy calibrate``."""
    b, a = rep["before"], rep["after"]
    unit = rep["unit"]
    where = rep.get("applied_to", rep["file"])
    lines = [f"file           {where} ({rep['format']}, {b['rows']:,} rows, {b['classes']} "
             f"{'labels' if b['task'] == 'multilabel' else 'classes'}, {rep['input']})"]
    if "applied_to" in rep:
        lines.append(f"fitted on      {rep['file']}")
    how = (f"fitted in {rep['passes']} passes over the file"
           + ("" if rep.get("converged", True) else ", NOT converged")
           if rep["fitted"] else "given (--apply)")
    if rep["method"] == "temperature":
        lines.append(f"temperature    {rep['temperature']:.10g}  ({how})")
    else:
        pl = rep["platt"]
        if len(pl["a"]) == 1:
            lines.append(f"Platt          a = {pl['a'][0]:.10g}, b = {pl['b'][0]:.10g}  ({how})")
        else:
            lines.append(f"Platt          a, b per label ({how})")
            names = [r["class"] for r in rep["before"]["per_class"]]
            for name, a_, b_ in list(zip(names, pl["a"], pl["b"], strict=True))[:10]:
                lines.append(f"  {name:13}a = {a_:.10g}, b = {b_:.10g}")
            if len(names) > 10:
                lines.append(f"  ... and {len(names) - 10} more (--json lists them all)")
    lines.append("")
    rows = [("cross-entropy", "cross_entropy", f" {unit}"), ("ECE", "ece", ""),
            ("adaptive ECE", "adaptive_ece", ""), ("MCE", "mce", ""), ("RMSCE", "rmsce", ""),
            ("classwise ECE", "classwise_ece", ""), ("Brier", "brier", ""),
            ("accuracy", "accuracy", "")]
    lines.append(f"{'':15}{'before':>14}{'after':>14}")
    for label, key, u in rows:
        lines.append(f"{label:15}{_fmt(b.get(key)):>14}{_fmt(a.get(key)):>14}{u}")
    for k, v in b.get("top_k_accuracy", {}).items():
        lines.append(f"{'top-' + k:15}{_fmt(v):>14}{_fmt(a['top_k_accuracy'][k]):>14}")
    if "output" in rep:
        lines.append(f"\ncalibrated predictions: {rep['output']}")
    return "\n".join(lines) + "\n"


def plot_report(args: argparse.Namespace) -> str:
    """``crossentropy plot reliability --report REPORT.json``: draw it, return the PNG path."""
    from crossentropy.plot import reliability_from_report

    if args.what != "reliability" or not args.report:
        raise UsageError("the reliability plot needs both 'reliability' and --report "
                         "REPORT.json")
    if not 10 <= args.dpi <= 600:
        raise UsageError(f"--dpi must be between 10 and 600, got {args.dpi}")
    out = args.output or os.path.join(args.outdir, "reliability.png")
    check_image_output(out, "--output")
    try:
        return reliability_from_report(args.report, out, dpi=args.dpi)
    except (ValueError, KeyError, TypeError) as exc:
        msg = str(exc) if isinstance(exc, ValueError) else f"missing or bad key {exc}"
        if not msg.startswith(args.report):
            msg = f"{args.report}: not a score or calibrate report ({msg})"
        raise ScoreError(msg) from None


def run_calibrate(args: argparse.Namespace, base: float | None,
                  progress: Callable[[str], Any],
                  write: Callable[[str, str], None]) -> int:
    """Run ``crossentropy calibrate``; `progress(label)` makes a progress bar (with .close()),
    `write(path, text)` writes a file atomically."""
    from crossentropy.score.calibrate import calibrate_file, parse_apply
    from crossentropy.score.core import ScoreOptions
    from crossentropy.score.readers import ColumnSpec

    if not 1 <= args.bins <= 10_000:
        raise UsageError(f"--bins must be between 1 and 10000, got {args.bins}")
    if args.bins < 1:
        raise UsageError("--bins must be at least 1")
    if args.chunk_rows is not None and args.chunk_rows < 1:
        raise UsageError("--chunk-rows must be at least 1")
    if not (args.sum_tolerance >= 0.0):
        raise UsageError("--sum-tolerance must be >= 0")
    if args.targets is not None and not args.multilabel:
        raise UsageError("--targets goes with --multilabel")
    if args.apply is not None and args.apply_to is not None:
        raise UsageError("--apply and --apply-to do not go together: to apply a known "
                         "calibration to a file, run 'calibrate FILE --apply T'")
    if args.multilabel and args.top_k:
        raise UsageError("--top-k is for multi-class files")
    for f in (args.output, args.report, args.reliability):
        if f is not None and os.path.abspath(f) in {os.path.abspath(args.file),
                                                    os.path.abspath(args.apply_to or
                                                                    args.file)}:
            raise UsageError(f"{f}: would overwrite an input file")
    if args.reliability:
        check_image_output(args.reliability, "--reliability")
    for f in (args.output, args.report):
        if f is not None:
            check_output(f)
    if args.reliability:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ImportError(f"--reliability needs matplotlib: {install_hint('plot')}"
                              ) from None
    classes = None
    if args.classes is not None:
        classes = [n.strip() for n in args.classes.split(",")]
        if any(not n for n in classes):
            raise UsageError(f"empty name in {args.classes!r}")
    opts = ScoreOptions(
        columns=ColumnSpec(pred=args.columns, label=args.label, targets=args.targets,
                           weight=args.weight, multilabel=args.multilabel,
                           delimiter=args.delimiter),
        logits=args.logits, classes=classes, base=base, bins=args.bins,
        sum_tolerance=args.sum_tolerance, chunk_rows=args.chunk_rows,
        file_format=args.file_format, top_k=parse_top_k(args.top_k),
        max_footer_mb=args.max_footer_mb)
    fit = parse_apply(args.apply, args.multilabel) if args.apply is not None else None
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    bars: list[Any] = []

    def on_pass(k: int) -> Any:
        for bar in bars:
            bar.close()
        bars.clear()
        if not show:
            return None
        bars.append(progress(f"{os.path.basename(args.file)} pass {k}"))
        return bars[0]

    try:
        rep = calibrate_file(args.file, opts, apply=fit, apply_to=args.apply_to,
                             output=args.output, on_pass=on_pass)
    finally:
        for bar in bars:
            bar.close()
    text = json.dumps(json_safe(rep), indent=2) + "\n"
    if args.reliability:
        from crossentropy.plot import reliability_before_after

        reliability_before_after(rep, args.reliability)
    if args.report:
        write(args.report, text)
    if args.json:
        sys.stdout.write(text)
    else:
        sys.stdout.write(calibrate_text(rep))
        if args.reliability:
            sys.stdout.write(f"reliability diagrams: {args.reliability}\n")
    return 0
