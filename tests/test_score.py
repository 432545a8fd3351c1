"""crossentropy.score: readers, streaming metrics, and malformed input (fuzzed).

Reference values are computed here independently: -log of the label's (renormalised)
probability with NumPy, scipy.special.log_softmax for logits, and hand-counted accuracy and
calibration bins.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.special
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crossentropy.score import (
    ColumnSpec,
    ScoreError,
    ScoreOptions,
    labels_to_index,
    parse_columns,
    score_file,
)

NAMES = ["cat", "dog", "bird", "fish"]


def _data(n: int = 53, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(len(NAMES)) * 0.7, size=n)
    y = rng.integers(0, len(NAMES), size=n)
    w = rng.uniform(0.0, 2.0, size=n)
    return p, y, w


def _write_csv(path: Path, p: np.ndarray, y: np.ndarray, w: np.ndarray | None = None,
               names_as_labels: bool = True) -> None:
    head = [*NAMES, "label"] + (["w"] if w is not None else [])
    lines = [",".join(head)]
    for i in range(len(y)):
        lab = NAMES[y[i]] if names_as_labels and i % 2 == 0 else str(int(y[i]))
        cells = [repr(float(v)) for v in p[i]] + [lab]
        if w is not None:
            cells.append(repr(float(w[i])))
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")


def _reference(p: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> dict[str, float]:
    w = np.ones(len(y)) if w is None else w
    q = p / p.sum(axis=1, keepdims=True)
    loss = -np.log(q[np.arange(len(y)), y])
    mean = float(np.sum(w * loss) / np.sum(w))
    acc = float(np.sum(w * (q.argmax(axis=1) == y)) / np.sum(w))
    return {"ce": mean, "acc": acc, "ppl": math.exp(mean)}


def test_csv_matches_reference_for_any_chunk_size(tmp_path: Path) -> None:
    p, y, w = _data()
    f = tmp_path / "p.csv"
    _write_csv(f, p, y, w)
    ref = _reference(p, y, w)
    reports = [score_file(str(f), ScoreOptions(columns=ColumnSpec(weight="w"), chunk_rows=k))
               for k in (1, 2, 7, 1000)]
    for rep in reports:
        assert rep["rows"] == len(y)
        assert rep["cross_entropy"] == pytest.approx(ref["ce"], rel=1e-12)
        assert rep["accuracy"] == pytest.approx(ref["acc"], rel=1e-12)
        assert rep["perplexity"] == pytest.approx(ref["ppl"], rel=1e-12)
        assert rep["ece"] == pytest.approx(reports[-1]["ece"], rel=1e-12)
    # bits: the same number divided by ln 2
    bits = score_file(str(f), ScoreOptions(columns=ColumnSpec(weight="w"), base=2.0))
    assert bits["cross_entropy"] == pytest.approx(ref["ce"] / math.log(2), rel=1e-12)


def test_all_formats_agree(tmp_path: Path) -> None:
    p, y, _ = _data(40)
    ref = _reference(p, y)
    _write_csv(tmp_path / "a.csv", p, y)
    table = pa.table({**{n: p[:, j] for j, n in enumerate(NAMES)},
                      "label": [NAMES[v] for v in y]})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=16)  # 3 row groups
    np.save(tmp_path / "a.npy", p)
    np.save(tmp_path / "labels.npy", y)
    np.savez_compressed(tmp_path / "a.npz", probs=p, labels=y)
    got = [
        score_file(str(tmp_path / "a.csv"), ScoreOptions(chunk_rows=7)),
        score_file(str(tmp_path / "a.parquet"), ScoreOptions(chunk_rows=5)),
        score_file(str(tmp_path / "a.npy"),
                   ScoreOptions(columns=ColumnSpec(label=str(tmp_path / "labels.npy")),
                                chunk_rows=6)),
        score_file(str(tmp_path / "a.npz"), ScoreOptions(chunk_rows=9)),
    ]
    for rep in got:
        assert rep["rows"] == 40
        assert rep["cross_entropy"] == pytest.approx(ref["ce"], rel=1e-12)
        assert rep["accuracy"] == pytest.approx(ref["acc"], rel=1e-12)


def test_logits_and_per_class(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    z = rng.normal(scale=3.0, size=(30, 3))
    y = rng.integers(0, 3, size=30)
    np.savez(tmp_path / "z.npz", logits=z, y=y)
    rep = score_file(str(tmp_path / "z.npz"), ScoreOptions(logits=True, chunk_rows=4))
    lp = scipy.special.log_softmax(z, axis=1)[np.arange(30), y]
    assert rep["cross_entropy"] == pytest.approx(-lp.mean(), rel=1e-12)
    for c in range(3):
        row = rep["per_class"][c]
        mine = y == c
        assert row["support"] == mine.sum()
        assert row["cross_entropy"] == pytest.approx(-lp[mine].mean(), rel=1e-12)
        guess = z.argmax(axis=1)
        assert row["recall"] == pytest.approx(np.mean(guess[mine] == c))
        assert row["precision"] == pytest.approx(np.mean(y[guess == c] == c))


def test_ece_by_hand(tmp_path: Path) -> None:
    # Two bins (--bins 2).  Rows (top-class confidence, correct?):
    #   0.9 right, 0.8 wrong  -> bin [0.5, 1): confidence 1.7, hits 1
    #   0.6 right             -> bin [0.5, 1) too: confidence 2.3, hits 2
    #   0.4 wrong (3 classes) -> bin [0, 0.5): confidence 0.4, hits 0
    # ECE = (|2 - 2.3| + |0 - 0.4|) / 4 = 0.175
    f = tmp_path / "e.csv"
    f.write_text("a,b,c,label\n0.9,0.1,0,0\n0.8,0.2,0,1\n0.4,0.6,0,1\n0.4,0.3,0.3,2\n")
    rep = score_file(str(f), ScoreOptions(bins=2))
    assert rep["ece"] == pytest.approx(0.175, rel=1e-14)
    assert rep["accuracy"] == pytest.approx(0.5)


def test_multilabel_bce(tmp_path: Path) -> None:
    f = tmp_path / "m.csv"
    # p and 0/1 targets; BCE by hand: -ln 0.9, -ln(1-0.2), -ln 0.5, -ln(1-0.7)
    f.write_text("p_a,p_b,y_a,y_b\n0.9,0.2,1,0\n0.5,0.7,1,0\n")
    rep = score_file(str(f), ScoreOptions(columns=ColumnSpec(
        pred="p_*", targets="y_*", multilabel=True), chunk_rows=1))
    want = -(math.log(0.9) + math.log(0.8) + math.log(0.5) + math.log(0.3)) / 4
    assert rep["cross_entropy"] == pytest.approx(want, rel=1e-14)
    # at 0.5: (0.9 -> 1 ok), (0.2 -> 0 ok), (0.5 -> 1 ok), (0.7 -> 1 wrong)
    assert rep["accuracy"] == pytest.approx(0.75)
    assert rep["exact_match"] == pytest.approx(0.5)


def test_labels_to_index() -> None:
    loc = lambda i: f"row {i}"  # noqa: E731
    assert labels_to_index(np.array([2, 0]), NAMES, loc, "y", "f").tolist() == [2, 0]
    assert labels_to_index(np.array(["fish", "1"]), NAMES, loc, "y", "f").tolist() == [3, 1]
    with pytest.raises(ScoreError, match=r"f: row 1, column 'y': label 'cow' is not"):
        labels_to_index(np.array(["cat", "cow"]), NAMES, loc, "y", "f")
    with pytest.raises(ScoreError, match="label 4 is not a class"):
        labels_to_index(np.array([0, 4]), NAMES, loc, "y", "f")
    with pytest.raises(ScoreError, match=r"label 1\.5"):
        labels_to_index(np.array([1.5]), NAMES, loc, "y", "f")


def test_parse_columns() -> None:
    names = ["id", "p0", "p1", "p2", "label"]
    assert parse_columns("p*", names, "c", "f") == [1, 2, 3]
    assert parse_columns("1:4", names, "c", "f") == [1, 2, 3]
    with pytest.raises(ScoreError, match="no column named 'q'"):
        parse_columns("q", names, "c", "f")


# --------------------------------------------------------------------------- malformed input

BAD_CSV = [
    ("a,b,label\n0.5,0.5,0\n0.5,x,1\n", r"line 3, column 'b': 'x' is not a number"),
    ("a,b,label\n0.5,0.5,0\n0.5,0.5\n", r"line 3: 2 fields, but the header has 3"),
    ("a,b,label\n0.5,0.5,0\n\n0.5,0.5,1\n", r"line 3: empty line"),
    ("a,b,label\n1.5,-0.5,0\n", r"line 2, column 'a': probability 1.5 is outside \[0, 1\]"),
    ("a,b,label\n0.5,0.6,0\n", r"line 2, columns 'a'..'b': the probabilities sum to 1.1"),
    ("a,b,label\n0.5,0.5,2\n", r"line 2, column 'label': label '2' is not among the classes"),
    ("a,b,label\n0.5,nan,0\n", r"line 2, column 'b': nan is not a finite number"),
    ("a,b\n0.5,0.5\n", r"no label column"),
    ("", r"the file is empty"),
    ("a,b,label\n", r"no data rows"),
    ("a,a,label\n0.5,0.5,0\n", r"line 1: the column name 'a' appears twice"),
]


@pytest.mark.parametrize(("text", "msg"), BAD_CSV)
def test_malformed_csv(tmp_path: Path, text: str, msg: str) -> None:
    f = tmp_path / "bad.csv"
    f.write_text(text)
    with pytest.raises(ScoreError, match=msg) as info:
        score_file(str(f), ScoreOptions(chunk_rows=2))
    assert str(info.value).startswith(str(f))


def test_malformed_weights_and_missing_columns(tmp_path: Path) -> None:
    f = tmp_path / "w.csv"
    f.write_text("a,b,label,w\n0.5,0.5,0,1\n0.5,0.5,1,-2\n")
    with pytest.raises(ScoreError, match=r"line 3, column 'w': weight -2.0 must be finite"):
        score_file(str(f), ScoreOptions(columns=ColumnSpec(weight="w")))
    with pytest.raises(ScoreError, match=r"--weight: no column named 'ww'"):
        score_file(str(f), ScoreOptions(columns=ColumnSpec(weight="ww")))
    with pytest.raises(ScoreError, match=r"--label: no column named 'y'"):
        score_file(str(f), ScoreOptions(columns=ColumnSpec(label="y")))


def test_malformed_parquet(tmp_path: Path) -> None:
    f = tmp_path / "n.parquet"
    t = pa.table({"a": [0.5, 0.5, None, 0.5], "b": [0.5, 0.5, 0.5, 0.5], "label": [0, 1, 0, 1]})
    pq.write_table(t, f, row_group_size=2)
    with pytest.raises(ScoreError, match=r"row group 1, row 0, column 'a': missing value"):
        score_file(str(f), ScoreOptions())
    t = pa.table({"a": ["x"], "b": [1.0], "label": [0]})
    pq.write_table(t, f)
    with pytest.raises(ScoreError, match=r"column 'a' has type string"):
        score_file(str(f), ScoreOptions())
    f.write_bytes(b"PAR1 this is not parquet PAR1")
    with pytest.raises(ScoreError, match="not a readable Parquet file"):
        score_file(str(f), ScoreOptions())


def test_malformed_npy(tmp_path: Path) -> None:
    f = tmp_path / "p.npy"
    lab = tmp_path / "y.npy"
    np.save(f, np.full((4, 2), 0.5))
    np.save(lab, np.array([0, 1, 0]))
    with pytest.raises(ScoreError, match=r"labels must have shape \(4,\), got \(3,\)"):
        score_file(str(f), ScoreOptions(columns=ColumnSpec(label=str(lab))))
    np.save(lab, np.array([0, 1, 0, 1]))
    raw = f.read_bytes()
    f.write_bytes(raw[:-8])  # drop the last number
    with pytest.raises(ScoreError, match=r"truncated: the header promises 4 rows"):
        score_file(str(f), ScoreOptions(columns=ColumnSpec(label=str(lab)), chunk_rows=2))
    f.write_bytes(raw)
    with pytest.raises(ScoreError, match=r"give the labels as --label"):
        score_file(str(f), ScoreOptions())
    np.save(f, np.array([["a", "b"]]))
    with pytest.raises(ScoreError, match=r"dtype <U1 is not a number type"):
        score_file(str(f), ScoreOptions(columns=ColumnSpec(label=str(lab))))


def _reader_outcome(path: Path, **kw: object) -> None:
    """A result or a ScoreError naming the file: anything else is a bug."""
    try:
        rep = score_file(str(path), ScoreOptions(**kw))  # type: ignore[arg-type]
    except ScoreError as exc:
        assert str(path) in str(exc)
    else:
        assert rep["rows"] > 0
        assert math.isfinite(rep["cross_entropy"]) or rep["infinite_loss_rows"] > 0


_FIXTURE = [HealthCheck.function_scoped_fixture]  # tmp_path is reused; each example rewrites it
_CELL = st.one_of(
    st.sampled_from(["0", "1", "0.5", "0.25", "0.75", "nan", "inf", "-1", "2", "x", "",
                     "1e-300", '"0.5"', "cat", "dog", " 0.5 ", "1,0"]),
    st.text(alphabet="0123456789.,-e\"x ", max_size=6),
)


@settings(max_examples=60, deadline=None, suppress_health_check=_FIXTURE)
@given(rows=st.lists(st.lists(_CELL, min_size=1, max_size=5), max_size=6),
       header=st.sampled_from(["cat,dog,label", "a,b,c,label", "label", "cat,dog,label,w", ""]),
       chunk=st.integers(1, 4))
def test_fuzz_csv(tmp_path: Path, rows: list[list[str]], header: str, chunk: int) -> None:
    f = tmp_path / "fuzz.csv"
    f.write_text("\n".join([header, *(",".join(r) for r in rows)]) + "\n")
    _reader_outcome(f, chunk_rows=chunk)


@settings(max_examples=40, deadline=None, suppress_health_check=_FIXTURE)
@given(data=st.binary(max_size=300), cut=st.integers(0, 400), flip=st.integers(0, 400))
def test_fuzz_npy(tmp_path: Path, data: bytes, cut: int, flip: int) -> None:
    buf = io.BytesIO()
    np.save(buf, np.full((3, 2), 0.5))
    good = bytearray(buf.getvalue())
    f = tmp_path / "fuzz.npy"
    lab = tmp_path / "lab.npy"
    np.save(lab, np.array([0, 1, 1]))
    variants = [data, bytes(good[:cut])]
    if flip < len(good):
        bad = bytearray(good)
        bad[flip] ^= 0xFF
        variants.append(bytes(bad))
    for v in variants:
        f.write_bytes(v)
        _reader_outcome(f, columns=ColumnSpec(label=str(lab)), chunk_rows=2)


@settings(max_examples=30, deadline=None, suppress_health_check=_FIXTURE)
@given(cut=st.integers(0, 2000), flip=st.integers(0, 2000), byte=st.integers(1, 255),
       vals=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=2, max_size=2))
def test_fuzz_parquet(tmp_path: Path, cut: int, flip: int, byte: int,
                      vals: list[float]) -> None:
    buf = io.BytesIO()
    pq.write_table(pa.table({"a": [0.5, vals[0]], "b": [0.5, vals[1]], "label": [0, 1]}), buf)
    good = bytearray(buf.getvalue())
    f = tmp_path / "fuzz.parquet"
    variants = [bytes(good), bytes(good[:cut])]
    if flip < len(good):
        bad = bytearray(good)
        bad[flip] ^= byte
        variants.append(bytes(bad))
    for v in variants:
        f.write_bytes(v)
        _reader_outcome(f, chunk_rows=1)


@settings(max_examples=40, deadline=None, suppress_health_check=_FIXTURE)
@given(data=st.binary(max_size=200), prefix=st.sampled_from([b"", b"a,b,label\n",
                                                             b"a,b,label\n0.5,0.5,0\n"]))
def test_fuzz_csv_bytes(tmp_path: Path, data: bytes, prefix: bytes) -> None:
    f = tmp_path / "fuzz.csv"
    f.write_bytes(prefix + data)
    _reader_outcome(f, chunk_rows=2)


def test_quoted_cells(tmp_path: Path) -> None:
    f = tmp_path / "q.csv"
    f.write_text('"a","b","label"\n0.25,0.75,a\n"0.5","0.5","b"\n')
    rep = score_file(str(f), ScoreOptions())
    # by hand: (-ln 0.25 - ln 0.5) / 2
    assert rep["cross_entropy"] == pytest.approx((math.log(4) + math.log(2)) / 2, rel=1e-15)


@settings(max_examples=30, deadline=None, suppress_health_check=_FIXTURE)
@given(cut=st.integers(0, 1200), flip=st.integers(0, 1200), byte=st.integers(1, 255),
       compressed=st.booleans())
def test_fuzz_npz(tmp_path: Path, cut: int, flip: int, byte: int, compressed: bool) -> None:
    buf = io.BytesIO()
    save = np.savez_compressed if compressed else np.savez
    save(buf, probs=np.full((3, 2), 0.5), labels=np.array([0, 1, 1]))
    good = bytearray(buf.getvalue())
    f = tmp_path / "fuzz.npz"
    variants = [bytes(good[:cut])]
    if flip < len(good):
        bad = bytearray(good)
        bad[flip] ^= byte
        variants.append(bytes(bad))
    for v in variants:
        f.write_bytes(v)
        _reader_outcome(f, chunk_rows=2)


# --------------------------------------------------------------------------- metrics against
# torchmetrics and scikit-learn (the conventions are in crossentropy.score.metrics and
# docs/evaluation.md)


def _probs_npy(tmp_path: Path, p: np.ndarray, y: np.ndarray, w: np.ndarray | None = None,
               **kw: object) -> dict[str, object]:
    np.save(tmp_path / "p.npy", p)
    np.save(tmp_path / "y.npy", y)
    weight = None
    if w is not None:
        np.save(tmp_path / "w.npy", w)
        weight = str(tmp_path / "w.npy")
    spec = ColumnSpec(label=str(tmp_path / "y.npy"), weight=weight)
    return score_file(str(tmp_path / "p.npy"), ScoreOptions(columns=spec, **kw))  # type: ignore[arg-type]


def test_ece_and_mce_match_torchmetrics(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    # a test-only dependency (the 'test' extra): skipped, and said so, where it is missing
    tmc = pytest.importorskip("torchmetrics.functional.classification")
    multiclass_calibration_error = tmc.multiclass_calibration_error

    rng = np.random.default_rng(21)
    p = rng.dirichlet(np.ones(5) * 0.5, size=700)
    y = rng.integers(0, 5, size=700)
    rep = _probs_npy(tmp_path, p, y, bins=10, chunk_rows=64)
    pt, yt = torch.from_numpy(p), torch.from_numpy(y)
    for key, norm in (("ece", "l1"), ("mce", "max")):
        want = float(multiclass_calibration_error(pt, yt, num_classes=5, n_bins=10, norm=norm))
        # torchmetrics sums in float32 whatever the input's dtype: agreement to its rounding
        assert rep[key] == pytest.approx(want, rel=1e-6), key


def test_confidence_one_is_in_the_last_bin_unlike_torchmetrics(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    # a test-only dependency (the 'test' extra): skipped, and said so, where it is missing
    tmc = pytest.importorskip("torchmetrics.functional.classification")
    multiclass_calibration_error = tmc.multiclass_calibration_error

    # rows (confidence, right?): (1.0, wrong), (0.95, right), (0.3 -> top 0.4, right)
    p = np.array([[1.0, 0.0, 0.0], [0.95, 0.05, 0.0], [0.3, 0.4, 0.3]])
    y = np.array([1, 0, 1])
    rep = _probs_npy(tmp_path, p, y, bins=10)
    # ours: bin [0.9, 1] holds 1.0 and 0.95: |1 - 1.95| = 0.95; bin [0.4, 0.5): |1 - 0.4|
    # ECE = (0.95 + 0.6) / 3
    assert rep["ece"] == pytest.approx((0.95 + 0.6) / 3, rel=1e-14)
    assert rep["reliability"][9]["weight"] == 2.0
    # torchmetrics puts a confidence of exactly 1.0 in an 11th bin of its own (its issue
    # #3510): |0 - 1| + |1 - 0.95| + |1 - 0.4| = 1.65, / 3
    want_tm = float(multiclass_calibration_error(torch.from_numpy(p), torch.from_numpy(y),
                                                 num_classes=3, n_bins=10))
    assert want_tm == pytest.approx(1.65 / 3, rel=1e-6)
    assert rep["ece"] != pytest.approx(want_tm)
    # confidence exactly 0 (multi-label P(label = 1) = 0) is in bin 0
    f = tmp_path / "m.csv"
    f.write_text("p,y\n0,0\n0.05,1\n")
    m = score_file(str(f), ScoreOptions(columns=ColumnSpec(pred="p", targets="y",
                                                          multilabel=True), bins=10))
    assert m["reliability"][0]["weight"] == 2.0
    assert m["ece"] == pytest.approx(abs(1 - 0.05) / 2, rel=1e-14)


def test_reliability_bins_match_sklearn_calibration_curve(tmp_path: Path) -> None:
    from sklearn.calibration import calibration_curve

    rng = np.random.default_rng(22)
    # binary (one label): the table is sklearn's calibration_curve on the same data
    q = rng.uniform(0, 1, size=400)
    t = (rng.random(400) < q**1.5).astype(float)
    np.savez(tmp_path / "b.npz", probs=q[:, None], targets=t[:, None])
    rep = score_file(str(tmp_path / "b.npz"), ScoreOptions(
        columns=ColumnSpec(targets="targets", multilabel=True), bins=8))
    prob_true, prob_pred = calibration_curve(t, q, n_bins=8, strategy="uniform")
    full = [b for b in rep["reliability"] if b["weight"] > 0]
    np.testing.assert_allclose([b["accuracy"] for b in full], prob_true, rtol=1e-12)
    np.testing.assert_allclose([b["confidence"] for b in full], prob_pred, rtol=1e-12)
    # multi-class, top label: calibration_curve of (right?, top-class confidence)
    p = rng.dirichlet(np.ones(4), size=300)
    y = rng.integers(0, 4, size=300)
    rep = _probs_npy(tmp_path, p, y, bins=6)
    hit = (p.argmax(axis=1) == y).astype(float)
    prob_true, prob_pred = calibration_curve(hit, p.max(axis=1), n_bins=6)
    full = [b for b in rep["reliability"] if b["weight"] > 0]
    np.testing.assert_allclose([b["accuracy"] for b in full], prob_true, rtol=1e-12)
    np.testing.assert_allclose([b["confidence"] for b in full], prob_pred, rtol=1e-12)


def test_brier_and_top_k_match_sklearn(tmp_path: Path) -> None:
    from sklearn.metrics import brier_score_loss, top_k_accuracy_score

    rng = np.random.default_rng(23)
    z = rng.normal(size=(250, 6))
    y = rng.integers(0, 6, size=250)
    w = rng.uniform(0, 2, size=250)
    np.savez(tmp_path / "z.npz", logits=z, labels=y, w=w)
    rep = score_file(str(tmp_path / "z.npz"), ScoreOptions(
        columns=ColumnSpec(weight="w"), logits=True, top_k=(1, 2, 5), chunk_rows=30))
    p = scipy.special.softmax(z, axis=1)
    # multi-class Brier: mean over rows of sum_c (p_c - onehot_c)^2 (not halved)
    want = brier_score_loss(y, p, labels=list(range(6)), sample_weight=w,
                            scale_by_half=False)
    assert rep["brier"] == pytest.approx(want, rel=1e-12)
    for k in (1, 2, 5):
        want_k = top_k_accuracy_score(y, z, k=k, labels=list(range(6)), sample_weight=w)
        assert rep["top_k_accuracy"][str(k)] == pytest.approx(want_k, rel=1e-12)
    assert rep["top_k_accuracy"]["1"] == pytest.approx(rep["accuracy"], rel=1e-15)
    # multi-label Brier: the binary Brier score of every (row, label) entry
    q = rng.uniform(size=(100, 3))
    t = (rng.random((100, 3)) < q).astype(float)
    np.savez(tmp_path / "m.npz", probs=q, targets=t)
    m = score_file(str(tmp_path / "m.npz"), ScoreOptions(
        columns=ColumnSpec(targets="targets", multilabel=True)))
    assert m["brier"] == pytest.approx(brier_score_loss(t.ravel(), q.ravel()), rel=1e-12)


def test_adaptive_and_classwise_ece_against_references(tmp_path: Path) -> None:
    rng = np.random.default_rng(24)
    n, c, nb = 600, 4, 10  # n divisible by the bins: equal-mass bins of exactly 60 rows
    p = rng.dirichlet(np.ones(c), size=n)
    y = rng.integers(0, c, size=n)
    w = rng.uniform(0.5, 1.5, size=n)
    rep = _probs_npy(tmp_path, p, y, bins=nb, chunk_rows=50)
    conf, hit = p.max(axis=1), (p.argmax(axis=1) == y).astype(float)
    order = np.argsort(conf)
    want = sum(abs(hit[b].sum() - conf[b].sum()) for b in np.array_split(order, nb)) / n
    assert rep["adaptive_ece"] == pytest.approx(want, rel=1e-12)
    assert [b["weight"] for b in rep["reliability_adaptive"]] == [60.0] * nb
    # classwise ECE (Kull et al. 2019) from np.histogram, whose last bin is closed like ours
    edges = np.linspace(0, 1, nb + 1)
    per = []
    for j in range(c):
        wt, _ = np.histogram(p[:, j], edges)
        sp, _ = np.histogram(p[:, j], edges, weights=p[:, j])
        sy, _ = np.histogram(p[:, j], edges, weights=(y == j).astype(float))
        assert wt.sum() == n
        per.append(np.sum(np.abs(sy - sp)) / n)
    assert rep["classwise_ece"] == pytest.approx(np.mean(per), rel=1e-12)
    for j in range(c):
        assert rep["per_class"][j]["ece"] == pytest.approx(per[j], rel=1e-12)
    # with weights: each row counts with its weight, in ECE and the classwise ECE
    rw = _probs_npy(tmp_path, p, y, w, bins=nb)
    cnt, _ = np.histogram(conf, edges, weights=w)
    sc, _ = np.histogram(conf, edges, weights=w * conf)
    sh, _ = np.histogram(conf, edges, weights=w * hit)
    assert rw["ece"] == pytest.approx(np.sum(np.abs(sh - sc)) / w.sum(), rel=1e-12)
    full = cnt > 0
    assert rw["mce"] == pytest.approx(np.max(np.abs(sh - sc)[full] / cnt[full]), rel=1e-12)


def test_adaptive_ece_keeps_ties_together(tmp_path: Path) -> None:
    # four rows of confidence 0.5 (two right) and two of 0.9 (both right), 2 bins: the tie
    # group's midpoint (2 of 6) is in bin 0, so bin 0 holds all four: |2 - 2| = 0,
    # bin 1: |2 - 1.8| = 0.2; ECE = 0.2 / 6, whatever the order of the rows
    f = tmp_path / "t.csv"
    rows = ["0.5,0.5,0", "0.5,0.5,1", "0.5,0.5,0", "0.5,0.5,1", "0.9,0.1,0", "0.9,0.1,0"]
    for order in (rows, rows[::-1]):
        f.write_text("a,b,label\n" + "\n".join(order) + "\n")
        rep = score_file(str(f), ScoreOptions(bins=2))
        assert rep["adaptive_ece"] == pytest.approx(0.2 / 6, rel=1e-14)


def test_parquet_large_footer_is_read_group_by_group(tmp_path: Path) -> None:
    # over --max-footer-mb the footer is split into one per row group: the same report
    p, y, w = _data(45)
    t = pa.table({**{n: p[:, j] for j, n in enumerate(NAMES)},
                  "label": [NAMES[v] for v in y], "w": w})
    f = tmp_path / "small_groups.parquet"
    pq.write_table(t, f, row_group_size=4)  # 12 row groups
    opts = {"columns": ColumnSpec(weight="w"), "chunk_rows": 3}
    whole = score_file(str(f), ScoreOptions(**opts))  # type: ignore[arg-type]
    split = score_file(str(f), ScoreOptions(max_footer_mb=1e-6, **opts))  # type: ignore[arg-type]
    assert split == whole
    assert split["cross_entropy"] == pytest.approx(_reference(p, y, w)["ce"], rel=1e-12)
    # a missing value is still found, in the right row group
    t2 = pa.table({"a": [0.5, 0.5, None, 0.5], "b": [0.5] * 4, "label": [0, 1, 0, 1]})
    pq.write_table(t2, f, row_group_size=2)
    with pytest.raises(ScoreError, match=r"row group 1, row 0, column 'a': missing value"):
        score_file(str(f), ScoreOptions(max_footer_mb=1e-6))


def test_parquet_footer_that_cannot_be_split_names_the_workaround(tmp_path: Path) -> None:
    f = tmp_path / "bad_footer.parquet"
    pq.write_table(pa.table({"a": [0.5] * 4, "b": [0.5] * 4, "label": [0, 1] * 2}), f,
                   row_group_size=1)
    data = bytearray(f.read_bytes())
    n = int.from_bytes(data[-8:-4], "little")
    data[len(data) - 8 - n] = 0x1D  # the first field header's type: 13, not a Thrift type
    f.write_bytes(bytes(data))
    with pytest.raises(ScoreError, match=r"the Parquet footer \(metadata\) is 0\.0\d* MB, over "
                                         r"1e-06 MB, and could not be split by row group.*"
                                         r"row_group_size=100_000"):
        score_file(str(f), ScoreOptions(max_footer_mb=1e-6))


@settings(max_examples=30, deadline=None, suppress_health_check=_FIXTURE)
@given(cut=st.integers(0, 2000), flip=st.integers(0, 2000), byte=st.integers(1, 255))
def test_fuzz_parquet_split_footer(tmp_path: Path, cut: int, flip: int, byte: int) -> None:
    buf = io.BytesIO()
    pq.write_table(pa.table({"a": [0.5, 0.25, 0.5], "b": [0.5, 0.75, 0.5],
                             "label": [0, 1, 1]}), buf, row_group_size=1)
    good = bytearray(buf.getvalue())
    f = tmp_path / "fuzz.parquet"
    variants = [bytes(good[:cut])]
    if flip < len(good):
        bad = bytearray(good)
        bad[flip] ^= byte
        variants.append(bytes(bad))
    for v in variants:
        f.write_bytes(v)
        _reader_outcome(f, chunk_rows=1, max_footer_mb=1e-9)


def test_probability_on_a_bin_edge_is_binned_as_written(tmp_path: Path) -> None:
    # p = 0.2 and 0.8 exactly: with 10 bins, 0.2 * 10 = 2 and 0.8 * 10 = 8 in float64, so
    # the bins [0.2, 0.3) and [0.8, 0.9) (the classwise bins of each class's p_c)
    f = tmp_path / "edge.csv"
    f.write_text("a,b,label\n0.8,0.2,0\n")
    rep = score_file(str(f), ScoreOptions(bins=10))
    assert rep["reliability"][8]["weight"] == 1.0
    # classwise: class a: p = 0.8, y = 1 -> |1 - 0.8|; class b: p = 0.2, y = 0 -> |0 - 0.2|
    assert rep["per_class"][0]["ece"] == pytest.approx(0.2, rel=1e-15)
    assert rep["per_class"][1]["ece"] == pytest.approx(0.2, rel=1e-15)
    assert rep["brier"] == pytest.approx(0.2**2 + 0.2**2, rel=1e-15)
    # class b's p = 0.2 (its label) and 0.25 (not): one bin [0.2, 0.3) -> |1 - 0.45| / 2;
    # recovering p_b as (0.2 - 1) + 1 = 0.19999999999999996 would split them (1.05 / 2)
    f.write_text("a,b,label\n0.8,0.2,b\n0.75,0.25,a\n")
    rep = score_file(str(f), ScoreOptions(bins=10))
    assert rep["per_class"][1]["ece"] == pytest.approx(0.55 / 2, rel=1e-14)


def test_adaptive_ece_is_null_past_its_memory_limit(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import crossentropy.score.metrics as metrics

    p, y, _ = _data(40)
    _write_csv(tmp_path / "a.csv", p, y)
    full = score_file(str(tmp_path / "a.csv"), ScoreOptions(chunk_rows=8))
    assert isinstance(full["adaptive_ece"], float)
    monkeypatch.setattr(metrics, "ADAPTIVE_LIMIT", 30)  # fewer than the 40 rows
    rep = score_file(str(tmp_path / "a.csv"), ScoreOptions(chunk_rows=8))
    assert rep["adaptive_ece"] is None and rep["reliability_adaptive"] == []
    assert rep["ece"] == full["ece"]  # the equal-width metrics are still there


# --------------------------------------------------------------------------- issue 27: the
# RMS calibration error (torchmetrics' norm="l2"), with the bins of the ECE


def _rmsce_by_hand(conf: np.ndarray, hit: np.ndarray, w: np.ndarray, nbins: int) -> float:
    """sqrt(sum_b (W_b / W) (acc_b - conf_b)^2), bin by bin in plain Python."""
    bins: dict[int, list[float]] = {}
    for c, h, wi in zip(conf.tolist(), hit.tolist(), w.tolist(), strict=True):
        b = min(math.floor(c * nbins), nbins - 1)
        s = bins.setdefault(b, [0.0, 0.0, 0.0])
        s[0] += wi
        s[1] += wi * c
        s[2] += wi * h
    total = sum(s[0] for s in bins.values())
    return math.sqrt(sum(s[0] / total * (s[2] / s[0] - s[1] / s[0]) ** 2
                         for s in bins.values() if s[0] > 0))


def test_rms_calibration_error_matches_torchmetrics_multiclass(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    # a test-only dependency (the 'test' extra): skipped, and said so, where it is missing
    tmc = pytest.importorskip("torchmetrics.functional.classification")

    rng = np.random.default_rng(27)
    p = rng.dirichlet(np.ones(5) * 0.5, size=900)
    y = rng.integers(0, 5, size=900)
    rep = _probs_npy(tmp_path, p, y, bins=10, chunk_rows=64)
    want = float(tmc.multiclass_calibration_error(torch.from_numpy(p), torch.from_numpy(y),
                                                  num_classes=5, n_bins=10, norm="l2"))
    # torchmetrics sums in float32 whatever the input's dtype: agreement to its rounding
    assert rep["rmsce"] == pytest.approx(want, rel=1e-6)
    conf, hit = p.max(axis=1), (p.argmax(axis=1) == y).astype(float)
    assert rep["rmsce"] == pytest.approx(_rmsce_by_hand(conf, hit, np.ones(900), 10),
                                         rel=1e-13)
    # the RMS of the per-bin gaps lies between their weighted mean (ECE) and maximum (MCE)
    assert rep["ece"] <= rep["rmsce"] <= rep["mce"]


def test_rms_calibration_error_matches_torchmetrics_binary(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    tmc = pytest.importorskip("torchmetrics.functional.classification")

    rng = np.random.default_rng(28)
    q = rng.uniform(size=600)
    t = (rng.uniform(size=600) < q**1.5).astype(np.int64)  # over-confident P(label = 1)
    f = tmp_path / "b.csv"
    f.write_text("p,y\n" + "".join(f"{a!r},{b}\n" for a, b in zip(q.tolist(), t.tolist(),
                                                                      strict=True)))
    rep = score_file(str(f), ScoreOptions(columns=ColumnSpec(pred="p", targets="y",
                                                             multilabel=True), bins=7))
    want = float(tmc.binary_calibration_error(torch.from_numpy(q), torch.from_numpy(t),
                                              n_bins=7, norm="l2"))
    assert rep["rmsce"] == pytest.approx(want, rel=1e-12)


def test_rms_calibration_error_with_weights_and_the_function(tmp_path: Path) -> None:
    from crossentropy.score.metrics import rms_calibration_error

    p, y, w = _data(n=301, seed=27)
    rep = _probs_npy(tmp_path, p, y, w, bins=6, chunk_rows=50)
    conf, hit = p.max(axis=1), (p.argmax(axis=1) == y).astype(float)
    want = _rmsce_by_hand(conf, hit, w, 6)
    assert rep["rmsce"] == pytest.approx(want, rel=1e-13)
    assert rms_calibration_error(conf, hit, w, nbins=6) == pytest.approx(want, rel=1e-13)
    # a weight of 0 removes the row; a confidence of exactly 1 is in the last bin
    assert rms_calibration_error([1.0, 0.95, 0.2], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0],
                                 nbins=10) == pytest.approx(abs(0.5 - 1.95 / 2), rel=1e-15)
    with pytest.raises(ValueError, match="one length"):
        rms_calibration_error([0.5, 0.5], [1.0])


def test_rms_calibration_error_in_text_json_and_calibrate(tmp_path: Path) -> None:
    from test_cli_explain import run

    f = tmp_path / "v.csv"
    # confidences 0.9 (right), 0.8 (wrong), 0.7 (right) in one bin of 2: acc 2/3, conf 0.8
    f.write_text("a,b,label\n0.9,0.1,0\n0.8,0.2,1\n0.3,0.7,1\n")
    r = run("score", str(f), "--bins", "2", "--per-class", "0")
    assert r.returncode == 0, r.stderr
    want = abs(2 / 3 - 0.8)  # one non-empty bin: the RMS is its gap
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("RMSCE"))
    assert float(line.split()[1]) == pytest.approx(want, rel=1e-5)
    r = run("score", str(f), "--bins", "2", "--json")
    assert json.loads(r.stdout)["rmsce"] == pytest.approx(want, rel=1e-14)
    r = run("calibrate", str(f), "--bins", "2", "--json")
    rep = json.loads(r.stdout)
    assert rep["before"]["rmsce"] == pytest.approx(want, rel=1e-14)
    assert rep["after"]["rmsce"] >= 0.0
    r = run("calibrate", str(f), "--bins", "2")
    assert any(ln.startswith("RMSCE") for ln in r.stdout.splitlines())
