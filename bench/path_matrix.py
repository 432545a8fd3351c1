"""Worst errors per path of the path matrix, as a Markdown table.

The same data, oracle (``crossentropy._core``) and ulp metrics as
``tests/test_path_matrix.py``: for each CPU path (NumPy numpy/numba backends, the torch
paths) and dtype, the worst per-sample loss and gradient error in ulps, without a soft cap
and over every case.  Usage: ``python bench/path_matrix.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import crossentropy as ce
import test_path_matrix as m

Rows = dict[tuple[str, str], dict[str, float]]


def _put(rows: Rows, path: str, dtype: str, case: Any, loss_err: float, grad_err: float
         ) -> None:
    r = rows.setdefault((path, dtype), {"loss": 0.0, "grad": 0.0, "loss_nocap": 0.0,
                                        "grad_nocap": 0.0})
    r["loss"] = max(r["loss"], float(loss_err))
    r["grad"] = max(r["grad"], float(grad_err))
    if not case.softcap:
        r["loss_nocap"] = max(r["loss_nocap"], float(loss_err))
        r["grad_nocap"] = max(r["grad_nocap"], float(grad_err))


def main() -> int:
    rows: Rows = {}
    for dtype in (np.float32, np.float64):
        dn = np.dtype(dtype).name
        for case in m.CASES:
            x, y = m._data(dtype)
            ref, gref = m._oracle(x, y, case)
            for be in ("numpy", "numba"):
                with ce.use_backend(be):
                    loss, g = ce.cross_entropy(
                        x, y, weight=m._weight() if case.weight else None,
                        label_smoothing=case.smoothing, z_loss=case.z_loss,
                        softcap=case.softcap, base=case.base, reduction="none",
                        return_grad=True,
                    )
                _put(rows, f"ce[{be}]", dn, case,
                     np.max(m._ulps(loss, ref, dtype, m._slack(x, case))),
                     np.max(m._grad_ulps(g, gref, dtype)))
            for impl, prob, layout in m.TORCH_PATHS:
                xx = x if not prob else np.where(np.isinf(x), -30.0, x).astype(dtype)
                r2, g2 = m._oracle(xx, y, case)
                loss, g = m._torch_call(xx, y, case, impl, prob=prob, layout=layout)
                c = y != -100
                slack = m._slack(xx, case)[c] if case.softcap else 0.0
                name = f"torch[{impl},{'prob' if prob else 'index'},{layout}]"
                _put(rows, name, dn, case, np.max(m._ulps(loss[c], r2[c], dtype, slack)),
                     np.max(m._grad_ulps(g, g2, dtype)))
    print("| path | dtype | loss (no cap) | grad (no cap) | loss (all) | grad (all) |")
    print("|---|---|---|---|---|---|")
    for (p, d), v in sorted(rows.items()):
        print(f"| {p} | {d} | {v['loss_nocap']:.2f} | {v['grad_nocap']:.2f} | "
              f"{v['loss']:.2f} | {v['grad']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
