"""The exact core: the float64 arithmetic of every function, written once.

This layer is the oracle that every other path (the public NumPy functions, the numba
kernels, the torch layer, the Triton kernels and the vocabulary-parallel loss) is tested
against.  Its rules:

* it imports only ``numpy`` and ``math`` (and its own modules): no backend, no global state,
  no configuration -- a test can call it directly;
* it takes float64 arrays that are already validated, with the class axis last;
* each numerical identity is commented where it is used.

Modules: :mod:`.sigmoid` (sigmoid, its derivative, softplus, log-sigmoid, logit),
:mod:`.rows` (the row decomposition: softmax, log-softmax, log-sum-exp, weighted
log-sum-exp), :mod:`.categorical` (cross-entropy rows with every option, and soft cap),
:mod:`.binary` (binary cross-entropy), :mod:`.information` (entropy, KL divergence) and
:mod:`.reduce` (the one reduction, with the divide-last rule for gradients).
"""

from crossentropy._core import binary, categorical, information, reduce, rows, sigmoid

__all__ = ["binary", "categorical", "information", "reduce", "rows", "sigmoid"]
