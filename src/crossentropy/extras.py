"""How to install an optional extra, written once for every "needs an extra" message.

The package is not on PyPI yet (README, Install), so asking pip for the extra by the
package's name would send it to an index that does not have the package.  An extra is
installed from a clone of the repository, ``pip install ".[plot]"``, or its one package is
installed directly.

Not part of the documented API: the command line and the plotting helpers use it for their
error messages.  (A public module name because the applications -- ``cli``, ``explain``,
``plot``, ``score`` -- import only public modules; it imports nothing itself.)
"""

from __future__ import annotations

__all__ = ["EXTRAS", "install_hint"]

#: The single package each extra of the command line brings (as in pyproject.toml's
#: ``[project.optional-dependencies]``; a test checks that the two agree).
EXTRAS = {
    "cli": "rich>=13",
    "plot": "matplotlib>=3.7",
    "io": "pyarrow>=14",
}


def install_hint(extra: str) -> str:
    """What to run to get the optional extra `extra`.

    >>> hint = install_hint("plot")
    >>> hint.startswith('pip install ".[plot]" in a clone of the crossentropy repository')
    True
    >>> hint.endswith('or pip install "matplotlib>=3.7"')
    True
    """
    if extra not in EXTRAS:
        raise ValueError(f"extra must be one of {sorted(EXTRAS)}, got {extra!r}")
    return (f'pip install ".[{extra}]" in a clone of the crossentropy repository (it is not '
            f'on PyPI yet), or pip install "{EXTRAS[extra]}"')
