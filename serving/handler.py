"""The handler contract: load a model's handler module, check it, fill in defaults.

A model's ``serving.py`` defines, as SageMaker's inference toolkits expect::

    model_fn(model_dir)                 -> model         (required)
    input_fn(body, content_type)        -> data          (default: serving.codecs.decode)
    predict_fn(data, model)             -> prediction    (required unless transform_fn)
    output_fn(prediction, accept)       -> bytes | str | (bytes, content_type)
                                                         (default: serving.codecs.encode)
    transform_fn(model, body, content_type, accept)      (instead of the three above)

:func:`load_handlers` imports such a module and says exactly what is wrong
with it; :class:`Handlers` drives it in-process, the same way the model
server and ``smserve check`` do. Nothing here knows about servers or AWS.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from serving import codecs
from serving.errors import HandlerError, ModelLoadError, PredictionError, SmserveError

#: name -> (positional arguments SageMaker passes, what they are)
CONTRACT: dict[str, tuple[int, str]] = {
    "model_fn": (1, "model_fn(model_dir)"),
    "input_fn": (2, "input_fn(body, content_type)"),
    "predict_fn": (2, "predict_fn(data, model)"),
    "output_fn": (2, "output_fn(prediction, accept)"),
    "transform_fn": (4, "transform_fn(model, body, content_type, accept)"),
}


@dataclass(frozen=True)
class Response:
    """One answer: the bytes to send and their content type."""

    body: bytes
    content_type: str


def default_input_fn(body: bytes | str, content_type: str) -> Any:
    """Decode ``body`` with :func:`serving.codecs.decode`."""
    return codecs.decode(body, content_type)


def default_output_fn(prediction: Any, accept: str) -> tuple[bytes, str]:
    """Encode ``prediction`` as ``accept`` with :func:`serving.codecs.encode`."""
    return codecs.encode(prediction, accept), codecs.resolve_accept(accept)


@dataclass(frozen=True)
class Handlers:
    """A checked handler module, with defaults filled in."""

    module: ModuleType
    source: str
    model_fn: Callable[..., Any]
    input_fn: Callable[..., Any] = default_input_fn
    predict_fn: Callable[..., Any] | None = None
    output_fn: Callable[..., Any] = default_output_fn
    transform_fn: Callable[..., Any] | None = None

    def load_model(self, model_dir: str | Path) -> Any:
        """Call ``model_fn(model_dir)``.

        Raises:
            ModelLoadError: ``model_fn`` raised; the message names the cause,
                the cause is chained.
        """
        try:
            return self.model_fn(str(model_dir))
        except Exception as err:
            raise ModelLoadError(
                f"model_fn in {self.source} raised {_describe(err)} while loading "
                f"{model_dir}; see the traceback in the log",
                model_dir=str(model_dir),
            ) from err

    def invoke(self, model: Any, body: bytes, content_type: str, accept: str) -> Response:
        """Run one request through the handlers, as the model server does.

        Errors from our tree (a bad request) pass through unchanged; anything
        else a handler raises becomes :class:`PredictionError` naming the
        handler, with the original chained.
        """
        if self.transform_fn is not None:
            result = self._call("transform_fn", self.transform_fn, model, body, content_type,
                                accept)
            return self._response(result, accept, "transform_fn")
        data = self._call("input_fn", self.input_fn, body, content_type)
        assert self.predict_fn is not None
        prediction = self._call("predict_fn", self.predict_fn, data, model)
        result = self._call("output_fn", self.output_fn, prediction, accept)
        return self._response(result, accept, "output_fn")

    def _call(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except SmserveError:
            raise
        except Exception as err:
            # The client sees the handler and the exception's type, not its text
            # (which may hold paths or data); the log has the traceback.
            raise PredictionError(
                f"{name} in {Path(self.source).name} raised {type(err).__name__}; "
                "see the model server's log for the traceback",
                handler=name, detail=_describe(err),
            ) from err

    def _response(self, result: Any, accept: str, name: str) -> Response:
        kind = codecs.normalize(accept)
        content_type = kind if kind and "*" not in kind else "application/octet-stream"
        if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], str):
            result, content_type = result
        if isinstance(result, str):
            return Response(result.encode(), content_type)
        if isinstance(result, bytes | bytearray | memoryview):
            return Response(bytes(result), content_type)
        raise PredictionError(
            f"{name} in {self.source} returned {type(result).__name__}; the server can send "
            "only bytes, str or (bytes, content_type): encode the prediction, e.g. with "
            "serving.codecs.encode(prediction, accept)",
            handler=name,
        )


def _describe(err: BaseException) -> str:
    text = str(err)
    if len(text) > 300:
        text = text[:300] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _check_signature(name: str, fn: Any, source: str) -> None:
    nargs, form = CONTRACT[name]
    if not callable(fn):
        raise HandlerError(f"{source}: {name} is a {type(fn).__name__}, not a function; "
                           f"define it as {form}")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(*([None] * nargs))
    except TypeError:
        raise HandlerError(
            f"{source}: {name}{sig} does not match the contract; SageMaker calls it as {form}"
        ) from None


def check_module(module: ModuleType, source: str | None = None) -> Handlers:
    """Check a handler module against the contract and fill in defaults.

    Raises:
        HandlerError: a function is missing, has the wrong signature, or the
            module mixes ``transform_fn`` with the separate handlers.
    """
    where = source or getattr(module, "__file__", None) or module.__name__
    found = {name: getattr(module, name) for name in CONTRACT if hasattr(module, name)}
    for name, fn in found.items():
        _check_signature(name, fn, where)
    if "model_fn" not in found:
        raise HandlerError(f"{where}: no model_fn; define model_fn(model_dir) that loads "
                           "and returns the model")
    if "transform_fn" in found:
        mixed = sorted(set(found) & {"input_fn", "predict_fn", "output_fn"})
        if mixed:
            raise HandlerError(
                f"{where}: defines transform_fn and {', '.join(mixed)}; SageMaker uses one or "
                "the other: keep transform_fn alone, or drop it and keep the separate handlers"
            )
        return Handlers(module=module, source=where, model_fn=found["model_fn"],
                        transform_fn=found["transform_fn"])
    if "predict_fn" not in found:
        raise HandlerError(f"{where}: no predict_fn; define predict_fn(data, model) that "
                           "returns the prediction (or one transform_fn instead)")
    return Handlers(
        module=module,
        source=where,
        model_fn=found["model_fn"],
        input_fn=found.get("input_fn", default_input_fn),
        predict_fn=found["predict_fn"],
        output_fn=found.get("output_fn", default_output_fn),
    )


def _entry_file(path: Path, program: str) -> Path:
    if path.is_file():
        return path
    for candidate in (path / program, path / "code" / program):
        if candidate.is_file():
            return candidate
    raise HandlerError(
        f"no {program} in {path} or {path / 'code'}; a model folder needs {program} with "
        "model_fn and predict_fn (smserve new NAME writes one)",
        model_dir=str(path),
    )


def _home(module: ModuleType) -> Path | None:
    """The folder a top-level module or package was imported from."""
    file = getattr(module, "__file__", None)
    if not file:
        return None
    path = Path(file).resolve()
    return path.parent.parent if path.stem == "__init__" else path.parent


def _kept_homes() -> set[Path]:
    """Folders whose top-level modules a model's file never evicts.

    The standard library, the installed packages (site-packages) and the
    folder that holds the toolkit's own ``serving`` package.
    """
    import sysconfig

    homes = {Path(__file__).resolve().parents[1]}
    paths = sysconfig.get_paths()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        if paths.get(key):
            homes.add(Path(paths[key]).resolve())
            homes.add(Path(paths[key]).resolve() / "lib-dynload")
    return homes


def _forget_siblings(folder: Path) -> None:
    """Drop cached modules that a file or package in ``folder`` must replace.

    Two model folders both have ``model.py``; without this, the second
    ``import model`` would return the first folder's module (or a ``model``
    that something else imported from elsewhere: a test, the current
    directory). A cached module of the same name is dropped, with its
    submodules, unless it comes from ``folder`` itself, the standard library,
    the installed packages or the toolkit (``serving`` stays whatever the
    model's files are called).
    """
    names = {p.stem for p in folder.glob("*.py")} | {
        p.name for p in folder.iterdir() if (p / "__init__.py").is_file()
    }
    kept = _kept_homes() | {folder}
    for name in names:
        mod = sys.modules.get(name)
        home = None if mod is None else _home(mod)
        if home is None or home in kept:
            continue
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]


def _culprit(err: BaseException, folder: Path) -> traceback.FrameSummary:
    """The innermost frame in the model's own files (else the innermost one)."""
    frames = traceback.extract_tb(err.__traceback__)
    own = [f for f in frames if Path(f.filename).resolve().parent == folder]
    return (own or frames)[-1]


def load_handlers(path: str | Path, program: str = "serving.py") -> Handlers:
    """Import and check a model's handler module.

    Args:
        path: the module file, a model folder (``models/NAME``) or a model
            directory with ``code/`` inside (``/opt/ml/model``).
        program: the entry file name when ``path`` is a folder
            (``SAGEMAKER_PROGRAM``).

    Raises:
        HandlerError: the file is missing, does not import (the message
            names the cause and the line), or breaks the contract.
    """
    entry = _entry_file(Path(path).resolve(), program)
    folder = entry.parent
    if str(folder) in sys.path:
        sys.path.remove(str(folder))
    sys.path.insert(0, str(folder))
    _forget_siblings(folder)
    name = f"_smserve_handler_{abs(hash(str(entry))):x}"
    spec = importlib.util.spec_from_file_location(name, entry)
    if spec is None or spec.loader is None:
        raise HandlerError(f"{entry} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs, as `import` does: dataclasses, pickle and
    # typing look a class's module up in sys.modules while the module runs.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as err:
        sys.modules.pop(name, None)
        if not isinstance(err, Exception):
            raise
        raise _import_error(err, entry) from err
    return check_module(module, str(entry))


def _import_error(err: Exception, entry: Path) -> HandlerError:
    if isinstance(err, SyntaxError):
        where = err.filename or str(entry)
        return HandlerError(f"{where}, line {err.lineno}: syntax error ({err.msg}); fix it and "
                            "try again")
    if isinstance(err, ImportError):
        missing = getattr(err, "name", None) or str(err)
        return HandlerError(f"{entry} could not import {missing!r} ({err}); add it to the model "
                            "folder or to the image's dependencies")
    frame = _culprit(err, entry.parent)
    return HandlerError(f"{entry} raised {_describe(err)} at import ({Path(frame.filename).name}, "
                        f"line {frame.lineno}); module-level code must not fail")
