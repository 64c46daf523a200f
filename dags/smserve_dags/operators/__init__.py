"""Shared pieces of the pipeline DAGs (modules of ``smserve_dags.operators``).

- ``sqs``: the buffering SQS sensor, visibility, deletion, the dead-letter queue;
- ``messages``: what a batch of messages asks for;
- ``batch``: the inference DAG's batch tasks (parse, skip, delete);
- ``requests``, ``transform``: one model's requests and transform job;
- ``sync``: copying a month of one camera angle, and queueing it;
- ``report``: ``report_message`` and the reporter;
- ``wrap``: ``wrap()`` for ``>>`` between sub-graphs;
- ``models``, ``aws``: the model graph, the AWS clients.

Settings come from :mod:`smserve_dags.config` (one Airflow Variable per
environment), read when a task runs.
"""
