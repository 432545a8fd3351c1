"""The fast CPU path (crossentropy._cpu): NumPy reference of cross_entropy_rows, numba kernels."""

from __future__ import annotations

import math

import numpy as np
import pytest

import crossentropy as ce
from crossentropy._backends import cross_entropy_rows


def cross_entropy_rows_numpy(*args: object, **kwargs: object) -> object:
    """The exact core behind cross_entropy_rows (the numba kernels' oracle)."""
    with ce.use_backend("numpy"):
        return cross_entropy_rows(*args, **kwargs)  # type: ignore[arg-type]


def _ulp_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Max distance in ulps of `b`'s dtype (NaNs must coincide; infinities must be equal)."""
    a = np.asarray(a)
    b = np.asarray(b)
    assert np.array_equal(np.isnan(a), np.isnan(b))
    fin = np.isfinite(a) & np.isfinite(b)
    assert np.array_equal(a[~fin & ~np.isnan(a)], b[~fin & ~np.isnan(b)])
    if not fin.any():
        return 0.0
    a = a[fin].astype(b.dtype)
    b = b[fin]
    tiny = np.finfo(b.dtype).smallest_subnormal
    spacing = np.maximum(np.abs(np.spacing(np.maximum(np.abs(a), np.abs(b)))), tiny)
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)) / spacing))


# --------------------------------------------------------------------------- NumPy reference


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_reference_rows_match_cross_entropy(dtype: type, eps: float, weighted: bool) -> None:
    rng = np.random.default_rng(0)
    N, C = 37, 11
    x = (rng.standard_normal((N, C)) * 4).astype(dtype)
    y = rng.integers(0, C, N)
    y[[3, 17]] = -100
    w = rng.uniform(0.1, 2.0, C) if weighted else None
    g = np.empty_like(x)
    loss, lse = cross_entropy_rows_numpy(x, y, weight=w, label_smoothing=eps, grad=g)
    want = ce.cross_entropy(
        x.astype(np.float64), y, weight=w, label_smoothing=eps, reduction="none"
    )
    assert _ulp_diff(loss, want) <= 2
    assert loss[3] == 0.0 and loss[17] == 0.0
    assert _ulp_diff(lse, ce.logsumexp(x.astype(np.float64), axis=-1)) <= 1
    _, gw = ce.cross_entropy(x, y, weight=w, label_smoothing=eps, reduction="sum",
                             return_grad=True)
    assert g.dtype == x.dtype
    # p_c W - a_c cancels under smoothing: compare on the scale of the row's largest entry
    scale = np.max(np.abs(gw), axis=-1, keepdims=True)
    assert np.all(np.abs(g - gw) <= 2 * np.finfo(dtype).eps * scale)


def test_reference_inplace_grad() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((9, 5))
    y = rng.integers(0, 5, 9)
    g = np.empty_like(x)
    loss1, lse1 = cross_entropy_rows_numpy(x, y, grad=g, z_loss=1e-2, softcap=3.0)
    xi = x.copy()
    loss2, lse2 = cross_entropy_rows_numpy(xi, y, grad=xi, z_loss=1e-2, softcap=3.0)
    np.testing.assert_array_equal(loss1, loss2)
    np.testing.assert_array_equal(lse1, lse2)
    np.testing.assert_array_equal(g, xi)


@pytest.mark.parametrize("softcap", [None, 2.5])
@pytest.mark.parametrize("z_loss", [0.0, 0.3])
def test_reference_grad_by_finite_differences(softcap: float | None, z_loss: float) -> None:
    rng = np.random.default_rng(2)
    N, C = 4, 6
    x = rng.standard_normal((N, C)) * 3
    y = np.array([0, 5, -100, 2])
    w = rng.uniform(0.5, 1.5, C)
    kw = dict(weight=w, label_smoothing=0.2, z_loss=z_loss, softcap=softcap)
    g = np.empty_like(x)
    cross_entropy_rows_numpy(x, y, grad=g, grad_scale=0.5, **kw)
    h = 1e-6
    fd = np.zeros_like(x)
    for i in range(N):
        for j in range(C):
            xp = x.copy()
            xm = x.copy()
            xp[i, j] += h
            xm[i, j] -= h
            lp, _ = cross_entropy_rows_numpy(xp, y, **kw)
            lm, _ = cross_entropy_rows_numpy(xm, y, **kw)
            fd[i, j] = 0.5 * (lp[i] - lm[i]) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)
    assert not g[2].any()


def test_reference_softcap_and_z_loss_values() -> None:
    # Independent formula: z = c tanh(x / c); lse by logaddexp.reduce; loss = lse - z_y + zl lse^2
    x = np.array([[10.0, -3.0, 0.5], [100.0, 99.0, -50.0]])
    y = np.array([1, 0])
    c, zl = 5.0, 0.01
    loss, lse = cross_entropy_rows_numpy(x, y, softcap=c, z_loss=zl)
    z = c * np.tanh(x / c)
    want_lse = np.logaddexp.reduce(z, axis=-1)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-15)
    np.testing.assert_allclose(loss, want_lse - z[[0, 1], y] + zl * want_lse**2, rtol=1e-14)


def test_public_rows_function_is_documented_contract() -> None:
    x = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    loss, lse = cross_entropy_rows(x, np.array([0]))
    assert loss.dtype == np.float64 and lse.dtype == np.float64
    # mpmath: log(e + e^2 + e^3) - 1 = 2.4076059644443806.  float32 logits are computed for
    # a float32 result (the kernels' float32 exp errs by < 2e-9 relative, 0.04 float32 ulp),
    # so the float64 loss is held to that, not to float64's precision.
    np.testing.assert_allclose(loss, [2.40760596444438], rtol=2e-9)


# --------------------------------------------------------------------------- numba kernels

kernels = pytest.importorskip("crossentropy._cpu._kernels")  # numba is in the test extra


def _both(fn, *args, **kw):  # type: ignore[no-untyped-def]
    """(fast, reference): fn under the numba backend and under the NumPy backend."""
    with ce.use_backend("numba"):
        fast = fn(*args, **kw)
    with ce.use_backend("numpy"):
        ref = fn(*args, **kw)
    return fast, ref


def _odd_inputs(dtype: type) -> list[tuple[np.ndarray, int | None]]:
    rng = np.random.default_rng(5)
    x3 = (rng.standard_normal((3, 5, 7)) * 6).astype(dtype)
    big = (rng.standard_normal((17, 301)) * 20).astype(dtype)
    return [
        (x3, -1), (x3, 0), (x3, 1), (x3, None),
        (big, -1), (big[:, ::3], -1), (big.T, 0), (big[::2], 1),
        (np.array([1.0, 2.0, 3.0], dtype=dtype), -1),
    ]


SPECIAL = np.array(
    [
        [0.0, 1.0, 2.0, 3.0],
        [np.inf, 0.0, np.inf, 1.0],
        [-np.inf, -np.inf, -np.inf, -np.inf],
        [np.nan, 0.0, 1.0, 2.0],
        [-np.inf, 5.0, -np.inf, 5.0],
        [1e38, -1e38, 0.0, 1e-30],
        [-745.0, -740.0, 0.0, -1e-40],
        [80.0, 88.0, 89.0, 0.0],
    ]
)
SPECIAL64 = np.vstack([SPECIAL, [[1e300, -1e300, 0.0, 1e-300], [700.0, 709.0, 710.0, -1e-320]]])


def _special(dtype: type) -> np.ndarray:
    return SPECIAL.astype(dtype) if dtype == np.float32 else SPECIAL64


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fn", ["softmax", "log_softmax", "logsumexp"])
def test_softmax_family_matches_reference(dtype: type, fn: str) -> None:
    f = getattr(ce, fn)
    bound = {"softmax": 8, "log_softmax": 4, "logsumexp": 4}[fn]
    if dtype == np.float32:
        bound = 1
    for x, axis in [*_odd_inputs(dtype), (_special(dtype), -1)]:
        fast, ref = _both(f, x, axis=axis)
        if fn == "logsumexp" and x.shape[-1] == 4:
            # Row [inf, 0, inf, 1]: the documented answer is +inf; the NumPy reference
            # returns NaN for rows with two +inf terms, so that row is checked on its own.
            assert fast[1] == np.inf
            fast, ref = np.delete(fast, 1), np.delete(ref, 1)
        assert fast.dtype == ref.dtype and np.shape(fast) == np.shape(ref)
        assert _ulp_diff(fast, ref) <= bound, (fn, x.shape, axis)


def test_logsumexp_keepdims_and_axis_none() -> None:
    x = np.random.default_rng(1).standard_normal((4, 6, 5))
    for axis in (None, 0, 1, -1):
        fast, ref = _both(ce.logsumexp, x, axis=axis, keepdims=True)
        assert np.shape(fast) == np.shape(ref)
        assert _ulp_diff(fast, ref) <= 2


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fn", ["sigmoid", "log_sigmoid"])
def test_sigmoid_family_matches_reference(dtype: type, fn: str) -> None:
    f = getattr(ce, fn)
    x = np.concatenate(
        [np.linspace(-800, 800, 4001), [-np.inf, np.inf, np.nan, 0.0, -0.0, -720.0, 744.0]]
    ).astype(dtype)
    x2 = x[:-4].reshape(2, -1)[:, ::2]  # non-contiguous
    for arr in (x, x2):
        (fv, fd), (rv, rd) = _both(f, arr, return_grad=True)
        assert _ulp_diff(fv, rv) <= 2 and _ulp_diff(fd, rd) <= 2
        assert fv.dtype == np.dtype(dtype) and fd.shape == arr.shape


def test_log_sigmoid_and_bce_against_mpmath_where_the_log1p_switches() -> None:
    """The kernels' own log1p (``_log1p01``) reduces 1 + t to 2^e (1 + f) with e = 1 past
    1 + t = sqrt(2), i.e. at |x| = -log(sqrt(2) - 1) = 0.8813735870...; the points around
    it, around 0, and where t = e^-|x| falls below 2^-53 (|x| ~ 36.7) and into the
    subnormals, against mpmath, to 1 ulp (float64)."""
    import mpmath

    mpmath.mp.dps = 40
    x0 = 0.881373587019543
    x = np.concatenate([
        x0 + np.arange(-40, 41) * 2.0**-52,  # both sides of the switch, ulp by ulp
        np.linspace(-3.0, 3.0, 601),
        [0.0, -0.0, 1e-300, -1e-300, 2.0**-30, -(2.0**-30)],
        np.linspace(30.0, 40.0, 101), -np.linspace(30.0, 40.0, 101),
        [700.0, -700.0, 740.0, -740.0],
    ])
    x = np.concatenate([x, -x[:81]])
    with ce.use_backend("numba"):
        got = ce.log_sigmoid(x)
        y = (np.arange(x.size) % 2).astype(np.float64)
        bce = ce.binary_cross_entropy_with_logits(x, y, reduction="none")

    def log_sigmoid(v: float) -> mpmath.mpf:  # -log1p(e^-v), computed at 40 digits
        return -mpmath.log1p(mpmath.exp(-mpmath.mpf(v)))

    want = np.array([float(log_sigmoid(float(v))) for v in x])
    # BCE: y = 1 gives -log sigma(x), y = 0 gives -log sigma(-x)
    want_bce = np.array([float(-log_sigmoid(float(v) if t else -float(v)))
                         for v, t in zip(x, y, strict=True)])
    assert _ulp_diff(got, want) <= 1
    assert _ulp_diff(bce, want_bce) <= 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_with_logits_matches_reference(dtype: type, reduction: str) -> None:
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((37, 13)) * 30).astype(dtype)
    x[0, :3] = [np.inf, -np.inf, 0.0]
    y = rng.uniform(0, 1, x.shape)
    y[1] = 0.0
    y[2] = 1.0
    x64 = x.astype(np.float64)
    with ce.use_backend("numpy"):
        s_pos, s_neg = ce.sigmoid(x64), ce.sigmoid(-x64)
    for kw in ({}, {"pos_weight": 2.5, "label_smoothing": 0.1}, {"base": 2}):
        (fv, fg), (rv, rg) = _both(ce.binary_cross_entropy_with_logits, x, y,
                                   reduction=reduction, return_grad=True, **kw)
        bound = 2 if reduction == "none" else 16  # sums: a different order of additions
        assert _ulp_diff(fv, rv) <= bound
        # The gradient (1 - y) sigma(x) - p y sigma(-x) of a soft label cancels where
        # sigma(x) ~ y: both backends round the two terms, and which product the compiler
        # fuses into the subtraction (an FMA) depends on the CPU (AVX-512 or AVX2), so the
        # bound is 2 ulp of the larger term, in the gradient's units (reduction, base).
        eps, pw = kw.get("label_smoothing", 0.0), kw.get("pos_weight", 1.0)
        ys = y * (1.0 - eps) + eps / 2
        unit = (1.0 / x.size if reduction == "mean" else 1.0) / math.log(kw.get("base", math.e))
        terms = np.maximum((1.0 - ys) * s_pos, pw * ys * s_neg) * unit
        fin = np.isfinite(rg)
        assert np.array_equal(np.isnan(fg), np.isnan(rg))
        err = np.abs(fg[fin].astype(np.float64) - rg[fin].astype(np.float64))
        assert np.all(err <= 2 * np.spacing(terms[fin].astype(dtype)).astype(np.float64))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_matches_reference(dtype: type) -> None:
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((29, 11, 3)) * 8).astype(dtype)
    y = rng.integers(0, 11, (29, 3))
    y[0, 0] = -100
    w = rng.uniform(0.2, 2.0, 11)
    for kw in ({}, {"weight": w}, {"label_smoothing": 0.2}, {"weight": w, "base": 2},
               {"ignore_index": 4, "target": np.where(y < 0, 4, y)}):
        t = kw.pop("target", y)
        for red in ("mean", "sum", "none"):
            (fv, fg), (rv, rg) = _both(ce.cross_entropy, x, t, axis=1, reduction=red,
                                       return_grad=True, **kw)
            assert fv.dtype == rv.dtype and fg.dtype == rg.dtype
            assert _ulp_diff(fv, rv) <= (4 if red == "none" else 16)
            scale = np.max(np.abs(rg))
            assert np.all(np.abs(fg - rg) <= 4 * np.finfo(dtype).eps * scale)


def test_cross_entropy_special_rows() -> None:
    y = np.array([0, 1, 2, 1, 1, 0, 2, 2, 0, 3])
    fast, ref = _both(ce.cross_entropy, SPECIAL64, y, reduction="none", return_grad=True)
    assert _ulp_diff(fast[0], ref[0]) <= 4
    fin = np.isfinite(ref[1])
    assert np.array_equal(np.isnan(fast[1]), np.isnan(ref[1]))
    np.testing.assert_allclose(fast[1][fin], ref[1][fin], rtol=1e-15, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reps", [1, 17, 65, 300])
def test_special_rows_on_the_short_and_the_blocked_row_paths(dtype: type, reps: int) -> None:
    # The kernels take rows of <= 64 classes by one loop (_row_stats_short) and longer rows
    # by blocked passes: the special rows (+inf, all -inf, NaN, ties, huge spreads,
    # subnormal results), tiled to 4, 68, 260 and 1200 classes, must agree with the core
    # on both.  (The tiles keep each row's kind; the ties move the first maximum.)
    x = np.tile(_special(dtype), (1, reps))
    x[0, -1] += 1.0  # the maximum in the last block of the row
    for fn, bound in (("softmax", 8), ("log_softmax", 4), ("logsumexp", 4)):
        fast, ref = _both(getattr(ce, fn), x, axis=-1)
        if fn == "logsumexp":
            assert fast[1] == np.inf  # two +inf terms: the reference gives NaN (see above)
            fast, ref = np.delete(fast, 1), np.delete(ref, 1)
        assert _ulp_diff(fast, ref) <= (1 if dtype == np.float32 else bound), (fn, x.shape)
    y = np.arange(x.shape[0]) % x.shape[1]
    (fv, fg), (rv, rg) = _both(ce.cross_entropy, x, y, reduction="none", return_grad=True)
    assert np.array_equal(np.isnan(fv), np.isnan(rv))
    assert np.array_equal(np.isnan(fg), np.isnan(rg))
    ok = np.isfinite(rv)
    assert _ulp_diff(fv[ok], rv[ok]) <= 4
    fin = np.isfinite(rg)
    scale = np.max(np.abs(rg[fin]))
    assert np.all(np.abs(fg[fin] - rg[fin]) <= 4 * np.finfo(dtype).eps * scale)


def _rising_rows(n: int) -> np.ndarray:
    """float32 rows of n classes whose maximum rises block after block (the one-pass
    kernel rescales its sum each time), with the row kinds at block boundaries."""
    rng = np.random.default_rng(11)
    rows = [
        np.sort(rng.standard_normal(n) * 4),  # the maximum rises in every block
        np.linspace(-60.0, 30.0, n),  # a huge spread: the early terms rescale to ~e^-90
        np.concatenate([np.full(n // 2, -np.inf), rng.standard_normal(n - n // 2)]),  # -inf block
        np.concatenate([rng.standard_normal(n - 1) - 40.0, [0.0]]),  # confident, max last
        np.concatenate([rng.standard_normal(n - 2), [np.inf, 1.0]]),  # +inf after finite
        np.concatenate([rng.standard_normal(n - 1), [np.nan]]),  # NaN, a block after +inf
        np.concatenate([np.full(n - 1, -np.inf), [3.0]]),  # one finite entry, last
        np.concatenate([rng.standard_normal(n // 2), rng.standard_normal(n - n // 2) + 2.0]),
    ]
    x = np.vstack(rows).astype(np.float32)
    x[5, n // 3] = np.inf
    return x


@pytest.mark.parametrize("n", [4096, 5003, 12289])
def test_one_pass_float32_rows_match_the_core(n: int) -> None:
    # float32 value passes (logsumexp, log_softmax, cross_entropy without a gradient) read
    # each row once, block by block, and rescale the running sum when a block raises the
    # maximum: rows built so that it rises often, from -inf, to +inf and to NaN.
    x = _rising_rows(n)
    for fn in ("logsumexp", "log_softmax"):
        fast, ref = _both(getattr(ce, fn), x, axis=-1)
        assert _ulp_diff(fast, ref) <= 1, fn
    y = np.array([0, n - 1, 5, n - 1, 3, 1, n - 1, n // 3])
    fast, ref = _both(ce.cross_entropy, x, y, reduction="none")
    assert np.array_equal(np.isnan(fast), np.isnan(ref))
    ok = np.isfinite(ref)
    assert _ulp_diff(fast[ok], ref[ok]) <= 1


def test_one_pass_logsumexp_of_a_rising_row_against_mpmath() -> None:
    import mpmath

    x = _rising_rows(5003)[:2]
    with ce.use_backend("numba"):
        got = ce.logsumexp(x, axis=-1)
    mpmath.mp.dps = 40
    for row, g in zip(x, got, strict=True):
        want = mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(float(v))) for v in row))
        assert abs(float(g) - float(want)) <= 0.5 * float(np.spacing(np.float32(want)))
    # the confident row: its loss log1p(sum_{j != k} e^(x_j - x_k)) ~ e^-40 n, to the ulp
    row = _rising_rows(5003)[3]
    with ce.use_backend("numba"):
        loss = ce.cross_entropy(row[None], np.array([5002]), reduction="none")[0]
    want = mpmath.log1p(mpmath.fsum(mpmath.exp(mpmath.mpf(float(v))) for v in row[:-1]))
    assert abs(float(loss) - float(want)) <= float(np.spacing(np.float32(want)))


@pytest.mark.parametrize("n", [1000, 4096, 5003, 65536, 65537, 70001])
def test_float32_rows_with_stored_exponentials_match_the_core(n: int) -> None:
    # softmax and the cross-entropy gradient keep the exponentials.  Rows of up to 4096
    # classes sum them in one call, longer ones by blocks with the next row prefetched
    # (two passes), and rows past 65,536 classes in one pass: each block's exponentials
    # against the maximum when the block was read, the blocks before the last rise
    # rescaled at the end, those read while the maximum was still -inf zeroed.  The rows
    # rise in every block, start with -inf blocks, end in +inf or NaN, etc.
    from crossentropy._cpu import _kernels as K

    assert (n >= K._ONEPASS_MIN_STORED) == (n > 65536)  # the switch these sizes straddle
    x = _rising_rows(n)
    fast, ref = _both(ce.softmax, x, axis=-1)
    assert _ulp_diff(fast, ref) <= 1
    y = np.array([0, n - 1, 5, n - 1, 3, 1, n - 1, n // 3])
    (lf, gf), (lr, gr) = _both(ce.cross_entropy, x, y, reduction="none", return_grad=True)
    assert _ulp_diff(gf, gr) <= 1
    ok = np.isfinite(lr)
    assert _ulp_diff(lf[ok], lr[ok]) <= 1


def test_one_pass_softmax_of_a_rising_row_against_mpmath() -> None:
    import mpmath

    # the row from -60 to 30: its first blocks were read at a maximum ~90 below the last,
    # so their stored exponentials are rescaled by ~e^-90 (float32 subnormals at the start)
    row = _rising_rows(70001)[1]
    with ce.use_backend("numba"):
        got = ce.softmax(row[None], axis=-1)[0]
    mpmath.mp.dps = 40
    total = mpmath.fsum(mpmath.exp(mpmath.mpf(float(v))) for v in row)
    for j in (0, 255, 256, 30000, 69999, 70000):
        want = mpmath.exp(mpmath.mpf(float(row[j]))) / total
        spacing = float(np.spacing(np.float32(want)))
        assert abs(float(got[j]) - float(want)) <= spacing, j


def test_probability_targets_fall_back_to_numpy() -> None:
    x = np.random.default_rng(0).standard_normal((5, 4))
    t = ce.softmax(np.random.default_rng(1).standard_normal((5, 4)))
    fast, ref = _both(ce.cross_entropy, x, t)
    assert fast == ref


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("z_loss", [0.0, 1e-3])
@pytest.mark.parametrize("softcap", [None, 5.0])
@pytest.mark.parametrize("C", [11, 64, 517])  # rows read in place (<= 64) and blocked
def test_rows_kernel_matches_numpy_rows(dtype: type, z_loss: float,
                                        softcap: float | None, C: int) -> None:
    rng = np.random.default_rng(6)
    N = 23
    x = (rng.standard_normal((N, C)) * 7).astype(dtype)
    y = rng.integers(0, C, N)
    y[5] = -7
    w = rng.uniform(0.1, 3.0, C)
    for kw in ({}, {"weight": w, "label_smoothing": 0.1}):
        opts = dict(ignore_index=-7, z_loss=z_loss, softcap=softcap, grad_scale=0.25, **kw)
        g1 = np.empty_like(x)
        g2 = np.empty_like(x)
        with ce.use_backend("numba"):
            l1, s1 = cross_entropy_rows(x, y, grad=g1, **opts)
        l2, s2 = cross_entropy_rows_numpy(x, y, grad=g2, **opts)
        tol = np.finfo(dtype).eps
        np.testing.assert_allclose(l1, l2, rtol=8 * tol, atol=0)
        np.testing.assert_allclose(s1, s2, rtol=2 * tol, atol=0)
        scale = np.max(np.abs(g2), axis=-1, keepdims=True)
        # (under a soft cap tanh and sech^2 round once more each: 5.5 eps of the row's
        # largest entry measured at 11 classes with smoothing, before and after rows of
        # <= 64 classes were read in place)
        assert np.all(np.abs(g1 - g2) <= (8 if softcap else 4) * tol * scale)
        assert l1[5] == 0.0 and not g1[5].any()
        # in place: the gradient overwrites the logits
        xi = x.copy()
        with ce.use_backend("numba"):
            l3, s3 = cross_entropy_rows(xi, y, grad=xi, **opts)
        np.testing.assert_array_equal(s3, s1)
        np.testing.assert_array_equal(l3, l1)
        np.testing.assert_array_equal(xi, g1)


def test_exp_kernel_against_mpmath() -> None:
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.prec = 120
    rng = np.random.default_rng(7)
    d = np.concatenate([-rng.uniform(0, 745.1, 300), -rng.uniform(0, 1, 100),
                        [-745.13, -744.5, -708.4, -708.3, -0.0, -1e-300]])
    got = np.array([kernels.exp_le0(float(v)) for v in d])
    ref = np.array([float(mpmath.exp(mpmath.mpf(float(v)))) for v in d])  # correctly rounded
    assert _ulp_diff(got, ref) <= 1
    assert kernels.exp_le0(-np.inf) == 0.0 and kernels.exp_le0(-800.0) == 0.0


def test_exp_of_a_rounded_difference_against_mpmath() -> None:
    """exp(x - m) of float64 x, m whose difference is not representable: the TwoSum error
    of x - m joins the reduced argument, and the result stays within 1 ulp of the
    correctly rounded exp of the exact difference (without it: up to |x - m| 2^-53
    relative, ~200 ulp at x - m = -700)."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.prec = 160
    rng = np.random.default_rng(11)
    m = np.concatenate([rng.uniform(-50, 50, 200), rng.uniform(300, 700, 100), [0.1, 1e-9]])
    x = m - np.concatenate([rng.uniform(0, 745, 200), rng.uniform(0, 3, 100), [700.3, 0.2]])
    inexact = [mpmath.mpf(float(a) - float(b)) != mpmath.mpf(float(a)) - mpmath.mpf(float(b))
               for a, b in zip(x, m, strict=True)]
    assert sum(inexact) > 100  # the rounded case is the one under test (143 of 302)
    got = np.array([kernels.exp_shift(float(a), float(b)) for a, b in zip(x, m, strict=True)])
    ref = np.array([float(mpmath.exp(mpmath.mpf(float(a)) - mpmath.mpf(float(b))))
                    for a, b in zip(x, m, strict=True)])
    assert _ulp_diff(got, ref) <= 1
    assert kernels.exp_shift(-np.inf, 3.0) == 0.0 and kernels.exp_shift(2.0, 2.0) == 1.0


def test_exp_f32_kernel_against_mpmath() -> None:
    """The float32 path's exp (float64 result, fitted degree-6 polynomial) is within its
    documented 2e-9 relative error: 0.04 ulp of float32, so rounding stays within 1 ulp."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.prec = 80
    rng = np.random.default_rng(12)
    # x - m for float32 x and m: exact in float64; e^-104 is below float32's subnormals
    d = np.concatenate([-rng.uniform(0, 104, 400), -rng.uniform(0, 0.7, 300),
                        -np.arange(0, 40) * 0.6931471805599453 * 0.5, [-0.0, -1e-30]])
    got = np.array([kernels.exp_le0_f32(float(v)) for v in d])
    ref = [mpmath.exp(mpmath.mpf(float(v))) for v in d]
    rel = max(abs((mpmath.mpf(float(g)) - r) / r) for g, r in zip(got, ref, strict=True))
    assert rel <= 2e-9
    assert kernels.exp_le0_f32(-np.inf) < 1e-300 and kernels.exp_le0_f32(-800.0) < 1e-300


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softcap_derivative_is_exact_sech2(dtype: type) -> None:
    """The soft cap's dz/dx = sech^2(x / c) keeps its digits where 1 - tanh^2 cancels
    (u = 9, 12 in float32) and where cosh^2 overflows (u = 360 in float64)."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.prec = 200
    c = 2.0
    x = (np.array([[9.0, 12.0, 0.0, 360.0, -30.0, 1.5]]) * c).astype(dtype)
    y = np.array([2])
    g = np.empty_like(x)
    with ce.use_backend("numba"):
        cross_entropy_rows(x, y, softcap=c, grad=g)
    # mpmath: z = c tanh(x / c), p = softmax(z), dl/dx = (p - onehot) sech^2(x / c)
    xs = [mpmath.mpf(float(v)) for v in x[0]]
    z = [c * mpmath.tanh(v / c) for v in xs]
    tot = mpmath.fsum(mpmath.exp(v) for v in z)
    want = [(mpmath.exp(zc) / tot - (1 if j == 2 else 0)) * mpmath.sech(xs[j] / c) ** 2
            for j, zc in enumerate(z)]
    # float64: a few roundings; float32: the float64 result rounded once
    tol = 16 * np.finfo(np.float64).eps if dtype == np.float64 else np.finfo(np.float32).eps
    for j, w in enumerate(want):
        tiny = mpmath.mpf(float(np.finfo(dtype).smallest_subnormal))
        assert abs(mpmath.mpf(float(g[0, j])) - w) <= tol * abs(w) + tiny, j
    assert g[0, 3] != 0.0 or dtype == np.float32  # 4 e^-720 p: a subnormal in float64


def test_streamed_and_serial_paths_give_the_same_results(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Large results go to memory by non-temporal stores (softmax and log_softmax line by
    line from registers, the gradient through a scratch row), small inputs run on the
    calling thread.  Forced either way on small arrays, every kernel gives bitwise the
    same results, for rows of any length and alignment (the one pass's lengths included),
    rows of +inf, -inf and NaN, in place too."""
    results = []
    never, always = 1 << 62, 0
    for stream_min, serial_max in ((never, 0), (always, 0), (never, never), (always, never)):
        monkeypatch.setattr(kernels, "_STREAM_MIN_BYTES", stream_min)
        monkeypatch.setattr(kernels, "_SERIAL_MAX", serial_max)
        rng = np.random.default_rng(13)  # the same data every time
        w = rng.uniform(0.2, 2.0, 8195)
        got = []
        for dtype in (np.float32, np.float64):
            for C in (1, 15, 16, 37, 301, 4099, 8195):
                x = (rng.standard_normal((23, C)) * 5).astype(dtype)
                x[1, 0] = np.inf
                x[2] = -np.inf
                x[3, C // 2] = np.nan
                x[5:9, 0] = 40.0  # the argmax and the target at either end of a row
                x[9:13, -1] = 40.0  # (in the partial cache lines, for most alignments)
                y = rng.integers(0, C, 23)
                y[5:7] = y[9:11] = 0
                y[7:9] = y[11:13] = C - 1
                y[4] = -100
                with ce.use_backend("numba"):
                    for f in (ce.softmax, ce.log_softmax):
                        out = np.empty_like(x)
                        f(x, out=out)
                        got.append(out)
                    kw = {"weight": w[:C], "label_smoothing": 0.1} if C > 1 else {}
                    got += list(ce.cross_entropy(x, y, return_grad=True, **kw))
                    xi = x.copy()
                    ce.cross_entropy(xi, y, return_grad=True, grad_out=xi, reduction="sum")
                    got.append(xi)
                    gm = np.empty_like(x)  # mean: a gradient scale other than 1
                    got.append(ce.cross_entropy(x, y, return_grad=True, grad_out=gm,
                                                z_loss=1e-3, label_smoothing=0.05)[0])
                    got.append(gm)
                    gc = np.empty_like(x)
                    got += list(cross_entropy_rows(x, y, softcap=3.0, z_loss=1e-3, grad=gc))
                    got.append(gc)
                    got.append(ce.logsumexp(x, axis=-1))
                    got += list(ce.sigmoid(x, return_grad=True))
                    t = (x > 0.5).astype(dtype)
                    got += list(ce.binary_cross_entropy_with_logits(x, t, return_grad=True))
        results.append(got)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            np.testing.assert_array_equal(a, b)


def test_explicit_streaming_entry_points() -> None:
    """softmax_rows_into / ce_rows_into (the caller chooses non-temporal stores) write the
    same bits either way, into fresh and into used buffers."""
    rng = np.random.default_rng(14)
    x = (rng.standard_normal((300, 517)) * 4).astype(np.float32)  # 155k elements: threads
    y = rng.integers(0, 517, 300)
    res = []
    for stream in (False, True):
        o = np.empty_like(x)
        kernels.softmax_rows_into(x, False, False, o, 8, stream)
        g = np.full_like(x, 7.0)
        loss, lse = np.empty(300), np.empty(300)
        kernels.ce_rows_into(x, y, np.ones(1), False, -100, 0.05, 0.0, 0.0, g, True, 0.5,
                             False, loss, lse, 8, stream)
        res.append((o, g, loss, lse))
    for a, b in zip(*res, strict=True):
        np.testing.assert_array_equal(a, b)
    with ce.use_backend("numpy"):
        np.testing.assert_allclose(res[0][0], ce.softmax(x), rtol=2e-7)


def test_results_do_not_depend_on_thread_count() -> None:
    rng = np.random.default_rng(8)
    x = (rng.standard_normal((67, 3001)) * 5).astype(np.float32)
    y = rng.integers(0, 3001, 67)
    res = []
    try:
        for n in (1, 2):
            ce.set_num_threads(n)
            with ce.use_backend("numba"):
                res.append((ce.softmax(x), ce.logsumexp(x),
                            ce.cross_entropy(x, y, return_grad=True)[1],
                            ce.binary_cross_entropy_with_logits(x, (x > 0.0).astype(np.float32))))
    finally:
        ce.set_num_threads(None)
    for a, b in zip(res[0], res[1], strict=True):
        np.testing.assert_array_equal(a, b)  # bitwise


def test_set_num_threads_validates() -> None:
    with pytest.raises(ValueError, match="positive integer"):
        ce.set_num_threads(0)
    with pytest.raises(TypeError, match="positive integer"):
        ce.set_num_threads(1.5)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- out= / in place


def test_out_and_in_place() -> None:
    rng = np.random.default_rng(9)
    x = rng.standard_normal((40, 600)).astype(np.float32)
    for backend in ("numpy", "numba"):
        with ce.use_backend(backend):
            ref = ce.softmax(x)
            out = np.empty_like(x)
            assert ce.softmax(x, out=out) is out
            np.testing.assert_array_equal(out, ref)
            xi = x.copy()
            assert ce.log_softmax(xi, out=xi) is xi
            np.testing.assert_array_equal(xi, ce.log_softmax(x))
            outT = np.empty_like(x.T)
            assert ce.softmax(x.T, axis=0, out=outT) is outT
            np.testing.assert_array_equal(outT, ref.T)
            with pytest.raises(ValueError, match="out must have shape"):
                ce.softmax(x, out=np.empty((40, 599), np.float32))
            with pytest.raises(ValueError, match="out must have shape"):
                ce.sigmoid(x, out=np.empty_like(x, dtype=np.float64))


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_grad_out_in_place(backend: str) -> None:
    rng = np.random.default_rng(10)
    x = rng.standard_normal((33, 257))
    y = rng.integers(0, 257, 33)
    with ce.use_backend(backend):
        v, g = ce.cross_entropy(x, y, return_grad=True)
        xi = x.copy()
        v2, g2 = ce.cross_entropy(xi, y, return_grad=True, grad_out=xi)
        assert g2 is xi and v2 == v
        np.testing.assert_array_equal(xi, g)
        t = (x > 0).astype(np.float64)
        bv, bg = ce.binary_cross_entropy_with_logits(x, t, return_grad=True)
        xb = x.copy()
        bv2, bg2 = ce.binary_cross_entropy_with_logits(xb, t, return_grad=True, grad_out=xb)
        assert bg2 is xb and bv2 == bv
        np.testing.assert_array_equal(xb, bg)
        with pytest.raises(ValueError, match="grad_out is only used"):
            ce.cross_entropy(x, y, grad_out=np.empty_like(x))
        with pytest.raises(ValueError, match="grad_out must have shape"):
            ce.cross_entropy(x, y, return_grad=True, grad_out=np.empty((33, 256)))


def test_allocations() -> None:
    """Value: O(rows) of NumPy allocations; value+gradient: the gradient only; in place:
    nothing of the logits' size.  (tracemalloc sees NumPy's allocations; the kernels'
    per-thread scratch rows, O(threads x classes), come from numba's allocator.)"""
    import tracemalloc

    rng = np.random.default_rng(11)
    x = rng.standard_normal((2048, 1000)).astype(np.float32)
    y = rng.integers(0, 1000, 2048)
    with ce.use_backend("numba"):
        ce.cross_entropy(x, y, return_grad=True, grad_out=x.copy())  # compile outside

        def peak(f):  # type: ignore[no-untyped-def]
            tracemalloc.start()
            f()
            p = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            return p

        rows = 2048 * 8
        assert peak(lambda: ce.cross_entropy(x, y)) < 8 * rows
        assert peak(lambda: ce.logsumexp(x)) < 4 * rows
        assert x.nbytes <= peak(lambda: ce.cross_entropy(x, y, return_grad=True)) < (
            x.nbytes + 8 * rows)
        xi = x.copy()
        assert peak(lambda: ce.cross_entropy(xi, y, return_grad=True, grad_out=xi)) < 8 * rows
        out = np.empty_like(x)
        assert peak(lambda: ce.softmax(x, out=out)) < 4 * rows


def test_import_does_not_load_numba_and_small_inputs_stay_on_numpy() -> None:
    import subprocess
    import sys

    code = (
        "import sys, crossentropy as ce\n"
        "assert 'numba' not in sys.modules\n"
        "ce.softmax([3.0, 0.6, 6.3]); ce.cross_entropy([[1.0, 2.0]], [0])\n"
        "assert 'numba' not in sys.modules\n"
        "import numpy as np\n"
        "ce.logsumexp(np.ones((64, 1024)))\n"  # 2**16 elements: the kernels
        "assert 'crossentropy._cpu._kernels' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_compile_all_compiles_every_entry_point() -> None:
    # After ce.warm_up() (compile_all) no call may compile on the spot: every compiled body
    # the entry points run (on one thread or on row ranges over several, ``_pool``) has a
    # float32 and a float64 signature.
    from crossentropy import _cpu
    from crossentropy._cpu import _compile

    _compile.compile_all()
    k = _cpu.kernels()
    for name in ("_softmax_chunk", "_logsumexp_chunk", "_ce_chunk", "_sigmoid_block",
                 "_bce_blocks"):
        dtypes = {str(sig[0].dtype) for sig in getattr(k, name).signatures}
        assert {"float32", "float64"} <= dtypes, (name, dtypes)


def test_results_do_not_depend_on_how_a_call_is_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    """The entry points cut a large call into parts (row ranges, or ranges of the
    elementwise kernels' fixed blocks) taken by whichever thread is free: 1, 2, 3 or 7
    parts give the same bits."""
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((301, 517)) * 4).astype(np.float32)  # 155k elements: threads
    t = rng.integers(0, 517, 301)
    flat = x.reshape(-1)
    yb = (flat > 0).astype(np.float64)
    res = []
    for parts in (1, 2, 3, 7):
        with monkeypatch.context() as mp:  # (the elementwise kernels' own part count)
            mp.setattr(kernels, "_chunks", lambda n, p=parts: min(n, p))
            o = np.empty_like(x)
            kernels.softmax_rows_into(x, False, True, o, parts, False)
            lse = np.empty(301)
            kernels.logsumexp_rows(x, False, lse, parts)
            g = np.empty_like(x)
            loss, lse2 = np.empty(301), np.empty(301)
            kernels.ce_rows_into(x, t, np.ones(1), False, -100, 0.1, 1e-4, 0.0, g, True, 0.5,
                                 False, loss, lse2, parts, False)
            s, ds = np.empty_like(flat), np.empty_like(flat)
            kernels.sigmoid_flat(flat, s, ds, True, True)
            bl, bg = np.empty(flat.size), np.empty_like(flat)
            partial = np.empty((flat.size + kernels._BLOCK - 1) // kernels._BLOCK)
            kernels.bce_logits_flat(flat, yb, 1.5, 0.0, True, bl, True, bg, 0.25, partial)
        res.append((o, lse, g, loss, lse2, s, ds, bl, bg, partial))
    for other in res[1:]:
        for a, b in zip(res[0], other, strict=True):
            np.testing.assert_array_equal(a, b)


def test_an_error_in_a_part_reaches_the_caller() -> None:
    from crossentropy._cpu import _pool

    seen: list[int] = []

    def body(i: int) -> None:
        seen.append(i)
        if i == 2:
            raise ValueError("part 2")

    with pytest.raises(ValueError, match="part 2"):
        _pool.run(body, 5, threads=2)
    assert sorted(seen) == [0, 1, 2, 3, 4]  # the other parts still ran


def _signature_counts() -> dict[str, int]:
    import numba

    return {name: len(f.signatures) for name, f in vars(kernels).items()
            if isinstance(f, numba.core.registry.CPUDispatcher)}


def test_read_only_inputs_use_the_compiled_kernels() -> None:
    """numba types a read-only array apart from a writable one: without care each kernel
    compiles again (5-20 s, the caller waiting) the first time a read-only input arrives
    (pyarrow's to_numpy, np.frombuffer, read-only memory maps).  After compile_all, calls
    on read-only inputs at both sizes (one-thread and prange bodies) compile nothing, and
    give the writable inputs' results bit for bit."""
    from crossentropy._cpu import _compile

    _compile.compile_all()
    before = _signature_counts()
    rng = np.random.default_rng(5)
    with ce.use_backend("numba"):
        for dt in (np.float32, np.float64):
            for shape in ((3, 5), (3, 1 << 16)):
                x = rng.standard_normal(shape).astype(dt)
                t = rng.integers(0, shape[1], shape[0])
                w = rng.random(shape[1]) + 0.5
                y = rng.random(shape)
                ro = [a.copy() for a in (x, t, w, y)]
                for a in ro:
                    a.setflags(write=False)
                xr, tr, wr, yr = ro
                pairs = [
                    (ce.softmax(x), ce.softmax(xr)),
                    (ce.log_softmax(x), ce.log_softmax(xr)),
                    (ce.logsumexp(x, axis=-1), ce.logsumexp(xr, axis=-1)),
                    (ce.sigmoid(x), ce.sigmoid(xr)),
                    (ce.log_sigmoid(x), ce.log_sigmoid(xr)),
                    (ce.cross_entropy(x, t, weight=w, reduction="none"),
                     ce.cross_entropy(xr, tr, weight=wr, reduction="none")),
                    (ce.binary_cross_entropy_with_logits(x, y),
                     ce.binary_cross_entropy_with_logits(xr, yr)),
                ]
                for want, got in pairs:
                    np.testing.assert_array_equal(got, want)
                    assert not np.shares_memory(got, xr)
    assert _signature_counts() == before

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_max_returns_the_first_maximum_wherever_it_is(dtype: type) -> None:
    """``_row_max`` (the max pass of the two-pass rows): the maximum, the index of its first
    occurrence (np.argmax's), and whether a NaN is present, for ties placed in every span
    of the search (``_SCAN``) and block (``_BLK``), at the ends of spans and of the row,
    and for negative maxima and -inf rows."""
    import numba

    row_max = numba.njit(lambda x: kernels._row_max(x))  # (an overload: jitted callers only)
    rng = np.random.default_rng(23)
    scan, blk = kernels._SCAN, kernels._BLK
    for n in (1, 2, scan - 1, scan, scan + 1, blk - 1, blk, blk + 1, 1000, 3 * blk + 5):
        spots = sorted({0, n - 1, n // 2, min(n - 1, scan - 1), min(n - 1, scan),
                        min(n - 1, blk - 1), min(n - 1, blk), min(n - 1, 2 * scan + 3)})
        for first in spots:
            for shift in (0.0, -50.0):  # positive and negative maxima
                x = (rng.standard_normal(n) + shift).astype(dtype)
                top = dtype(x.max() + 1.0)
                later = [j for j in spots if j > first]
                x[first] = top
                for j in later:  # ties after the first maximum
                    x[j] = top
                m, k, nan = row_max(x)
                assert (m, k, nan) == (float(top), first, False), (n, first, shift)
        x = np.full(n, -np.inf, dtype=dtype)
        assert row_max(x) == (-np.inf, 0, False)
        x[n // 2] = np.nan
        assert row_max(x)[2]


@pytest.mark.parametrize("ignore_index", [-100, 0, 4, None])
def test_index_targets_checks_and_counts_in_one_pass(ignore_index: int | None) -> None:
    """The torch layer's CPU check of index targets (``_backends.index_targets``): the
    first position outside [0, C) that is not ignore_index, and the count of the others,
    against a plain NumPy reading of the same rule."""
    from crossentropy._backends import index_targets

    pytest.importorskip("numba")
    rng = np.random.default_rng(31)
    C = 5
    ii = -(2**63) if ignore_index is None else ignore_index  # (None: an index never used)
    x = np.zeros((40, C), dtype=np.float32)
    for trial in range(60):
        t = rng.integers(-2, C + 2, 40) if trial % 3 else rng.integers(0, C, 40)
        if trial % 4 == 0 and ignore_index is not None:
            t[rng.integers(0, 40, 5)] = ignore_index
        bad = ((t < 0) | (t >= C)) & (t != ii)
        first = int(np.argmax(bad)) if bad.any() else -1
        with ce.use_backend("numba"):
            got = index_targets(x, t, ii)
        assert got is not None
        assert got[0] == first
        if first < 0:
            assert got[1] == int(np.sum(t != ii))
    with ce.use_backend("numpy"):  # the kernels do not take the call: torch checks
        assert index_targets(x, np.zeros(40, dtype=np.int64), ii) is None


def test_the_kernels_leave_torchs_thread_count_alone() -> None:
    """numba's OpenMP layer set the process's OpenMP thread count when it started; torch
    shares the runtime, so a user's torch.set_num_threads(1) read back 2 after the first
    kernel call (once torch had read its count).  The kernels' threads are Python threads
    (``_cpu._pool``): in a fresh process torch's count stays 1, numba's threading layer is
    never started, and a large call ran on every core."""
    import subprocess
    import sys

    pytest.importorskip("torch")
    script = (
        "import threading, torch, numpy as np, crossentropy as ce\n"
        "from crossentropy._cpu import _pool\n"
        "from numba.np.ufunc import parallel\n"
        "torch.set_num_threads(1)\n"
        "assert torch.get_num_threads() == 1  # (torch's OpenMP state now started)\n"
        "ce.use_backend('numba')\n"
        "x = np.random.default_rng(0).standard_normal((4096, 1000)).astype(np.float32)\n"
        "ce.cross_entropy(x, np.zeros(4096, dtype=np.int64))\n"
        "workers = sum(t.name.startswith('crossentropy-kernels') for t in threading.enumerate())\n"
        "print(torch.get_num_threads(), int(parallel._is_initialized), workers, _pool.size())\n")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, check=True)
    torch_n, numba_started, workers, size = map(int, res.stdout.split())
    assert torch_n == 1
    assert numba_started == 0
    assert workers == size - 1
