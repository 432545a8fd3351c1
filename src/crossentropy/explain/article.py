"""The article's worked example, step by step, with every number it printed checked.

The article is "Profound of Cross-Entropy": the sigmoid of x = 1, 9, 424.5, -3, -243; the
softmax of [3, 0.6, 6.3]; a cat/dog/bird network scoring a cat image [9.8, 3.7, 0.2], its
softmax, one-hot target and cross-entropy in bits; then binary cross-entropy for the cat and
for the dog.  The true values come from the library at run time; the tests compare them
with mpmath.
"""

from __future__ import annotations

import numpy as np

import crossentropy as ce
from crossentropy.explain.model import Check, Table, judge
from crossentropy.explain.steps import (
    bce_table,
    cross_entropy_table,
    one_hot_table,
    sigmoid_table,
    softmax_table,
)

__all__ = ["SIGMOID_X", "article_tables"]

SIGMOID_X = (1.0, 9.0, 424.5, -3.0, -243.0)
#: What the article printed for each sigmoid (its "f(x) = ..." lines).
_SIGMOID_CLAIMS = ("0.731", "0.999", "1", "0.047", "2.99e-98")
SOFTMAX_Z = (3.0, 0.6, 6.3)
CLASSES = ("cat", "dog", "bird")
CAT_SCORES = (9.8, 3.7, 0.2)
_CAT_PROBS_CLAIMED = ("0.997694", "0.002237", "0.000067")
#: The probabilities the article uses from there on (its rounded softmax output).
ARTICLE_Q = (0.997694, 0.002237, 0.000067)


def _sigmoid_checks() -> list[Check]:
    x = np.asarray(SIGMOID_X)
    s = np.asarray(ce.sigmoid(x), dtype=np.float64)
    sc = np.asarray(ce.sigmoid(-x), dtype=np.float64)
    checks: list[Check] = []
    for xi, si, ci, claim in zip(SIGMOID_X, s.tolist(), sc.tolist(), _SIGMOID_CLAIMS, strict=True):
        extra = ""
        if xi == 424.5:
            extra = (f"mathematically it is 1 - {ci:.4g}, below 1; float64 rounds it to 1.0, "
                     "so '= 1' is right for a computer, not for the function")
        if xi == -243.0:
            s226 = float(ce.sigmoid(-226.0))
            extra = (
                "the article writes e^{-(-226)} where x = -243 needs e^{-(-243)} = e^243, "
                f"and 2.99e-98 is not sigmoid(-226) either (that is {s226:.3g}): "
                f"the true value is {si / 2.99e-98:.2g} times the printed one"
            )
        checks.append(judge(f"sigmoid({xi:g})", claim, si, extra))
    return checks


def article_tables() -> list[Table]:
    """The whole worked example, in the article's order.

    >>> [t.title.split()[0] for t in article_tables()]
    ['Sigmoid', 'Softmax', 'The', 'One-hot', 'Categorical', 'Binary']
    """
    tables: list[Table] = []

    sig = sigmoid_table(SIGMOID_X)
    sig.title = "Sigmoid of the article's x1..x5"
    sig.checks = _sigmoid_checks()
    tables.append(sig)

    sm = softmax_table(SOFTMAX_Z, ["Z1", "Z2", "Z3"])
    sm.title = "Softmax of Z = [3, 0.6, 6.3]"
    sm.checks = [Check("softmax([3, 0.6, 6.3])", "(in an image)", p, "not shown",
                       "the article's numbers for this step are in IMG_2937.JPG, which its text "
                       "does not include; the true values are in the table")
                 for p in sm.results["p"]]  # type: ignore[union-attr]
    tables.append(sm)

    net = softmax_table(CAT_SCORES, list(CLASSES))
    net.title = "The network's scores for a cat image [9.8, 3.7, 0.2], through softmax"
    q = np.asarray(ce.softmax(np.asarray(CAT_SCORES)), dtype=np.float64).tolist()
    net.checks = [
        judge(f"q_{c}", claim, qi)
        for c, claim, qi in zip(CLASSES, _CAT_PROBS_CLAIMED, q, strict=True)
    ]
    net.notes.append(
        "the article's three probabilities [0.997694, 0.002237, 0.000067] are the true ones "
        f"with digits cut off; they sum to {sum(ARTICLE_Q):.6f}, not 1"
    )
    tables.append(net)

    oh = one_hot_table(CLASSES)
    oh.title = "One-hot targets (cat = class 1, dog = class 2, bird = class 3)"
    tables.append(oh)

    cet = cross_entropy_table([1.0, 0.0, 0.0], scores=CAT_SCORES, classes=CLASSES, base=2.0)
    cet.title = "Categorical cross-entropy of the cat image, in bits"
    terms = cet.results["terms"]
    assert isinstance(terms, list)
    q1_rounded = float(ce.binary_cross_entropy(ARTICLE_Q[0], 1.0, base=2))
    cet.checks = [
        judge("H(p1, q1) = -1 * log2(q1)", "0.00333", terms[0],
              f"with the article's rounded q1 = 0.997694 it is {q1_rounded:.6g}, "
              "which also rounds to 0.00333"),
        judge("H(p2, q2) = -0 * log2(q2)", "0", terms[1], "0 times a finite log is exactly 0"),
        judge("H(p3, q3) = -0 * log2(q3)", "0", terms[2], "0 times a finite log is exactly 0"),
    ]
    tables.append(cet)

    bt = bce_table([1.0, 0.0], probs=ARTICLE_Q[:2], names=["cat", "dog"], base=2.0)
    bt.title = "Binary cross-entropy for the cat (y = 1) and the dog (y = 0), in bits"
    loss = bt.results["loss"]
    assert isinstance(loss, list)
    exact = np.asarray(ce.binary_cross_entropy(
        np.asarray(q[:2]), np.asarray([1.0, 0.0]), base=2, reduction="none"))
    bt.checks = [
        judge("BCE, cat: p = 0.997694, y = 1", "0.0033", loss[0],
              f"from the unrounded q_cat it is {exact[0]:.6g}"),
        judge("BCE, dog: p = 0.002237, y = 0", "0.0032", loss[1],
              f"from the unrounded q_dog it is {exact[1]:.6g}"),
    ]
    bt.notes.append(
        "as in the article, p is the rounded softmax output it printed (0.997694 and 0.002237); "
        "the dog's y = 0 makes this the loss of 'not this class' for the dog's output"
    )
    tables.append(bt)
    return tables
