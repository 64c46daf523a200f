"""Shared pieces of the pipeline DAGs.

- :mod:`operators.sqs`: the buffering SQS sensor, visibility, deletion, the dead-letter queue;
- :mod:`operators.messages`: what a batch of messages asks for;
- :mod:`operators.batch`: the inference DAG's batch tasks (parse, skip, delete);
- :mod:`operators.requests`, :mod:`operators.transform`: one model's requests and transform job;
- :mod:`operators.sync`: copying a month of one camera angle, and queueing it;
- :mod:`operators.report`: ``report_message`` and the reporter;
- :mod:`operators.wrap`: ``wrap()`` for ``>>`` between sub-graphs;
- :mod:`operators.models`, :mod:`operators.aws`: the model graph, the AWS clients.

Settings come from ``config.py`` (one Airflow Variable per environment), read
when a task runs.
"""
