"""crossentropy.explain: the step tables, the article's checks, and the renderers.

Reference numbers come from mpmath at 40 digits (snippet below) or are hand-checkable.

    import mpmath as mp; mp.mp.dps = 40
    sig = lambda x: 1 / (1 + mp.exp(-mp.mpf(x)))
    sm = lambda z: [mp.exp(mp.mpf(t)) / sum(mp.exp(mp.mpf(u)) for u in z) for t in z]
    [sig(x) for x in ("1", "9", "424.5", "-3", "-243", "-226")]
    1 - sig("424.5")                       # with mp.mp.dps = 200
    sm(["3", "0.6", "6.3"]); sm(["9.8", "3.7", "0.2"])
    [mp.exp(mp.mpf(t) - mp.mpf("6.3")) for t in ("3", "0.6", "6.3")]  # shifted terms
    mp.log(sum(mp.exp(mp.mpf(t)) for t in ("3", "0.6", "6.3")))  # log-sum-exp
    -mp.log(sm(["9.8", "3.7", "0.2"])[0], 2)
    -mp.log(mp.mpf("0.997694"), 2); -mp.log(1 - mp.mpf("0.002237"), 2)
"""

from __future__ import annotations

import io
import json
import re
import sys

import numpy as np
import pytest
from rich.cells import cell_len

from crossentropy.explain import (
    article_tables,
    bce_table,
    cross_entropy_table,
    judge,
    render,
    sigmoid_table,
    softmax_table,
)
from crossentropy.explain.model import Table, fmt
from crossentropy.explain.render import render_rich, to_latex, to_markdown, to_text

# mpmath values (snippet in the module docstring)
SIG = {1.0: 0.731058578630005, 9.0: 0.999876605424014, 424.5: 1.0, -3.0: 0.0474258731775668,
       -243.0: 2.92712249651537e-106}
ONE_MINUS_SIG_424_5 = 4.385230560917e-185
SIG_MINUS_226 = 7.07045056072561e-99
SM_A = [0.0354567722016007, 0.00321656580437816, 0.961326661994021]
SM_A_SHIFTED = [0.03688316740124, 0.00334596545747127, 1.0]
SM_A_SHIFTED_SUM = 1.04022913285871
SM_CAT = [0.997694730092502, 0.00223769730402557, 6.75726034727486e-5]
CE_CAT_BITS = 0.00332964080008076
BCE_CAT_BITS = 0.00333069653505178  # -log2(0.997694)
BCE_DOG_BITS = 0.00323092394374962  # -log2(1 - 0.002237)


def _tables() -> dict[str, object]:
    return {t.title: t for t in article_tables()}


def test_article_order_and_values() -> None:
    ts = article_tables()
    titles = [t.title for t in ts]
    assert titles[0].startswith("Sigmoid")
    assert titles[1].startswith("Softmax of Z = [3, 0.6, 6.3]")
    assert "cat image" in titles[2]
    assert titles[3].startswith("One-hot")
    assert titles[4].startswith("Categorical cross-entropy")
    assert titles[5].startswith("Binary cross-entropy")
    sig, sm, net, oh, cet, bt = ts
    got = dict(zip(sig.results["x"], sig.results["sigmoid"], strict=True))
    for x, want in SIG.items():
        assert got[x] == pytest.approx(want, rel=1e-14)
    assert sig.results["one_minus_sigmoid"][2] == pytest.approx(ONE_MINUS_SIG_424_5, rel=1e-12)
    assert sm.results["p"] == pytest.approx(SM_A, rel=1e-14)
    assert sm.results["sum_shifted"] == pytest.approx(SM_A_SHIFTED_SUM, rel=1e-14)
    assert [r[3] for r in sm.rows[:3]] == pytest.approx(SM_A_SHIFTED, rel=1e-14)
    assert net.results["p"] == pytest.approx(SM_CAT, rel=1e-14)
    assert oh.rows == [["cat", 1.0, 0.0, 0.0], ["dog", 0.0, 1.0, 0.0], ["bird", 0.0, 0.0, 1.0]]
    assert cet.results["loss"] == pytest.approx(CE_CAT_BITS, rel=1e-13)
    assert cet.results["terms"][1:] == [0.0, 0.0]
    assert bt.results["loss"] == pytest.approx([BCE_CAT_BITS, BCE_DOG_BITS], rel=1e-13)


def test_article_verdicts() -> None:
    verdicts = {c.what: (c.verdict, c.detail) for t in article_tables() for c in t.checks}
    assert verdicts["sigmoid(1)"][0] == "agrees"
    assert verdicts["sigmoid(9)"][0] == "truncated"  # 0.99988 rounds to 1.000, not 0.999
    assert verdicts["sigmoid(424.5)"][0] == "agrees"
    assert "1 - 4.385e-185" in verdicts["sigmoid(424.5)"][1]
    assert verdicts["sigmoid(-3)"][0] == "agrees"
    v, detail = verdicts["sigmoid(-243)"]
    assert v == "wrong"
    assert "e^{-(-226)}" in detail and "e^243" in detail and "7.07e-99" in detail
    for cls in ("cat", "dog", "bird"):  # 0.9976947, 0.0022377, 0.0000676: digits cut off
        assert verdicts[f"q_{cls}"][0] == "truncated"
    assert verdicts["H(p1, q1) = -1 * log2(q1)"][0] == "agrees"
    assert verdicts["BCE, cat: p = 0.997694, y = 1"][0] == "agrees"
    assert verdicts["BCE, dog: p = 0.002237, y = 0"][0] == "agrees"
    assert verdicts["softmax([3, 0.6, 6.3])"][0] == "not shown"


@pytest.mark.parametrize(("claim", "true", "verdict"), [
    ("0.731", 0.7310585786, "agrees"),
    ("0.999", 0.9998766054, "truncated"),
    ("0.47", 0.0474, "wrong"),
    ("2.99e-98", 2.927e-106, "wrong"),
    ("2.93e-106", 2.927122e-106, "agrees"),
    ("2.92e-106", 2.927122e-106, "truncated"),
    ("0", 0.0, "agrees"),
])
def test_judge(claim: str, true: float, verdict: str) -> None:
    assert judge("x", claim, true).verdict == verdict


def test_sigmoid_table_branches_and_notes() -> None:
    t = sigmoid_table([2.0, -2.0, -800.0, 424.5])
    branches = [r[1] for r in t.rows]
    assert branches[0].startswith("x >= 0") and branches[1].startswith("x < 0")
    # e^-|x| = e^-2 = 0.1353352832366127 (mpmath), the same for x = 2 and x = -2
    assert t.rows[0][2] == pytest.approx(0.1353352832366127, rel=1e-15)
    assert t.rows[1][2] == t.rows[0][2]
    # the columns are consistent: sigma(-2) = e^-2 / (1 + e^-2), sigma(2) = 1 / (1 + e^-2)
    assert t.rows[1][4] == pytest.approx(t.rows[1][2] / t.rows[1][3], rel=1e-15)
    assert t.rows[0][4] == pytest.approx(1.0 / t.rows[0][3], rel=1e-15)
    notes = " ".join(t.notes)
    assert "e^800 overflows" in notes
    assert "sigmoid(-800) underflows to 0" in notes
    assert "sigmoid(424.5) is 1 - 4.385e-185" in notes


def test_softmax_table_consistent_and_overflow_note() -> None:
    t = softmax_table([1000.0, 0.0])
    assert t.results["p"] == [1.0, 0.0]  # e^-1000 underflows: p2 = 0 exactly in float64
    assert t.rows[0][4] == float("inf")  # the unshifted e^1000
    assert any("overflows float64" in n for n in t.notes)
    t = softmax_table([3.0, 0.6, 6.3])
    e = np.array([r[3] for r in t.rows[:3]])
    assert e / e.sum() == pytest.approx(SM_A, rel=1e-14)
    assert t.results["logsumexp"] == pytest.approx(6.339441008942835, rel=1e-14)  # mpmath


def test_cross_entropy_table_soft_target_and_probs() -> None:
    # H([0.5, 0.5, 0], softmax([9.8, 3.7, 0.2])) in bits = (0.00332964080008 + 8.80376939022)/2
    t = cross_entropy_table([0.5, 0.5, 0.0], scores=[9.8, 3.7, 0.2], base=2)
    assert t.results["loss"] == pytest.approx((0.00332964080008076 + 8.80376939022276) / 2,
                                              rel=1e-13)
    assert t.rows[-1][-1] == pytest.approx(t.results["loss"], rel=1e-14)
    # probabilities in nats, hand-checkable: -ln(0.5) = 0.6931471805599453
    t = cross_entropy_table([1.0, 0.0], probs=[0.5, 0.5])
    assert t.results["loss"] == pytest.approx(0.6931471805599453, rel=1e-15)
    t = cross_entropy_table([0.0, 1.0], probs=[1.0, 3.0], normalize=True)  # q = [0.25, 0.75]
    assert t.results["loss"] == pytest.approx(0.2876820724517809, rel=1e-15)  # -ln 0.75
    with pytest.raises(ValueError, match="exactly one"):
        cross_entropy_table([1.0], scores=[1.0], probs=[1.0])


def test_bce_table_from_logits_stable() -> None:
    # x = 40, y = 0: loss = softplus(40) = 40 + log1p(e^-40) = 40.0 in float64
    t = bce_table([0.0, 1.0], logits=[40.0, -3.0])
    assert t.results["loss"][0] == pytest.approx(40.0, rel=1e-15)
    # x = -3, y = 1: softplus(3) = 3.048587351573742 (mpmath)
    assert t.results["loss"][1] == pytest.approx(3.048587351573742, rel=1e-15)
    row = t.rows[0]  # [name, x, p, y, log p, log(1-p), t1, t2, loss]
    assert row[4] == pytest.approx(-4.248354255291589e-18, rel=1e-12)  # log sigma(40)
    assert row[5] == pytest.approx(-40.0, rel=1e-15)
    assert row[6] == 0.0 and row[7] == row[8]
    assert any("never formed" in n for n in t.notes)


def test_renderers() -> None:
    tables = [cross_entropy_table([1.0, 0.0, 0.0], scores=[9.8, 3.7, 0.2],
                                  classes=["cat", "dog", "bird"], base=2)]
    md = to_markdown(tables)
    assert "| cat | 9.8 | 0.9976947301 | 1 | -0.0033296408 | 0.0033296408 |" in md
    assert "$$ H(p, q) = -\\sum_j p_j \\log_{2} q_j $$" in md
    tex = to_latex(tables)
    assert "\\begin{tabular}{lrrrrr}" in tex
    assert "$6.757260347 \\times 10^{-5}$" in tex
    assert "cross\\_entropy" in tex  # underscores escaped in text
    text = to_text(tables)
    assert "cat" in text and "0.0033296408" in text
    buf = io.StringIO()
    render(tables, "json", buf)
    doc = json.loads(buf.getvalue())
    assert doc[0]["results"]["loss"] == tables[0].results["loss"]
    assert doc[0]["rows"][0][:2] == ["cat", 9.8]
    buf = io.StringIO()
    render(tables, "rich", buf)
    assert "0.9976947301" in buf.getvalue()


def test_json_spells_out_infinities() -> None:
    buf = io.StringIO()
    render([softmax_table([1000.0, 0.0])], "json", buf)
    doc = json.loads(buf.getvalue())
    assert doc[0]["rows"][0][4] == "inf"


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_without_rich_falls_back_to_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rich", None)  # import rich now raises ImportError
    buf = _Tty()
    render(article_tables(), "table", buf)
    assert buf.getvalue().startswith("Sigmoid of the article's x1..x5\n====")
    with pytest.raises(ImportError, match=r'pip install "\.\[cli\]" in a clone'):
        render(article_tables(), "rich", io.StringIO())


def test_table_on_a_terminal_uses_rich() -> None:
    buf = _Tty()
    render([sigmoid_table([1.0])], "table", buf)
    assert "┏" in buf.getvalue() or "━" in buf.getvalue()  # rich's box drawing


# --------------------------------------------------------------------------- rich widths

_BOX = re.compile(r"[^\s\u2500-\u257f]+")  # the words of a rich table: split at box drawing


def _wide_tables() -> list[Table]:
    return [*article_tables(),
            sigmoid_table([-243.0, 1e-300, -1e300, 424.5, -745.5]),
            softmax_table([1000.0, 0.0, -1e-7], ["first", "second", "third"]),
            bce_table([1.0, 0.0, 0.25], logits=[-40.0, 1e-8, 3.3], base=2),
            cross_entropy_table([0.25, 0.25, 0.5], probs=[0.1, 0.2, 0.7],
                                classes=["a long class name", "b", "c"], base=10)]


def _render_at(tables: list[Table], width: int) -> str:
    buf = io.StringIO()
    render_rich(tables, buf, width=width)
    return buf.getvalue()


@pytest.mark.parametrize("width", [40, 60, 80, 120])
def test_rich_tables_never_cut_a_number(width: int) -> None:
    tables = _wide_tables()
    out = _render_at(tables, width)
    assert "…" not in out
    assert max(cell_len(line) for line in out.splitlines()) <= width
    words = set(_BOX.findall(out))
    # mpmath: sigmoid(-243) = 2.92712249651537e-106, 1 - sigmoid(424.5) = 4.385230560917e-185
    assert {"2.927122497e-106", "4.385230561e-185"} <= words
    for t in tables:
        for row in t.rows:
            for v in row:
                s = fmt(v)
                if not isinstance(v, str) and len(s) >= 5:  # the numbers, whole
                    assert s in words, (t.title, s, width)
        for c in t.checks:
            assert fmt(c.true) in words, (c.what, width)


def test_rich_layout_is_a_table_when_it_fits_and_vertical_when_not() -> None:
    tables = [sigmoid_table([424.5, -243.0])]
    wide = _render_at(tables, 120)
    # horizontal: one line holds a whole row
    assert any("424.5" in ln and ln.count("4.385230561e-185") == 2 for ln in wide.splitlines())
    narrow = _render_at(tables, 40)
    lines = narrow.splitlines()
    assert not any("424.5" in ln and "4.385230561e-185" in ln for ln in lines)
    # vertical: one 'column  value' line per cell
    assert any("sigmoid(x)" in ln and "2.927122497e-106" in ln for ln in lines)
    assert any("branch" in ln and "x < 0: e^x" in ln for ln in lines)


@pytest.mark.parametrize("width", [20, 21, *range(24, 201, 11)])
def test_rich_no_ellipsis_at_any_width(width: int) -> None:
    out = _render_at(_wide_tables(), width)
    assert "…" not in out and "..." not in out
    assert max(cell_len(line) for line in out.splitlines()) <= width
    assert "2.927122497e-106" in set(_BOX.findall(out))


def test_rich_cells_are_not_markup() -> None:
    # rich would read '[bold]' as a style and fail on '[/x]'; names print as given
    out = _render_at([softmax_table([1.0, 2.0], ["[bold]", "[/x]"])], 100)
    assert "[bold]" in out and "[/x]" in out


# --------------------------------------------------------------------------- issue 27:
# every note follows from the input shown (hypothesis, over ordinary and special values)

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_EXP_MAX = 709.782712893384  # ln(largest double), from mpmath: ln(1.7976931348623157e308)
_special = st.sampled_from([float("nan"), float("inf"), float("-inf"), 800.0, -800.0, 1e308,
                            -1e308, 710.0, -746.0, 0.0, 36.0, 40.0, -40.0])
_value = st.one_of(st.floats(-1000, 1000), _special)


def _named_numbers(notes: list[str]) -> set[str]:
    """Every 'x = N' / 'z = N' a note names (but the threshold 'below x = -709.78')."""
    found = re.findall(r"\b[xz] = (-?(?:inf|nan|[0-9][0-9.e+-]*))", " ".join(notes))
    return set(found) - {"-709.78"}


def _shown(values: list[float]) -> set[str]:
    return {f"{v:g}" for v in values}


@settings(max_examples=150, derandomize=True, deadline=None, database=None)
@given(st.lists(_value, min_size=1, max_size=5))
def test_softmax_notes_follow_from_the_scores(z: list[float]) -> None:
    t = softmax_table(z)
    notes = " | ".join(t.notes)
    nan = any(v != v for v in z)
    finite = [v for v in z if abs(v) != float("inf") and v == v]
    top = max(z) if not nan else float("nan")
    assert ("the whole row NaN" in notes) == nan, notes
    assert ("stable form" in notes) == (not nan and abs(top) != float("inf")), notes
    assert ("+inf" in notes) == (not nan and top == float("inf")), notes
    assert ("every score is -inf" in notes) == (not nan and top == float("-inf")), notes
    overflow = any(v > _EXP_MAX for v in finite) and not nan and abs(top) != float("inf")
    assert ("overflows float64" in notes) == overflow, notes
    assert _named_numbers(t.notes) <= _shown(z), notes
    # the table's steps are the library's: p = e^(z - m) / sum e^(z - m) where it is defined
    if not nan and top != float("-inf"):
        e = [r[3] for r in t.rows[:-1]]
        total = sum(e)
        for pj, ej, dj in zip(t.results["p"], e, [r[2] for r in t.rows[:-1]], strict=True):
            # the shown z - m is rounded, and e^(z - m) turns that absolute error into a
            # relative one of |z - m| ulp (the library keeps the rounding error of z - m)
            spread = abs(dj) if abs(dj) != float("inf") else 0.0
            assert pj == pytest.approx(ej / total, rel=4e-16 * (4.0 + spread), abs=0.0)


@settings(max_examples=150, derandomize=True, deadline=None, database=None)
@given(st.lists(_value, min_size=1, max_size=5))
def test_sigmoid_notes_follow_from_the_inputs(x: list[float]) -> None:
    t = sigmoid_table(x)
    notes = " | ".join(t.notes)
    neg = [v for v in x if v < 0 and v != float("-inf")]
    assert ("NaN in, NaN out" in notes) == any(v != v for v in x), notes
    assert ("stable form" in notes) == bool(neg), notes
    assert ("overflows float64" in notes) == bool(neg and min(neg) < -_EXP_MAX), notes
    assert ("the limit" in notes) == any(abs(v) == float("inf") for v in x), notes
    assert _named_numbers(t.notes) <= _shown(x), notes


# (no +-1e308: the mean of two such losses overflows; that is the library's reduction, not
# the notes under test here)
@settings(max_examples=100, derandomize=True, deadline=None, database=None)
@given(st.lists(st.tuples(_value.filter(lambda v: abs(v) != 1e308),
                          st.sampled_from([0.0, 1.0, 0.5])), min_size=1, max_size=4))
def test_bce_notes_follow_from_the_logits(pairs: list[tuple[float, float]]) -> None:
    x = [a for a, _ in pairs]
    y = [b for _, b in pairs]
    t = bce_table(y, logits=x)
    notes = " | ".join(t.notes)
    assert ("NaN in, NaN out" in notes) == any(v != v for v in x), notes
    assert _named_numbers(t.notes) <= _shown(x), notes
    for row, loss in zip(t.rows, t.results["loss"], strict=True):  # type: ignore[arg-type]
        # the two terms add up to the library's loss (NaN where it is NaN)
        assert row[-1] == loss or (loss != loss and row[-1] != row[-1])
        total = row[6] + row[7]
        assert total == pytest.approx(loss, rel=1e-15) or (total != total and loss != loss) \
            or (total == loss)
