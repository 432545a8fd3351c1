"""Bad input: a clear exception naming the argument (and the position), never a silent number.

Each case checks the exception *type* and that the message names the argument, and for
element checks the first bad position, in the caller's own layout (also with ``axis=0``).
Decisions tested here (documented in the README ``api`` section):

* integer predictions are promoted to float64 (as NumPy and SciPy do); booleans, complex
  numbers, strings, objects, ragged lists and longdouble raise ``TypeError``;
* labels must be whole numbers in ``[0, C)`` or equal ``ignore_index``; ``1.0`` is accepted,
  ``1.5``, NaN, inf and negatives are not;
* probability rows must sum to 1 within ``max(C, 16) * eps`` of their dtype and are never
  renormalised;
* ``base`` must be a finite real number > 0 other than 1; ``label_smoothing`` a real number
  in [0, 1]; ``reduction`` one of 'none', 'mean', 'sum'; weights finite and >= 0.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import crossentropy as ce

Z23 = np.zeros((2, 3))
U23 = np.full((2, 3), 1 / 3)  # uniform probability rows
LU23 = np.log(U23)
Y2 = np.array([0, 2])


def _raises(kind: type[Exception], words: list[str], f: Callable[[], Any]) -> None:
    with pytest.raises(kind) as info:
        f()
    assert type(info.value) is kind, type(info.value)
    msg = str(info.value)
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"


# --------------------------------------------------------------------------- dtypes

PREDICTION_CALLS: list[tuple[str, Callable[[Any], Any], str]] = [
    ("sigmoid", lambda x: ce.sigmoid(x), "x"),
    ("log_sigmoid", lambda x: ce.log_sigmoid(x), "x"),
    ("softmax", lambda x: ce.softmax(x), "x"),
    ("log_softmax", lambda x: ce.log_softmax(x), "x"),
    ("logsumexp", lambda x: ce.logsumexp(x), "x"),
    ("cross_entropy", lambda x: ce.cross_entropy(x, 0), "logits"),
    ("cross_entropy_from_probs", lambda x: ce.cross_entropy_from_probs(x, 0), "probs"),
    ("cross_entropy_from_log_probs", lambda x: ce.cross_entropy_from_log_probs(x, 0),
     "log_probs"),
    ("bce_with_logits", lambda x: ce.binary_cross_entropy_with_logits(x, [1.0, 0.0]), "logits"),
    ("bce", lambda x: ce.binary_cross_entropy(x, [1.0, 0.0]), "probs"),
    ("entropy", lambda x: ce.entropy(x), "probs"),
    ("kl_p", lambda x: ce.kl_divergence(x, [1.0, 0.0]), "p"),
    ("kl_q", lambda x: ce.kl_divergence([1.0, 0.0], x), "q"),
]

BAD_KINDS = {
    "bool": np.array([True, False]),
    "complex": np.array([1.0 + 0j, 0.0]),
    "str": np.array(["1", "0"]),
    "object": np.array([1.0, 0.0], dtype=object),
    "longdouble": np.array([1.0, 0.0], dtype=np.longdouble),
    "ragged": [[1.0], [0.0, 1.0]],
    "none": None,
}


PRED_IDS = [c[0] for c in PREDICTION_CALLS]


@pytest.mark.parametrize("kind", list(BAD_KINDS))
@pytest.mark.parametrize(("fname", "call", "arg"), PREDICTION_CALLS, ids=PRED_IDS)
def test_bad_prediction_dtype(fname: str, call: Callable[[Any], Any], arg: str, kind: str) -> None:
    if kind == "longdouble" and np.dtype(np.longdouble) == np.dtype(np.float64):
        pytest.skip("longdouble is float64 on this platform")
    _raises(TypeError, [arg], lambda: call(BAD_KINDS[kind]))


@pytest.mark.parametrize(("fname", "call", "arg"), PREDICTION_CALLS, ids=PRED_IDS)
def test_integer_prediction_is_promoted(fname: str, call: Callable[[Any], Any], arg: str) -> None:
    """Decided: integers are promoted to float64 (same result as the float64 input)."""
    if fname == "cross_entropy_from_log_probs":
        # the only integer log-probability rows: one class with log q = 0
        got, want = call(np.array([0], dtype=np.int32)), call(np.array([0.0]))
    else:
        got, want = call(np.array([1, 0], dtype=np.int32)), call(np.array([1.0, 0.0]))
    assert np.asarray(got).dtype == np.float64
    np.testing.assert_array_equal(got, want)


def test_bool_targets_and_weights_are_rejected() -> None:
    _raises(TypeError, ["target", "bool"], lambda: ce.cross_entropy(Z23, np.array([True, False])))
    _raises(TypeError, ["target"], lambda: ce.cross_entropy(Z23, np.ones((2, 3), bool)))
    _raises(TypeError, ["target"], lambda: ce.binary_cross_entropy_with_logits(
        [0.0, 0.0], np.array([True, False])))
    _raises(TypeError, ["weight"], lambda: ce.cross_entropy(Z23, Y2, weight=[True] * 3))
    _raises(TypeError, ["b"], lambda: ce.logsumexp([0.0, 0.0], b=[True, True]))
    _raises(TypeError, ["labels"], lambda: ce.one_hot(np.array([True])))


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    ("call", "kind", "words"),
    [
        (lambda: ce.cross_entropy(Z23, [0, 1, 2]), ValueError, ["target", "(2,)", "(3,)"]),
        (lambda: ce.cross_entropy(Z23, np.zeros((2, 4))), ValueError, ["target", "(2, 4)"]),
        (lambda: ce.cross_entropy(Z23, np.zeros((2, 3, 1))), ValueError, ["target", "3 dim"]),
        (lambda: ce.cross_entropy(Z23, 0), ValueError, ["target", "0 dim"]),
        (lambda: ce.cross_entropy_from_probs(U23, [0]), ValueError, ["target"]),
        (lambda: ce.cross_entropy_from_log_probs(LU23, [0, 1, 2]), ValueError, ["target"]),
        (lambda: ce.binary_cross_entropy_with_logits(Z23, np.zeros(3)), ValueError,
         ["target", "logits"]),
        (lambda: ce.binary_cross_entropy(U23, np.zeros((3, 2))), ValueError, ["target", "probs"]),
        (lambda: ce.binary_cross_entropy_with_logits(Z23, Z23, weight=np.ones(2)), ValueError,
         ["weight", "(2,)"]),
        (lambda: ce.binary_cross_entropy_with_logits(Z23, Z23, pos_weight=np.ones(2)),
         ValueError, ["pos_weight"]),
        (lambda: ce.kl_divergence([0.5, 0.5], [1.0]), ValueError, ["p and q"]),
        (lambda: ce.logsumexp(Z23, b=np.ones(2)), ValueError, ["b", "(2,)"]),
        (lambda: ce.cross_entropy(Z23, Y2, weight=[1.0, 1.0]), ValueError, ["weight", "(3)"]),
        (lambda: ce.cross_entropy(Z23, Y2, weight=np.ones((1, 3))), ValueError, ["weight"]),
        (lambda: ce.cross_entropy(Z23, Y2, weight=1.0), ValueError, ["weight"]),
    ],
)
def test_shapes_that_do_not_match(call: Callable[[], Any], kind: type, words: list[str]) -> None:
    _raises(kind, words, call)


@pytest.mark.parametrize(
    "call",
    [
        lambda a: ce.softmax(Z23, axis=a),
        lambda a: ce.log_softmax(Z23, axis=a),
        lambda a: ce.logsumexp(Z23, axis=a),
        lambda a: ce.cross_entropy(Z23, Y2, axis=a),
        lambda a: ce.cross_entropy_from_probs(U23, Y2, axis=a),
        lambda a: ce.cross_entropy_from_log_probs(LU23, Y2, axis=a),
        lambda a: ce.entropy(U23, axis=a),
        lambda a: ce.kl_divergence(U23, U23, axis=a),
    ],
)
def test_axis(call: Callable[[Any], Any]) -> None:
    _raises(ValueError, ["axis=2", "out of bounds"], lambda: call(2))
    _raises(ValueError, ["axis=-3"], lambda: call(-3))
    _raises(TypeError, ["axis"], lambda: call(1.0))
    _raises(TypeError, ["axis"], lambda: call(True))


# --------------------------------------------------------------------------- labels

LABEL_CALLS: list[tuple[str, Callable[[Any, Any], Any]]] = [
    ("cross_entropy", lambda y, **kw: ce.cross_entropy(np.zeros((*np.shape(y), 3)), y, **kw)),
    ("from_probs",
     lambda y, **kw: ce.cross_entropy_from_probs(np.full((*np.shape(y), 3), 1 / 3), y, **kw)),
    ("from_log_probs", lambda y, **kw: ce.cross_entropy_from_log_probs(
        np.full((*np.shape(y), 3), -np.log(3.0)), y, **kw)),
    ("one_hot", lambda y, **kw: ce.one_hot(y, 3)),
]


@pytest.mark.parametrize(("fname", "call"), LABEL_CALLS, ids=[c[0] for c in LABEL_CALLS])
@pytest.mark.parametrize(
    ("labels", "where", "shown"),
    [
        ([0, 3], "[1]", "3"),
        ([0, 1, 2, 7], "[3]", "7"),
        ([0, -1], "[1]", "-1"),
        ([0, -101], "[1]", "-101"),
        ([[0, 1], [2, 3]], "[1, 1]", "3"),
        ([[0, 1], [-5, 0]], "[1, 0]", "-5"),
        ([0.0, 1.5], "[1]", "1.5"),
        ([0.0, np.nan], "[1]", "nan"),
        ([np.inf, 0.0], "[0]", "inf"),
        ([0.0, 1e30], "[1]", "1e+30"),
        (np.array([0, 2**64 - 1], dtype=np.uint64), "[1]", "18446744073709551615"),
    ],
)
def test_bad_labels(fname: str, call: Any, labels: Any, where: str, shown: str) -> None:
    name = "labels" if fname == "one_hot" else "target"
    _raises(ValueError, [name + where, shown], lambda: call(labels))


@pytest.mark.parametrize(("fname", "call"), LABEL_CALLS[:3], ids=[c[0] for c in LABEL_CALLS[:3]])
def test_ignore_index_labels(fname: str, call: Any) -> None:
    call([0, -100])  # the default ignore_index is accepted
    call([0, 7], ignore_index=7)  # so is any other ignore_index, even >= C
    _raises(ValueError, ["target[1] = -100"], lambda: call([0, -100], ignore_index=None))
    _raises(ValueError, ["target[1] = -100", "ignore_index=-1"],
            lambda: call([0, -100], ignore_index=-1))
    _raises(TypeError, ["ignore_index"], lambda: call([0, 1], ignore_index=1.5))
    _raises(TypeError, ["ignore_index"], lambda: call([0, 1], ignore_index=True))


def test_one_hot_arguments() -> None:
    _raises(ValueError, ["num_classes"], lambda: ce.one_hot([0, 1], 0))
    _raises(TypeError, ["num_classes"], lambda: ce.one_hot([0, 1], 2.5))
    _raises(TypeError, ["num_classes"], lambda: ce.one_hot([0, 1], True))
    _raises(TypeError, ["dtype"], lambda: ce.one_hot([0, 1], 2, dtype="no such dtype"))
    _raises(ValueError, ["labels[1] = -1"], lambda: ce.one_hot([0, -1]))
    _raises(TypeError, ["labels"], lambda: ce.one_hot(["a"], 2))


# --------------------------------------------------------------------------- probabilities


def _bad_at(shape: tuple[int, ...], pos: tuple[int, ...], value: float, base: float) -> Any:
    a = np.full(shape, base)
    a[pos] = value
    return a


@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("value", [1.5, -0.25, -np.inf, np.inf])
def test_probabilities_outside_unit_interval(axis: int, value: float) -> None:
    # 3 classes along `axis`, 2 rows; the bad entry sits at (2, 1) in the caller's layout
    shape = (2, 3) if axis == -1 else (3, 2)
    pos = (1, 2) if axis == -1 else (2, 1)
    where = "[" + ", ".join(map(str, pos)) + "]"
    bad = _bad_at(shape, pos, value, 1 / 3)
    good = np.full(shape, 1 / 3)
    y = np.array([0, 1])
    x = np.zeros(shape)
    cases: list[tuple[str, Callable[[], Any]]] = [
        ("probs", lambda: ce.cross_entropy_from_probs(bad, y, axis=axis)),
        ("target", lambda: ce.cross_entropy(x, bad, axis=axis)),
        ("target", lambda: ce.cross_entropy_from_probs(good, bad, axis=axis)),
        ("probs", lambda: ce.entropy(bad, axis=axis)),
        ("p", lambda: ce.kl_divergence(bad, good, axis=axis)),
        ("q", lambda: ce.kl_divergence(good, bad, axis=axis)),
        ("probs", lambda: ce.binary_cross_entropy(bad, good)),
        ("target", lambda: ce.binary_cross_entropy(good, bad)),
        ("target", lambda: ce.binary_cross_entropy_with_logits(x, bad)),
    ]
    for name, call in cases:
        _raises(ValueError, [f"{name}{where}", "[0, 1]"], call)


@pytest.mark.parametrize("axis", [-1, 0])
def test_positive_log_probs(axis: int) -> None:
    shape = (2, 3) if axis == -1 else (3, 2)
    pos = (1, 2) if axis == -1 else (2, 1)
    lp = _bad_at(shape, pos, 0.5, -np.log(3.0))
    where = "[" + ", ".join(map(str, pos)) + "]"
    _raises(ValueError, [f"log_probs{where}", "<= 0"],
            lambda: ce.cross_entropy_from_log_probs(lp, [0, 1], axis=axis))


ROW_SUM_CALLS: list[tuple[str, Callable[[Any], Any]]] = [
    ("probs", lambda q: ce.cross_entropy_from_probs(q, np.zeros(q.shape[:-1], int))),
    ("target", lambda q: ce.cross_entropy(np.zeros(q.shape, q.dtype), q)),
    ("target", lambda q: ce.cross_entropy_from_probs(
        np.full(q.shape, 1 / q.shape[-1], q.dtype), q)),
    ("exp(log_probs)", lambda q: ce.cross_entropy_from_log_probs(
        np.log(q), np.zeros(q.shape[:-1], int))),
    ("probs", lambda q: ce.entropy(q)),
    ("p", lambda q: ce.kl_divergence(q, np.full(q.shape, 1 / q.shape[-1], q.dtype))),
    ("q", lambda q: ce.kl_divergence(np.full(q.shape, 1 / q.shape[-1], q.dtype), q)),
]


@pytest.mark.parametrize(("name", "call"), ROW_SUM_CALLS, ids=[f"{c[0]}-{i}" for i, c in
                                                              enumerate(ROW_SUM_CALLS)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("C", [2, 40])
def test_row_sum_tolerance(name: str, call: Any, dtype: type, C: int) -> None:
    """Rows must sum to 1 within max(C, 16) * eps of their dtype: 0.9 x that passes,
    1.5 x that (and a plain mistake) fails with the row named."""
    eps = float(np.finfo(dtype).eps)
    tol = max(C, 16) * eps
    q = np.full((3, C), 1.0 / C)
    ok = q.copy()
    ok[1, 0] += 0.9 * tol  # row 1 sums to 1 + 0.9 tol
    bad = q.copy()
    bad[2, 0] += 1.5 * tol
    if dtype != np.float64:
        # rounding to float16/float32 moves the excess; the check sums in float64, so
        # verify the rounded rows still straddle the tolerance (they do for these sizes)
        ok, bad = ok.astype(dtype), bad.astype(dtype)
        s_ok = float(np.sum(ok[1].astype(np.float64)))
        s_bad = float(np.sum(bad[2].astype(np.float64)))
        if not (abs(s_ok - 1) <= tol < abs(s_bad - 1)):
            pytest.skip("the rows do not straddle the tolerance after rounding")
    call(ok)
    _raises(ValueError, [f"rows of {name}", "row at [2]"], lambda: call(bad))
    wrong = q.astype(dtype).copy()
    wrong[0] *= 0.5
    _raises(ValueError, [f"rows of {name}", "row at [0]"], lambda: call(wrong))


def test_rounded_probabilities_name_prob_tol() -> None:
    """Issue 27: probabilities rounded to 6 decimals fail the default tolerance; the message
    names prob_tol= (and renormalising), and prob_tol= accepts them."""
    rng = np.random.default_rng(27)
    z = rng.normal(size=(4, 5))
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)  # an independent softmax
    y = np.array([0, 1, 2, 3])
    rounded = np.round(p, 6)
    _raises(ValueError, ["rows of probs must sum to 1", "the default of prob_tol=",
                         "pass prob_tol=", "divide each row by its sum"],
            lambda: ce.cross_entropy_from_probs(rounded, y))
    # the same hint for the other functions that take prob_tol=
    _raises(ValueError, ["rows of probs", "prob_tol="], lambda: ce.entropy(rounded))
    _raises(ValueError, ["rows of target", "prob_tol="],
            lambda: ce.cross_entropy(z, rounded))
    # an explicit tolerance that is still too small is named as the caller's
    _raises(ValueError, ["tolerance 1e-09, from prob_tol="],
            lambda: ce.cross_entropy_from_probs(rounded, y, prob_tol=1e-9))
    worst = float(np.max(np.abs(rounded.sum(axis=1) - 1.0)))
    got = ce.cross_entropy_from_probs(rounded, y, prob_tol=2 * worst, reduction="none")
    want = -np.log(rounded[np.arange(4), y])  # used as given, never renormalised
    np.testing.assert_allclose(got, want, rtol=1e-15)


def test_rows_are_never_renormalised() -> None:
    """A row accepted within tolerance is used as it is: -log(q_y) of the given q_y."""
    eps = np.finfo(np.float64).eps
    q = np.array([0.5, 0.5 + 8 * eps])  # sums to 1 + 8 eps (accepted, tolerance 16 eps)
    loss = ce.cross_entropy_from_probs(q, 1)
    assert loss == -np.log(q[1])  # renormalising would give -log(q[1] / sum(q)) instead
    assert loss != -np.log(q[1] / np.sum(q))


# --------------------------------------------------------------------------- options

LOSS_CALLS: list[tuple[str, Callable[..., Any]]] = [
    ("cross_entropy", lambda **kw: ce.cross_entropy(Z23, Y2, **kw)),
    ("cross_entropy_soft", lambda **kw: ce.cross_entropy(Z23, U23, **kw)),
    ("from_probs", lambda **kw: ce.cross_entropy_from_probs(U23, Y2, **kw)),
    ("from_log_probs", lambda **kw: ce.cross_entropy_from_log_probs(LU23, Y2, **kw)),
    ("bce_with_logits", lambda **kw: ce.binary_cross_entropy_with_logits(Z23, U23, **kw)),
    ("bce", lambda **kw: ce.binary_cross_entropy(U23, U23, **kw)),
]
BASE_CALLS = [
    *LOSS_CALLS,
    ("entropy", lambda **kw: ce.entropy(U23, **kw)),
    ("kl", lambda **kw: ce.kl_divergence(U23, U23, **kw)),
]


@pytest.mark.parametrize(("fname", "call"), BASE_CALLS, ids=[c[0] for c in BASE_CALLS])
def test_bad_base(fname: str, call: Callable[..., Any]) -> None:
    for b in (0, 0.0, -2.0, 1, 1.0, np.inf, -np.inf, np.nan):
        _raises(ValueError, ["base", repr(b)], lambda b=b: call(base=b))
    for b in (True, "2", [2.0], np.array(2.0), 2 + 0j):
        _raises(TypeError, ["base"], lambda b=b: call(base=b))
    call(base=2)  # valid bases are accepted, also NumPy scalars
    call(base=np.float32(10.0))
    call(base=0.5)


@pytest.mark.parametrize(("fname", "call"), LOSS_CALLS, ids=[c[0] for c in LOSS_CALLS])
def test_bad_label_smoothing(fname: str, call: Callable[..., Any]) -> None:
    for e in (-0.1, 1.1, np.nan, np.inf, -np.inf):
        _raises(ValueError, ["label_smoothing"], lambda e=e: call(label_smoothing=e))
    for e in (True, "0.1", None, [0.1]):
        _raises(TypeError, ["label_smoothing"], lambda e=e: call(label_smoothing=e))
    call(label_smoothing=0.0)
    call(label_smoothing=1.0)


@pytest.mark.parametrize(("fname", "call"), LOSS_CALLS, ids=[c[0] for c in LOSS_CALLS])
def test_bad_reduction(fname: str, call: Callable[..., Any]) -> None:
    for r in ("avg", "MEAN", "", None, ["mean"], 0):
        _raises(ValueError, ["reduction", repr(r)], lambda r=r: call(reduction=r))


CLASS_WEIGHT_CALLS = LOSS_CALLS[:4]


@pytest.mark.parametrize(("fname", "call"), CLASS_WEIGHT_CALLS,
                         ids=[c[0] for c in CLASS_WEIGHT_CALLS])
def test_bad_class_weight(fname: str, call: Callable[..., Any]) -> None:
    _raises(ValueError, ["weight", "one entry per class (3)", "(4,)"],
            lambda: call(weight=np.ones(4)))
    for bad, shown in ((-1.0, "-1.0"), (np.nan, "nan"), (np.inf, "inf"), (-np.inf, "-inf")):
        w = np.array([1.0, bad, 1.0])
        _raises(ValueError, ["weight[1]", shown, ">= 0"], lambda w=w: call(weight=w))
    _raises(TypeError, ["weight"], lambda: call(weight=["a", "b", "c"]))


@pytest.mark.parametrize("arg", ["weight", "pos_weight"])
@pytest.mark.parametrize(("fname", "call"), LOSS_CALLS[4:], ids=[c[0] for c in LOSS_CALLS[4:]])
def test_bad_binary_weight(fname: str, call: Callable[..., Any], arg: str) -> None:
    for bad, shown in ((-1.0, "-1.0"), (np.nan, "nan"), (np.inf, "inf")):
        w = np.array([1.0, 1.0, bad])
        _raises(ValueError, [f"{arg}[2]", shown], lambda w=w: call(**{arg: w}))
    _raises(ValueError, [arg, "broadcast"], lambda: call(**{arg: np.ones(4)}))
    _raises(TypeError, [arg], lambda: call(**{arg: np.array([True, False, True])}))


def test_negative_weighted_sum_in_logsumexp() -> None:
    _raises(ValueError, ["negative", "return_sign=True"],
            lambda: ce.logsumexp([0.0, 1.0], b=[1.0, -1.0]))


def test_messages_name_the_first_bad_position_only() -> None:
    """The first bad element in C order is the one shown, for several bad elements."""
    y = np.array([[0, 1, 9], [5, -3, 0]])
    with pytest.raises(ValueError) as info:
        ce.cross_entropy(np.zeros((2, 3, 4)), y)
    assert re.search(r"target\[0, 2\] = 9\b", str(info.value)), str(info.value)
