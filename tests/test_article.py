"""Every number of the article (shared/seed/profound-of-cross-entropy.txt), checked.

The reference values come from mpmath at 50 digits; the snippet is beside each table.
Where the article is right (to the digits it prints) the library must agree to those digits;
where it slipped, the test pins the true value and says what the article printed.
"""

from __future__ import annotations

import numpy as np
import pytest

import crossentropy as ce

# mpmath snippet for the tables below:
#   import mpmath as mp; mp.mp.dps = 50
#   sig = lambda x: 1 / (1 + mp.exp(-mp.mpf(x)))
#   z = [mp.mpf(t) for t in ("9.8", "3.7", "0.2")]; S = sum(mp.exp(t) for t in z)
#   q = [mp.exp(t) / S for t in z]

# (x, the article's value, digits the article printed, true value from mpmath)
SIGMOID_TABLE = [
    (1.0, 0.731, 3, 0.731058578630005),
    (-3.0, 0.047, 3, 0.0474258731775668),
    (424.5, 1.0, 3, 1.0),
]


@pytest.mark.parametrize(("x", "article", "digits", "true"), SIGMOID_TABLE)
def test_sigmoid_values_the_article_got_right(
    x: float, article: float, digits: int, true: float
) -> None:
    got = float(ce.sigmoid(x))
    assert got == pytest.approx(true, rel=1e-15)
    assert round(got, digits) == article


def test_sigmoid_of_9_article_truncates() -> None:
    # The article prints 0.999; sigmoid(9) = 0.999876605424014 rounds to 1.000 at 3 digits.
    got = float(ce.sigmoid(9.0))
    assert got == pytest.approx(0.999876605424014, rel=1e-15)
    assert round(got, 3) == 1.0
    assert np.floor(got * 1000) / 1000 == 0.999  # what the article did: truncation


def test_sigmoid_of_minus_243_article_slip() -> None:
    # The article writes e^{-(-226)} for x = -243 and prints 2.99e-98.  Neither matches:
    # sigmoid(-243) = 2.92712249651537e-106 and sigmoid(-226) = 7.07045056072561e-99.
    assert float(ce.sigmoid(-243.0)) == pytest.approx(2.92712249651537e-106, rel=1e-14)
    assert float(ce.sigmoid(-226.0)) == pytest.approx(7.07045056072561e-99, rel=1e-14)
    assert float(ce.sigmoid(-243.0)) / 2.99e-98 < 1e-7  # eight orders of magnitude off


def test_softmax_of_3_06_63() -> None:
    # The article shows this calculation only as a photo; mpmath gives
    # [0.0354567722016, 0.00321656580438, 0.961326661994].
    p = ce.softmax([3.0, 0.6, 6.3])
    np.testing.assert_allclose(p, [0.0354567722016, 0.00321656580438, 0.961326661994], rtol=1e-11)
    assert int(np.argmax(p)) == 2  # "the higher score has a higher probability"


def test_softmax_of_the_cat_scores_article_truncates() -> None:
    # Article: [0.997694, 0.002237, 0.000067].  True: [0.997694730093, 0.00223769730403,
    # 6.75726034727e-5]; rounded to 6 decimals that is [0.997695, 0.002238, 0.000068]: the
    # article truncated, and its three values sum to 0.999998, not 1.
    q = ce.softmax([9.8, 3.7, 0.2])
    np.testing.assert_allclose(q, [0.997694730093, 0.00223769730403, 6.75726034727e-5], rtol=1e-11)
    np.testing.assert_array_equal(np.round(q, 6), [0.997695, 0.002238, 0.000068])
    np.testing.assert_array_equal(np.floor(q * 1e6) / 1e6, [0.997694, 0.002237, 0.000067])


def test_one_hot_cat_dog_bird() -> None:
    np.testing.assert_array_equal(ce.one_hot([0, 1, 2], 3), np.eye(3))


def test_categorical_cross_entropy_in_bits() -> None:
    # The article: -1 * log2(0.997694) = 0.00333 (with its rounded probability), and the
    # other two terms are 0.  mpmath: -log2(0.997694) = 0.00333069653505; from the exact
    # softmax of the scores, -log2(q1) = 0.00332964080008.  Both print as 0.00333.
    from_probs = float(ce.cross_entropy_from_probs([0.997694, 0.002237, 0.000069], 0, base=2))
    assert from_probs == pytest.approx(0.00333069653505, rel=1e-12)
    from_scores = float(ce.cross_entropy([9.8, 3.7, 0.2], 0, base=2))
    assert from_scores == pytest.approx(0.00332964080008, rel=1e-12)
    assert round(from_probs, 5) == round(from_scores, 5) == 0.00333
    # the p = 0 terms contribute exactly 0 (one-hot target [1, 0, 0])
    loss = ce.cross_entropy([9.8, 3.7, 0.2], [1.0, 0.0, 0.0], base=2)
    assert float(loss) == pytest.approx(0.00332964080008, rel=1e-12)


def test_binary_cross_entropy_cat_and_dog_in_bits() -> None:
    # Article: cat (p = 0.997694, y = 1) -> 0.0033; dog (p = 0.002237, y = 0) -> 0.0032.
    # mpmath: -log2(0.997694) = 0.00333069653505; -log2(1 - 0.002237) = 0.00323092394375.
    got = ce.binary_cross_entropy([0.997694, 0.002237], [1.0, 0.0], base=2, reduction="none")
    np.testing.assert_allclose(got, [0.00333069653505, 0.00323092394375], rtol=1e-12)
    np.testing.assert_array_equal(np.round(got, 4), [0.0033, 0.0032])
