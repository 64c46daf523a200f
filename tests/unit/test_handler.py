"""Tests for serving.handler: loading a model's handler module, checking it, driving it."""

from __future__ import annotations

import io
import json
import sys
import textwrap
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import serving
from serving import handler
from serving.errors import (
    BadRequest,
    HandlerError,
    InvalidInput,
    ModelLoadError,
    PredictionError,
    SmserveError,
)
from serving.handler import Handlers, Response, check_module, load_handlers
from tests.helpers import handler_imports_undone

GOOD = """
    import numpy as np

    def model_fn(model_dir):
        return {"scale": 2, "dir": model_dir}

    def predict_fn(data, model):
        return np.asarray(data) * model["scale"]
"""

MakeModel = Callable[..., Path]


@pytest.fixture(autouse=True)
def _isolated_imports() -> Iterator[None]:
    """Undo what load_handlers does to sys.path and sys.modules."""
    with handler_imports_undone():
        yield


@pytest.fixture()
def make_model(tmp_path: Path) -> MakeModel:
    """Write a model folder: ``make_model("name", serving=..., model=...)``."""

    def make(name: str = "m", **files: str) -> Path:
        folder = tmp_path / name
        folder.mkdir(parents=True, exist_ok=True)
        for stem, text in files.items():
            (folder / f"{stem}.py").write_text(src(text))
        return folder

    return make


def src(*parts: str) -> str:
    """Dedent each part of a module's source and join them."""
    return "\n".join(textwrap.dedent(part).strip("\n") + "\n" for part in parts)


def npy(arr: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, arr)
    return out.getvalue()


# --- loading -----------------------------------------------------------------


def test_good_module_runs_with_default_input_and_output(make_model: MakeModel) -> None:
    folder = make_model(serving=GOOD)
    handlers = load_handlers(folder)
    assert isinstance(handlers, Handlers)
    assert handlers.source == str(folder.resolve() / "serving.py")
    model = handlers.load_model(folder)
    assert model == {"scale": 2, "dir": str(folder)}

    response = handlers.invoke(model, b"[1, 2, 3]", "application/json", "application/json")
    assert response == Response(b"[2, 4, 6]", "application/json")

    response = handlers.invoke(model, npy(np.arange(4).reshape(2, 2)),
                               "application/x-npy; charset=binary", "text/csv")
    assert response == Response(b"0,2\n4,6\n", "text/csv")


@pytest.mark.parametrize("accept", ["*/*", ""])
def test_default_output_fn_with_a_wildcard_accept_sends_json(make_model: MakeModel,
                                                              accept: str) -> None:
    handlers = load_handlers(make_model(serving=GOOD))
    response = handlers.invoke(handlers.load_model("/x"), b"[1]", "application/json", accept)
    assert response == Response(b"[2]", "application/json")


def test_path_forms(make_model: MakeModel, tmp_path: Path) -> None:
    folder = make_model(serving=GOOD)
    assert load_handlers(folder / "serving.py").source.endswith("serving.py")
    model_dir = tmp_path / "opt" / "model"
    make_model("opt/model/code", serving=GOOD)
    assert load_handlers(model_dir).source == str(model_dir.resolve() / "code" / "serving.py")
    make_model("custom", inference=GOOD)
    assert load_handlers(tmp_path / "custom", program="inference.py").source.endswith(
        "inference.py")


def test_missing_entry_file_names_it(make_model: MakeModel) -> None:
    folder = make_model(model="x = 1")
    with pytest.raises(HandlerError) as info:
        load_handlers(folder)
    assert "no serving.py" in info.value.message
    assert str(folder.resolve()) in info.value.message
    assert info.value.status == 500


def test_missing_model_fn(make_model: MakeModel) -> None:
    with pytest.raises(HandlerError) as info:
        load_handlers(make_model(serving="def predict_fn(data, model):\n    return data\n"))
    assert "no model_fn" in info.value.message
    assert "model_fn(model_dir)" in info.value.message
    assert "serving.py" in info.value.message


def test_missing_predict_fn(make_model: MakeModel) -> None:
    with pytest.raises(HandlerError) as info:
        load_handlers(make_model(serving="def model_fn(model_dir):\n    return 1\n"))
    assert "no predict_fn" in info.value.message
    assert "predict_fn(data, model)" in info.value.message


@pytest.mark.parametrize(
    ("source", "name", "form"),
    [
        ("def model_fn():\n    pass\n", "model_fn", "model_fn(model_dir)"),
        ("def predict_fn(data):\n    pass\n", "predict_fn", "predict_fn(data, model)"),
        ("def input_fn(body, content_type, extra):\n    pass\n", "input_fn",
         "input_fn(body, content_type)"),
        ("def output_fn(prediction):\n    pass\n", "output_fn", "output_fn(prediction, accept)"),
    ],
)
def test_wrong_signature_names_the_function_and_the_contract(
    make_model: MakeModel, source: str, name: str, form: str
) -> None:
    base = {
        "model_fn": "def model_fn(model_dir):\n    return 1\n",
        "predict_fn": "def predict_fn(data, model):\n    return data\n",
    }
    base[name] = source
    with pytest.raises(HandlerError) as info:
        load_handlers(make_model(serving="\n".join(base.values())))
    assert name in info.value.message
    assert form in info.value.message
    assert "does not match" in info.value.message


def test_optional_extra_parameters_are_fine(make_model: MakeModel) -> None:
    handlers = load_handlers(make_model(serving="""
        def model_fn(model_dir, context=None):
            return 1

        def predict_fn(data, model, *args, **kwargs):
            return data
    """))
    assert handlers.predict_fn is not None


def test_handler_that_is_not_a_function(make_model: MakeModel) -> None:
    with pytest.raises(HandlerError, match="predict_fn is a int, not a function"):
        load_handlers(make_model(serving="def model_fn(d):\n    return 1\npredict_fn = 3\n"))


def test_syntax_error_names_file_and_line(make_model: MakeModel) -> None:
    folder = make_model(serving="def model_fn(model_dir):\n    return 1\n\ndef predict_fn(:\n")
    with pytest.raises(HandlerError) as info:
        load_handlers(folder)
    assert str(folder.resolve() / "serving.py") in info.value.message
    assert "line 4" in info.value.message
    assert isinstance(info.value.__cause__, SyntaxError)


def test_syntax_error_in_a_sibling_module_names_that_file(make_model: MakeModel) -> None:
    folder = make_model(serving=src("import model", GOOD), model="x = 1\ny = (\n")
    with pytest.raises(HandlerError) as info:
        load_handlers(folder)
    assert "model.py, line 2" in info.value.message


def test_import_error_names_the_missing_module(make_model: MakeModel) -> None:
    with pytest.raises(HandlerError) as info:
        load_handlers(make_model(serving=src("import smserve_no_such_module", GOOD)))
    assert "'smserve_no_such_module'" in info.value.message
    assert "dependencies" in info.value.message
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


def test_module_raising_at_import_names_the_error_and_its_line(make_model: MakeModel) -> None:
    folder = make_model(serving=src("""
        import json

        CONFIG = json.loads("{")
    """, GOOD))
    with pytest.raises(HandlerError) as info:
        load_handlers(folder)
    message = info.value.message
    assert "JSONDecodeError" in message
    assert "at import (serving.py, line 3)" in message
    assert "module-level code must not fail" in message
    assert isinstance(info.value.__cause__, json.JSONDecodeError)


def test_failed_import_leaves_no_half_module_behind(make_model: MakeModel) -> None:
    before = set(sys.modules)
    with pytest.raises(HandlerError):
        load_handlers(make_model(serving='raise RuntimeError("boom")\n'))
    assert not [name for name in set(sys.modules) - before if name.startswith("_smserve")]


def test_transform_fn_mixed_with_predict_fn(make_model: MakeModel) -> None:
    folder = make_model(serving=src(GOOD, """
        def transform_fn(model, body, content_type, accept):
            return body
    """))
    with pytest.raises(HandlerError) as info:
        load_handlers(folder)
    assert "transform_fn" in info.value.message
    assert "predict_fn" in info.value.message
    assert "one or the other" in info.value.message


def test_transform_fn_alone(make_model: MakeModel) -> None:
    handlers = load_handlers(make_model(serving="""
        def model_fn(model_dir):
            return "m"

        def transform_fn(model, body, content_type, accept):
            return body.upper(), "text/plain"
    """))
    assert handlers.predict_fn is None
    response = handlers.invoke(handlers.load_model("/x"), b"abc", "text/plain", "text/csv")
    assert response == Response(b"ABC", "text/plain")


def test_module_with_a_dataclass_loads(make_model: MakeModel) -> None:
    handlers = load_handlers(make_model(serving="""
        from __future__ import annotations

        from dataclasses import dataclass

        @dataclass
        class Net:
            scale: int = 3

        def model_fn(model_dir):
            return Net()

        def predict_fn(data, model):
            return [x * model.scale for x in data]
    """))
    response = handlers.invoke(handlers.load_model("/x"), b"[1]", "application/json",
                               "application/json")
    assert response.body == b"[3]"


def test_check_module_on_an_in_memory_module() -> None:
    module = types.ModuleType("inline")
    module.model_fn = lambda model_dir: 1  # type: ignore[attr-defined]
    module.predict_fn = lambda data, model: data  # type: ignore[attr-defined]
    handlers = check_module(module, "inline.py")
    assert handlers.source == "inline.py"
    assert handlers.input_fn is handler.default_input_fn
    assert handlers.output_fn is handler.default_output_fn


# --- running -------------------------------------------------------------------


def test_model_fn_raising_is_a_model_load_error(make_model: MakeModel) -> None:
    handlers = load_handlers(make_model(serving="""
        def model_fn(model_dir):
            raise FileNotFoundError("weights.npz")

        def predict_fn(data, model):
            return data
    """))
    with pytest.raises(ModelLoadError) as info:
        handlers.load_model("/opt/ml/model")
    assert isinstance(info.value.__cause__, FileNotFoundError)
    assert "model_fn" in info.value.message
    assert "FileNotFoundError: weights.npz" in info.value.message
    assert info.value.context["model_dir"] == "/opt/ml/model"
    assert info.value.status == 500


def test_output_fn_returning_a_dict_names_output_fn(make_model: MakeModel) -> None:
    handlers = load_handlers(make_model(serving=src(GOOD, """
        def output_fn(prediction, accept):
            return {"prediction": prediction.tolist()}
    """)))
    with pytest.raises(PredictionError) as info:
        handlers.invoke(handlers.load_model("/x"), b"[1]", "application/json",
                        "application/json")
    assert "output_fn" in info.value.message
    assert "returned dict" in info.value.message
    assert "serving.codecs.encode" in info.value.message
    assert info.value.status == 500


def test_output_fn_may_return_str_bytes_or_a_pair(make_model: MakeModel) -> None:
    handlers = load_handlers(make_model(serving=src(GOOD, """
        import json

        def output_fn(prediction, accept):
            if accept == "text/plain":
                return "plain"
            if accept == "application/x-custom":
                return b"raw", "application/x-custom"
            return bytearray(json.dumps(prediction.tolist()).encode())
    """)))
    model = handlers.load_model("/x")
    call = handlers.invoke
    assert call(model, b"[1]", "application/json", "text/plain") == Response(b"plain",
                                                                            "text/plain")
    assert call(model, b"[1]", "application/json", "application/x-custom") == Response(
        b"raw", "application/x-custom")
    assert call(model, b"[1]", "application/json", "Application/JSON; q=1") == Response(
        b"[2]", "application/json")
    assert call(model, b"[1]", "application/json", "*/*").content_type == (
        "application/octet-stream")


def test_predict_fn_raising_is_a_prediction_error_with_the_cause(make_model: MakeModel) -> None:
    handlers = load_handlers(make_model(serving="""
        def model_fn(model_dir):
            return None

        def predict_fn(data, model):
            raise ZeroDivisionError("division by zero")
    """))
    with pytest.raises(PredictionError) as info:
        handlers.invoke(None, b"[1]", "application/json", "application/json")
    assert "predict_fn" in info.value.message
    assert "ZeroDivisionError" in info.value.message
    assert info.value.context["handler"] == "predict_fn"
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_smserve_error_from_a_handler_passes_through_unchanged(make_model: MakeModel) -> None:
    handlers = load_handlers(make_model(serving="""
        from serving.errors import InvalidInput

        ERROR = InvalidInput("expected shape (N, 3)")

        def model_fn(model_dir):
            return None

        def predict_fn(data, model):
            raise ERROR
    """))
    with pytest.raises(InvalidInput) as info:
        handlers.invoke(None, b"[1]", "application/json", "application/json")
    assert info.value is handlers.module.ERROR
    assert info.value.status == 422


def test_bad_body_with_the_default_input_fn_is_a_bad_request(make_model: MakeModel) -> None:
    handlers = load_handlers(make_model(serving=GOOD))
    with pytest.raises(BadRequest) as info:
        handlers.invoke(None, b"{not json", "application/json", "application/json")
    assert info.value.status == 400
    assert not isinstance(info.value, PredictionError)
    with pytest.raises(SmserveError) as unsupported:
        handlers.invoke(None, b"x", "text/plain", "application/json")
    assert unsupported.value.status == 415


# --- several model folders in one process --------------------------------------


SIBLING = """
    import model

    def model_fn(model_dir):
        return model.NAME

    def predict_fn(data, name):
        return name
"""


def test_two_folders_each_get_their_own_model_module(make_model: MakeModel) -> None:
    first = load_handlers(make_model("a", serving=SIBLING, model='NAME = "a"\n'))
    second = load_handlers(make_model("b", serving=SIBLING, model='NAME = "b"\n'))
    assert first.load_model("/x") == "a"
    assert second.load_model("/x") == "b"
    assert sys.modules["model"].NAME == "b"
    again = load_handlers(make_model("a"))
    assert again.load_model("/x") == "a"


def test_a_model_module_imported_from_elsewhere_does_not_shadow_the_folders(
        make_model: MakeModel, tmp_path: Path) -> None:
    # Something else in the process (a test, a notebook, the current directory) has a
    # `model` of its own: the model folder's model.py still wins for its handlers.
    stranger = make_model("elsewhere", model='NAME = "stranger"\n')
    sys.path.insert(0, str(stranger))
    sys.modules.pop("model", None)  # (the fixture puts back whatever was there)
    import model  # type: ignore[import-not-found]

    assert model.NAME == "stranger"
    loaded = load_handlers(make_model("a", serving=SIBLING, model='NAME = "a"\n'))
    assert loaded.load_model("/x") == "a"
    assert sys.modules["json"].__name__ == "json"  # the standard library stays


def test_sibling_packages_and_their_submodules_are_not_shared(make_model: MakeModel,
                                                              tmp_path: Path) -> None:
    source = """
        from nets import layers

        def model_fn(model_dir):
            return layers.NAME

        def predict_fn(data, name):
            return name
    """
    for name in ("a", "b"):
        make_model(f"{name}/nets", __init__="", layers=f'NAME = "{name}"\n')
    first = load_handlers(make_model("a", serving=source))
    second = load_handlers(make_model("b", serving=source))
    assert (first.load_model("/x"), second.load_model("/x")) == ("a", "b")


def test_loading_serving_py_keeps_the_serving_package(make_model: MakeModel) -> None:
    package = sys.modules["serving"]
    load_handlers(make_model("a", serving=src("from serving import codecs", SIBLING),
                             model='NAME = "a"\n'))
    load_handlers(make_model("b", serving=src("import serving.errors", SIBLING),
                             model='NAME = "b"\n'))
    assert sys.modules["serving"] is package is serving
    assert hasattr(sys.modules["serving"], "__path__")


def test_files_named_like_installed_modules_do_not_evict_them(make_model: MakeModel) -> None:
    stdlib_json = sys.modules["json"]
    load_handlers(make_model("a", serving=GOOD, json="X = 1\n"))
    load_handlers(make_model("b", serving=GOOD, json="X = 2\n"))
    assert sys.modules["json"] is stdlib_json
