"""Products that treat a zero coefficient as exactly zero."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["xlogy_terms"]

F64 = npt.NDArray[np.float64]


def xlogy_terms(a: F64, nl: F64) -> F64:
    """``a * nl`` with ``0 * anything = 0``: a class (or label) with no target mass adds
    nothing, even where its ``-log q`` is infinite; a NaN in `a` still propagates."""
    with np.errstate(invalid="ignore"):
        out: F64 = np.where(a == 0.0, 0.0, a * nl)
    return out
