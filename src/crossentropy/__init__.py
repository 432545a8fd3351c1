"""crossentropy: exact, fast and complete sigmoid, softmax and cross-entropy.

The NumPy functions here are the exact reference; faster backends (``crossentropy.torch``,
``crossentropy.triton``) are tested against them.  Importing this package imports NumPy only.
"""

from crossentropy._backends import PerformanceHint, kernel_status, warm_up
from crossentropy._config import (
    get_backend,
    get_num_threads,
    set_backend,
    set_num_threads,
    use_backend,
)
from crossentropy._options import BinaryOptions, CrossEntropyOptions, Reduction
from crossentropy.activations import (
    log_sigmoid,
    log_softmax,
    logit,
    logsumexp,
    sigmoid,
    softmax,
    softplus,
)
from crossentropy.losses import (
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    cross_entropy,
    cross_entropy_from_log_probs,
    cross_entropy_from_probs,
    entropy,
    kl_divergence,
    nll_loss,
)
from crossentropy.targets import one_hot

__version__ = "0.1.0"

__all__ = [
    "BinaryOptions",
    "CrossEntropyOptions",
    "PerformanceHint",
    "Reduction",
    "__version__",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "cross_entropy_from_log_probs",
    "cross_entropy_from_probs",
    "entropy",
    "get_backend",
    "get_num_threads",
    "kernel_status",
    "kl_divergence",
    "log_sigmoid",
    "log_softmax",
    "logit",
    "logsumexp",
    "nll_loss",
    "one_hot",
    "set_backend",
    "set_num_threads",
    "sigmoid",
    "softmax",
    "softplus",
    "use_backend",
    "warm_up",
]
