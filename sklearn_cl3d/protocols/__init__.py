"""The official protocol of each method, as one recipe object per method.

A :class:`ProtocolRecipe` lists, for one method, every aspect of its
official protocol (pretraining, fine-tuning, evaluation) with the official
value, the library's default and the parameter that sets it. A default
differs from the official value only where the documentation lists it with
its reason (``docs/protocols.rst``, "Defaults that differ from the official
code"); the recipe sets every official value at once:

>>> from sklearn_cl3d import WSPPretrainer
>>> from sklearn_cl3d.protocols import official_protocol
>>> recipe = official_protocol("wsp")
>>> wsp = recipe.apply(WSPPretrainer())
>>> wsp.steps_per_epoch, wsp.precision
(156, 'fp32')

:meth:`ProtocolRecipe.apply` returns an unfitted clone of the estimator with
every official value of that estimator's rows set; the user's other
parameters are kept. Aspects no estimator parameter sets (``—`` in the
tables) are listed by :meth:`ProtocolRecipe.gaps`; their note says how to
reproduce them (DrasCLR's preprocessing is a function to run before
``fit``, its landmark table data to pass) or that the library does not.

The tables below are generated from the recipe objects when this module is
imported (the "default" column is read from each estimator's constructor),
so the documentation cannot drift from the code.
"""

from __future__ import annotations

from ._drasclr import _DRASCLR
from ._globallocal import _GLOBALLOCAL
from ._recipe import Aspect, ProtocolRecipe
from ._wsp import _WSP
from ._yaware import _YAWARE

__all__ = ["PROTOCOLS", "Aspect", "ProtocolRecipe", "official_protocol"]


#: The recipe of each method, by name.
PROTOCOLS = {r.method: r for r in (_YAWARE, _GLOBALLOCAL, _WSP, _DRASCLR)}


def official_protocol(method):
    """The :class:`ProtocolRecipe` of a method's official protocol.

    Parameters
    ----------
    method : {"yaware", "globallocal", "wsp", "drasclr"}
        The method.

    Returns
    -------
    ProtocolRecipe

    Examples
    --------
    >>> from sklearn_cl3d import GlobalLocalPretrainer
    >>> recipe = official_protocol("globallocal")
    >>> gl = recipe.apply(GlobalLocalPretrainer(local="LD"))
    >>> gl.n_iterations, gl.local_iterations, gl.gd_pairing, gl.n_negatives
    (10001, 10001, 'official', 4)
    >>> [a.aspect for a in official_protocol("drasclr").gaps()]  # no parameter
    ['preprocessing', 'landmarks']
    """
    if method not in PROTOCOLS:
        raise ValueError(f"method must be one of {sorted(PROTOCOLS)}; got {method!r}.")
    return PROTOCOLS[method]


def _tables_doc():
    parts = []
    for recipe in PROTOCOLS.values():
        title = f"``{recipe.method}``"
        parts.append(f"{title}\n{'-' * len(title)}\n\n{recipe.to_rst()}\n")
    return "\n".join(parts)


__doc__ = f"{__doc__}\n{_tables_doc()}"
