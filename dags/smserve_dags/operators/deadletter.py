"""A queue's redrive policy and its dead-letter queue, as the reports describe them."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from smserve_dags.operators.aws import describe_error
from smserve_dags.triggers import approximate_count

__all__ = ["DeadLetter", "dead_letter"]

log = logging.getLogger("smserve.sqs")


@dataclass(frozen=True)
class DeadLetter:
    """The queue's redrive policy and its dead-letter queue.

    Attributes:
        max_receive_count: receives after which SQS moves a message (0: no policy).
        queue: the dead-letter queue's name ("" without a policy).
        depth: messages on it (-1: unknown).
    """

    max_receive_count: int = 0
    queue: str = ""
    depth: int = -1

    def describe(self) -> str:
        """One line about the dead-letter queue."""
        if not self.max_receive_count:
            return ("the queue has no redrive policy: a message that cannot be used comes "
                    "back every run; give the queue a dead-letter queue")
        held = f", which holds {self.depth} message(s)" if self.depth >= 0 else ""
        return (f"after {self.max_receive_count} receive(s) SQS moves a message to the "
                f"dead-letter queue {self.queue}{held}")


def dead_letter(sqs: Any, url: str) -> DeadLetter:
    """The redrive policy of the queue at ``url``, and how full its dead-letter queue is."""
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])
    raw = attributes.get("Attributes", {}).get("RedrivePolicy")
    if not raw:
        return DeadLetter()
    policy = json.loads(raw)
    arn = str(policy.get("deadLetterTargetArn", ""))
    name = arn.rsplit(":", 1)[-1]
    count = int(policy.get("maxReceiveCount", 0))
    try:
        parts = arn.split(":")
        dlq = sqs.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=parts[4])["QueueUrl"]
        depth = approximate_count(sqs, dlq)
    except Exception as err:  # no permission on the DLQ: say what we know
        log.warning("cannot read the dead-letter queue %s: %s", arn, describe_error(err))
        depth = -1
    return DeadLetter(count, name, depth)
