"""The model graph: which model runs after which, read from each ``model.toml``.

``depends_on`` in the model specs is the one source of truth for the order in
which models run, both in the local pipeline and in the Airflow DAG::

    graph = Graph(discover(Path("models")))
    graph.order()     # ["frame_features", "scene_classifier"]
    graph.levels()    # [["frame_features"], ["scene_classifier"]]
    graph.build_requests("scene_classifier", "my-bucket", ["clips/a.npy"])

Output keys are a pure function of the model and the pipeline's input key
(:func:`output_key`), so a rerun computes the same keys, finds finished work
and skips it.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePosixPath

from serving.errors import BadRequest, ConfigError, ModelSpecError
from serving.modelspec import PIPELINE_INPUT, ModelSpec
from serving.s3refs import RequestRecord

#: Where outputs go by default: ``results/<model>/<input key>``.
DEFAULT_PREFIX = "results/"


def output_key(model: str, input_key: str, prefix: str = DEFAULT_PREFIX,
               suffix: str = "") -> str:
    """The key ``model``'s output for ``input_key`` is written to.

    ``prefix + model + "/" + input_key``, with the input key's extension (the
    part of its last segment from the last ".") replaced by ``suffix``. A
    pure function: the same arguments always give the same key.

    Args:
        model: the model's name.
        input_key: the pipeline's input object key, relative to its bucket.
        prefix: where outputs go; a "/" is added when missing ("" = bucket root).
        suffix: the output's extension, like ".npy"; "" drops the extension.

    Raises:
        BadRequest: ``input_key`` is empty, absolute, names a folder or has a
            "." or ".." segment.

    >>> output_key("frame_features", "clips/a.npy", suffix=".npy")
    'results/frame_features/clips/a.npy'
    """
    parts = input_key.split("/")
    if not input_key or input_key.startswith("/") or "" in parts or \
            any(p in {".", ".."} for p in parts):
        raise BadRequest(f"input key {input_key!r} cannot be turned into an output key; "
                         "use a relative object key without '.', '..' or empty segments",
                         key=input_key)
    path = PurePosixPath(input_key)
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    parent = "/".join(parts[:-1])
    name = stem + suffix
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return f"{prefix}{model}/{parent + '/' if parent else ''}{name}"


def build_requests(spec: ModelSpec, bucket: str, input_keys: Sequence[str], *,
                   specs: Mapping[str, ModelSpec], prefix: str = DEFAULT_PREFIX,
                   overwrite: bool = False) -> list[RequestRecord]:
    """One S3-reference request per input key for ``spec``'s model.

    Each of the model's inputs becomes a key: ``"$input"`` is the input key
    itself; a model name is that model's output for the same input key,
    :func:`output_key` with that model's ``output_suffix``. Repeated input
    keys give one record.

    Args:
        spec: the model to build requests for.
        bucket: the bucket holding the inputs and receiving the outputs.
        input_keys: the pipeline's input object keys.
        specs: specs of (at least) the models ``spec`` reads from, for their
            output suffixes.
        prefix: where outputs go (see :func:`output_key`).
        overwrite: set ``overwrite`` on every record.

    Raises:
        ModelSpecError: an upstream model of ``spec`` is not in ``specs``.
        BadRequest: an input key cannot be turned into an output key.
    """
    suffixes: dict[str, str] = {}
    for source in spec.upstream_inputs.values():
        upstream = specs.get(source)
        if upstream is None:
            raise ModelSpecError(f"{spec.path}: input from {source!r}, but no spec for that "
                                 "model was given; discover the whole models/ folder",
                                 path=str(spec.path))
        suffixes[source] = upstream.output_suffix
    records: list[RequestRecord] = []
    for key in dict.fromkeys(input_keys):
        inputs = {
            name: key if source == PIPELINE_INPUT
            else output_key(source, key, prefix, suffixes[source])
            for name, source in spec.inputs.items()
        }
        records.append(RequestRecord(
            bucket=bucket,
            inputs=inputs,
            output_path=output_key(spec.name, key, prefix, spec.output_suffix),
            overwrite=overwrite,
        ))
    return records


class Graph:
    """The models and their dependencies, checked: no unknown names, no cycles.

    Args:
        specs: model name -> spec (as from :func:`serving.modelspec.discover`).
        done: names of models outside this graph whose outputs are expected
            to exist already; a dependency on one of them is not an error,
            and not an edge. :meth:`subgraph` fills this in.
        context: specs of models outside this graph, used only for their
            output suffixes in :meth:`build_requests`.

    Raises:
        ModelSpecError: a spec depends on a model that does not exist (the
            message names the ``model.toml``), or the dependencies form a
            cycle (the message shows it and names the files).
    """

    def __init__(self, specs: Mapping[str, ModelSpec], *, done: Iterable[str] = (),
                 context: Mapping[str, ModelSpec] | None = None) -> None:
        self._specs = dict(sorted(specs.items()))
        self._done = frozenset(done) - set(self._specs)
        self._context = {**(context or {}), **self._specs}
        for name, spec in self._specs.items():
            if spec.name != name:
                raise ModelSpecError(f"{spec.path}: spec for {spec.name!r} registered as "
                                     f"{name!r}; key the mapping by spec.name",
                                     path=str(spec.path))
        self._deps: dict[str, tuple[str, ...]] = {}
        for name, spec in self._specs.items():
            unknown = [d for d in spec.depends_on if d not in self._specs and d not in self._done]
            if unknown:
                known = ", ".join(self._specs) or "none"
                raise ModelSpecError(
                    f"{spec.path}: depends_on names {', '.join(map(repr, unknown))}, which is "
                    f"not a model folder (models: {known}); fix the name or add the model",
                    path=str(spec.path), key="depends_on",
                )
            self._deps[name] = tuple(sorted(d for d in spec.depends_on if d in self._specs))
        self._users: dict[str, tuple[str, ...]] = {
            name: tuple(sorted(n for n, deps in self._deps.items() if name in deps))
            for name in self._specs
        }
        self._order = self._topological()

    # --- reading ------------------------------------------------------------

    @property
    def specs(self) -> dict[str, ModelSpec]:
        """The models in this graph, by name (sorted)."""
        return dict(self._specs)

    @property
    def done(self) -> frozenset[str]:
        """Models outside this graph whose outputs are expected to exist."""
        return self._done

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __len__(self) -> int:
        return len(self._specs)

    def __getitem__(self, name: str) -> ModelSpec:
        return self._spec(name)

    def dependencies(self, name: str) -> tuple[str, ...]:
        """The models ``name`` depends on directly, inside this graph (sorted)."""
        self._spec(name)
        return self._deps[name]

    def order(self) -> list[str]:
        """Every model, each after all it depends on; ties broken by name."""
        return list(self._order)

    def levels(self) -> list[list[str]]:
        """Groups that can run in parallel, in order.

        A model's level is one more than its deepest dependency's, so every
        model runs as early as its dependencies allow. Each group is sorted.
        """
        depth: dict[str, int] = {}
        for name in self._order:
            depth[name] = 1 + max((depth[d] for d in self._deps[name]), default=-1)
        groups: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
        for name in self._order:
            groups[depth[name]].append(name)
        return [sorted(g) for g in groups]

    def upstream(self, name: str) -> list[str]:
        """Every model ``name`` depends on, directly or not, in :meth:`order`."""
        self._spec(name)
        return self._closure(name, self._deps)

    def downstream(self, name: str) -> list[str]:
        """Every model that depends on ``name``, directly or not, in :meth:`order`."""
        self._spec(name)
        return self._closure(name, self._users)

    def subgraph(self, names: Iterable[str]) -> Graph:
        """A graph of only ``names`` (as for ``--models``).

        Upstream models left out are not added: their outputs are expected
        to exist already (they go to :attr:`done`).

        Raises:
            ConfigError: a name is not a model in this graph.
        """
        wanted = list(dict.fromkeys(names))
        unknown = [n for n in wanted if n not in self._specs]
        if unknown:
            raise ConfigError(f"unknown model(s) {', '.join(map(repr, unknown))}; the models "
                              f"are {', '.join(self._specs) or 'none'}")
        left_out = {d for n in wanted for d in self._specs[n].depends_on if d not in wanted}
        return Graph({n: self._specs[n] for n in wanted}, done=left_out | self._done,
                     context=self._context)

    def build_requests(self, name: str, bucket: str, input_keys: Sequence[str],
                       prefix: str = DEFAULT_PREFIX,
                       overwrite: bool = False) -> list[RequestRecord]:
        """Requests for model ``name``; see the module-level :func:`build_requests`.

        Upstream output keys use the upstream specs this graph knows, including
        those a :meth:`subgraph` left out.
        """
        return build_requests(self._spec(name), bucket, input_keys, specs=self._context,
                              prefix=prefix, overwrite=overwrite)

    # --- internals ----------------------------------------------------------

    def _spec(self, name: str) -> ModelSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise ConfigError(f"unknown model {name!r}; the models are "
                              f"{', '.join(self._specs) or 'none'}") from None

    def _closure(self, name: str, edges: Mapping[str, tuple[str, ...]]) -> list[str]:
        seen: set[str] = set()
        stack = list(edges[name])
        while stack:
            n = stack.pop()
            if n not in seen:
                seen.add(n)
                stack.extend(edges[n])
        return [n for n in self._order if n in seen]

    def _topological(self) -> list[str]:
        waiting = {name: len(deps) for name, deps in self._deps.items()}
        ready = [name for name, count in waiting.items() if count == 0]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            name = heapq.heappop(ready)
            order.append(name)
            for user in self._users[name]:
                waiting[user] -= 1
                if waiting[user] == 0:
                    heapq.heappush(ready, user)
        if len(order) != len(self._specs):
            cycle = self._find_cycle({n for n, c in waiting.items() if c > 0})
            files = ", ".join(str(self._specs[n].path) for n in cycle[:-1])
            raise ModelSpecError(
                f"depends_on forms a cycle: {' -> '.join(cycle)} (each depends on the next); "
                f"remove one of these "
                f"dependencies in {files}",
                path=str(self._specs[cycle[0]].path), key="depends_on",
            )
        return order

    def _find_cycle(self, stuck: set[str]) -> list[str]:
        """A cycle among ``stuck`` (models Kahn's algorithm never freed), closed."""
        # Every stuck model has a stuck dependency, so walking dependencies
        # from any of them must come back to a model already on the path.
        start = min(stuck)
        path = [start]
        index = {start: 0}
        while True:
            nxt = min(d for d in self._deps[path[-1]] if d in stuck)
            if nxt in index:
                return [*path[index[nxt]:], nxt]
            index[nxt] = len(path)
            path.append(nxt)
