"""``crossentropy explain`` and the help texts, end to end through the console script."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from crossentropy.cli import main


def _script() -> str:
    exe = Path(sys.executable).parent / "crossentropy"
    assert exe.exists(), f"console script not installed next to {sys.executable}"
    return str(exe)


def run(*args: str, env: dict[str, str] | None = None,
        cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_script(), *args], capture_output=True, text=True, timeout=120,
                          env=env, cwd=cwd)


def numpy_only_env(tmp_path: Path) -> dict[str, str]:
    """An environment where rich, matplotlib and pyarrow cannot be imported."""
    shadow = tmp_path / "shadow"
    for name in ("rich", "matplotlib", "pyarrow"):
        (shadow / name).mkdir(parents=True)
        (shadow / name / "__init__.py").write_text(
            f"raise ImportError('{name} is not installed (simulated)')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(shadow) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_explain_article_plain_text() -> None:
    r = run("explain")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    # in the article's order
    keys = ["Sigmoid of the article's x1..x5", "Softmax of Z = [3, 0.6, 6.3]",
            "cat image [9.8, 3.7, 0.2]", "One-hot targets", "Categorical cross-entropy",
            "Binary cross-entropy"]
    pos = [out.index(k) for k in keys]
    assert pos == sorted(pos)
    # mpmath: sigmoid(-243) = 2.92712249651537e-106; H = 0.00332964080008 bits
    assert "2.927122497e-106" in out and "0.0033296408" in out
    assert "[WRONG]" in out and "e^{-(-226)}" in out
    assert "[TRUNCATED]" in out


def test_explain_works_with_numpy_only(tmp_path: Path) -> None:
    env = numpy_only_env(tmp_path)
    probe = subprocess.run([sys.executable, "-c", "import rich"], env=env,
                           capture_output=True, text=True)
    assert "simulated" in probe.stderr  # the shadow is in effect
    r = run("explain", env=env)
    assert r.returncode == 0, r.stderr
    assert "Sigmoid of the article's x1..x5" in r.stdout
    r = run("explain", "--format", "rich", env=env)
    assert r.returncode == 1
    assert 'pip install ".[cli]" in a clone of the crossentropy repository' in r.stderr
    assert 'pip install "rich>=13"' in r.stderr
    r = run("plot", "sigmoid", "-o", str(tmp_path / "s.png"), env=env)
    assert r.returncode == 1
    assert 'pip install ".[plot]"' in r.stderr and 'pip install "matplotlib>=3.7"' in r.stderr
    assert not (tmp_path / "s.png").exists()
    pq = tmp_path / "x.parquet"
    pq.write_bytes(b"PAR1")
    r = run("score", str(pq), env=env)
    assert r.returncode == 1
    assert 'pip install ".[io]"' in r.stderr and 'pip install "pyarrow>=14"' in r.stderr


def test_import_stays_light() -> None:
    code = ("import sys, crossentropy, crossentropy.cli, crossentropy.explain, "
            "crossentropy.score; heavy = {'rich', 'matplotlib', 'pyarrow', 'torch', 'numba'}; "
            "print(sorted(heavy & set(sys.modules)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr


def test_explain_sigmoid_markdown() -> None:
    r = run("explain", "sigmoid", "1", "9", "424.5", "-3", "-243", "--format", "markdown")
    assert r.returncode == 0, r.stderr
    assert "| 1 | x >= 0: 1 / (1 + e^-x) | 0.3678794412 | 1.367879441 | 0.7310585786 |" in r.stdout
    assert "| -243 | x < 0: e^x / (1 + e^x) |" in r.stdout


def test_explain_softmax_latex() -> None:
    r = run("explain", "softmax", "3", "0.6", "6.3", "--format", "latex")
    assert r.returncode == 0, r.stderr
    assert "\\begin{tabular}" in r.stdout
    assert "$0.961326662$" in r.stdout  # mpmath 0.961326661994021


def test_explain_cross_entropy_json_issue_example() -> None:
    r = run("explain", "cross-entropy", "--scores", "9.8", "3.7", "0.2", "--target", "cat",
            "--classes", "cat,dog,bird", "--base", "2", "--format", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc[0]["results"]["loss"] == pytest.approx(0.00332964080008076, rel=1e-13)
    assert [row[0] for row in doc[0]["rows"]] == ["cat", "dog", "bird", "sum"]


def test_explain_bce_prob_and_logit() -> None:
    r = run("explain", "bce", "--prob", "0.997694", "0.002237", "--label", "1", "0",
            "--base", "2", "--format", "json")
    assert r.returncode == 0, r.stderr
    loss = json.loads(r.stdout)[0]["results"]["loss"]
    # mpmath: -log2(0.997694), -log2(1 - 0.002237)
    assert loss == pytest.approx([0.00333069653505178, 0.00323092394374962], rel=1e-13)
    r = run("explain", "bce", "--logit", "-3", "--label", "1", "--format", "text")
    assert r.returncode == 0, r.stderr
    assert "3.048587352" in r.stdout  # softplus(3) = 3.048587351573742 (mpmath)
    assert "1 - p is never formed" in r.stdout


def test_explain_output_file(tmp_path: Path) -> None:
    out = tmp_path / "steps.md"
    r = run("explain", "softmax", "1", "2", "--format", "markdown", "-o", str(out))
    assert r.returncode == 0 and r.stdout == ""
    assert out.read_text().startswith("### Softmax")


@pytest.mark.parametrize(("args", "needle"), [
    (["explain", "cross-entropy", "--scores", "1", "2", "--target", "cow",
      "--classes", "cat,dog"], "--target 'cow' is not one of the classes"),
    (["explain", "cross-entropy", "--probs", "0.5", "0.4", "--target", "0"], "sum to 0.9"),
    (["explain", "bce", "--prob", "0.5", "--label", "1", "0"], "1 prediction but 2 labels"),
    (["explain", "bce", "--prob", "0.5", "--label", "1", "--base", "1"], "base must be"),
    (["explain", "sigmoid", "abc"], "invalid float value"),
])
def test_explain_usage_errors(args: list[str], needle: str) -> None:
    r = run(*args)
    assert r.returncode == 2
    assert needle in r.stderr
    assert "Traceback" not in r.stderr


def test_help_is_complete() -> None:
    r = run("--help")
    assert r.returncode == 0
    for word in ("explain", "plot", "score", '".[cli]"', '".[plot]"', '".[io]"',
                 "from a clone of the repository (not on PyPI yet)"):
        assert word in r.stdout
    r = run("explain", "--help")
    for word in ("sigmoid", "softmax", "cross-entropy", "bce", "--format", "markdown", "latex",
                 "json"):
        assert word in r.stdout
    r = run("score", "--help")
    for word in ("--logits", "--label", "--columns", "--weight", "--multilabel", "--targets",
                 "--base", "--bins", "--reliability", "--json", "--progress", "Parquet",
                 ".npz", "perplexity", "calibration"):
        assert word in r.stdout, word
    r = run("plot", "--help")
    for word in ("sigmoid", "softmax", "bce", "cross-entropy", "--output", "--dpi"):
        assert word in r.stdout


def test_main_in_process_and_python_m() -> None:
    assert main(["--version"]) == 0
    assert main(["explain", "sigmoid", "0", "--format", "json"]) == 0
    assert main(["explain", "bogus"]) == 2
    r = subprocess.run([sys.executable, "-m", "crossentropy", "explain", "sigmoid", "0",
                        "--format", "text"], capture_output=True, text=True)
    assert r.returncode == 0 and "0.5" in r.stdout


# --------------------------------------------------------------------------- issue 27:
# every note follows from the input shown


def _notes(*args: str) -> tuple[str, list[dict[str, object]]]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["explain", *args, "--format", "json"])
    assert rc == 0, err.getvalue()
    doc = json.loads(out.getvalue())
    return " | ".join(n for t in doc for n in t["notes"]), doc


@pytest.mark.parametrize(("args", "present", "absent"), [
    # NaN: neither overflow nor a stable form, only the NaN
    (["softmax", "nan", "1"], ["z1 is NaN", "the whole row NaN"],
     ["overflow", "709.78", "stable form", "nothing overflows"]),
    (["softmax", "1", "nan", "nan"], ["z2 and z3 are NaN"], ["overflow", "stable form"]),
    # +inf: inf - inf is no subtraction to speak of; the limit is what the library takes
    (["softmax", "inf", "1", "inf"], ["m = +inf", "share the mass equally: p = 1/2"],
     ["overflow", "709.78", "stable form"]),
    (["softmax", "-inf", "-inf"], ["every score is -inf", "0 / 0"], ["overflow", "stable"]),
    # -inf beside finite scores: the stable form holds, and the -inf entry is told apart
    (["softmax", "-inf", "1"], ["stable form", "z1 is -inf"], ["overflows float64"]),
    # the unshifted e^z overflows only for a finite z above 709.78, and that z is named
    (["softmax", "800", "1"], ["overflows float64 for z above 709.78 (here z = 800)",
                               "p of z2 underflows to 0", "ln p = -799 is exact"], []),
    (["softmax", "3", "0.6", "6.3"], ["stable form"], ["overflows float64", "underflow"]),
    (["softmax", "-800", "-801"], ["every unshifted e^z underflows to 0"], ["overflows"]),
    (["sigmoid", "-inf"], ["sigmoid(-inf) = 0: the limit,"], ["overflows", "e^inf"]),
    (["sigmoid", "nan"], ["NaN in, NaN out"], ["overflow", "stable form"]),
    (["sigmoid", "-800"], ["e^800 overflows float64"], []),
    (["ce", "--scores", "nan", "1", "--target", "0"], ["a score is NaN"],
     ["m = nan", "never log(0)", "terms with p_j = 0"]),
    (["ce", "--scores", "inf", "1", "--target", "1"],
     ["class 0 gets q = 1", "q of class 1 is exactly 0", "infinite"],
     ["m = inf", "subtracted first", "never log(0)"]),
    (["ce", "--scores", "-inf", "1", "2", "--target", "0"],
     ["a score of -inf gives q = 0", "q of class 0 is exactly 0"], ["never log(0)"]),
    (["ce", "--scores", "800", "1", "--target", "1"],
     ["q of class 1 underflows to 0 in float64, yet its ln q = -799 is exact"], ["/ ln e"]),
    # a logit far enough to round p is named; no example stands in for the input shown
    (["bce", "--logit", "3", "--label", "1"], ["never formed"], ["x = 40", "40 nats"]),
    (["bce", "--logit", "40", "--label", "0"], ["row 1: x = 40 rounds p to 1"], []),
    (["bce", "--logit", "nan", "--label", "1"], ["row 1: x = nan", "NaN in, NaN out"],
     ["is exactly 0"]),
    (["bce", "--prob", "0", "--label", "1"], ["row 1: p = 0 with y = 1", "infinite",
                                              "torch's binary_cross_entropy clamps"], []),
    (["bce", "--logit", "inf", "--label", "0"], ["x = inf gives p = 1 exactly"], ["torch"]),
])
def test_explain_notes_follow_from_the_input(args: list[str], present: list[str],
                                             absent: list[str]) -> None:
    notes, _ = _notes(*args)
    for text in present:
        assert text in notes, (text, notes)
    for text in absent:
        assert text not in notes, (text, notes)


def test_explain_nan_rows_are_nan_throughout() -> None:
    _, doc = _notes("bce", "--logit", "nan", "2", "--label", "1", "0")
    row = doc[0]["rows"][0]  # [name, x, p, y, log p, log(1-p), t1, t2, loss]
    assert row[6:] == ["nan", "nan", "nan"]  # the terms agree with the loss: NaN
    _, doc = _notes("ce", "--scores", "nan", "1", "--target", "1")
    assert [r[-1] for r in doc[0]["rows"]] == ["nan", "nan", "nan"]  # even where p_j = 0
    _, doc = _notes("softmax", "inf", "1", "inf")
    # the limit the library takes, shown step by step: z - m -> 0 or -inf, e^(z - m), p
    assert [r[2] for r in doc[0]["rows"][:3]] == [0.0, "-inf", 0.0]
    assert [r[3] for r in doc[0]["rows"][:3]] == [1.0, 0.0, 1.0]
    assert doc[0]["results"]["p"] == [0.5, 0.0, 0.5]


def test_explain_label_error_is_a_whole_sentence() -> None:
    r = run("explain", "bce", "--prob", "0.3", "--label", "2")
    assert r.returncode == 2
    # before: "... a label is 0, 1 or a soft label between" (cut off)
    assert r.stderr == ("crossentropy explain: error: --label 2.0 is not in [0, 1]: a label "
                        "is 0, 1, or a soft label between 0 and 1\n")


# --------------------------------------------------------------------------- docs/cli.md

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
_FENCE = re.compile(r'^```(\w+)(?: title="([^"]+)")?\n(.*?)^```$', re.MULTILINE | re.DOTALL)


def docs_session(text: str, cwd: Path) -> str:
    """`text` with the output of every ``$ crossentropy ...`` line of its ``console`` blocks
    replaced by what the command prints (stdout, then stderr), run in-process in `cwd`.

    A block titled ``title="NAME"`` is written to ``cwd/NAME`` first; ``$ echo $?`` prints
    the exit status of the command before it.
    """
    status = 0

    def block(m: re.Match[str]) -> str:
        nonlocal status
        lang, title, body = m.groups()
        if lang != "console":
            if title:
                (cwd / title).write_text(body)
            return m.group(0)
        lines: list[str] = []
        for line in body.splitlines():
            if not line.startswith("$ "):
                continue  # an old output line: replaced
            lines.append(line)
            if line == "$ echo $?":
                lines.append(str(status))
                continue
            argv = shlex.split(line[2:], comments=True)
            assert argv[0] == "crossentropy", line
            out, err = io.StringIO(), io.StringIO()
            old = os.getcwd()
            os.chdir(cwd)
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    status = main(argv[1:])
            finally:
                os.chdir(old)
            lines += (out.getvalue() + err.getvalue()).splitlines()
        return "```console\n" + "\n".join(lines) + "\n```"

    return _FENCE.sub(block, text)


def test_docs_cli_examples_are_real_outputs(tmp_path: Path) -> None:
    text = DOC.read_text()
    assert text.count("```console") >= 10
    for sub in ("explain", "plot", "score", "calibrate"):  # every subcommand has an example
        assert f"$ crossentropy {sub} " in text, sub
    fresh = docs_session(text, tmp_path)
    if fresh != text:
        import difflib

        diff = "".join(difflib.unified_diff(text.splitlines(True), fresh.splitlines(True),
                                            "docs/cli.md", "what the commands print", n=1))
        pytest.fail("docs/cli.md differs from the real outputs (python "
                    f"tests/test_cli_explain.py --update-docs):\n{diff}")
    assert (tmp_path / "figures" / "sigmoid.png").exists()  # plot all made figures/


if __name__ == "__main__" and sys.argv[1:] == ["--update-docs"]:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        DOC.write_text(docs_session(DOC.read_text(), Path(d)))
    print(f"rewrote {DOC}")
