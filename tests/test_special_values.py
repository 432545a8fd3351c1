"""Special values: the table of docs/special-values.md, one parametrized test per row.

``TABLE`` below is the single source of the table.  ``render_table()`` turns it into the
Markdown rows that docs/special-values.md and the README section ``special-values`` must
contain verbatim (checked by ``test_docs_hold_the_table``), so a row cannot be in the docs
without being tested here.  Regenerate the Markdown after editing a row with::

    python tests/test_special_values.py

Each row is ``call``: a Python expression (``inf``, ``nan``, ``np`` and ``ce`` are in
scope), ``value``: what it returns (an expression, or ``raises Kind: words`` meaning an
exception of that type whose message contains the words), and ``grad``: what the same call
with ``return_grad=True`` returns as its gradient (``None`` for functions without one).
Non-trivial reference values carry ``mp``/``mp_grad``: an mpmath expression (50 digits)
that ``test_reference_values_are_mpmath`` checks the literal against, so no expected value
comes from the code under test.
"""

from __future__ import annotations

import doctest
import math
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mpmath
import numpy as np
import pytest

import crossentropy as ce

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Row:
    id: str
    call: str
    value: str
    grad: str | None = None
    dtype: str = "float64"
    note: str = ""
    mp: str | None = None  # mpmath expression of `value` (scalar or list)
    mp_grad: str | None = None  # mpmath expression of `grad`


NO_GRAD = None
E64 = "np.zeros((0,))"

# fmt: off
TABLE: list[Row] = [
    # ---------------------------------------------------------------- sigmoid
    Row("sigmoid-pinf", "ce.sigmoid(inf)", "1.0", "0.0", note="0-d in, NumPy scalar out"),
    Row("sigmoid-ninf", "ce.sigmoid(-inf)", "0.0", "0.0"),
    Row("sigmoid-nan", "ce.sigmoid(nan)", "nan", "nan"),
    Row("sigmoid-empty", "ce.sigmoid([])", "[]", "[]"),
    Row("sigmoid-subnormal-in", "ce.sigmoid(5e-324)", "0.5", "0.25"),
    Row("sigmoid-subnormal-out", "ce.sigmoid(-720.0)", "2.0322308024e-313",
        "2.0322308024e-313", note="subnormal result kept, not flushed to 0",
        mp="1/(1+exp(720))", mp_grad="exp(-720)/(1+exp(-720))**2"),
    Row("sigmoid-smallest", "ce.sigmoid(-745.0)", "5e-324", "5e-324",
        note="the smallest subnormal", mp="1/(1+exp(745))",
        mp_grad="exp(-745)/(1+exp(-745))**2"),
    Row("sigmoid-f16-subnormal", "ce.sigmoid(np.float16(-17.0))", "6e-08", "6e-08",
        dtype="float16", note="float16 in, float16 out, rounded once"),
    # ---------------------------------------------------------------- log_sigmoid
    Row("log_sigmoid-pinf", "ce.log_sigmoid(inf)", "0.0", "0.0"),
    Row("log_sigmoid-ninf", "ce.log_sigmoid(-inf)", "-inf", "1.0"),
    Row("log_sigmoid-nan", "ce.log_sigmoid(nan)", "nan", "nan"),
    Row("log_sigmoid-empty", "ce.log_sigmoid([])", "[]", "[]"),
    Row("log_sigmoid-subnormal", "ce.log_sigmoid(5e-324)", "-0.6931471805599453", "0.5",
        mp="-log(2)"),
    Row("log_sigmoid-tiny", "ce.log_sigmoid(40.0)", "-4.248354255291589e-18",
        "4.248354255291589e-18", note="not rounded to 0",
        mp="-log1p(exp(-40))", mp_grad="1/(1+exp(40))"),
    Row("log_sigmoid-large-neg", "ce.log_sigmoid(-800.0)", "-800.0", "1.0"),
    # ---------------------------------------------------------------- softmax
    Row("softmax-pinf", "ce.softmax([inf, 0.0])", "[1.0, 0.0]",
        note="+inf entries share the mass equally"),
    Row("softmax-pinf-pinf", "ce.softmax([inf, inf])", "[0.5, 0.5]"),
    Row("softmax-pinf-ninf", "ce.softmax([inf, -inf])", "[1.0, 0.0]"),
    Row("softmax-ninf", "ce.softmax([-inf, 0.0])", "[0.0, 1.0]",
        note="-inf entries get probability 0"),
    Row("softmax-all-ninf", "ce.softmax([-inf, -inf])", "[nan, nan]",
        note="no distribution: 0/0"),
    Row("softmax-nan", "ce.softmax([nan, 0.0])", "[nan, nan]", note="NaN anywhere: NaN row"),
    Row("softmax-nan-pinf", "ce.softmax([inf, nan])", "[nan, nan]"),
    Row("softmax-nan-ninf", "ce.softmax([nan, -inf])", "[nan, nan]"),
    Row("softmax-empty-batch", "ce.softmax(np.zeros((0, 3)))", "np.zeros((0, 3))"),
    Row("softmax-empty-row", "ce.softmax(np.zeros((2, 0)))", "np.zeros((2, 0))"),
    Row("softmax-0d", "ce.softmax(3.0)", "raises ValueError: axis=-1",
        note="a class axis is needed"),
    Row("softmax-0d-none", "ce.softmax(3.0, axis=None)", "1.0",
        note="axis=None: all elements form one row"),
    Row("softmax-subnormal", "ce.softmax([5e-324, 0.0])", "[0.5, 0.5]"),
    Row("softmax-subnormal-out", "ce.softmax([0.0, -740.0])",
        "[1.0, 4.2e-322]", note="subnormal probability kept",
        mp="[1/(1+exp(-740)), exp(-740)/(1+exp(-740))]"),
    Row("softmax-huge", "ce.softmax([1e308, -1e308])", "[1.0, 0.0]",
        note="no overflow in x - max"),
    Row("softmax-spread-f32", "ce.softmax(np.float32([1e6 + 1, 1e6, 1e6 - 1]))",
        "[0.66524096, 0.24472847, 0.09003057]", dtype="float32",
        mp="[exp(k)/(exp(1)+1+exp(-1)) for k in (1, 0, -1)]"),
    # ---------------------------------------------------------------- log_softmax
    Row("log_softmax-pinf", "ce.log_softmax([inf, 0.0])", "[0.0, -inf]"),
    Row("log_softmax-pinf-pinf", "ce.log_softmax([inf, inf])",
        "[-0.6931471805599453, -0.6931471805599453]", mp="[-log(2), -log(2)]"),
    Row("log_softmax-ninf", "ce.log_softmax([-inf, 0.0])", "[-inf, 0.0]"),
    Row("log_softmax-all-ninf", "ce.log_softmax([-inf, -inf])", "[nan, nan]"),
    Row("log_softmax-nan", "ce.log_softmax([nan, 0.0])", "[nan, nan]"),
    Row("log_softmax-empty-batch", "ce.log_softmax(np.zeros((0, 3)))", "np.zeros((0, 3))"),
    Row("log_softmax-f32-overflow", "ce.log_softmax(np.float32([3e38, -3e38]))", "[0.0, -inf]",
        dtype="float32", note="-6e38 is beyond float32: -inf, no warning"),
    Row("log_softmax-0d", "ce.log_softmax(3.0)", "raises ValueError: axis=-1"),
    Row("log_softmax-0d-none", "ce.log_softmax(3.0, axis=None)", "0.0"),
    Row("log_softmax-tiny", "ce.log_softmax([0.0, -40.0])",
        "[-4.248354255291589e-18, -40.0]", note="exact near 0",
        mp="[-log1p(exp(-40)), -40-log1p(exp(-40))]"),
    Row("log_softmax-subnormal", "ce.log_softmax([5e-324, 0.0])",
        "[-0.6931471805599453, -0.6931471805599453]", mp="[-log(2), -log(2)]"),
    Row("log_softmax-spread-f32", "ce.log_softmax(np.float32([1e6 + 1, 1e6, 1e6 - 1]))",
        "[-0.40760597, -1.407606, -2.407606]", dtype="float32",
        mp="[k - log(exp(1)+1+exp(-1)) for k in (1, 0, -1)]"),
    # ---------------------------------------------------------------- logsumexp
    Row("logsumexp-pinf", "ce.logsumexp([inf, 0.0])", "inf"),
    Row("logsumexp-pinf-ninf", "ce.logsumexp([inf, -inf])", "inf"),
    Row("logsumexp-pinf-pinf", "ce.logsumexp([inf, 0.0, inf])", "inf"),
    Row("logsumexp-all-ninf", "ce.logsumexp([-inf, -inf])", "-inf", note="log 0"),
    Row("logsumexp-nan", "ce.logsumexp([nan, inf])", "nan"),
    Row("logsumexp-empty-row", "ce.logsumexp([])", "-inf", note="the empty sum is 0"),
    Row("logsumexp-empty-rows", "ce.logsumexp(np.zeros((2, 0)))", "[-inf, -inf]"),
    Row("logsumexp-empty-batch", "ce.logsumexp(np.zeros((0, 3)))", E64),
    Row("logsumexp-keepdims-empty", "ce.logsumexp(np.zeros((2, 0)), keepdims=True)",
        "[[-inf], [-inf]]"),
    Row("logsumexp-0d", "ce.logsumexp(3.0)", "raises ValueError: axis=-1"),
    Row("logsumexp-0d-none", "ce.logsumexp(3.0, axis=None)", "3.0"),
    Row("logsumexp-axis-none", "ce.logsumexp(np.zeros((2, 3)), axis=None)",
        "1.791759469228055", mp="log(6)"),
    Row("logsumexp-huge", "ce.logsumexp([1e308, 1e308])", "1e308",
        note="no overflow: 1e308 + log 2 rounds to 1e308"),
    Row("logsumexp-subnormal", "ce.logsumexp([5e-324, 5e-324])", "0.6931471805599453",
        mp="log(2*exp(mpf(2)**-1074))"),
    Row("logsumexp-b-cancel", "ce.logsumexp([0.0, 0.0], b=[1.0, -1.0], return_sign=True)",
        "(-inf, 0.0)", note="sum is exactly 0: sign 0"),
    Row("logsumexp-b-tiny", "ce.logsumexp([0.0, 1e-20], b=[1.0, -1.0], return_sign=True)",
        "(-46.051701859880914, -1.0)", note="the digits that cancel are kept",
        mp="[log(expm1(mpf(1e-20))), -1]"),
    Row("logsumexp-b-zero-pinf", "ce.logsumexp([inf, 0.0], b=[0.0, 1.0])", "0.0",
        note="b = 0 leaves the term out, whatever x is"),
    Row("logsumexp-b-zero-nan", "ce.logsumexp([nan, 0.0], b=[0.0, 1.0])", "0.0"),
    Row("logsumexp-b-pinf-minus-pinf",
        "ce.logsumexp([inf, inf], b=[1.0, -1.0], return_sign=True)", "(nan, nan)",
        note="inf - inf"),
    Row("logsumexp-b-neg-pinf", "ce.logsumexp([inf, 0.0], b=[-1.0, 1.0], return_sign=True)",
        "(inf, -1.0)"),
    Row("logsumexp-b-nan", "ce.logsumexp([0.0, 0.0], b=[nan, 1.0])", "nan"),
    Row("logsumexp-b-negative", "ce.logsumexp([0.0, 0.0], b=[1.0, -2.0])",
        "raises ValueError: return_sign=True", note="log of a negative sum"),
    Row("logsumexp-int-b-f32", "ce.logsumexp(np.float32([0, 0]), b=[1, -1], return_sign=True)",
        "(-inf, 0.0)", dtype="float32", note="integer b does not widen float32"),
    Row("logsumexp-sign-nan", "ce.logsumexp([nan, 0.0], return_sign=True)", "(nan, nan)"),
    Row("logsumexp-sign-all-ninf", "ce.logsumexp([-inf, -inf], return_sign=True)",
        "(-inf, 1.0)", note="without b the sum is never negative"),
    # ---------------------------------------------------------------- one_hot
    Row("one_hot-empty", "ce.one_hot([], 3)", "np.zeros((0, 3))"),
    Row("one_hot-empty-no-count", "ce.one_hot([])", "raises ValueError: num_classes"),
    Row("one_hot-0d", "ce.one_hot(2, 3)", "[0.0, 0.0, 1.0]"),
    Row("one_hot-nan", "ce.one_hot([0, nan], 3)", "raises ValueError: labels[1]"),
    Row("one_hot-inf", "ce.one_hot([inf], 3)", "raises ValueError: labels[0]"),
    Row("one_hot-subnormal", "ce.one_hot([5e-324], 3)", "raises ValueError: labels[0]",
        note="not a whole number"),
    Row("one_hot-whole-float", "ce.one_hot([2.0], 3)", "[[0.0, 0.0, 1.0]]"),
    Row("one_hot-f16", "ce.one_hot(np.float16([2.0]), 3)", "[[0.0, 0.0, 1.0]]"),
    Row("one_hot-bool", "ce.one_hot([True])", "raises TypeError: labels"),
    # ---------------------------------------------------------------- cross_entropy
    Row("ce-ninf-other", "ce.cross_entropy([-inf, 0.0, 1.0], 1)", "1.3132616875182228",
        "[0.0, -0.7310585786300049, 0.7310585786300049]",
        note="-inf class has probability 0; finite loss for the others",
        mp="log(1+e)", mp_grad="[0, 1/(1+e) - 1, e/(1+e)]"),
    Row("ce-ninf-target", "ce.cross_entropy([-inf, 0.0, 1.0], 0)", "inf",
        "[-1.0, 0.2689414213699951, 0.7310585786300049]",
        note="target has probability 0; the gradient is softmax - one_hot",
        mp_grad="[-1, 1/(1+e), e/(1+e)]"),
    Row("ce-pinf-target", "ce.cross_entropy([inf, 0.0], 0)", "0.0", "[0.0, 0.0]"),
    Row("ce-pinf-other", "ce.cross_entropy([inf, 0.0], 1)", "inf", "[1.0, -1.0]"),
    Row("ce-pinf-pinf", "ce.cross_entropy([inf, inf], 0)", "0.6931471805599453",
        "[-0.5, 0.5]", note="the two +inf share the mass", mp="log(2)"),
    Row("ce-all-ninf", "ce.cross_entropy([-inf, -inf], 0)", "nan", "[nan, nan]"),
    Row("ce-all-ninf-ignored", "ce.cross_entropy([[-inf, -inf], [0.0, 0.0]], [-100, 0])",
        "0.6931471805599453", "[[0.0, 0.0], [-0.5, 0.5]]",
        note="ignored rows are not looked at", mp="log(2)"),
    Row("ce-nan-other", "ce.cross_entropy([0.0, nan], 0)", "nan", "[nan, nan]",
        note="NaN anywhere in a counted row"),
    Row("ce-nan-ignored", "ce.cross_entropy([[0.0, nan], [0.0, 0.0]], [-100, 0])",
        "0.6931471805599453", "[[0.0, 0.0], [-0.5, 0.5]]", mp="log(2)"),
    Row("ce-nan-target-row", "ce.cross_entropy([0.0, 0.0], [nan, 0.5])", "nan",
        "[nan, nan]"),
    Row("ce-empty-mean", "ce.cross_entropy(np.zeros((0, 3)), np.zeros(0, int))", "0.0",
        "np.zeros((0, 3))", note="mean over zero counted targets = 0.0"),
    Row("ce-empty-sum", "ce.cross_entropy(np.zeros((0, 3)), np.zeros(0, int), reduction='sum')",
        "0.0", "np.zeros((0, 3))"),
    Row("ce-empty-none",
        "ce.cross_entropy(np.zeros((0, 3)), np.zeros(0, int), reduction='none')",
        E64, "np.zeros((0, 3))"),
    Row("ce-all-ignored", "ce.cross_entropy([[0.0, 0.0]], [-100])", "0.0", "[[0.0, 0.0]]",
        note="torch: NaN"),
    Row("ce-zero-weight", "ce.cross_entropy([0.0, 0.0], 0, weight=[0.0, 1.0])", "0.0",
        "[0.0, 0.0]", note="summed weight 0: mean = 0.0"),
    Row("ce-0d", "ce.cross_entropy(3.0, 0)", "raises ValueError: axis=-1"),
    Row("ce-no-classes", "ce.cross_entropy(np.zeros((2, 0)), [-100, -100])",
        "raises ValueError: logits has rows but no classes",
        note="rows with no classes hold no distribution"),
    Row("ce-subnormal", "ce.cross_entropy([5e-324, 5e-324, 5e-324], 0)", "1.0986122886681098",
        "[-0.6666666666666666, 0.3333333333333333, 0.3333333333333333]",
        mp="log(3)", mp_grad="[-mpf(2)/3, mpf(1)/3, mpf(1)/3]"),
    Row("ce-tiny", "ce.cross_entropy([0.0, -40.0], 0)", "4.248354255291589e-18",
        "[-4.248354255291589e-18, 4.248354255291589e-18]", note="not rounded to 0",
        mp="log1p(exp(-40))", mp_grad="[-1/(1+exp(40)), 1/(1+exp(40))]"),
    Row("ce-overflow", "ce.cross_entropy([1e308, -1e308], 1)", "inf", "[1.0, -1.0]",
        note="the true loss 2e308 overflows"),
    Row("ce-spread-f32", "ce.cross_entropy(np.float32([1e6 + 1, 1e6, 1e6 - 1]), 0)",
        "0.40760597", "[-0.33475903, 0.24472848, 0.09003057]", dtype="float32",
        mp="log(1+exp(-1)+exp(-2))",
        mp_grad="[exp(1)/(exp(1)+1+exp(-1)) - 1, 1/(exp(1)+1+exp(-1)), "
        "exp(-1)/(exp(1)+1+exp(-1))]"),
    Row("ce-onehot-ninf", "ce.cross_entropy([-inf, 0.0], [0.0, 1.0])", "0.0", "[0.0, 0.0]",
        note="a class with target 0 adds exactly 0"),
    # ---------------------------------------------------------------- cross_entropy_from_probs
    Row("cep-p1", "ce.cross_entropy_from_probs([0.0, 1.0], 1)", "0.0", "[0.0, -1.0]"),
    Row("cep-p0", "ce.cross_entropy_from_probs([0.0, 1.0], 0)", "inf", "[-inf, 0.0]",
        note="no clipping"),
    Row("cep-subnormal", "ce.cross_entropy_from_probs([5e-324, 1.0], 0)",
        "744.4400719213812", "[-inf, 0.0]", note="-1/q overflows to -inf",
        mp="1074*log(2)"),
    Row("cep-tiny", "ce.cross_entropy_from_probs([1e-300, 1.0], 0)", "690.7755278982137",
        "[-1e300, 0.0]", note="torch BCE says 100", mp="-log(mpf(1e-300))",
        mp_grad="[-1/mpf(1e-300), 0]"),
    Row("cep-nan", "ce.cross_entropy_from_probs([nan, 0.5, 0.5], 1)", "nan",
        "[nan, nan, nan]", note="NaN anywhere in a counted row"),
    Row("cep-empty", "ce.cross_entropy_from_probs(np.zeros((0, 3)), np.zeros(0, int))", "0.0",
        "np.zeros((0, 3))"),
    Row("cep-all-ignored", "ce.cross_entropy_from_probs([[0.5, 0.5]], [-100])", "0.0",
        "[[0.0, 0.0]]"),
    Row("cep-0d", "ce.cross_entropy_from_probs(0.5, 0)", "raises ValueError: axis=-1"),
    Row("cep-onehot", "ce.cross_entropy_from_probs([1.0, 0.0], [1.0, 0.0])", "0.0",
        "[-1.0, 0.0]"),
    Row("cep-all-zero", "ce.cross_entropy_from_probs([0.0, 0.0], 0)",
        "raises ValueError: rows of probs must sum to 1", note="never renormalised"),
    Row("cep-inf", "ce.cross_entropy_from_probs([inf, 0.0], 0)", "raises ValueError: probs[0]"),
    Row("cep-out-of-range", "ce.cross_entropy_from_probs([1.5, -0.5], 0)",
        "raises ValueError: probs[0]"),
    # ------------------------------------------------------------- cross_entropy_from_log_probs
    Row("cel-ninf-other", "ce.cross_entropy_from_log_probs([-inf, 0.0], 1)", "0.0",
        "[0.0, -1.0]"),
    Row("cel-ninf-target", "ce.cross_entropy_from_log_probs([-inf, 0.0], 0)", "inf",
        "[-1.0, 0.0]"),
    Row("cel-all-ninf", "ce.cross_entropy_from_log_probs([-inf, -inf], 0)",
        "raises ValueError: exp(log_probs)", note="rows must sum to 1"),
    Row("cel-nan", "ce.cross_entropy_from_log_probs([nan, 0.0], 1)", "nan", "[nan, nan]"),
    Row("cel-empty", "ce.cross_entropy_from_log_probs(np.zeros((0, 3)), np.zeros(0, int))",
        "0.0", "np.zeros((0, 3))"),
    Row("cel-0d", "ce.cross_entropy_from_log_probs(0.0, 0)", "raises ValueError: axis=-1"),
    Row("cel-subnormal", "ce.cross_entropy_from_log_probs([-744.4400719213812, 0.0], 0)",
        "744.4400719213812", "[-1.0, 0.0]", note="exp(-744.44) = 5e-324",
        mp="1074*log(2)"),
    Row("cel-positive", "ce.cross_entropy_from_log_probs([0.5, -1.0], 0)",
        "raises ValueError: log_probs[0]"),
    # ---------------------------------------------------------- binary_cross_entropy_with_logits
    Row("bcel-pinf-1", "ce.binary_cross_entropy_with_logits(inf, 1.0)", "0.0", "0.0"),
    Row("bcel-pinf-0", "ce.binary_cross_entropy_with_logits(inf, 0.0)", "inf", "1.0"),
    Row("bcel-ninf-1", "ce.binary_cross_entropy_with_logits(-inf, 1.0)", "inf", "-1.0"),
    Row("bcel-ninf-0", "ce.binary_cross_entropy_with_logits(-inf, 0.0)", "0.0", "0.0"),
    Row("bcel-pinf-soft", "ce.binary_cross_entropy_with_logits(inf, 0.5)", "inf", "0.5"),
    Row("bcel-nan", "ce.binary_cross_entropy_with_logits(nan, 1.0)", "nan", "nan"),
    Row("bcel-nan-target", "ce.binary_cross_entropy_with_logits(0.0, nan)", "nan", "nan"),
    Row("bcel-empty-mean", "ce.binary_cross_entropy_with_logits([], [])", "0.0", "[]",
        note="mean over no elements = 0.0"),
    Row("bcel-empty-none", "ce.binary_cross_entropy_with_logits([], [], reduction='none')",
        "[]", "[]"),
    Row("bcel-subnormal", "ce.binary_cross_entropy_with_logits(5e-324, 1.0)",
        "0.6931471805599453", "-0.5", mp="log(2)"),
    Row("bcel-tiny", "ce.binary_cross_entropy_with_logits(-40.0, 0.0)",
        "4.248354255291589e-18", "4.248354255291589e-18", note="torch: 0",
        mp="log1p(exp(-40))", mp_grad="1/(1+exp(40))"),
    Row("bcel-huge", "ce.binary_cross_entropy_with_logits(1e308, 0.0)", "1e308", "1.0"),
    # ---------------------------------------------------------------- binary_cross_entropy
    Row("bce-q0-y0", "ce.binary_cross_entropy(0.0, 0.0)", "0.0", "1.0",
        note="0 log 0 = 0; the gradient is the true 1/(1-q)"),
    Row("bce-q1-y1", "ce.binary_cross_entropy(1.0, 1.0)", "0.0", "-1.0"),
    Row("bce-q0-y1", "ce.binary_cross_entropy(0.0, 1.0)", "inf", "-inf", note="no clipping"),
    Row("bce-q1-y0", "ce.binary_cross_entropy(1.0, 0.0)", "inf", "inf"),
    Row("bce-subnormal", "ce.binary_cross_entropy(5e-324, 1.0)", "744.4400719213812", "-inf",
        note="-1/q overflows to -inf", mp="1074*log(2)"),
    Row("bce-tiny", "ce.binary_cross_entropy(1e-300, 1.0)", "690.7755278982137", "-1e300",
        note="torch clamps the log at -100", mp="-log(mpf(1e-300))",
        mp_grad="-1/mpf(1e-300)"),
    Row("bce-nan", "ce.binary_cross_entropy(nan, 1.0)", "nan", "nan"),
    Row("bce-nan-target", "ce.binary_cross_entropy(0.5, nan)", "nan", "nan"),
    Row("bce-empty", "ce.binary_cross_entropy([], [])", "0.0", "[]"),
    Row("bce-half", "ce.binary_cross_entropy(0.5, 0.5)", "0.6931471805599453", "0.0",
        mp="log(2)"),
    Row("bce-inf", "ce.binary_cross_entropy(inf, 1.0)", "raises ValueError: probs"),
    Row("bce-out-of-range", "ce.binary_cross_entropy(1.5, 1.0)", "raises ValueError: probs"),
    # ---------------------------------------------------------------- entropy
    Row("entropy-p1", "ce.entropy([1.0, 0.0])", "0.0", "[-1.0, inf]",
        note="0 log 0 = 0; dH/dp = +inf at p = 0"),
    Row("entropy-half", "ce.entropy([0.5, 0.5])", "0.6931471805599453",
        "[-0.3068528194400547, -0.3068528194400547]", mp="log(2)",
        mp_grad="[log(2) - 1, log(2) - 1]"),
    Row("entropy-subnormal", "ce.entropy([5e-324, 1.0])", "3.676e-321",
        "[743.4400719213812, -1.0]", note="subnormal result",
        mp="1074*log(2)*mpf(2)**-1074", mp_grad="[1074*log(2) - 1, -1]"),
    Row("entropy-nan", "ce.entropy([nan, 0.5])", "nan", "[nan, nan]"),
    Row("entropy-empty", "ce.entropy(np.zeros((0, 3)))", E64, "np.zeros((0, 3))"),
    Row("entropy-no-classes", "ce.entropy(np.zeros((2, 0)))",
        "raises ValueError: probs has rows but no classes"),
    Row("entropy-inf", "ce.entropy([inf, 0.0])", "raises ValueError: probs[0]"),
    Row("entropy-0d", "ce.entropy(0.5)", "raises ValueError: axis=-1"),
    # ---------------------------------------------------------------- kl_divergence
    Row("kl-q0", "ce.kl_divergence([1.0, 0.0], [0.0, 1.0])", "inf", "[-inf, 0.0]"),
    Row("kl-p0-q0", "ce.kl_divergence([0.0, 1.0], [0.0, 1.0])", "0.0", "[0.0, -1.0]",
        note="p = 0 terms are 0"),
    Row("kl-p0-q1", "ce.kl_divergence([0.0, 1.0], [1.0, 0.0])", "inf", "[0.0, -inf]"),
    Row("kl-nan-q", "ce.kl_divergence([0.0, 1.0], [nan, 1.0])", "nan", "[nan, nan]",
        note="NaN anywhere in the row"),
    Row("kl-nan-p", "ce.kl_divergence([nan, 1.0], [0.0, 1.0])", "nan", "[nan, nan]"),
    Row("kl-empty", "ce.kl_divergence(np.zeros((0, 3)), np.zeros((0, 3)))", E64,
        "np.zeros((0, 3))"),
    Row("kl-inf", "ce.kl_divergence([1.0, 0.0], [inf, 0.0])", "raises ValueError: q[0]"),
    Row("ce-inf-target", "ce.cross_entropy([0.0, 0.0], [inf, 0.0])",
        "raises ValueError: target[0]"),
    Row("kl-0d", "ce.kl_divergence(0.5, 0.5)", "raises ValueError: axis=-1"),
    Row("kl-subnormal-equal", "ce.kl_divergence([5e-324, 1.0], [5e-324, 1.0])", "0.0",
        "[-1.0, -1.0]"),
    Row("kl-subnormal-q", "ce.kl_divergence([1.0, 0.0], [5e-324, 1.0])",
        "744.4400719213812", "[-inf, 0.0]", note="-p/q overflows to -inf",
        mp="1074*log(2)"),
    # ---------------------------------------------------------------- softplus
    Row("softplus-pinf", "ce.softplus(inf)", "inf", "1.0"),
    Row("softplus-ninf", "ce.softplus(-inf)", "0.0", "0.0"),
    Row("softplus-nan", "ce.softplus(nan)", "nan", "nan"),
    Row("softplus-empty", "ce.softplus([])", "[]", "[]"),
    Row("softplus-tiny", "ce.softplus(-40.0)", "4.248354255291589e-18",
        "4.248354255291589e-18", note="log(1 + e^x) gives 0",
        mp="log1p(exp(-40))", mp_grad="exp(-40)/(1 + exp(-40))"),
    Row("softplus-large", "ce.softplus(800.0)", "800.0", "1.0", note="e^x overflows"),
    Row("softplus-subnormal-out", "ce.softplus(-740.0)", "4.2e-322", "4.2e-322",
        mp="log1p(exp(-740))", mp_grad="exp(-740)/(1 + exp(-740))"),
    # ---------------------------------------------------------------- logit
    Row("logit-zero", "ce.logit(0.0)", "-inf", "inf"),
    Row("logit-one", "ce.logit(1.0)", "inf", "inf"),
    Row("logit-nan", "ce.logit(nan)", "nan", "nan"),
    Row("logit-empty", "ce.logit([])", "[]", "[]"),
    Row("logit-half", "ce.logit(0.5)", "0.0", "4.0"),
    Row("logit-subnormal", "ce.logit(5e-324)", "-744.4400719213812", "inf",
        note="1 / (p (1 - p)) overflows", mp="-1074*log(2)"),
    Row("logit-out-of-range", "ce.logit(1.5)", "raises ValueError: p must lie in [0, 1]"),
    # ---------------------------------------------------------------- nll_loss
    Row("nll-ninf-elsewhere", "ce.nll_loss([[-inf, 0.0]], [1])", "0.0", "[[0.0, -1.0]]",
        note="only x_y is read, as in PyTorch"),
    Row("nll-ninf-target", "ce.nll_loss([[0.0, -inf]], [1])", "inf", "[[0.0, -1.0]]"),
    Row("nll-nan-elsewhere", "ce.nll_loss([[nan, 0.0]], [1])", "0.0", "[[0.0, -1.0]]",
        note="log-probabilities are not checked (PyTorch's nll_loss)"),
    Row("nll-all-ignored", "ce.nll_loss([[0.0, 0.0]], [-100])", "0.0", "[[0.0, 0.0]]",
        note="mean over nothing: 0"),
    Row("nll-empty", "ce.nll_loss(np.zeros((0, 3)), np.zeros(0, dtype=int))", "0.0",
        "np.zeros((0, 3))"),
    Row("nll-bad-label", "ce.nll_loss([[0.0, 0.0]], [2])", "raises ValueError: target[0]"),
]
# fmt: on

NAMESPACE: dict[str, Any] = {"ce": ce, "np": np, "inf": np.inf, "nan": np.nan}


def _eval(expr: str) -> Any:
    return eval(expr, dict(NAMESPACE))


def _with_grad(call: str) -> str:
    assert call.endswith(")")
    return call[:-1] + ", return_grad=True)"


def _expected(expr: str, dtype: str) -> Any:
    val = _eval(expr)
    if isinstance(val, tuple):
        return tuple(np.asarray(v, dtype=dtype) for v in val)
    return np.asarray(val, dtype=dtype)


def _check(got: Any, want: Any, dtype: str) -> None:
    """Same shape, same dtype, NaN where NaN, infinities equal, finite values within 2 ulp."""
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            _check(g, w, dtype)
        return
    if want.ndim == 0:
        # 0-d results are NumPy scalars, never 0-d arrays or Python floats
        assert isinstance(got, np.generic), type(got)
    else:
        assert isinstance(got, np.ndarray), type(got)
    got = np.asarray(got)
    assert got.dtype == np.dtype(dtype), (got.dtype, dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    fi = np.finfo(np.dtype(dtype))
    # 2 ulp, measured in subnormal steps below the normal range
    np.testing.assert_allclose(
        got, want, rtol=2 * float(fi.eps), atol=2 * float(fi.smallest_subnormal),
        equal_nan=True, strict=True,
    )


def _run(call: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning may escape
        return _eval(call)


def _expect_raise(call: str, value: str) -> None:
    m = re.fullmatch(r"raises (\w+): (.+)", value)
    assert m, value
    kind = {"ValueError": ValueError, "TypeError": TypeError}[m.group(1)]
    with pytest.raises(kind) as info:
        _run(call)
    assert type(info.value) is kind
    assert m.group(2) in str(info.value), str(info.value)


@pytest.mark.parametrize("row", TABLE, ids=[r.id for r in TABLE])
def test_row(row: Row) -> None:
    if row.value.startswith("raises "):
        _expect_raise(row.call, row.value)
        if row.grad is not None:
            _expect_raise(_with_grad(row.call), row.value)
        return
    _check(_run(row.call), _expected(row.value, row.dtype), row.dtype)
    if row.grad is not None:
        got = _run(_with_grad(row.call))
        assert isinstance(got, tuple) and len(got) == 2
        value, grad = got
        # the value is the same with or without the gradient
        _check(value, _expected(row.value, row.dtype), row.dtype)
        _check(grad, _expected(row.grad, row.dtype), row.dtype)


GRAD_FUNCTIONS = (
    "ce.sigmoid", "ce.log_sigmoid", "ce.cross_entropy(", "ce.cross_entropy_from",
    "ce.binary_cross_entropy", "ce.entropy", "ce.kl_divergence", "ce.softplus", "ce.logit",
    "ce.nll_loss",
)


def test_rows_with_gradients_have_them() -> None:
    """Every row of a function that has return_grad gives its gradient (or raises)."""
    for row in TABLE:
        has_grad = any(row.call.startswith(f) for f in GRAD_FUNCTIONS)
        if has_grad and not row.value.startswith("raises "):
            assert row.grad is not None, row.id
        if not has_grad:
            assert row.grad is None, row.id


def test_every_public_function_is_in_the_table() -> None:
    names = {n for n in ce.__all__ if callable(getattr(ce, n))}
    # configuration (backend, threads), not numerics
    names = {n for n in names
             if getattr(ce, n).__module__ not in ("crossentropy._config", "crossentropy._backends",
                                                  "crossentropy._options")
             and not isinstance(getattr(ce, n), type)}  # types (options, warnings)
    assert "softmax" in names and "kl_divergence" in names
    for name in names:
        assert any(row.call.startswith(f"ce.{name}(") for row in TABLE), name


def test_ids_are_unique() -> None:
    assert len({r.id for r in TABLE}) == len(TABLE)


def _mp_eval(expr: str) -> Any:
    with mpmath.workdps(50):
        ns = {n: getattr(mpmath, n) for n in ("log", "log1p", "exp", "expm1", "mpf", "e")}
        return eval(expr, ns)


def _ulps(x: float, ref: Any, dtype: str) -> float:
    """Distance from x to the mpmath value in units of the last place of x's dtype."""
    if ref == 0:
        return 0.0 if x == 0 else float("inf")
    fi = np.finfo(np.dtype(dtype))
    ulp = max(float(np.spacing(np.abs(np.asarray(x, dtype=dtype)))), float(fi.smallest_subnormal))
    return float(abs(mpmath.mpf(x) - ref) / ulp)


@pytest.mark.parametrize(
    ("row", "which"),
    [(r, "value") for r in TABLE if r.mp] + [(r, "grad") for r in TABLE if r.mp_grad],
    ids=[f"{r.id}-value" for r in TABLE if r.mp] + [f"{r.id}-grad" for r in TABLE if r.mp_grad],
)
def test_reference_values_are_mpmath(row: Row, which: str) -> None:
    """Each written non-trivial expected value is mpmath's, rounded to the row's dtype."""
    literal = row.value if which == "value" else row.grad
    assert literal is not None
    mp_expr = row.mp if which == "value" else row.mp_grad
    assert mp_expr is not None
    want = _eval(literal)
    ref = _mp_eval(mp_expr)
    flat_want = list(np.ravel(np.asarray(want, dtype=np.float64)))
    flat_ref = list(ref) if isinstance(ref, (list, tuple)) else [ref]
    assert len(flat_want) == len(flat_ref)
    for w, r in zip(flat_want, flat_ref, strict=True):
        # the literal, read in the row's dtype, is within 1/2 ulp (+ slack for the
        # digits written) of the exact value
        wd = float(np.asarray(w, dtype=row.dtype))
        assert _ulps(wd, r, row.dtype) <= 1.0, (w, r)


# ---------------------------------------------------------------- the docs hold the table


def _md(s: str) -> str:
    return s.replace("|", "\\|")


def render_table() -> str:
    """The Markdown table of TABLE, as it appears in the docs and the README."""
    lines = [
        "| id | call | value | gradient (`return_grad=True`) | dtype | note |",
        "|---|---|---|---|---|---|",
    ]
    for r in TABLE:
        grad = "—" if r.grad is None else f"`{_md(r.grad)}`"
        lines.append(
            f"| {r.id} | `{_md(r.call)}` | `{_md(r.value)}` | {grad} | {r.dtype} | "
            f"{_md(r.note)} |"
        )
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("path", ["docs/special-values.md"])
def test_docs_hold_the_table(path: str) -> None:
    """The table in the docs is exactly TABLE, row for row (regenerate with this file)."""
    text = (ROOT / path).read_text(encoding="utf-8")
    if path == "README.md":
        m = re.search(
            r"<!-- section:special-values -->(.*?)<!-- /section:special-values -->", text, re.S
        )
        assert m, "README section special-values is missing"
        text = m.group(1)
    assert render_table() in text


def test_readme_api_examples() -> None:
    """The examples of the README section ``api`` run as doctests."""
    text = (ROOT / "docs/api.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- section:api -->(.*?)<!-- /section:api -->", text, re.S)
    assert m, "README section api is missing"
    blocks = re.findall(r"```python\n(.*?)```", m.group(1), re.S)
    assert len(blocks) >= 5
    parser = doctest.DocTestParser()
    test = parser.get_doctest("\n".join(blocks), {}, "README-api", "README.md", 0)
    assert len(test.examples) >= 15
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runner.run(test)
    assert runner.failures == 0, f"{runner.failures} README api example(s) failed"


@pytest.mark.parametrize("n", [2, 3, 70_000])
def test_mean_of_losses_whose_sum_overflows(backend: str, n: int) -> None:
    """Regression: n losses of about 1e308 (logit 1e308, label 0: softplus(1e308) = 1e308
    exactly) sum past the float64 maximum; their mean is 1e308, not inf, and no
    RuntimeWarning is raised (the suite turns warnings into errors).  Their sum is inf."""
    x = np.full(n, 1e308)
    y = np.zeros(n)
    assert float(ce.binary_cross_entropy_with_logits(x, y)) == pytest.approx(1e308, rel=1e-15)
    assert float(ce.binary_cross_entropy_with_logits(x, y, reduction="sum")) == math.inf
    # cross-entropy of rows [1e308, 0] against class 1: lse - 0 = 1e308 + log1p(e^-1e308)
    rows = np.zeros((n, 2))
    rows[:, 0] = 1e308
    t = np.ones(n, dtype=np.int64)
    assert float(ce.cross_entropy(rows, t)) == pytest.approx(1e308, rel=1e-15)



def test_where_masks_after_the_soft_cap(backend: str) -> None:
    """Regression: a class left out by ``where`` has logit -inf after the soft cap too (the
    cap of -inf is -cap, which gave it probability e^-cap / sum: 0.16842619 below)."""
    # mpmath.mp.dps = 40; z = [5 * tanh(mpf(1) / 5), 5 * tanh(mpf(3) / 5)]
    # log(exp(z[0]) + exp(z[1])) - z[1] -> 0.16803779048460363...
    # d/dx_j = (softmax(z)_j - [j == 1]) * (1 - tanh(x_j / 5)^2) -> 0.148652313236126566...,
    #   -0.110065504177046097...
    loss, g = ce.cross_entropy([[1.0, 2.0, 3.0]], [2], where=[[True, False, True]], softcap=5.0,
                               return_grad=True)
    assert float(loss) == pytest.approx(0.16803779048460363, rel=4e-16)
    assert g[0, 1] == 0.0
    assert g[0, 0] == pytest.approx(0.14865231323612657, rel=1e-15)
    assert g[0, 2] == pytest.approx(-0.11006550417704610, rel=1e-15)

if __name__ == "__main__":
    sys.stdout.write(render_table())
