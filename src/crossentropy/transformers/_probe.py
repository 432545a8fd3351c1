r"""The probe: what the model does to its logits between the output embedding and its loss.

While a patched call skips the logits, the output embedding returns a :class:`Probe`
instead of ``z = h W^T + b``: a tensor of the logits' shape, dtype and device that holds one
element (a zero expanded with stride 0), so it costs nothing.  It carries the hidden states
and the weight it stands for, and it records the operations the model applies to it on its
way to ``self.loss_function``:

* multiplication or division by a number (Cohere's ``logit_scale``, Granite's
  ``logits_scaling``, an output multiplier);
* ``tanh`` once, between scalings: Gemma 2 / 3's soft cap ``c tanh(z / c)``;
* casts and moves (``.float()``, ``.to(dtype or device)``, ``.contiguous()``, ``.clone()``);
* a slice of the leading classes ``z[..., :k]`` (models with a padded vocabulary);
* reading metadata (``.shape``, ``.dtype``, ``.size()``, ``.dim()``...).

So the loss sees :math:`a\,\tanh(b\,z)` or :math:`a\,z` restricted to the first ``k``
classes, which :func:`crossentropy.torch.linear_cross_entropy` computes exactly from the
hidden states: a scale goes onto ``h`` and ``b`` (:math:`s(hW^\top + b) = (sh)W^\top + sb`)
and :math:`a\tanh(bz) = c\tanh(sz / c)` with :math:`c = a`, :math:`s = ab` is its
``softcap``.  Any other operation raises :class:`UnsupportedModelError` naming it, where the
model applies it: nothing is approximated and nothing falls back silently.  (Inside
``__torch_function__`` that error is a :class:`ProbeRefused`, which the patched forward turns
into :class:`UnsupportedModelError`: torch would swallow a TypeError of an operator.)
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor

__all__ = ["Probe", "ProbeRefused", "ProbeState", "UnsupportedModelError", "make_probe"]


class UnsupportedModelError(TypeError):
    """The model cannot be patched, or does something to its logits the fused loss cannot
    reproduce exactly; the message says which and why."""


class ProbeRefused(RuntimeError):
    """Raised inside ``__torch_function__`` (where torch turns a TypeError of an operator
    into NotImplemented, losing the message); the patched forward re-raises it as
    :class:`UnsupportedModelError`."""


class ProbeState:
    """What a probe stands for: ``a tanh(b z)`` (``b`` None: ``a z``) of the first ``k``
    classes (None: all) of ``z = h W^T + bias``; ``slot`` collects the probes that reached
    the loss, ``owner`` names the model class in errors."""

    __slots__ = ("a", "b", "bias", "h", "k", "owner", "slot", "weight")

    def __init__(self, h: Tensor, weight: Tensor, bias: Tensor | None, slot: list[Any],
                 owner: str, a: float = 1.0, b: float | None = None,
                 k: int | None = None) -> None:
        self.h, self.weight, self.bias, self.slot, self.owner = h, weight, bias, slot, owner
        self.a, self.b, self.k = a, b, k

    def replace(self, **kw: Any) -> ProbeState:
        new = ProbeState(self.h, self.weight, self.bias, self.slot, self.owner, self.a,
                         self.b, self.k)
        for name, value in kw.items():
            setattr(new, name, value)
        return new

    def scale_and_softcap(self) -> tuple[float, float | None]:
        """(s, c): the loss sees ``c tanh(s z / c)`` (c None: ``s z``)."""
        if self.b is None:
            return self.a, None
        # a tanh(b z) = c tanh(s z / c) with c = a, s = a b; a soft cap needs c > 0
        if not (self.a > 0.0 and math.isfinite(self.a)):
            raise UnsupportedModelError(
                f"{self.owner} multiplies tanh of its logits by {self.a!r}: only a positive "
                "soft cap c tanh(z / c) can be fused")
        return self.a * self.b, self.a

    def linear_inputs(self) -> tuple[Tensor, Tensor, Tensor | None, float | None]:
        """(h', W', b', c): the logits the model went on with are ``softcap_c(h' W'^T + b')``
        (c None: no cap), with the scale folded into ``h'`` and ``b'`` and the class slice
        into ``W'`` and ``b'``."""
        scale, softcap = self.scale_and_softcap()
        h, W, b = self.h, self.weight, self.bias
        if self.k is not None and self.k != W.shape[0]:
            W, b = W[:self.k], None if b is None else b[:self.k]
        if scale != 1.0:
            # s (h W^T + b) = (s h) W^T + s b: scales the (tokens x hidden) states, not the
            # (tokens x vocabulary) logits
            h = h * scale
            b = None if b is None else b * scale
        return h, W, b, softcap


def make_probe(h: Tensor, weight: Tensor, bias: Tensor | None, slot: list[Any],
               owner: str) -> Probe:
    """The probe standing for ``h @ weight.T + bias`` (shape ``(*h.shape[:-1], V)``)."""
    dtype = torch.promote_types(h.dtype, weight.dtype)
    return _fresh(dtype, h.device, (*h.shape[:-1], weight.shape[0]),
                  ProbeState(h, weight, bias, slot, owner))


def _fresh(dtype: torch.dtype, device: torch.device, shape: Any, state: ProbeState) -> Probe:
    """A probe of this metadata: one zero, expanded (made from a plain tensor: torch.compile
    traces ``as_subclass`` only from one)."""
    probe = torch.zeros((), dtype=dtype, device=device).expand(*shape).as_subclass(Probe)
    probe._ce_state = state
    return probe


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


# the operations a probe follows, by the function torch hands to __torch_function__
_MUL = frozenset({torch.mul, torch.multiply, Tensor.mul, Tensor.multiply, Tensor.__mul__,
                  Tensor.__rmul__})
_MUL_ = frozenset({Tensor.mul_, Tensor.multiply_, Tensor.__imul__})
_DIV = frozenset({torch.div, torch.divide, torch.true_divide, Tensor.div, Tensor.divide,
                  Tensor.true_divide, Tensor.__truediv__})
_DIV_ = frozenset({Tensor.div_, Tensor.divide_, Tensor.true_divide_, Tensor.__itruediv__})
_TANH = frozenset({torch.tanh, Tensor.tanh, torch.nn.functional.tanh})
_TANH_ = frozenset({Tensor.tanh_})
_KEEP = frozenset({Tensor.float, Tensor.double, Tensor.half, Tensor.bfloat16, Tensor.to,
                   Tensor.type, Tensor.type_as, Tensor.cpu, Tensor.cuda, Tensor.contiguous,
                   Tensor.clone})
_META = frozenset({"size", "dim", "ndimension", "numel", "nelement", "__len__",
                   "is_floating_point", "is_complex", "is_contiguous", "stride",
                   "element_size", "get_device", "storage_offset", "__repr__", "__format__",
                   "__hash__", "__get__", "_is_view"})


def _name(func: Any) -> str:
    name = getattr(func, "__name__", None) or repr(func)
    if name == "__get__":
        prop = getattr(getattr(func, "__self__", None), "__name__", None)
        return f"the attribute {prop}" if prop else "an attribute"
    return str(name)


class Probe(Tensor):
    """A stand-in for the logits (see the module docstring)."""

    _ce_state: ProbeState

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        # our own tensor calls below must not come back here
        with torch._C.DisableTorchFunctionSubclass():
            return _follow(func, args, kwargs)


def _follow(func: Any, args: Any, kwargs: Any) -> Any:
    """The probe after ``func(*args, **kwargs)``, or the metadata asked for."""
    if getattr(func, "__name__", "") in _META:
        out = func(*args, **kwargs)
        if not isinstance(out, Tensor):
            return out
    first = args[0] if args else None
    second = args[1] if len(args) > 1 else kwargs.get("other")
    if isinstance(first, Probe):
        probe, other = first, second
    elif isinstance(second, Probe) and func in (torch.mul, torch.multiply):
        probe, other = second, first  # c * z as torch.mul(c, z)
    else:
        raise _refuse(args, kwargs, func)
    st = probe._ce_state
    if func in _MUL or func in _MUL_ or func in _DIV or func in _DIV_:
        c = _number(other)
        extra = set(kwargs) - {"other", "input"}
        if c is None or extra or len(args) > 2:
            raise _refuse(args, kwargs, func, "by anything but a finite number")
        factor = c if (func in _MUL or func in _MUL_) else 1.0 / c
        return _result(probe, func in _MUL_ or func in _DIV_, st.replace(a=st.a * factor))
    if func in _TANH or func in _TANH_:
        if st.b is not None:
            raise _refuse(args, kwargs, func, "twice")
        # tanh(a z) = 1 tanh(b z) with b = a
        return _result(probe, func in _TANH_, st.replace(a=1.0, b=st.a))
    if func in _KEEP:
        zero = torch.zeros((), dtype=probe.dtype, device=probe.device)
        if any(isinstance(a, Probe) for a in (*args[1:], *kwargs.values())):
            raise _refuse(args, kwargs, func, "with the logits as its argument")
        moved = func(zero, *args[1:], **kwargs)
        if not isinstance(moved, Tensor) or not moved.is_floating_point():
            raise _refuse(args, kwargs, func, "to a non-floating result")
        return _fresh(moved.dtype, moved.device, probe.shape, st)
    if func is Tensor.__getitem__:
        k = _class_slice(probe, second)
        if k is None:
            raise _refuse(args, kwargs, func, "other than a slice z[..., :k] of the classes")
        return _fresh(probe.dtype, probe.device, (*probe.shape[:-1], k), st.replace(k=k))
    raise _refuse(args, kwargs, func)


def _result(probe: Probe, inplace: bool, state: ProbeState) -> Probe:
    if inplace:
        probe._ce_state = state
        return probe
    return _fresh(probe.dtype, probe.device, probe.shape, state)


def _class_slice(probe: Probe, index: Any) -> int | None:
    """k for ``z[..., :k]`` / ``z[:, :, :k]`` (full slices before the class axis)."""
    idx = index if isinstance(index, tuple) else (index,)
    if not idx or not isinstance(idx[-1], slice):
        return None
    lead = idx[:-1]
    full = slice(None)
    if not (lead == (Ellipsis,) or (len(lead) == probe.dim() - 1
                                    and all(isinstance(i, slice) and i == full for i in lead))):
        return None
    last: slice = idx[-1]
    width = probe.shape[-1]
    start, stop, step = last.indices(width)
    if start != 0 or step != 1:
        return None
    return max(stop, 0)


def _refuse(args: Any, kwargs: Any, func: Any, how: str = "") -> ProbeRefused:
    probe = next((a for a in (*args, *kwargs.values()) if isinstance(a, Probe)), None)
    owner = probe._ce_state.owner if probe is not None else "the model"
    what = f"applies {_name(func)}{' ' + how if how else ''}"
    return ProbeRefused(
        f"{owner}: the forward {what} to the logits of its output embedding before its "
        "loss; crossentropy.transformers can fuse only scaling by a number, a tanh soft cap, "
        "casts and a slice of the leading classes, so it cannot compute this loss without "
        "the logits (patch with skip_logits=False to keep them)")
