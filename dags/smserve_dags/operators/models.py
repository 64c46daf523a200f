"""The model graph the inference DAG is built from: ``models/*/model.toml`` and ``depends_on``.

The same :class:`serving.pipeline.Graph` the local pipeline run uses, so the
two cannot drift. Reading the model specs is the one thing a DAG file does
when it is parsed: a few small local files, no network, no database.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from serving.pipeline import Graph

#: ``dags/`` sits next to ``models/`` in the repository (and in the Airflow image).
DEFAULT_MODELS_DIR = Path(__file__).resolve().parents[3] / "models"
#: Set it to read the models from elsewhere (a deployment that moves ``dags/``).
MODELS_DIR_VARIABLE = "SMSERVE_MODELS_DIR"


def models_dir() -> Path:
    """Where the model folders are (``$SMSERVE_MODELS_DIR``, else ``models/`` next to ``dags/``)."""
    return Path(os.environ.get(MODELS_DIR_VARIABLE) or DEFAULT_MODELS_DIR)


@lru_cache(maxsize=4)
def _graph(root: str) -> Graph:
    from serving.modelspec import discover
    from serving.pipeline import Graph

    return Graph(discover(root))


def model_graph() -> Graph:
    """The checked model graph (cached per folder).

    Raises:
        ModelSpecError: a bad ``model.toml`` or a cycle; the message names the file.
    """
    return _graph(str(models_dir()))


def dependencies() -> dict[str, list[str]]:
    """Model -> the models it depends on, in run order."""
    graph = model_graph()
    return {name: list(graph.dependencies(name)) for name in graph.order()}
