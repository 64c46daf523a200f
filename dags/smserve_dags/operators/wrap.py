"""``wrap()``: ``>>`` between sub-graphs, so a list of chains wires what it says.

Airflow's ``a >> b`` returns ``b``, so in ::

    a >> [b1 >> b2, c] >> d

the list holds ``b2`` and ``c`` (what ``b1 >> b2`` returned): Airflow wires
``b2 -> d`` and ``c -> d`` and ``a -> b2``, ``a -> c``, but never ``a -> b1``.
Wrapped, the same line wires what it reads as::

    wrap(a) >> [wrap(b1) >> b2, c] >> d     # a->b1->b2->d and a->c->d

A :class:`Wrapper` is a sub-graph seen from outside: the tasks that enter it
(``lefts``) and those it leaves from (``rights``). ``x >> y`` wires every
right of ``x`` to every left of ``y`` and returns the sub-graph from ``x``'s
lefts to ``y``'s rights, so chains and lists of chains compose. Anything that
supports Airflow's ``>>`` can be inside: operators, ``@task`` calls
(``XComArg``), task groups.

The same graph with a task group, Airflow's own way::

    from airflow.sdk import TaskGroup

    with TaskGroup("b") as b:
        b1 >> b2          # the group enters at b1 and leaves from b2
    a >> [b, c] >> d      # a->b1->b2->d and a->c->d

Use the group when the branch deserves a name in the UI; use ``wrap`` when
a function builds a piece of a graph and returns where it starts and ends
(``Wrapper(roots, leaves)``), as the inference DAG does for the model graph.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["Wrapper", "wrap"]


def _flatten(items: Iterable[Any], side: str) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if isinstance(item, Wrapper):
            out.extend(getattr(item, side))
        elif isinstance(item, (list, tuple)):
            out.extend(_flatten(item, side))
        else:
            out.append(item)
    return out


class Wrapper:
    """A sub-graph: where it is entered (``lefts``) and where it is left (``rights``).

    Args:
        lefts: tasks (or wrappers, or lists of them) that enter the sub-graph.
        rights: tasks it leaves from (default: the same as ``lefts``).
    """

    def __init__(self, lefts: Sequence[Any], rights: Sequence[Any] | None = None) -> None:
        self.lefts: list[Any] = _flatten(lefts, "lefts")
        self.rights: list[Any] = _flatten(lefts if rights is None else rights, "rights")

    def __repr__(self) -> str:
        def ids(items: list[Any]) -> str:
            return ", ".join(str(getattr(i, "node_id", None) or getattr(i, "task_id", i))
                             for i in items)

        return f"Wrapper(lefts=[{ids(self.lefts)}], rights=[{ids(self.rights)}])"

    def __rshift__(self, other: Any) -> Wrapper:
        """``self >> other``: ``self`` runs before ``other``."""
        after = wrap(other)
        for upstream in self.rights:
            for downstream in after.lefts:
                upstream >> downstream
        return Wrapper(self.lefts, after.rights)

    def __lshift__(self, other: Any) -> Wrapper:
        """``self << other``: ``other`` runs before ``self``."""
        before = wrap(other)
        return before >> self

    def __rrshift__(self, other: Any) -> Wrapper:
        """``other >> self`` where ``other`` is a list: the list runs before ``self``."""
        return wrap(other) >> self

    def __rlshift__(self, other: Any) -> Wrapper:
        """``other << self`` where ``other`` is a list: ``self`` runs before the list."""
        return self >> wrap(other)


def wrap(op: Any) -> Wrapper:
    """``op`` (a task, a task group, an ``XComArg``, a wrapper, or a list of them) as a sub-graph.

    >>> wrap(a) >> [wrap(b1) >> b2, c] >> d  # doctest: +SKIP
    """
    if isinstance(op, Wrapper):
        return op
    items = list(op) if isinstance(op, (list, tuple)) else [op]
    return Wrapper(items, items)
