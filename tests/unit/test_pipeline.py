"""The model graph: order, parallel levels, cycles, unknown names, and request building."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.errors import BadRequest, ConfigError, ModelSpecError
from serving.modelspec import ModelSpec, discover
from serving.pipeline import Graph, build_requests, output_key
from serving.s3refs import RequestRecord

ROOT = Path(__file__).resolve().parents[2]


def spec(name: str, *deps: str, suffix: str = ".out", inputs: dict[str, str] | None = None,
         root: Path = Path("/models")) -> ModelSpec:
    return ModelSpec(
        name=name, folder=root / name, image="cpu", instance_type="ml.m5.large",
        content_type="application/jsonlines", accept="application/jsonlines",
        inputs=inputs if inputs is not None else {"x": "$input", **{d: d for d in deps}},
        depends_on=deps, output_suffix=suffix,
    )


def graph(*specs: ModelSpec) -> Graph:
    return Graph({s.name: s for s in specs})


@pytest.fixture()
def diamond() -> Graph:
    # a -> (b, c) -> d, and an independent branch x -> y
    return graph(spec("d", "b", "c"), spec("c", "a"), spec("b", "a"), spec("a"),
                 spec("y", "x"), spec("x"))


def test_order_is_topological_and_deterministic(diamond: Graph) -> None:
    assert diamond.order() == ["a", "b", "c", "d", "x", "y"]
    shuffled = graph(spec("x"), spec("a"), spec("y", "x"), spec("b", "a"), spec("d", "c", "b"),
                     spec("c", "a"))
    assert shuffled.order() == diamond.order()


def test_levels_group_what_can_run_in_parallel(diamond: Graph) -> None:
    assert diamond.levels() == [["a", "x"], ["b", "c", "y"], ["d"]]


def test_levels_put_a_model_after_its_deepest_dependency() -> None:
    g = graph(spec("a"), spec("b", "a"), spec("c", "a", "b"))
    assert g.levels() == [["a"], ["b"], ["c"]]


def test_empty_graph() -> None:
    g = Graph({})
    assert (g.order(), g.levels(), len(g)) == ([], [], 0)


def test_upstream_and_downstream_are_transitive(diamond: Graph) -> None:
    assert diamond.upstream("d") == ["a", "b", "c"]
    assert diamond.upstream("a") == []
    assert diamond.downstream("a") == ["b", "c", "d"]
    assert diamond.downstream("x") == ["y"]
    assert diamond.dependencies("d") == ("b", "c")
    with pytest.raises(ConfigError, match="unknown model 'zz'"):
        diamond.upstream("zz")


def test_unknown_dependency_names_the_model_toml() -> None:
    with pytest.raises(ModelSpecError) as info:
        graph(spec("a"), spec("b", "nope"))
    assert "/models/b/model.toml" in str(info.value)
    assert "'nope'" in str(info.value)


def test_cycle_is_shown_with_its_files() -> None:
    with pytest.raises(ModelSpecError) as info:
        graph(spec("a", "c"), spec("b", "a"), spec("c", "b"), spec("free"))
    message = str(info.value)
    assert "a -> c -> b -> a" in message
    for name in "abc":
        assert f"/models/{name}/model.toml" in message
    assert "/models/free/" not in message


def test_cycle_behind_an_acyclic_model() -> None:
    with pytest.raises(ModelSpecError, match="b -> c -> b"):
        graph(spec("a", "b"), spec("b", "c"), spec("c", "b"))


def test_subgraph_keeps_only_the_named_models(diamond: Graph) -> None:
    sub = diamond.subgraph(["d", "b"])
    assert sub.order() == ["b", "d"]
    assert sub.levels() == [["b"], ["d"]]
    assert sub.done == frozenset({"a", "c"})
    assert "a" not in sub
    with pytest.raises(ConfigError, match=r"unknown model.*'nope'"):
        diamond.subgraph(["nope"])


def test_output_key_is_a_pure_function() -> None:
    assert output_key("m", "clips/a.npy", suffix=".json") == "results/m/clips/a.json"
    assert output_key("m", "clips/a.npy", suffix=".json") == \
        output_key("m", "clips/a.npy", suffix=".json")
    assert output_key("m", "a.npy", prefix="out", suffix=".npy") == "out/m/a.npy"
    assert output_key("m", "a.npy", prefix="", suffix=".npy") == "m/a.npy"
    assert output_key("m", "v.1/a.tar.gz", suffix=".x") == "results/m/v.1/a.tar.x"
    assert output_key("m", "dir.d/noext", suffix=".x") == "results/m/dir.d/noext.x"
    assert output_key("m", "a.npy") == "results/m/a"


@pytest.mark.parametrize("key", ["", "/abs.npy", "a/../b.npy", "a//b.npy", "dir/", "./a"])
def test_output_key_refuses_keys_that_escape(key: str) -> None:
    with pytest.raises(BadRequest):
        output_key("m", key)


def test_build_requests_for_the_real_models() -> None:
    g = Graph(discover(ROOT / "models"))
    assert g.upstream("scene_classifier") == ["frame_features"]
    keys = ["samples/clips/clip-000.npy", "samples/clips/clip-001.npy",
            "samples/clips/clip-000.npy"]
    ff = g.build_requests("frame_features", "bkt", keys)
    assert ff == [
        RequestRecord("bkt", {"video": "samples/clips/clip-000.npy"},
                      "results/frame_features/samples/clips/clip-000.npy"),
        RequestRecord("bkt", {"video": "samples/clips/clip-001.npy"},
                      "results/frame_features/samples/clips/clip-001.npy"),
    ]
    sc = g.build_requests("scene_classifier", "bkt", keys[:1], overwrite=True)
    assert sc == [RequestRecord(
        "bkt", {"features": "results/frame_features/samples/clips/clip-000.npy"},
        "results/scene_classifier/samples/clips/clip-000.json", overwrite=True)]
    # A downstream input is exactly the upstream's output.
    assert sc[0].inputs["features"] == ff[0].output_path


def test_sample_requests_match_build_requests() -> None:
    import json

    g = Graph(discover(ROOT / "models"))
    for name in ("frame_features", "scene_classifier"):
        sample = json.loads((ROOT / "models" / name / "sample_request.json").read_text())
        built = g.build_requests(name, sample["bucket"], ["samples/clips/clip-000.npy"])
        assert [r.to_dict() for r in built] == [sample]


def test_subgraph_still_knows_upstream_suffixes() -> None:
    g = graph(spec("up", suffix=".npy"), spec("down", "up", suffix=".json",
                                               inputs={"f": "up"}))
    sub = g.subgraph(["down"])
    [record] = sub.build_requests("down", "b", ["k/a.mp4"], prefix="p/")
    assert record.inputs == {"f": "p/up/k/a.npy"}
    assert record.output_path == "p/down/k/a.json"


def test_build_requests_needs_upstream_specs() -> None:
    down = spec("down", "up", inputs={"f": "up"})
    with pytest.raises(ModelSpecError, match="input from 'up'"):
        build_requests(down, "b", ["a.npy"], specs={})
    [record] = build_requests(down, "b", ["a.npy"], specs={"up": spec("up", suffix=".npy")})
    assert record.inputs == {"f": "results/up/a.npy"}
