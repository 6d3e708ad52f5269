"""The recipe machinery: :class:`Aspect` (one row of an official protocol)
and :class:`ProtocolRecipe` (every row of one method's protocol, how to set
them on an estimator and the table of the documentation)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sklearn.base import clone

__all__ = ["Aspect", "ProtocolRecipe"]


@dataclass(frozen=True)
class Aspect:
    """One aspect of an official protocol.

    Parameters
    ----------
    stage : {"pretraining", "fine-tuning", "evaluation"}
        Which part of the protocol the aspect belongs to.
    aspect : str
        What it is (e.g. ``"learning rate"``).
    official : str
        The official value, in words (as the official code has it).
    estimator : str or None, default=None
        Name of the estimator class of this package that has the parameter.
    parameter : str or None, default=None
        The parameter that sets the aspect; None when the library has none
        yet (a gap).
    value : object or callable, default=None
        The value the recipe sets (ignored without ``parameter``); a
        function ``value(estimator)`` (not a class) for a value that depends
        on the estimator's other parameters.
    note : str, default=""
        Short remark for the table.

    Examples
    --------
    >>> Aspect("pretraining", "precision", "fp32", "WSPPretrainer",
    ...        "precision", "fp32").parameter
    'precision'
    """

    stage: str
    aspect: str
    official: str
    estimator: str | None = None
    parameter: str | None = None
    value: object = None
    note: str = ""

    def official_value(self, estimator):
        """The value the recipe sets on ``estimator`` for this aspect."""
        value = self.value
        if callable(value) and not isinstance(value, type):  # not a class
            return value(estimator)
        return value


def _estimator_class(name):
    import sklearn_cl3d

    return getattr(sklearn_cl3d, name)


#: estimators that take the rows written for another (same parameters)
_ALIASES = {"FineTunedRegressor": "FineTunedClassifier"}


def _fmt(value):
    if isinstance(value, type):
        module = value.__module__
        if module.startswith("torch.optim."):
            module = "torch.optim"
        return f"{module}.{value.__name__}"
    return repr(value)


@dataclass(frozen=True)
class ProtocolRecipe:
    """Every aspect of one method's official protocol, and how to set it.

    Parameters
    ----------
    method : str
        The method's name (``"yaware"``, ``"globallocal"``, ``"wsp"``,
        ``"drasclr"``).
    title : str
        Human-readable title (paper and official code).
    aspects : tuple of Aspect
        The rows of the protocol.

    Examples
    --------
    >>> from sklearn_cl3d import FineTunedClassifier
    >>> from sklearn_cl3d.protocols import official_protocol
    >>> recipe = official_protocol("wsp")
    >>> clf = recipe.apply(FineTunedClassifier(max_epochs=3))
    >>> clf.lr, clf.lr_schedule, clf.augmentation, clf.max_epochs
    (1e-05, 'cosine', 'wsp', 40)
    >>> "ContrastiveSegmenter" in official_protocol("globallocal").estimators()
    True
    """

    method: str
    title: str
    aspects: tuple = field(default_factory=tuple)

    def estimators(self):
        """Names of the estimator classes the recipe sets parameters of."""
        names = []
        for a in self.aspects:
            if a.parameter is not None and a.estimator not in names:
                names.append(a.estimator)
        return names

    def params(self, estimator):
        """The official parameter values for ``estimator``.

        Parameters
        ----------
        estimator : estimator instance
            An estimator of one of :meth:`estimators` (a FineTunedRegressor
            takes the FineTunedClassifier rows); its other parameters choose
            values that depend on them, e.g. the L^D negatives.

        Returns
        -------
        dict
            ``{parameter: official value}``.
        """
        name = type(estimator).__name__
        name = _ALIASES.get(name, name)
        if name not in self.estimators():
            raise ValueError(
                f"the {self.method!r} recipe sets parameters of {self.estimators()}; "
                f"got a {name}."
            )
        return {
            a.parameter: a.official_value(estimator)
            for a in self.aspects
            if a.estimator == name and a.parameter is not None
        }

    def apply(self, estimator):
        """An unfitted clone of ``estimator`` with the official values set.

        Parameters
        ----------
        estimator : estimator instance
            One of :meth:`estimators`; parameters the recipe does not cover
            keep their values.

        Returns
        -------
        estimator instance
            A new, unfitted estimator.
        """
        params = self.params(estimator)
        return clone(estimator).set_params(**params)

    def gaps(self):
        """The aspects no estimator parameter sets (their note says how to
        reproduce them, or that the library does not)."""
        return [a for a in self.aspects if a.parameter is None]

    def table(self):
        """Rows ``{"stage", "aspect", "official", "default", "parameter"}``.

        The default is read from the estimator's constructor (``—`` when
        the aspect has no parameter).
        """
        rows = []
        for a in self.aspects:
            if a.parameter is None:
                default, parameter = "—", "—"
            else:
                cls = _estimator_class(a.estimator)
                default = _fmt(cls().get_params()[a.parameter])
                parameter = f"{a.estimator}.{a.parameter}"
            official = a.official
            if a.note:
                official = f"{official} ({a.note})"
            rows.append(
                {
                    "stage": a.stage,
                    "aspect": a.aspect,
                    "official": official,
                    "default": default,
                    "parameter": parameter,
                }
            )
        return rows

    def to_rst(self):
        """The table as a reStructuredText ``list-table``."""
        lines = [
            f".. list-table:: {self.title}",
            "   :header-rows: 1",
            "   :widths: 12 22 30 16 20",
            "",
            "   * - stage",
            "     - aspect",
            "     - official",
            "     - default",
            "     - parameter",
        ]
        for row in self.table():
            lines.append(f"   * - {row['stage']}")
            for key in ("aspect", "official", "default", "parameter"):
                text = row[key]
                if key in ("default", "parameter") and text != "—":
                    text = f"``{text}``"
                lines.append(f"     - {text}")
        return "\n".join(lines)
