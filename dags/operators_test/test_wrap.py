"""``wrap()``: a list of chains wires what it reads as, in both directions."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture()
def tasks() -> Any:
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG

    def make(*ids: str) -> tuple[Any, list[Any]]:
        dag = DAG("wrap_test", schedule=None)
        return dag, [EmptyOperator(task_id=i, dag=dag) for i in ids]

    return make


def _edges(dag: Any) -> set[tuple[str, str]]:
    return {(t.task_id, d) for t in dag.tasks for d in t.downstream_task_ids}


def test_plain_shift_loses_the_edge_into_a_chain_in_a_list(tasks: Any) -> None:
    dag, (a, b1, b2, c, d) = tasks("a", "b1", "b2", "c", "d")
    a >> [b1 >> b2, c] >> d
    assert ("a", "b1") not in _edges(dag)
    assert ("a", "b2") in _edges(dag)


def test_wrap_wires_a_list_of_chains(tasks: Any) -> None:
    from smserve_dags.operators.wrap import wrap

    dag, (a, b1, b2, c, d) = tasks("a", "b1", "b2", "c", "d")
    wrap(a) >> [wrap(b1) >> b2, c] >> d
    assert _edges(dag) == {("a", "b1"), ("b1", "b2"), ("b2", "d"), ("a", "c"), ("c", "d")}


def test_the_task_group_form_wires_the_same(tasks: Any) -> None:
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG, TaskGroup

    with DAG("group_test", schedule=None) as dag:
        a, c, d = (EmptyOperator(task_id=i) for i in ("a", "c", "d"))
        with TaskGroup("b") as b:
            EmptyOperator(task_id="b1") >> EmptyOperator(task_id="b2")
        a >> [b, c] >> d
    assert _edges(dag) == {("a", "b.b1"), ("b.b1", "b.b2"), ("b.b2", "d"), ("a", "c"),
                           ("c", "d")}


def test_reflected_and_left_shifts(tasks: Any) -> None:
    from smserve_dags.operators.wrap import wrap

    dag, (x, y, z, w) = tasks("x", "y", "z", "w")
    sub = [x, y] >> wrap(z)  # a list on the left: __rrshift__
    assert _edges(dag) == {("x", "z"), ("y", "z")}
    assert [t.task_id for t in sub.lefts] == ["x", "y"]
    assert [t.task_id for t in sub.rights] == ["z"]
    wrap(w) << sub  # the whole sub-graph before w
    assert ("z", "w") in _edges(dag)

    dag, (p, q, r) = tasks("p", "q", "r")
    [q, r] << wrap(p)  # p before the list: __rlshift__
    assert _edges(dag) == {("p", "q"), ("p", "r")}


def test_a_wrapper_keeps_where_a_sub_graph_starts_and_ends(tasks: Any) -> None:
    from smserve_dags.operators.wrap import Wrapper, wrap

    dag, (start, f1, f2, g, end) = tasks("start", "f1", "f2", "g", "end")
    f1 >> f2
    sub = Wrapper([f1, g], [f2, g])
    wrap(start) >> sub >> end
    assert _edges(dag) == {("start", "f1"), ("start", "g"), ("f1", "f2"), ("f2", "end"),
                           ("g", "end")}
    assert "lefts=[f1, g]" in repr(sub)
