"""One-hot encoding of class labels."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import numpy.typing as npt

from crossentropy._validate import as_labels

__all__ = ["one_hot"]


def one_hot(labels: Any, num_classes: int | None = None, dtype: Any = np.float64) -> Any:
    r"""Encode class indices as one-hot rows, as in the article's cat, dog and bird.

    .. math:: \operatorname{one\_hot}(y)_{\dots, c} = [\,c = y_{\dots}\,]

    Parameters
    ----------
    labels : array_like of int
        Class indices in ``[0, num_classes)``.  Whole-number floats (``2.0``) are accepted;
        ``2.5``, negative or too large labels raise ``ValueError`` naming the first bad
        position.
    num_classes : int, optional
        Number of classes; by default ``max(labels) + 1``.
    dtype : dtype
        Dtype of the result (default float64).

    Returns
    -------
    ndarray of shape ``labels.shape + (num_classes,)``

    Examples
    --------
    >>> import crossentropy as ce
    >>> ce.one_hot([0, 1, 2], 3)            # cat, dog, bird
    array([[1., 0., 0.],
           [0., 1., 0.],
           [0., 0., 1.]])
    >>> ce.one_hot([0, 3], 3)
    Traceback (most recent call last):
    ...
    ValueError: labels[1] = 3 is out of range [0, 3)
    """
    if num_classes is None:
        arr = np.asarray(labels)
        if arr.size == 0:
            raise ValueError("num_classes is needed when labels is empty")
        # validate first (with a generous bound), then infer the count
        safe, _ = as_labels(arr, np.iinfo(np.int64).max, name="labels")
        num_classes = int(safe.max()) + 1
    elif isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        raise TypeError(f"num_classes must be an integer, got {num_classes!r}")
    elif num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    idx, _ = as_labels(labels, int(num_classes), name="labels")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be a NumPy dtype, got {dtype!r}") from None
    out: npt.NDArray[Any] = np.zeros((*idx.shape, int(num_classes)), dtype=dt)
    np.put_along_axis(out, idx[..., None], 1, axis=-1)
    return out
