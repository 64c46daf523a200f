"""The SageMaker API as a client: models and batch transform jobs through boto3.

One code path creates and adopts models and transform jobs, on AWS and on the
embedded stack (``smserve local up``) alike. The emulated service itself is
``serving.local.sagemaker``; this package is its client and never imports it.
"""

from __future__ import annotations
