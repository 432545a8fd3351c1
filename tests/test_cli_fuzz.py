"""The command line never shows a traceback (issue 13, item 4).

Every call of ``crossentropy`` ends in one of two ways: exit status 0 with output (on
standard output, or in the file named by ``-o``), or a non-zero status with exactly one
line on standard error, ``crossentropy ...: error: ...``, naming the problem.  The argument
parser is fuzzed with hypothesis (argv lists built from the real subcommands and options
and random tokens), running :func:`crossentropy.cli.main` in-process; a few checks go
through the installed console script.  The bugs the issue lists are pinned one by one.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import re
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crossentropy.cli import main
from test_cli_explain import _script, run


def call(argv: Sequence[str]) -> tuple[int, str, str]:
    """Run ``crossentropy ARGV`` in-process: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


#: Words a sentence does not end on: an error ending on one was cut off (issue 27: "a label
#: is 0, 1 or a soft label between").
DANGLING = {"a", "an", "the", "and", "or", "nor", "but", "of", "to", "in", "on", "at", "by",
            "for", "with", "from", "between", "than", "as", "is", "are", "be", "not", "if",
            "then", "use", "pass", "see", "e.g.", "i.e.", "its", "their", "this", "that",
            "which", "one", "both", "either", "neither", "into", "onto", "via", "per"}


def assert_full_sentence(message: str) -> None:
    """`message` ends as a sentence does: not on a dangling word nor on punctuation that
    leads on (quoted values, which may hold anything, count as one word)."""
    bare = re.sub(r"'[^']*'|\"[^\"]*\"", "''", message)
    assert not bare.rstrip().endswith((",", ";", ":", "(", "[", "{", "-", "=", "/")), message
    words = re.findall(r"[A-Za-z][A-Za-z.]*|\S", bare)
    assert words and words[-1].lower() not in DANGLING, message


def assert_one_line_error(rc: int, err: str) -> None:
    assert rc != 0
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err
    assert lines[0].startswith("crossentropy"), err
    assert ": error: " in lines[0], err
    assert_full_sentence(lines[0].split(": error: ", 1)[1])


@contextlib.contextmanager
def chdir(path: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


# --------------------------------------------------------------------------- the listed bugs


@pytest.mark.parametrize(("argv", "needle"), [
    (["explain", "bce", "--prob", "0.3", "--label", "2"], "--label 2.0 is not in [0, 1]"),
    (["explain", "bce", "--prob", "1.5", "--label", "1"], "--prob 1.5 is not in [0, 1]"),
    (["explain", "bce", "--prob", "0.5", "0.2", "--label", "1", "-1"],
     "--label -1.0 (value 2 of 2) is not in [0, 1]"),
    (["explain", "bce", "--prob", "nan", "--label", "1"], "--prob nan is not in [0, 1]"),
    (["explain", "cross-entropy", "--scores", "1", "2", "3", "--target-probs", "0.5", "0.6",
      "0"], "--target-probs sum to 1.1, not 1"),
    (["explain", "cross-entropy", "--scores", "1", "2", "--target-probs", "1.5", "-0.5"],
     "--target-probs 1.5 (value 1 of 2) is not in [0, 1]"),
    (["explain", "ce", "--probs", "0.5", "nan", "--target", "0"],
     "--probs nan (value 2 of 2) is not in [0, 1]"),
    (["explain", "ce", "--probs", "0", "0", "--target", "0", "--normalize"],
     "--normalize needs --probs with a positive sum"),
    (["explain", "sigmoid", "--format", "yaml", "1"], "invalid choice: 'yaml'"),
    (["plot", "bce", "--dpi", "0"], "--dpi must be between 10 and 600"),
])
def test_issue13_bad_values_end_in_one_line(argv: list[str], needle: str) -> None:
    rc, out, err = call(argv)
    assert rc == 2
    assert_one_line_error(rc, err)
    assert needle in err, err
    assert out == ""


def test_issue13_score_delimiter_empty_is_one_line(tmp_path: Path) -> None:
    f = tmp_path / "f.tsv"
    f.write_text("a\tb\tlabel\n0.5\t0.5\t0\n")
    for bad in ("", ";;", '"', "\n"):
        rc, out, err = call(["score", str(f), "--delimiter", bad])
        assert rc == 1
        assert_one_line_error(rc, err)
        assert "--delimiter must be one character" in err
    rc, out, err = call(["score", str(f), "--delimiter", "\\t"])  # as a shell passes '\t'
    assert rc == 0, err
    assert "cross-entropy  0.693147 nats" in out  # ln 2
    rc, out, err = call(["score", str(f)])  # .tsv: a tab by default
    assert rc == 0 and "0.693147" in out


def test_issue13_trailing_blank_lines_are_ignored(tmp_path: Path) -> None:
    f = tmp_path / "p.csv"
    # the rows' losses: -ln 0.5, -ln 0.8 (mean 0.458145365937...); mpmath:
    # (mp.log(2) - mp.log(mp.mpf('0.8'))) / 2 = 0.458145365937077
    f.write_text("a,b,label\n0.5,0.5,0\n0.2,0.8,1\n\n \r\n\n")
    for chunk in ("1", "2", "3", "1000"):
        rc, out, err = call(["score", str(f), "--json", "--chunk-rows", chunk])
        assert rc == 0, err
        rep = json.loads(out)
        assert rep["rows"] == 2
        assert rep["cross_entropy"] == pytest.approx(0.458145365937077, rel=1e-14)
    # a blank line between records is still an error, with its line number
    f.write_text("a,b,label\n0.5,0.5,0\n\n0.2,0.8,1\n\n")
    for chunk in ("1", "2", "1000"):
        rc, _, err = call(["score", str(f), "--chunk-rows", chunk])
        assert_one_line_error(rc, err)
        assert "line 3: empty line" in err


@pytest.mark.parametrize("header", ["id", ""])  # "" is what pandas' to_csv writes
def test_issue13_id_column_suggests_columns_not_logits(tmp_path: Path, header: str) -> None:
    f = tmp_path / "ids.csv"
    f.write_text(f"{header},cat,dog,label\n0,0.5,0.5,0\n1,0.2,0.8,1\n2,0.3,0.7,1\n")
    rc, _, err = call(["score", str(f)])
    assert_one_line_error(rc, err)
    assert "--columns" in err and "--logits" not in err
    assert "e.g. --columns cat,dog" in err
    rc, out, err = call(["score", str(f), "--columns", "cat,dog", "--json"])
    assert rc == 0, err
    # mpmath: (-mp.log(0.5) - mp.log(0.8) - mp.log(0.7)) / 3 = 0.424321891937629
    assert json.loads(out)["cross_entropy"] == pytest.approx(0.424321891937629, rel=1e-14)
    # real logits above 1 still get the --logits hint
    f.write_text("cat,dog,label\n2.5,0.5,0\n")
    rc, _, err = call(["score", str(f)])
    assert_one_line_error(rc, err)
    assert "pass --logits" in err


@pytest.mark.parametrize("argv", [
    ["explain", "sigmoid", "-inf", "-1e9", "-3", "-.5", "-1E+2", "--format", "json"],
    ["explain", "sigmoid", "--format", "json", "-inf", "-1e9", "-3", "-.5", "-1E+2"],
])
def test_issue13_negative_numbers_are_arguments(argv: list[str]) -> None:
    rc, out, err = call(argv)
    assert rc == 0, err
    got = json.loads(out)[0]["results"]["sigmoid"]
    # mpmath: 1/(1+mp.exp(3)) = 0.0474258731775668, 1/(1+mp.exp(0.5)) = 0.377540668798145,
    # 1/(1+mp.exp(100)) = 3.72007597602084e-44; sigmoid(-1e9) underflows to 0 (e^-1e9)
    assert got == pytest.approx([0.0, 0.0, 0.0474258731775668, 0.377540668798145,
                                 3.72007597602084e-44], rel=1e-14, abs=0.0)


def test_issue13_negative_numbers_as_option_values() -> None:
    rc, out, err = call(["explain", "cross-entropy", "--scores", "-inf", "-1e9", "0",
                         "--target", "2", "--format", "json"])
    assert rc == 0, err
    # -log softmax(z)_2 = log(1 + e^-1e9) = 0 in float64 (e^-1e9 underflows)
    assert json.loads(out)[0]["results"]["loss"] == 0.0
    rc, out, err = call(["explain", "bce", "--logit", "-40", "-1e3", "--label", "1", "0",
                         "--format", "json"])
    assert rc == 0, err
    # mpmath: log(1 + mp.exp(40)) = 40.0000000000000000042; log1p(e^-1000) = 0
    assert json.loads(out)[0]["results"]["loss"] == pytest.approx([40.0, 0.0], rel=1e-15)
    # a real option that starts like a number is still an error, on one line
    rc, _, err = call(["explain", "sigmoid", "1", "-x"])
    assert_one_line_error(rc, err)
    assert "unrecognized arguments: -x" in err


def test_usage_errors_are_one_line_too() -> None:
    for argv in (["explain", "sigmoid"], ["--bogus"], ["score"], ["plot"], ["plot", "x"],
                 ["explain", "bce", "--prob", "0.5"], ["score", "f.csv", "--bins", "x"],
                 ["explain", "softmax", "1", "--names", "a\n,b"], ["explain", "sigmoid", "1\n2"]):
        rc, out, err = call(argv)
        assert rc == 2, argv
        assert_one_line_error(rc, err)
        assert out == ""


# --------------------------------------------------------------------------- issue 27


def test_semicolon_csv_hints_delimiter(tmp_path: Path) -> None:
    (tmp_path / "semi.csv").write_text("cat;dog;label\n0.9;0.1;cat\n0.3;0.7;dog\n")
    (tmp_path / "tabs.csv").write_text("cat\tdog\tlabel\n0.9\t0.1\tcat\n")
    with chdir(tmp_path):
        rc, out, err = call(["score", "semi.csv"])
        assert_one_line_error(rc, err)
        assert rc == 1 and out == ""
        # before: "no label column: name it with --label (...)", no word of the delimiter
        assert err.rstrip().endswith("the header line looks ';'-separated (3 columns): pass "
                                     "--delimiter ';'"), err
        rc, _, err = call(["score", "semi.csv", "--label", "label"])
        assert rc == 1 and "pass --delimiter ';'" in err, err
        rc, _, err = call(["calibrate", "tabs.csv"])
        assert rc == 1 and "looks tab-separated (3 columns): pass --delimiter tab" in err, err
        rc, out, _ = call(["score", "semi.csv", "--delimiter", ";", "--json"])
        assert rc == 0 and json.loads(out)["accuracy"] == 1.0


@pytest.mark.parametrize("cell", ["-0.26", "-3", "2.5"])
def test_logits_scored_as_probabilities_hint_logits(tmp_path: Path, cell: str) -> None:
    (tmp_path / "lg.csv").write_text(f"a,b,label\n{cell},0.5,0\n1.5,-1.25,1\n")
    with chdir(tmp_path):
        rc, _, err = call(["score", "lg.csv"])
        assert_one_line_error(rc, err)
        # before: "probability -0.26 is outside [0, 1]" and nothing more for a negative one
        assert f"probability {float(cell)!r} is outside [0, 1]; are these logits? then pass " \
               "--logits" in err, err
        rc, _, err = call(["score", "lg.csv", "--logits", "--json"])
        assert rc == 0, err


#: Bad calls of every command (usage errors, bad files, bad values): each ends in one line
#: that is a whole sentence.
BAD_CALLS = [
    ["explain", "bce", "--prob", "0.3", "--label", "2"],
    ["explain", "bce", "--logit", "1", "--label", "-0.5"],
    ["explain", "bce", "--prob", "0.3", "0.2", "--label", "1"],
    ["explain", "bce", "--prob", "1.5", "--label", "1"],
    ["explain", "bce", "--prob", "0.5", "--label", "1", "--names", "a,b"],
    ["explain", "ce", "--probs", "0.5", "0.6", "--target", "0"],
    ["explain", "ce", "--probs", "0.5", "0.5", "--target", "cow", "--classes", "cat,dog"],
    ["explain", "ce", "--scores", "1", "2", "--target-probs", "0.5", "0.4"],
    ["explain", "ce", "--scores", "1", "2", "--target-probs", "1"],
    ["explain", "ce", "--scores", "1", "2", "--target", "0", "--classes", "a,b,c"],
    ["explain", "ce", "--probs", "0", "0", "--target", "0", "--normalize"],
    ["explain", "softmax", "1", "2", "--names", "a"],
    ["explain", "softmax", "1", "--names", "a,,b"],
    ["explain", "sigmoid", "1", "--base", "1"],
    ["explain", "ce", "--scores", "1", "2", "--target", "0", "--base", "-2"],
    ["explain", "-o", "nodir/x.txt"],
    ["plot", "sigmoid", "-o", "x.gif"],
    ["plot", "sigmoid", "-o", "noext"],
    ["plot", "sigmoid", "-o", "nodir/x.png"],
    ["plot", "all", "-o", "x.png"],
    ["plot", "bce", "--dpi", "5"],
    ["plot", "reliability"],
    ["plot", "reliability", "--report", "missing.json"],
    ["plot", "reliability", "--report", "good.csv"],
    ["score", "missing.csv"],
    ["score", "good.csv", "--bins", "0"],
    ["score", "good.csv", "--chunk-rows", "0"],
    ["score", "good.csv", "--per-class", "x"],
    ["score", "good.csv", "--targets", "y"],
    ["score", "good.csv", "--top-k", "0"],
    ["score", "good.csv", "--top-k", "x"],
    ["score", "good.csv", "--multilabel"],
    ["score", "good.csv", "--columns", "nope"],
    ["score", "good.csv", "--label", "cat"],
    ["score", "good.csv", "--classes", "a,b"],
    ["score", "good.csv", "--delimiter", ""],
    ["score", "good.csv", "--reliability", "r.bmp"],
    ["score", "good.csv", "-o", "nodir/r.json"],
    ["score", "bad.csv"],
    ["score", "empty.csv"],
    ["score", "ids.csv"],
    ["score", "logits.tsv"],
    ["score", "semi.csv"],
    ["score", "unsummed.csv"],
    ["score", "p.npy"],
    ["score", "junk.parquet"],
    ["score", "junk.npz"],
    ["calibrate", "right.csv"],
    ["calibrate", "separated.csv", "--multilabel", "--columns", "p", "--targets", "y"],
    ["calibrate", "good.csv", "--apply", "-1"],
    ["calibrate", "good.csv", "--apply", "x"],
    ["calibrate", "good.csv", "--apply", "2", "--apply-to", "good.csv"],
    ["calibrate", "good.csv", "-o", "good.csv"],
    ["calibrate", "good.csv", "--report", "nodir/c.json"],
    ["calibrate", "good.csv", "--reliability", "c.gif"],
]


def _tail(node: ast.expr) -> str | None:
    """The literal text a message expression ends with ('' after a replacement field)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values:
        last = node.values[-1]
        return last.value if isinstance(last, ast.Constant) else ""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _tail(node.right)
    return None


def test_no_error_message_in_the_source_is_cut_off() -> None:
    """Every message raised by the command line's modules (and every hint handed to its
    checks) ends on a whole sentence, read from the source: also the ones no test reaches."""
    import crossentropy

    pkg = Path(crossentropy.__file__).resolve().parent
    files = [pkg / "cli.py", pkg / "plot.py", *sorted((pkg / "score").glob("*.py")),
             *sorted((pkg / "explain").glob("*.py"))]
    seen = 0
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            texts: list[ast.expr] = []
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args:
                texts = [node.exc.args[0]]
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id.startswith("_check_")):
                texts = [a for a in node.args if isinstance(a, (ast.Constant, ast.JoinedStr))]
            for t in texts:
                tail = _tail(t)
                if tail and tail.strip():
                    seen += 1
                    assert_full_sentence("x " + tail), f"{path.name}:{node.lineno}: {tail!r}"
    assert seen > 100


@pytest.mark.parametrize("argv", BAD_CALLS, ids=[" ".join(a) for a in BAD_CALLS])
def test_every_error_is_one_whole_sentence(tmp_path: Path, argv: list[str]) -> None:
    (tmp_path / "good.csv").write_text("cat,dog,bird,label\n0.7,0.2,0.1,cat\n"
                                       "0.1,0.8,0.1,1\n0.2,0.2,0.6,bird\n")
    (tmp_path / "bad.csv").write_text("a,b,label\n0.5,x,0\n")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "ids.csv").write_text("id,a,b,label\n17,0.5,0.5,0\n")
    (tmp_path / "logits.tsv").write_text("a\tb\tlabel\n3.5\t-1\t0\n")
    (tmp_path / "semi.csv").write_text("a;b;label\n0.5;0.5;0\n")
    (tmp_path / "unsummed.csv").write_text("a,b,label\n0.5,0.6,0\n")
    (tmp_path / "right.csv").write_text("a,b,label\n0.9,0.1,0\n0.2,0.8,1\n")
    (tmp_path / "separated.csv").write_text("p,y\n0.9,1\n0.2,0\n")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not a zip")
    np.save(tmp_path / "p.npy", np.array([[0.3, 0.7], [0.9, 0.1]]))
    with chdir(tmp_path):
        rc, out, err = call(argv)
    assert_one_line_error(rc, err)
    assert out == ""


# --------------------------------------------------------------------------- the fuzzer

EXPLAIN_OPTS = ["--format", "-f", "--output", "-o", "--names", "--scores", "--probs",
                "--target", "--target-probs", "--classes", "--normalize", "--base", "-b",
                "--prob", "--probs", "--logit", "--logits", "--label", "--labels"]
TOPICS = ["article", "sigmoid", "softmax", "cross-entropy", "ce", "bce",
          "binary-cross-entropy"]
FORMATS = ["table", "rich", "text", "markdown", "latex", "json"]
SCORE_OPTS = ["--logits", "--label", "--columns", "--classes", "--weight", "--multilabel",
              "--targets", "--base", "--bins", "--json", "--output", "-o", "--per-class",
              "--sum-tolerance", "--delimiter", "--file-format", "--chunk-rows",
              "--progress", "--no-progress", "--reliability"]
PLOT_OPTS = ["--output", "-o", "--outdir", "--dpi", "--report"]

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-10**6, 10**6).map(str),
    st.sampled_from(["-inf", "inf", "nan", "-nan", "1e400", "-1e9", "-3", "0", "1", "0.5",
                     "-0.5", "-.5", "1e-320", "0.3333", "2", "1_000", "0x10", "1,2"]),
)
bad_formats = st.sampled_from([
    "", " ", "-", "--", "---", "-x", "--x", "a:b", "0:0", "1:", ":", "p_*", "[", "]", "*",
    "%s", "%(prog)s", "{}", "e", "bits", "nats", "2", "10", "1", "0", "-2", "all", "a,,b",
    ",", "a,b,c", "cat,dog,bird", "cat", "\t", "\\t", "tab", ";", '"', "\n", "x\ny", "é",
    "\u2028", "\x00", "csv", "parquet", "npy", "npz", "label", "y", "w", "p", "q", "0,1",
])
text = st.text(max_size=6).filter(lambda t: not t.startswith(("/", "\\")) and ".." not in t
                                  and "\x00" not in t)


def tokens(opts: list[str], paths: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(opts), numbers, bad_formats, text, st.sampled_from(paths),
                     st.sampled_from(FORMATS))


def noisy(valid: st.SearchStrategy[str], paths: list[str]) -> st.SearchStrategy[str]:
    """Mostly `valid` tokens, sometimes (1 in 8) any token at all."""
    noise = tokens(EXPLAIN_OPTS + SCORE_OPTS, paths)
    return st.integers(0, 7).flatmap(lambda i: valid if i else noise)


def values(token: st.SearchStrategy[str], max_size: int = 4) -> st.SearchStrategy[list[str]]:
    return st.lists(token, min_size=1, max_size=max_size)


def opt(name: str, vals: st.SearchStrategy[list[str]] | None = None
        ) -> st.SearchStrategy[list[str]]:
    """An option and its values (sometimes none, sometimes too many)."""
    if vals is None:
        return st.just([name])
    return st.builds(lambda v: [name, *v], vals)


@st.composite
def argvs(draw: st.DrawFn, paths: list[str], files: list[str]) -> list[str]:
    """An argv: a real command and topic, its real options with plausible values, and
    random noise (a wrong value, an option of another command, a stray token)."""
    num = noisy(numbers, paths)
    prob = noisy(st.sampled_from(["0", "1", "0.5", "0.25", "0.75", "1e-300", "0.999999",
                                  "nan", "-0.1", "1.5", "0.3", "0.7", "-0", "1e-320"]), paths)
    names = noisy(st.sampled_from(["cat,dog", "cat,dog,bird", "a", "a,b,c,d", "a,,b", ",",
                                   "[bold],[/x]", "é,ü", "x y,z"]), paths)
    base = noisy(st.sampled_from(["e", "2", "10", "bits", "nats", "1", "0", "-2", "inf", "nan",
                                  "1e-300", "3.5"]), paths)
    fmt = noisy(st.sampled_from(FORMATS), paths)
    kind = draw(st.sampled_from(["explain"] * 5 + ["score"] * 3 + ["calibrate"] * 2
                                + ["plot", "top"]))
    groups: list[st.SearchStrategy[list[str]]]
    if kind == "top":
        return draw(st.lists(st.one_of(st.sampled_from(["--version", "--help", "-h", "explain",
                                                        "score", "plot", "calibrate"]),
                                       bad_formats, text), max_size=3))
    if kind == "explain":
        topic = draw(st.integers(0, 9).flatmap(
            lambda i: st.sampled_from(TOPICS) if i else st.one_of(st.just(""), bad_formats)))
        head = ["explain"] + ([] if topic == "" else [topic])
        common = [opt("--format", values(fmt, 1)), opt("-f", values(fmt, 1)),
                  opt("--base", values(base, 1)),
                  opt("-o", values(st.sampled_from(["out.md", "o/x.md", "-"]), 1))]
        # the options a topic needs (mostly given), then any of its other options
        needed: list[st.SearchStrategy[list[str]]] = []
        if topic in ("sigmoid", "softmax"):
            needed = [st.builds(list, values(num, 6))]
            groups = [opt("--names", values(names, 1))]
        elif topic in ("cross-entropy", "ce"):
            scores, probs = opt("--scores", values(num)), opt("--probs", values(prob))
            target = opt("--target", values(noisy(st.sampled_from(
                ["0", "1", "2", "cat", "dog", "-1", "3", " 1 "]), paths), 1))
            target_probs = opt("--target-probs", values(prob))
            needed = [st.one_of(scores, probs), st.one_of(target, target_probs)]
            groups = [scores, probs, target, target_probs, opt("--classes", values(names, 1)),
                      opt("--normalize")]
        elif topic in ("bce", "binary-cross-entropy"):
            pred = st.one_of(opt("--prob", values(prob)), opt("--logit", values(num)))
            label = st.one_of(opt("--label", values(prob)), opt("--labels", values(prob)))
            needed = [pred, label]
            groups = [pred, label, opt("--names", values(names, 1))]
        else:
            groups = [st.builds(list, values(tokens(EXPLAIN_OPTS, paths)))]
        given_ = [g for g in needed if draw(st.integers(0, 9)) > 0]
        rest = draw(st.lists(st.one_of(*groups, *common), max_size=3))
        parts = draw(st.permutations([draw(g) for g in given_] + rest))
        return head + [t for g in parts for t in g]
    if kind in ("score", "calibrate"):
        head = [kind, draw(st.one_of(st.sampled_from(files), st.sampled_from(files),
                                        bad_formats, text))]
        col = noisy(st.sampled_from(["label", "y", "0", "-1", "3", "w", "cat", "a", "p_*",
                                     "y_*", "1:3", "0:0", "cat,dog", "nope", "1:", ":2"]),
                    paths)
        groups = [
            opt("--logits"), opt("--json"), opt("--multilabel"), opt("--progress"),
            opt("--no-progress"), opt("--label", values(col, 1)),
            opt("--columns", values(col, 1)), opt("--targets", values(col, 1)),
            opt("--weight", values(col, 1)), opt("--classes", values(names, 1)),
            opt("--base", values(base, 1)),
            opt("--bins", values(noisy(st.sampled_from(["1", "2", "15", "0", "-1", "10001",
                                                        "99999999999"]), paths), 1)),
            opt("--per-class", values(noisy(st.sampled_from(["0", "1", "all", "x", "-1"]),
                                            paths), 1)),
            opt("--sum-tolerance", values(noisy(st.sampled_from(["0", "1e-3", "1", "nan",
                                                                 "-1", "inf"]), paths), 1)),
            opt("--delimiter", values(noisy(st.sampled_from([",", "\\t", "tab", ";", "",
                                                             '"', " ", ",,", "\n"]), paths), 1)),
            opt("--file-format", values(noisy(st.sampled_from(["csv", "parquet", "npy", "npz"]),
                                              paths), 1)),
            opt("--chunk-rows", values(noisy(st.sampled_from(["1", "2", "0", "-3", "10**9",
                                                              "1000000000"]), paths), 1)),
            opt("-o", values(st.sampled_from(["out.json", "new/out.json", "adir"]), 1)),
            opt("--top-k", values(noisy(st.sampled_from(["1", "1,2", "5", "0", "-1", "2,2",
                                                         "1,,2", "x"]), paths), 1)),
            opt("--max-footer-mb", values(noisy(st.sampled_from(["20", "0", "-1", "nan",
                                                                 "1e-6", "inf"]), paths), 1)),
        ]
        if kind == "calibrate":
            groups += [
                opt("--apply", values(noisy(st.sampled_from(["1.5", "0.5", "0", "-1", "nan",
                                                             "inf", "2,0.1", "1,", "out.json",
                                                             "cal.json"]), paths), 1)),
                opt("--apply-to", values(st.sampled_from(files), 1)),
                opt("--report", values(st.sampled_from(["cal.json", "new/cal.json", "adir"]),
                                       1)),
                opt("-o", values(st.sampled_from(["cal.csv", "cal.npy", "adir"]), 1))]
        if draw(st.booleans()):  # only options that go with every file
            groups = [opt("--logits"), opt("--json"), opt("--no-progress"),
                      opt("--base", values(base, 1)), opt("-o", st.just(["out.json"])),
                      opt("--bins", st.sampled_from([["1"], ["3"], ["15"]])),
                      opt("--chunk-rows", st.sampled_from([["1"], ["2"]])),
                      opt("--per-class", st.sampled_from([["0"], ["1"], ["all"]]))]
        rest = draw(st.lists(st.one_of(*groups), max_size=4))
        return head + [t for g in rest for t in g]
    # plot: low resolutions only (each plot takes a moment)
    head = ["plot", draw(st.one_of(st.sampled_from(["sigmoid", "softmax", "bce",
                                                    "cross-entropy", "all", "reliability"]),
                                   bad_formats))]
    rest = draw(st.lists(st.one_of(st.sampled_from(PLOT_OPTS), st.sampled_from(paths),
                                   st.sampled_from(["out.json", "cal.json"]),
                                   st.sampled_from(["10", "12", "0", "-5", "x", "1e3", ""])),
                         max_size=4))
    if "--dpi" not in rest:
        rest += ["--dpi", "10"]
    return head + rest


@pytest.fixture(scope="module")
def playground(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], list[str]]:
    """A scratch directory (the fuzzer's cwd: every file it writes lands there) with
    input files of every kind, good and bad, and paths that do not exist."""
    d = tmp_path_factory.mktemp("fuzz")
    (d / "good.csv").write_text("cat,dog,bird,label\n0.7,0.2,0.1,cat\n0.1,0.8,0.1,1\n"
                                "0.2,0.2,0.6,bird\n\n")
    (d / "mixed.csv").write_text("a,b,label\n0.8,0.2,0\n0.7,0.3,1\n0.4,0.6,1\n0.9,0.1,0\n"
                                 "0.3,0.7,0\n0.6,0.4,0\n")  # some top classes wrong
    (d / "ids.csv").write_text(",cat,dog,label,w\n0,0.5,0.5,0,1\n1,0.2,0.8,1,2\n")
    (d / "logits.tsv").write_text("a\tb\tlabel\n3.5\t-1\t0\n-2\t4\t1\n")
    (d / "multi.csv").write_text("p_a,p_b,y_a,y_b\n0.9,0.1,1,0\n0.4,0.7,0,1\n")
    (d / "bad.csv").write_text("a,b,label\n0.5,x,0\n\n0.5\n")
    (d / "empty.csv").write_text("")
    (d / "junk.parquet").write_bytes(b"PAR1 not really")
    (d / "junk.npz").write_bytes(b"PK\x03\x04 not a zip")
    (d / "latin1.csv").write_bytes(b"a,b,label\n0.5,0.5,\xe9\n")
    np.save(d / "p.npy", np.array([[0.3, 0.7], [0.9, 0.1]]))
    np.save(d / "y.npy", np.array([1, 0]))
    np.savez(d / "a.npz", probs=np.array([[0.3, 0.7], [0.9, 0.1]]), label=np.array([1, 0]))
    (d / "adir").mkdir()
    files = [str(d / n) for n in ("good.csv", "mixed.csv", "ids.csv", "logits.tsv",
                                  "multi.csv", "bad.csv", "empty.csv", "junk.parquet",
                                  "junk.npz", "latin1.csv", "p.npy", "y.npy", "a.npz", "adir")]
    files += [str(d / "missing.csv"), "missing.npy", "rel/missing.parquet"]
    paths = [*files, "out.json", "out.md", "figs/", "new/dir/x.png", "x.png", str(d / "adir"),
             str(d / "no" / "such" / "dir" / "f.png"), "y.npy", "p.npy"]
    return d, paths, files


@pytest.fixture(scope="module")
def fuzz_strategy(playground: tuple[Path, list[str], list[str]]) -> st.SearchStrategy[list[str]]:
    _, paths, files = playground
    return argvs(paths, files)


def check_outcome(argv: list[str], rc: int, out: str, err: str) -> None:
    assert "Traceback" not in out + err, (argv, err)
    if "--progress" in argv and "\r\x1b[K" in err:  # a progress bar drawn, then erased
        err = err.rsplit("\r\x1b[K", 1)[1]
    # the catch-all in main() turns a bug into one line; the fuzzer must not reach it
    assert "unexpected: please report it" not in err, (argv, err)
    if rc == 0:
        assert err == "", (argv, err)
        wrote = any(o in argv for o in ("-o", "--output", "--outdir", "--reliability"))
        assert out or wrote, argv
    else:
        assert rc in (1, 2), (argv, rc, err)
        assert_one_line_error(rc, err)


def test_fuzz_argv_never_tracebacks(playground: tuple[Path, list[str], list[str]],
                                    fuzz_strategy: st.SearchStrategy[list[str]]) -> None:
    d, _, _ = playground

    @settings(max_examples=250, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(argv=fuzz_strategy)
    def prop(argv: list[str]) -> None:
        rc, out, err = call(argv)
        check_outcome(argv, rc, out, err)

    with chdir(d):
        prop()


# --------------------------------------------------------------------------- console script


@pytest.mark.parametrize("args", [
    ["explain", "bce", "--prob", "0.3", "--label", "2"],
    ["explain", "cross-entropy", "--scores", "1", "2", "3", "--target-probs", "0.5", "0.6", "0"],
    ["score", "nowhere.csv", "--delimiter", ""],
    ["explain", "sigmoid"],
])
def test_console_script_one_line(args: list[str]) -> None:
    r = run(*args)
    assert_one_line_error(r.returncode, r.stderr)
    assert r.stdout == ""


def test_console_script_negative_infinity_and_broken_pipe(tmp_path: Path) -> None:
    r = run("explain", "sigmoid", "-inf", "-3", "--format", "text")
    assert r.returncode == 0, r.stderr
    assert re.search(r"^ *-inf +x < 0", r.stdout, re.MULTILINE)
    # piped into a reader that stops early (5,000 rows: more than a pipe's buffer, so the
    # writes fail with EPIPE): no traceback, no "Exception ignored"
    many = " ".join(str(i) for i in range(5000))
    p = subprocess.run(f"'{_script()}' explain sigmoid {many} --format text | head -c 10",
                       shell=True, capture_output=True, text=True, timeout=120)
    assert p.stdout == "Sigmoid\n=="
    assert "Traceback" not in p.stderr and "Exception" not in p.stderr, p.stderr
