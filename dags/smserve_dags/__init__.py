"""The pipeline DAGs' own code, under one package name no other DAG bundle uses.

- :mod:`smserve_dags.config`: the settings of one environment (one Airflow
  Variable per environment), read when a task runs;
- :mod:`smserve_dags.operators`: the tasks and operators the DAG files use.

The DAG files (``dags/inference/dag.py``, ``dags/sync/dag.py``) put the
folder above this package on ``sys.path`` if it is not there already: the
dag-processor and task runs do it, ``airflow dags list --local`` does not.
"""
