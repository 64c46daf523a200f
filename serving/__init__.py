"""smserve: SageMaker batch-inference models, served and transformed locally.

What a model's handler module may import is small and stable:
:mod:`serving.handler`, :mod:`serving.codecs` and :mod:`serving.s3refs`.
Everything else is the toolkit's machinery.
"""

__version__ = "0.1.0"
