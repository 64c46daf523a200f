"""``smserve check``: run a model's handlers on its sample request, and say what broke.

The check drives ``model_fn``, ``input_fn``, ``predict_fn`` and ``output_fn``
(or ``transform_fn``) in this process, on the model's sample request, with S3
served by the embedded stack, and measures each handler: time, peak Python
memory (tracemalloc), the change in resident memory and, when the model has
put cupy on a GPU, the GPU memory cupy's pool holds. ``mode="serve"`` sends
the same request through the real model server instead, and
``mode="transform"`` runs it as a local batch transform.

The package: ``checker`` (in-process), ``server`` (``--serve`` and
``--transform``), ``run`` (what both share), ``sample``, ``report``.

Sample data convention (what ``smserve new`` writes)::

    models/NAME/sample_request.json      the request body: S3-reference records,
                                         one JSON object per line (or one object,
                                         or a JSON array of objects)
    models/NAME/sample_data/<key>        uploaded to s3://<bucket>/<key> for each
                                         bucket the request names

So ``sample_data/samples/clips/clip-000.npy`` becomes
``s3://smserve-samples/samples/clips/clip-000.npy`` when the request names the
bucket ``smserve-samples``. A request that is not S3 references (an ``.npy``
body, say) is sent as it is, and no stack is started.
"""

from __future__ import annotations

from serving.check.checker import MODES, check
from serving.check.report import Failure, Report, Stage
from serving.check.sample import (
    SAMPLE_DATA,
    SAMPLE_REQUEST,
    Sample,
    content_type_of,
    load_sample,
    sample_objects,
    stage_sample,
)

__all__ = [
    "MODES",
    "SAMPLE_DATA",
    "SAMPLE_REQUEST",
    "Failure",
    "Report",
    "Sample",
    "Stage",
    "check",
    "content_type_of",
    "load_sample",
    "sample_objects",
    "stage_sample",
]
