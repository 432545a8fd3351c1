"""Exact sigmoid, softmax and cross-entropy for JAX: ``crossentropy.jax``.

Pure JAX (``jit``, ``vmap``, ``grad``, ``jacfwd``/``jacrev``, ``shard_map``; static shapes,
no host synchronisation), with the NumPy core's semantics and ulp bounds in float64 (with
``jax_enable_x64``) and float32; bfloat16 and float16 are computed in float32 and rounded
once.  Gradients are custom rules with the exact derivatives.  See ``docs/jax.md``.

* activations: :func:`sigmoid`, :func:`log_sigmoid`, :func:`softplus`, :func:`softmax`,
  :func:`log_softmax`, :func:`logsumexp`;
* losses: :func:`cross_entropy`, :func:`binary_cross_entropy_with_logits`,
  :func:`entropy`, :func:`kl_divergence`;
* without the [N, V] logits: :func:`linear_cross_entropy`, and
  :func:`sharded_linear_cross_entropy` inside ``jax.shard_map``;
* :mod:`crossentropy.jax.optax`: optax's losses by optax's names and semantics;
* value checks under ``jit`` (with ``checkify``): :func:`check_labels`,
  :func:`check_probabilities`.

Install from a clone of the repository: ``pip install ".[jax]"``.
"""

try:
    import jax as _jax  # noqa: F401
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "crossentropy.jax needs JAX, which is not installed: from a clone of the "
        "crossentropy repository, run  pip install \".[jax]\"  (crossentropy is not on PyPI)"
    ) from _exc

from crossentropy.jax import optax
from crossentropy.jax._activations import (
    log_sigmoid,
    log_softmax,
    logsumexp,
    sigmoid,
    softmax,
    softplus,
)
from crossentropy.jax._checks import check_labels, check_probabilities
from crossentropy.jax._linear import linear_cross_entropy
from crossentropy.jax._losses import (
    binary_cross_entropy_with_logits,
    cross_entropy,
    entropy,
    kl_divergence,
)
from crossentropy.jax._sharded import sharded_linear_cross_entropy

__all__ = [
    "binary_cross_entropy_with_logits",
    "check_labels",
    "check_probabilities",
    "cross_entropy",
    "entropy",
    "kl_divergence",
    "linear_cross_entropy",
    "log_sigmoid",
    "log_softmax",
    "logsumexp",
    "optax",
    "sharded_linear_cross_entropy",
    "sigmoid",
    "softmax",
    "softplus",
]
