"""Shared pieces of the pipeline DAGs (modules of ``smserve_dags.operators``).

- ``sqs``: the buffering SQS sensor, visibility, deletion;
- ``deadletter``: the queue's redrive policy and dead-letter queue;
- ``messages``: what a batch of messages asks for;
- ``batch``: the inference DAG's sensor (it reads the batch) and deletion;
- ``requests``, ``transform``: one model's requests (and their plan) and
  transform job (the transform task prepares the requests itself);
- ``outcomes``: the jobs' per-record outcomes, each message's fate;
- ``sync``: copying a month of one camera angle, and queueing it;
- ``report``: ``report_message`` and the reporter;
- ``wrap``: ``wrap()`` for ``>>`` between sub-graphs;
- ``models``, ``aws``: the model graph, the AWS clients.

Settings come from :mod:`smserve_dags.config` (one Airflow Variable per
environment), read when a task runs.
"""
