"""Step-by-step tables for sigmoid, softmax, cross-entropy and binary cross-entropy.

Every total comes from the library (:func:`crossentropy.sigmoid`, :func:`~crossentropy.softmax`,
:func:`~crossentropy.cross_entropy`, ...); the intermediates shown beside it are the quantities
those functions work with (the shifted exponentials, their sum, the log terms), computed with
NumPy so that a reader can redo each step by hand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

import crossentropy as ce
from crossentropy.explain.model import Cell, Column, Table

__all__ = [
    "base_name",
    "bce_table",
    "cross_entropy_table",
    "one_hot_table",
    "parse_base",
    "sigmoid_table",
    "softmax_table",
]

#: exp(x) overflows float64 above this (log of the largest double).
_EXP_MAX = math.log(np.finfo(np.float64).max)
#: exp(x) rounds to 0 below this (half the smallest subnormal, 2^-1075).
_EXP_MIN = -1075 * math.log(2.0)
_LN2 = math.log(2.0)


def log_scale(base: float | None) -> float:
    """1 / ln(base), the factor from nats to units of `base` (1.0 for None, e); ValueError
    for a base that is not a finite positive number other than 1.

    >>> log_scale(None), round(log_scale(2.0), 12)
    (1.0, 1.442695040889)
    """
    if base is None:
        return 1.0
    b = float(base)
    if not math.isfinite(b) or b <= 0.0 or b == 1.0:
        raise ValueError(f"base must be a finite positive number other than 1, got {base!r}")
    return 1.0 if b == math.e else 1.0 / math.log(b)


def parse_base(text: str) -> float | None:
    """``"e"`` (or ``"nats"``) -> None, ``"2"`` (or ``"bits"``) -> 2.0, any other number as is.

    >>> parse_base("e"), parse_base("bits"), parse_base("10")
    (None, 2.0, 10.0)
    """
    t = text.strip().lower()
    if t in ("e", "nat", "nats"):
        return None
    if t in ("bit", "bits"):
        return 2.0
    try:
        b = float(t)
    except ValueError:
        raise ValueError(
            f"base must be e, 2, 10 or another positive number, got {text!r}"
        ) from None
    log_scale(b)  # raises for 1, 0, negatives, inf, nan
    return None if b == math.e else b


def base_name(base: float | None) -> tuple[str, str]:
    """(unit, log symbol): ('nats', 'ln'), ('bits', 'log2'), ... for a base."""
    if base is None:
        return "nats", "ln"
    if base == 2.0:
        return "bits", "log2"
    if base == 10.0:
        return "bans", "log10"
    return f"base-{base:g} units", f"log_{base:g}"


def _tex_log(base: float | None) -> str:
    if base is None:
        return r"\ln"
    return rf"\log_{{{base:g}}}"


def sigmoid_table(xs: Sequence[float]) -> Table:
    """The sigmoid of each x, with the branch the stable computation takes.

    >>> t = sigmoid_table([1.0, -3.0])
    >>> [round(r[4], 6) for r in t.rows]
    [0.731059, 0.047426]
    """
    x = np.asarray(xs, dtype=np.float64)
    s = np.asarray(ce.sigmoid(x), dtype=np.float64)  # the library's values
    # 1 - sigmoid(x) = sigmoid(-x): the complement without a subtraction
    sc = np.asarray(ce.sigmoid(-x), dtype=np.float64)
    with np.errstate(over="ignore"):
        t = np.exp(-np.abs(x))  # e^-|x| <= 1: the only exponential either branch needs
    rows: list[list[Cell]] = []
    notes: list[str] = []
    for xi, ti, si, ci in zip(x.tolist(), t.tolist(), s.tolist(), sc.tolist(), strict=True):
        if math.isnan(xi):
            branch = "nan in, nan out"
        elif xi >= 0:
            branch = "x >= 0: 1 / (1 + e^-x)"
        else:
            branch = "x < 0: e^x / (1 + e^x)"
        rows.append([xi, branch, ti, 1.0 + ti, si, ci])
    neg = [xi for xi in x.tolist() if xi < 0 and math.isfinite(xi)]
    if neg:
        worst = min(neg)
        tail = (
            f" (for x = {fmt_num(worst)}, e^-x = e^{fmt_num(-worst)} overflows float64: "
            f"it is above e^{_EXP_MAX:.2f})"
            if -worst > _EXP_MAX
            else f" (here the naive form would still work: e^{fmt_num(-worst)} is finite, but "
            f"it fails below x = -{_EXP_MAX:.2f})"
        )
        notes.append(
            "stable form: for x < 0 the library computes e^x / (1 + e^x) instead of "
            "1 / (1 + e^-x); the two are equal, but e^-x overflows for large negative x"
            + tail
        )
    infinite = sorted({xi for xi in x.tolist() if math.isinf(xi)}, reverse=True)
    if infinite:
        limits = " and ".join(f"sigmoid({fmt_num(xi)}) = {1 if xi > 0 else 0}"
                              for xi in infinite)
        notes.append(f"{limits}: the limit{'s' if len(infinite) > 1 else ''}, exactly "
                     "(e^-|x| = e^-inf = 0, so no exponential is infinite)")
    if any(math.isnan(xi) for xi in x.tolist()):
        notes.append("x = nan: NaN in, NaN out (sigmoid(nan) and its complement are NaN)")
    for xi, si, ci in zip(x.tolist(), s.tolist(), sc.tolist(), strict=True):
        if math.isfinite(xi) and si == 1.0 and ci > 0.0:
            notes.append(
                f"sigmoid({fmt_num(xi)}) is 1 - {ci:.4g} exactly: closer to 1 than the spacing "
                "of doubles below 1 (1.1e-16), so float64 rounds it to 1.0; the sigmoid never "
                "reaches 1, and its complement is kept exactly as sigmoid(-x), with no "
                "subtraction"
            )
        if 0.0 < si < np.finfo(np.float64).tiny:
            notes.append(
                f"sigmoid({fmt_num(xi)}) = {si:.4g} is subnormal: kept (not flushed to 0)"
            )
        if math.isfinite(xi) and si == 0.0:
            notes.append(
                f"sigmoid({fmt_num(xi)}) underflows to 0: the true value is below 4.9e-324"
            )
    return Table(
        title="Sigmoid",
        formula="sigmoid(x) = 1 / (1 + e^-x) = e^x / (1 + e^x)",
        formula_tex=r"\sigma(x) = \frac{1}{1 + e^{-x}} = \frac{e^{x}}{1 + e^{x}}",
        columns=[
            Column("x", "x"),
            Column("branch", r"\text{branch}"),
            Column("e^-|x|", r"e^{-|x|}"),
            Column("1 + e^-|x|", r"1 + e^{-|x|}"),
            Column("sigmoid(x)", r"\sigma(x)"),
            Column("1 - sigmoid(x) = sigmoid(-x)", r"1 - \sigma(x) = \sigma(-x)"),
        ],
        rows=rows,
        results={"x": x.tolist(), "sigmoid": s.tolist(), "one_minus_sigmoid": sc.tolist()},
        notes=notes,
    )


def fmt_num(v: float) -> str:
    """Short form of an input number for notes: 424.5, -243, 1e+300."""
    return f"{v:g}"


def softmax_table(zs: Sequence[float], names: Sequence[str] | None = None) -> Table:
    """The softmax of a score vector: the shift by the maximum, each exponential, the sum.

    >>> t = softmax_table([3.0, 0.6, 6.3])
    >>> [round(p, 6) for p in t.results["p"]]
    [0.035457, 0.003217, 0.961327]
    """
    z = np.asarray(zs, dtype=np.float64)
    if z.ndim != 1 or z.size == 0:
        raise ValueError("softmax needs at least one score")
    labels = list(names) if names is not None else [f"z{j + 1}" for j in range(z.size)]
    p = np.asarray(ce.softmax(z), dtype=np.float64)
    logp = np.asarray(ce.log_softmax(z), dtype=np.float64)
    lse = float(ce.logsumexp(z))
    m = float(np.max(z))
    finite = math.isfinite(m)
    with np.errstate(over="ignore", invalid="ignore"):
        if m == math.inf and not np.isnan(z).any():
            # inf - inf is undefined: the library takes the limit of the +inf entries
            # growing together, z_j - m -> 0 for them and -inf for every other entry
            shifted = np.where(z == math.inf, 0.0, -math.inf)
        else:
            shifted = z - m if finite else np.full_like(z, np.nan)
        e = np.exp(shifted)  # each <= 1, the maximum exactly 1
        raw = np.exp(z)  # the unshifted terms, shown for comparison (may overflow)
    total = float(np.sum(e))
    raw_total = float(np.sum(raw))
    rows: list[list[Cell]] = []
    for j in range(z.size):
        rows.append([labels[j], float(z[j]), float(shifted[j]), float(e[j]), float(raw[j]),
                     float(p[j]), float(logp[j])])
    rows.append(["sum", "", "", total, raw_total, float(np.sum(p)), ""])
    return Table(
        title="Softmax",
        formula="softmax(z)_j = e^(z_j - m) / sum_i e^(z_i - m),  m = max z",
        formula_tex=r"\operatorname{softmax}(z)_j = \frac{e^{z_j - m}}{\sum_i e^{z_i - m}},"
        r"\quad m = \max_i z_i",
        columns=[
            Column("", ""),
            Column("z", "z_j"),
            Column("z - m", "z_j - m"),
            Column("e^(z - m)", "e^{z_j - m}"),
            Column("e^z", "e^{z_j}"),
            Column("p = softmax(z)", r"p_j"),
            Column("ln p", r"\ln p_j"),
        ],
        rows=rows,
        results={"z": z.tolist(), "max": m, "sum_shifted": total, "sum_exp": raw_total,
                 "p": p.tolist(), "log_p": logp.tolist(), "logsumexp": lse},
        notes=_softmax_notes(z, labels, p, logp, raw),
        summary=[("log-sum-exp = m + log1p(s)", lse)],
    )


def _some(names: Sequence[str], verb: str = "") -> str:
    """'z1', 'z1 and z3', 'z1, z3 and 2 more', followed by `verb` ("is" or "are") to
    agree with them.

    >>> _some(["z1"], "is"), _some(["z1", "z2", "z3", "z4"], "is")
    ('z1 is', 'z1, z2 and 2 more are')
    """
    text = (" and ".join(names) if len(names) <= 2
            else f"{names[0]}, {names[1]} and {len(names) - 2} more")
    if verb:
        text += f" {verb if len(names) == 1 else 'are'}"
    return text


def _softmax_notes(z: np.ndarray, labels: Sequence[str], p: np.ndarray, logp: np.ndarray,
                   raw: np.ndarray) -> list[str]:
    """The notes of a softmax table: each one holds for these scores (NaN, +-inf, overflow
    and underflow of the unshifted e^z, a p that rounds to 0 are told apart)."""
    zl = z.tolist()
    if np.isnan(z).any():
        where = _some([labels[j] for j, v in enumerate(zl) if math.isnan(v)], "is")
        return [f"{where} NaN, so m = max z is NaN and every p, ln p and the log-sum-exp "
                "is NaN: NaN anywhere in a row makes the whole row NaN"]
    m = float(np.max(z))
    if m == -math.inf:
        return ["every score is -inf: every e^z is 0, so softmax is 0 / 0 (no distribution):"
                " p and ln p are NaN, and the log-sum-exp is ln 0 = -inf"]
    if m == math.inf:
        top = [labels[j] for j, v in enumerate(zl) if v == math.inf]
        k = len(top)
        share = ("gets p = 1, ln p = 0" if k == 1
                 else f"share the mass equally: p = 1/{k}, ln p = -ln {k} each")
        return [f"m = +inf: z - m would be inf - inf (undefined) for {_some(top)}; the library "
                "takes the limit of those scores growing together: z - m -> 0 for them and "
                f"-inf for every other score, so {_some(top)} {share}, every other entry gets "
                "p = 0, ln p = -inf; the log-sum-exp is +inf"]
    notes = [
        f"stable form: the maximum m = {fmt_num(m)} is subtracted before exponentiating, so "
        "every term e^(z - m) is at most 1 and the largest is exactly 1: no exponential can "
        "overflow, and p is unchanged because e^(z_j - m) / sum e^(z - m) = e^z_j / sum e^z",
        "log p_j is computed as (z_j - m) - log1p(s), where s is the sum of the terms other "
        "than the maximum: taking log1p of s instead of log of the rounded 1 + s keeps the "
        "digits of log p near 0 (this is crossentropy.log_softmax, not log(softmax))",
    ]
    ninf = [labels[j] for j, v in enumerate(zl) if v == -math.inf]
    if ninf:
        notes.append(f"{_some(ninf, 'is')} -inf: e^(z - m) = e^-inf = 0 exactly, so p = 0 "
                     "and ln p = -inf (ruled out)")
    gone = [j for j, v in enumerate(zl) if math.isfinite(v) and p[j] == 0.0]
    if gone:
        j = gone[0]
        more = f" (and of {len(gone) - 1} more)" if len(gone) > 1 else ""
        if math.isfinite(float(logp[j])):
            notes.append(f"p of {labels[j]}{more} underflows to 0 (e^(z - m) is below the "
                         f"smallest double), but ln p = {float(logp[j]):.10g} is exact: it "
                         "comes from z - m, not from the log of the rounded p")
        else:
            notes.append(f"p of {labels[j]}{more} underflows to 0, and so far that even ln p "
                         f"= z - m - log1p(s), about {fmt_num(zl[j])} - {fmt_num(m)}, is "
                         "beyond the range of float64: -inf")
    over = [v for v, r in zip(zl, raw.tolist(), strict=True) if math.isfinite(v) and r == math.inf]
    if over:
        notes.append(
            f"the unshifted e^z overflows float64 for z above {_EXP_MAX:.2f} (here z = "
            f"{fmt_num(max(over))}): the naive e^z_j / sum e^z would give inf / inf = nan, the "
            "shifted form is exact"
        )
    elif float(np.sum(raw)) == 0.0:
        notes.append(
            f"every unshifted e^z underflows to 0 (all z are below {_EXP_MIN:.2f}): the naive "
            "e^z_j / sum e^z would give 0 / 0 = nan, the shifted form is exact"
        )
    return notes


def one_hot_table(classes: Sequence[str]) -> Table:
    """The one-hot encoding of each class (crossentropy.one_hot).

    >>> one_hot_table(["cat", "dog"]).rows
    [['cat', 1.0, 0.0], ['dog', 0.0, 1.0]]
    """
    oh = np.asarray(ce.one_hot(np.arange(len(classes)), len(classes)))
    return Table(
        title="One-hot targets",
        formula="target(c)_j = 1 if j = c else 0",
        formula_tex=r"t(c)_j = [\,j = c\,]",
        columns=[Column("class", r"\text{class}")]
        + [Column(c, rf"\text{{{c}}}") for c in classes],
        rows=[[c, *[float(v) for v in row]] for c, row in zip(classes, oh.tolist(), strict=True)],
        results={"one_hot": [float(v) for v in oh.ravel().tolist()]},
    )


def cross_entropy_table(
    target: Sequence[float],
    *,
    scores: Sequence[float] | None = None,
    probs: Sequence[float] | None = None,
    classes: Sequence[str] | None = None,
    base: float | None = None,
    normalize: bool = False,
) -> Table:
    """Categorical cross-entropy H(p, q) = -sum_j p_j log q_j, term by term.

    `target` is the distribution p (one-hot for a class label); the prediction q is the
    softmax of `scores` or the given `probs`.

    >>> t = cross_entropy_table([1, 0, 0], scores=[9.8, 3.7, 0.2], base=2)
    >>> t.results["loss"]  # mpmath: -log2(softmax(...)[0]) = 0.00332964080008
    0.00332964080008
    """
    unit, logname = base_name(base)
    scale = log_scale(base)
    p = np.asarray(target, dtype=np.float64)
    notes: list[str] = []
    if (scores is None) == (probs is None):
        raise ValueError("give the prediction as scores or as probs (exactly one)")
    if scores is not None:
        z = np.asarray(scores, dtype=np.float64)
        if z.shape != p.shape:
            raise ValueError(f"target has {p.size} classes but scores has {z.size}")
        q = np.asarray(ce.softmax(z), dtype=np.float64)
        logq = np.asarray(ce.log_softmax(z), dtype=np.float64)  # ln q, stable
        loss = float(ce.cross_entropy(z, p, base=base))
        notes += _scores_notes(z, q, logq, logname, base,
                               list(classes) if classes is not None else
                               [str(j) for j in range(z.size)])
    else:
        q = np.asarray(probs, dtype=np.float64)
        if q.shape != p.shape:
            raise ValueError(f"target has {p.size} classes but probs has {q.size}")
        total = float(np.sum(q))
        if normalize:
            notes.append(f"the probabilities summed to {total!r}; each was divided by that sum")
            q = q / total
        with np.errstate(divide="ignore"):
            logq = np.log(q)
        loss = float(ce.cross_entropy_from_probs(q, p, base=base))
    names = list(classes) if classes is not None else [str(j) for j in range(p.size)]
    if len(names) != p.size:
        raise ValueError(f"{len(names)} class names for {p.size} classes")
    with np.errstate(invalid="ignore"):
        lb = logq * scale
        terms = np.where(p == 0.0, 0.0, -p * lb)  # 0 * log q = 0, even for q = 0
    if np.isnan(q).any():
        terms[:] = np.nan  # NaN anywhere in the prediction makes the loss NaN
    rows: list[list[Cell]] = []
    for j in range(p.size):
        row: list[Cell] = [names[j]]
        if scores is not None:
            row.append(float(np.asarray(scores, dtype=np.float64)[j]))
        row += [float(q[j]), float(p[j]), float(lb[j]), float(terms[j])]
        rows.append(row)
    rows.append(["sum", *([""] if scores is not None else []), float(np.sum(q)),
                 float(np.sum(p)), "", float(np.sum(terms))])
    if np.any(p == 0.0) and not np.isnan(q).any():
        notes.append(
            "terms with p_j = 0 are exactly 0: 0 * log q_j is taken as 0, whatever q_j "
            "(the limit of p log q as p -> 0)"
        )
    ruled_out = [names[j] for j in range(p.size) if q[j] == 0.0 and p[j] > 0.0
                 and logq[j] == -math.inf]
    if ruled_out:
        notes.append(
            f"q of class{'es' if len(ruled_out) > 1 else ''} {_some(ruled_out)} is exactly 0 "
            "while the target gives it p > 0: -p log 0 "
            "= inf, so the cross-entropy is infinite (no clipping: that is its true value)"
        )
    lt = _tex_log(base)
    cols = [Column("class", r"\text{class}")]
    if scores is not None:
        cols.append(Column("score z", "z_j"))
    cols += [
        Column("q (predicted)", "q_j"),
        Column("p (target)", "p_j"),
        Column(f"{logname} q", f"{lt} q_j"),
        Column(f"-p {logname} q", f"-p_j {lt} q_j"),
    ]
    return Table(
        title=f"Categorical cross-entropy ({unit})",
        formula=f"H(p, q) = -sum_j p_j {logname} q_j",
        formula_tex=rf"H(p, q) = -\sum_j p_j {lt} q_j",
        columns=cols,
        rows=rows,
        results={"loss": loss, "loss_nats": loss / scale, "loss_bits": loss / scale / _LN2,
                 "q": q.tolist(), "p": p.tolist(), "terms": terms.tolist()},
        notes=notes,
        summary=[(f"H(p, q) in {unit} (crossentropy."
                  f"{'cross_entropy' if scores is not None else 'cross_entropy_from_probs'})",
                  loss)],
    )


def _scores_notes(z: np.ndarray, q: np.ndarray, logq: np.ndarray, logname: str,
                  base: float | None, names: Sequence[str]) -> list[str]:
    """How q and log q came from these scores (NaN, +-inf and underflow told apart)."""
    zl = z.tolist()
    if np.isnan(z).any():
        return ["a score is NaN, so q, every log q and the cross-entropy are NaN: NaN "
                "anywhere in a row makes the whole row NaN"]
    m = float(np.max(z))
    if m == -math.inf:
        return ["every score is -inf: softmax is 0 / 0 (no distribution), so q and the "
                "cross-entropy are NaN"]
    if m == math.inf:
        top = [names[j] for j, v in enumerate(zl) if v == math.inf]
        k = len(top)
        share = (f"gets q = 1 ({logname} q = 0)" if k == 1 else
                 f"share the mass equally (q = 1/{k}, {logname} q = -{logname} {k} each)")
        return [f"q = softmax(scores) with +inf among the scores: class{'es' if k > 1 else ''} "
                f"{_some(top)} {share}, "
                f"every other class gets q = 0, {logname} q = -inf (the limit of those scores "
                "growing together)"]
    lq = "(z_j - m) - log1p(s)" if base is None else f"((z_j - m) - log1p(s)) / ln {base:g}"
    notes = [f"q = softmax(scores), with the maximum m = {fmt_num(m)} subtracted first; "
             f"{logname} q_j = {lq}, from crossentropy.log_softmax: never the log of a "
             "rounded q"]
    tiny = [j for j, v in enumerate(zl) if math.isfinite(v) and q[j] == 0.0
            and math.isfinite(float(logq[j]))]
    if tiny:
        j = tiny[0]
        notes.append(f"q of class {names[j]} underflows to 0 in float64, yet its {logname} q = "
                     f"{float(logq[j]):.10g} is exact (the log of the rounded q would be -inf)")
    if any(v == -math.inf for v in zl):
        notes.append(f"a score of -inf gives q = 0 and {logname} q = -inf exactly: that class "
                     "is ruled out")
    return notes


def _rows(names: Sequence[str], idx: Sequence[int]) -> str:
    """'row cat', 'rows 1 and 3', 'rows 1, 3 and 2 more'."""
    return f"row{'s' if len(idx) > 1 else ''} {_some([names[i] for i in idx])}"


def _bce_notes(pred: np.ndarray, p: np.ndarray, y: np.ndarray, names: Sequence[str],
               from_logits: bool, logname: str, scale: float) -> list[str]:
    """The notes that hold for these rows: NaN, infinite losses, and (from logits) a p that
    rounds to 0 or 1 while its log is still exact."""
    notes: list[str] = []
    n = pred.size
    nan = [i for i in range(n) if math.isnan(pred[i])]
    if nan:
        what = "x" if from_logits else "p"
        notes.append(f"{_rows(names, nan)}: {what} = nan, so p, both logs and the loss are "
                     "NaN (NaN in, NaN out)")
    inf = [i for i in range(n) if (p[i] == 0.0 and y[i] > 0.0) or (p[i] == 1.0 and y[i] < 1.0)]
    inf = [i for i in inf if not from_logits or math.isinf(pred[i])]
    if inf:
        i = inf[0]
        side = "-y log p" if p[i] == 0.0 else "-(1 - y) log(1 - p)"
        src = f"x = {fmt_num(float(pred[i]))} gives p = {p[i]:g} exactly" if from_logits else (
            f"p = {p[i]:g}")
        clip = "" if from_logits else (
            "; torch's binary_cross_entropy clamps each log at -100 instead")
        notes.append(f"{_rows(names, inf)}: {src} with y = {fmt_num(float(y[i]))}, so {side} "
                     f"= inf: the loss is infinite, its true value (no clipping{clip})")
    if from_logits:
        one = [i for i in range(n) if math.isfinite(pred[i]) and p[i] == 1.0 and y[i] < 1.0]
        if one:
            i = one[0]
            lq = float(ce.log_sigmoid(-pred[i]))
            notes.append(f"{_rows(names, one)}: x = {fmt_num(float(pred[i]))} rounds p to 1 in "
                         f"float64, so {logname}(1 - p) of the rounded p would be -inf; "
                         f"{logname} sigmoid(-x) = {lq * scale:.10g} is exact")
        zero = [i for i in range(n) if math.isfinite(pred[i]) and p[i] == 0.0 and y[i] > 0.0]
        if zero:
            i = zero[0]
            lp = float(ce.log_sigmoid(pred[i]))
            notes.append(f"{_rows(names, zero)}: x = {fmt_num(float(pred[i]))} rounds p to 0 "
                         f"in float64, so {logname} p of the rounded p would be -inf; {logname} "
                         f"sigmoid(x) = {lp * scale:.10g} is exact")
    return notes


def bce_table(
    labels: Sequence[float],
    *,
    probs: Sequence[float] | None = None,
    logits: Sequence[float] | None = None,
    names: Sequence[str] | None = None,
    base: float | None = None,
) -> Table:
    """Binary cross-entropy -(y log p + (1 - y) log(1 - p)) for each (p, y) pair.

    >>> t = bce_table([1.0, 0.0], probs=[0.997694, 0.002237], base=2)
    >>> [round(v, 8) for v in t.results["loss"]]  # mpmath: 0.00333069653505, 0.00323092394375
    [0.0033307, 0.00323092]
    """
    unit, logname = base_name(base)
    scale = log_scale(base)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if (probs is None) == (logits is None):
        raise ValueError("give the prediction as probs or as logits (exactly one)")
    pred = np.asarray(probs if probs is not None else logits, dtype=np.float64).reshape(-1)
    if y.size != pred.size:
        raise ValueError(f"{pred.size} predictions but {y.size} labels")
    lt = _tex_log(base)
    notes: list[str] = []
    if probs is not None:
        p = pred
        loss = np.asarray(ce.binary_cross_entropy(p, y, base=base, reduction="none"))
        with np.errstate(divide="ignore"):
            lp = np.log(p) * scale
            lq = np.log1p(-p) * scale  # log(1 - p) = log1p(-p): no cancellation for small p
        notes.append(
            f"{logname}(1 - p) is computed as log1p(-p) / ln base: -p is exact, so small p keeps "
            "all its digits (1 - p rounded first would lose them)"
        )
        first = [Column("p", "p"), Column("y", "y")]
    else:
        x = pred
        p = np.asarray(ce.sigmoid(x), dtype=np.float64)
        loss = np.asarray(ce.binary_cross_entropy_with_logits(x, y, base=base, reduction="none"))
        # log p = log sigmoid(x) = -softplus(-x);  log(1 - p) = log sigmoid(-x) = -softplus(x)
        lp = np.asarray(ce.log_sigmoid(x), dtype=np.float64) * scale
        lq = np.asarray(ce.log_sigmoid(-x), dtype=np.float64) * scale
        notes.append(
            "from logits: log p = log sigmoid(x) = -(max(-x, 0) + log1p(e^-|x|)) and "
            "log(1 - p) = log sigmoid(-x): 1 - p is never formed, so a confident logit keeps "
            "its exact loss"
        )
        first = [Column("logit x", "x"), Column("p = sigmoid(x)", r"p = \sigma(x)"),
                 Column("y", "y")]
    with np.errstate(invalid="ignore"):
        t1 = np.where(y == 0.0, 0.0, -y * lp)  # y = 0: the term is 0, even where log p = -inf
        t2 = np.where(y == 1.0, 0.0, -(1.0 - y) * lq)
    nan = np.isnan(pred)
    t1[nan] = t2[nan] = np.nan  # NaN in, NaN out: the library's loss of that row is NaN
    rows: list[list[Cell]] = []
    label_names = list(names) if names is not None else [str(i + 1) for i in range(y.size)]
    for i in range(y.size):
        row: list[Cell] = [label_names[i]]
        if logits is not None:
            row.append(float(pred[i]))
        row += [float(p[i]), float(y[i]), float(lp[i]), float(lq[i]), float(t1[i]),
                float(t2[i]), float(loss[i])]
        rows.append(row)
    if np.any(((y == 0.0) | (y == 1.0)) & ~nan):
        notes.append("a term whose coefficient (y or 1 - y) is 0 is exactly 0")
    notes += _bce_notes(pred, p, y, label_names, logits is not None, logname, scale)
    mean = float(ce.binary_cross_entropy(p, y, base=base)) if probs is not None else float(
        ce.binary_cross_entropy_with_logits(pred, y, base=base))
    summary = [(f"loss in {unit} (crossentropy.binary_cross_entropy"
                f"{'' if probs is not None else '_with_logits'})", float(loss[0]))]
    if y.size > 1:
        summary = [(f"mean loss in {unit}", mean)]
    return Table(
        title=f"Binary cross-entropy ({unit})",
        formula=f"loss = -(y {logname} p + (1 - y) {logname}(1 - p))",
        formula_tex=rf"\ell = -\bigl(y {lt} p + (1 - y) {lt}(1 - p)\bigr)",
        columns=[Column("", ""), *first,
                 Column(f"{logname} p", f"{lt} p"),
                 Column(f"{logname}(1 - p)", f"{lt}(1 - p)"),
                 Column(f"-y {logname} p", f"-y {lt} p"),
                 Column(f"-(1 - y) {logname}(1 - p)", f"-(1 - y) {lt}(1 - p)"),
                 Column("loss", r"\ell")],
        rows=rows,
        results={"loss": loss.tolist(), "mean": mean, "p": p.tolist(), "y": y.tolist()},
        notes=notes,
        summary=summary,
    )
