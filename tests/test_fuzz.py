"""Fuzzing every public function with random shapes, dtypes, values and options.

Each call must either return a result that passes the cheap checks below or raise one of
the documented exceptions (``TypeError``/``ValueError``); anything else (another exception,
a warning, a wrong dtype or shape, a probability outside [0, 1]) fails.

Cheap checks on a result: shape; dtype (float16/float32/float64 kept, integers give
float64; with a float target the wider float dtype; the gradient has the prediction's
dtype); probabilities in [0, 1] and rows of finite inputs summing to 1; log-probabilities
<= 0; losses >= 0; NaN exactly where the documented special values say.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import crossentropy as ce

DTYPES = [np.float16, np.float32, np.float64, np.int32, np.int64, np.bool_]
SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -0.0, 5e-324, 1e-310, 1e308, -1e308, 1e6, 65504.0]

shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)


@st.composite
def arrays(draw: Any, shape: Any = None) -> Any:
    """An array of a random dtype and shape whose values mix ordinary and special numbers."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(shapes) if shape is None else shape
    if dtype.kind == "b":
        return draw(hnp.arrays(dtype, shape))
    if dtype.kind in "iu":
        return draw(hnp.arrays(dtype, shape, elements=st.integers(-1000, 1000)))
    floats = st.floats(-100.0, 100.0, width=8 * dtype.itemsize) | st.sampled_from(SPECIAL)
    with np.errstate(over="ignore"):  # 1e308 becomes inf in float16/float32
        special = draw(hnp.arrays(np.float64, shape, elements=floats))
        return special.astype(dtype)


def out_dtype(pred: Any, *others: Any) -> np.dtype[Any]:
    """The documented result dtype: the prediction's (integers: float64), widened by float
    targets; integer targets never widen it."""
    dt = np.asarray(pred).dtype
    out = dt if dt.kind == "f" else np.dtype(np.float64)
    for o in others:
        od = np.asarray(o).dtype
        if od.kind == "f" and od.itemsize > out.itemsize:
            out = od
    return out


def call(f: Callable[[], Any]) -> Any:
    """Run f; return its result, or None when it raised a documented exception."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning may escape (RuntimeWarning included)
        try:
            return f()
        except (TypeError, ValueError) as exc:
            assert str(exc), "an exception without a message"
            return None


def _arr(r: Any) -> Any:
    if np.ndim(r) == 0:
        assert isinstance(r, np.generic), type(r)  # 0-d results are NumPy scalars
    else:
        assert isinstance(r, np.ndarray), type(r)
    return np.asarray(r)


def _tol(dtype: np.dtype[Any], n: int) -> float:
    return 4 * max(n, 4) * float(np.finfo(dtype).eps)


def _is_bool(x: Any) -> bool:
    return bool(np.asarray(x).dtype.kind == "b")


# --------------------------------------------------------------------------- elementwise


@settings(max_examples=150)
@given(arrays(), st.booleans())
def test_sigmoid_family(x: Any, grad: bool) -> None:
    for f in (ce.sigmoid, ce.log_sigmoid):
        r = call(lambda f=f: f(x, return_grad=grad))
        if _is_bool(x):
            assert r is None  # booleans are rejected
            continue
        assert r is not None
        v, d = r if grad else (r, None)
        v = _arr(v)
        assert v.shape == np.shape(x) and v.dtype == out_dtype(x)
        nan = np.isnan(np.asarray(x, dtype=np.float64))
        assert np.array_equal(np.isnan(v), nan)
        if f is ce.sigmoid:
            assert np.all((v[~nan] >= 0) & (v[~nan] <= 1))
        else:
            assert np.all(v[~nan] <= 0)
        if d is not None:
            d = _arr(d)
            assert d.shape == v.shape and d.dtype == v.dtype
            assert np.all(d[~nan] >= 0) and np.all(d[~nan] <= 1)


# --------------------------------------------------------------------------- softmax family


axes = st.none() | st.integers(-4, 3)


def _rows_view(x: Any, axis: Any) -> Any:
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(1, -1) if axis is None else np.moveaxis(x, axis, -1)


@settings(max_examples=150)
@given(arrays(), axes)
def test_softmax_family(x: Any, axis: Any) -> None:
    nd = np.ndim(x)
    bad_axis = axis is not None and not -nd <= axis < nd
    for f in (ce.softmax, ce.log_softmax):
        r = call(lambda f=f: f(x, axis=axis))
        if _is_bool(x) or bad_axis:
            assert r is None
            continue
        assert r is not None
        v = _arr(r)
        assert v.shape == np.shape(x) and v.dtype == out_dtype(x)
        if v.size == 0:
            continue
        xr = _rows_view(x, axis)
        vr = _rows_view(v, axis)
        with np.errstate(invalid="ignore"):
            nan_rows = np.isnan(xr).any(-1) | (xr == -np.inf).all(-1)
        assert np.array_equal(np.isnan(vr).any(-1), nan_rows)
        assert np.array_equal(np.isnan(vr).all(-1), nan_rows)  # a NaN row is NaN throughout
        ok = vr[~nan_rows]
        if f is ce.softmax:
            assert np.all((ok >= 0) & (ok <= 1))
            s = np.sum(ok.astype(np.float64), axis=-1)
            assert np.all(np.abs(s - 1) <= _tol(v.dtype, xr.shape[-1]))
        else:
            assert np.all(ok <= 0)
            # the largest class has log p >= -log C
            c = xr.shape[-1]
            assert np.all(np.max(ok, axis=-1) >= -np.log(c) - _tol(v.dtype, c))


@settings(max_examples=120)
@given(arrays(), axes, st.booleans(), st.booleans(), st.data())
def test_logsumexp(x: Any, axis: Any, keepdims: bool, sign: bool, data: Any) -> None:
    nd = np.ndim(x)
    bad_axis = axis is not None and not -nd <= axis < nd
    b = data.draw(st.none() | arrays(shape=st.just(np.shape(x))) | arrays())
    r = call(lambda: ce.logsumexp(x, axis=axis, b=b, keepdims=keepdims, return_sign=sign))
    if b is not None and np.shape(b) != np.shape(x):
        # b broadcasts with x (the axis then refers to the broadcast shape) or is refused;
        # either way call() has checked that nothing undocumented happened
        return
    if _is_bool(x) or bad_axis or (b is not None and _is_bool(b)):
        assert r is None
        return
    if r is None:
        # the only other documented refusal: a negative weighted sum without return_sign
        assert b is not None and not sign
        return
    v, s = r if sign else (r, None)
    v = _arr(v)
    xs = np.shape(x)
    if axis is None:
        want = (1,) * nd if keepdims else ()
    else:
        ax = axis % nd
        want = xs[:ax] + ((1,) if keepdims else ()) + xs[ax + 1:]
    assert v.shape == want
    assert v.dtype == (out_dtype(x) if b is None else out_dtype(x, b))
    if b is None and v.size:
        # without weights: lse >= max, and lse <= max + log(C)
        xr = _rows_view(x, axis)
        vv = v.reshape(xr.shape[:-1])
        with np.errstate(invalid="ignore"):
            m = np.max(xr, axis=-1) if xr.shape[-1] else np.full(xr.shape[:-1], -np.inf)
        fin = np.isfinite(m)
        assert np.array_equal(np.isnan(vv), np.isnan(m))
        tol = _tol(v.dtype, 1) * np.abs(m[fin]) + 1e-300
        assert np.all(vv[fin] >= m[fin] - tol)
        slack = 1e-3 if v.dtype.itemsize < 8 else 0.0  # float16/32 rounding of the result
        assert np.all(vv[fin] <= m[fin] + np.log(max(xr.shape[-1], 1)) + tol + slack)
    if s is not None:
        s = _arr(s)
        assert s.shape == v.shape
        assert np.all(np.isin(s[~np.isnan(s)], [-1.0, 0.0, 1.0]))


@settings(max_examples=50)
@given(arrays(), st.none() | st.integers(-2, 6))
def test_one_hot(labels: Any, num_classes: Any) -> None:
    r = call(lambda: ce.one_hot(labels, num_classes))
    if r is None:
        return
    v = _arr(r)
    lab = np.asarray(labels)
    assert lab.dtype.kind != "b"
    assert v.shape == (*lab.shape, v.shape[-1]) and v.dtype == np.float64
    assert np.all(v.sum(axis=-1) == 1) and np.all((v == 0) | (v == 1))
    np.testing.assert_array_equal(np.argmax(v, axis=-1), lab)


# --------------------------------------------------------------------------- categorical losses


@st.composite
def ce_args(draw: Any) -> Any:
    x = draw(arrays())
    nd = np.ndim(x)
    axis = draw(st.integers(-max(nd, 1) - 1, max(nd, 1)))
    kind = draw(st.sampled_from(["index", "prob", "softmax", "junk"]))
    shape = np.shape(x)
    ok_axis = nd >= 1 and -nd <= axis < nd
    c = shape[axis] if ok_axis else 3
    rows = tuple(s for i, s in enumerate(shape) if not ok_axis or i != axis % nd)
    if kind == "index":
        target = draw(hnp.arrays(np.int64, rows, elements=st.integers(-101, c)))
    elif kind == "softmax" and ok_axis:
        # valid probability rows of a random dtype
        dt = draw(st.sampled_from([np.float16, np.float32, np.float64]))
        raw = draw(hnp.arrays(np.float64, shape, elements=st.floats(-5, 5)))
        target = ce.softmax(raw, axis=axis).astype(dt)
    else:
        target = draw(arrays())
    weight = draw(st.none() | hnp.arrays(np.float64, (c,), elements=st.floats(0, 3))
                  | arrays())
    opts = {
        "axis": axis,
        "weight": weight,
        "ignore_index": draw(st.sampled_from([-100, None, 0])),
        "label_smoothing": draw(st.sampled_from([0.0, 0.1, 1.0, -0.5, np.nan])),
        "reduction": draw(st.sampled_from(["mean", "sum", "none", "avg"])),
        "base": draw(st.sampled_from([None, 2, 10.0, 1, 0, -2.0])),
    }
    return x, target, opts


def _check_loss(r: Any, pred: Any, target: Any, opts: dict[str, Any], rows: tuple[int, ...],
                nonneg: bool) -> None:
    v, g = r
    v, g = _arr(v), _arr(g)
    t = np.asarray(target)
    widen = t.dtype.kind == "f" and t.ndim == np.ndim(pred)
    assert v.dtype == (out_dtype(pred, t) if widen else out_dtype(pred))
    assert v.shape == (rows if opts["reduction"] == "none" else ())
    assert g.shape == np.shape(pred) and g.dtype == out_dtype(pred)
    base = opts["base"]
    if nonneg and (base is None or base > 1):
        assert not np.any(v < 0)


@settings(max_examples=150)
@given(ce_args())
def test_cross_entropy_family(args: Any) -> None:
    x, target, opts = args
    nd = np.ndim(x)
    ok_axis = nd >= 1 and -nd <= opts["axis"] < nd
    rows = tuple(s for i, s in enumerate(np.shape(x)) if ok_axis and i != opts["axis"] % nd)
    r = call(lambda: ce.cross_entropy(x, target, return_grad=True, **opts))
    if _is_bool(x) or not ok_axis:
        assert r is None
    if r is not None:
        _check_loss(r, x, target, opts, rows, nonneg=True)
    if not ok_axis:
        return
    # the same target against normalised predictions
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="ignore", invalid="ignore"):
            xf = np.asarray(x, dtype=np.float64) if not _is_bool(x) else np.zeros(np.shape(x))
            xf = np.nan_to_num(xf, nan=0.0, posinf=50.0, neginf=-50.0)
            dt = out_dtype(x) if not _is_bool(x) else np.dtype(np.float64)
            p = ce.softmax(np.clip(xf, -50, 50), axis=opts["axis"]).astype(dt)
            lp = ce.log_softmax(np.clip(xf, -50, 50), axis=opts["axis"]).astype(dt)
    for f, pred in ((ce.cross_entropy_from_probs, p), (ce.cross_entropy_from_log_probs, lp)):
        r = call(lambda f=f, pred=pred: f(pred, target, return_grad=True, **opts))
        if r is not None:
            _check_loss(r, pred, target, opts, rows, nonneg=True)


@settings(max_examples=120)
@given(arrays(), st.data())
def test_binary_family(x: Any, data: Any) -> None:
    same = data.draw(st.booleans())
    y = data.draw(arrays(shape=st.just(np.shape(x))) if same else arrays())
    opts = {
        "weight": data.draw(st.none() | arrays()),
        "pos_weight": data.draw(st.none() | arrays()),
        "label_smoothing": data.draw(st.sampled_from([0.0, 0.2, 1.5])),
        "reduction": data.draw(st.sampled_from(["mean", "sum", "none", None])),
        "base": data.draw(st.sampled_from([None, 2, 1.0, np.inf])),
    }
    with np.errstate(invalid="ignore", over="ignore"):
        q = 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))
    q = q.astype(out_dtype(x)) if not _is_bool(x) else x
    for f, pred in ((ce.binary_cross_entropy_with_logits, x), (ce.binary_cross_entropy, q)):
        r = call(lambda f=f, pred=pred: f(pred, y, return_grad=True, **opts))
        if _is_bool(pred) or _is_bool(y) or np.shape(y) != np.shape(x):
            assert r is None
        if r is None:
            continue
        v, g = _arr(r[0]), _arr(r[1])
        assert v.dtype == out_dtype(pred, y)
        assert v.shape == (np.shape(x) if opts["reduction"] == "none" else ())
        assert g.shape == np.shape(x) and g.dtype == out_dtype(pred)
        if opts["base"] in (None, 2):
            assert not np.any(v < 0)


@settings(max_examples=150)
@given(arrays(), st.integers(-3, 2), st.booleans(), st.data())
def test_entropy_and_kl(x: Any, axis: int, normalise: bool, data: Any) -> None:
    nd = np.ndim(x)
    ok_axis = nd >= 1 and -nd <= axis < nd
    p = x
    if normalise and ok_axis and not _is_bool(x):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            xf = np.nan_to_num(np.asarray(x, dtype=np.float64), posinf=50.0, neginf=-50.0)
            p = ce.softmax(np.clip(xf, -50, 50), axis=axis).astype(out_dtype(x))
    base = data.draw(st.sampled_from([None, 2, 0.5]))
    r = call(lambda: ce.entropy(p, axis=axis, base=base, return_grad=True))
    if not ok_axis or _is_bool(p):
        assert r is None
    rows = tuple(s for i, s in enumerate(np.shape(x)) if ok_axis and i != axis % nd)
    if r is not None:
        v, g = _arr(r[0]), _arr(r[1])
        assert v.shape == rows and v.dtype == out_dtype(p)
        assert g.shape == np.shape(p) and g.dtype == out_dtype(p)
        if base != 0.5:
            assert not np.any(v < 0)
    q = data.draw(st.sampled_from(["self", "reversed", "junk"]))
    qq = p if q == "self" else (np.flip(p) if q == "reversed" else data.draw(arrays()))
    r = call(lambda: ce.kl_divergence(p, qq, axis=axis, base=base, return_grad=True))
    if r is not None:
        v, g = _arr(r[0]), _arr(r[1])
        assert v.shape == rows and v.dtype == out_dtype(p, qq)
        assert g.shape == np.shape(qq) and g.dtype == out_dtype(qq)
        if q == "self":  # KL(p || p) = 0 (NaN where p has NaN)
            with np.errstate(invalid="ignore"):
                assert np.all((v == 0) | np.isnan(v))
        elif base is None:
            # rows sum to 1 within max(C, 16) eps, so KL >= -(that tolerance) (roughly)
            c = np.shape(p)[axis]
            assert not np.any(v < -4 * _tol(np.dtype(v.dtype), c))
