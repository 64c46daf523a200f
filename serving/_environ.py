"""A model's container environment, put into this process while its handlers run in it.

``smserve check`` and ``smserve replay`` run a model's handlers in-process;
the model's own code (and :func:`serving.s3refs.runtime`) reads the process
environment, as it would inside its container. This is the one place the
toolkit writes ``os.environ``; it reads settings only through
:class:`~serving.settings.Settings`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping


@contextlib.contextmanager
def model_environment(changes: Mapping[str, str | None]) -> Iterator[None]:
    """Set (or, for None, unset) variables for the duration, then restore them.

    The model's S3 client is rebuilt on entry and on exit, so it sees the
    environment it runs in.
    """
    from serving import s3refs

    saved = {key: os.environ.get(key) for key in changes}
    for key, value in changes.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    s3refs.reset_runtime()
    try:
        yield
    finally:
        s3refs.reset_runtime()
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
