"""ARNs, list pages and the models store of the embedded SageMaker API."""

from __future__ import annotations

import itertools

import pytest

from serving.local.sagemaker.apierrors import ValidationException
from serving.local.sagemaker.models import ModelStore
from serving.local.sagemaker.resources import arn, page


def test_arns_are_lower_case_like_the_service() -> None:
    assert arn("eu-west-1", "123456789012", "transform-job", "My-Job") == \
        "arn:aws:sagemaker:eu-west-1:123456789012:transform-job/my-job"


def test_pages_follow_next_tokens_to_the_end() -> None:
    items = list(range(25))
    seen, token, pages = [], None, 0
    while True:
        chunk, token = page(items, {"MaxResults": 10, "NextToken": token})
        seen += chunk
        pages += 1
        if token is None:
            break
    assert (seen, pages) == (items, 3)
    with pytest.raises(ValidationException, match="pagination token"):
        page(items, {"NextToken": "garbage!"})


def test_models_store_create_list_sort_delete() -> None:
    ticks = itertools.count(100)
    store = ModelStore("us-east-1", "123456789012", clock=lambda: float(next(ticks)))
    for name in ("b-model", "a-model", "c-model"):
        store.create({"ModelName": name, "PrimaryContainer": {"Image": "img"}})
    listed = store.list({})
    assert [m["ModelName"] for m in listed["Models"]] == ["c-model", "a-model", "b-model"]
    by_name = store.list({"SortBy": "Name", "SortOrder": "Ascending", "NameContains": "MODEL"})
    assert [m["ModelName"] for m in by_name["Models"]] == ["a-model", "b-model", "c-model"]
    window = store.list({"CreationTimeAfter": 100.5, "CreationTimeBefore": 102.5})
    assert [m["ModelName"] for m in window["Models"]] == ["c-model", "a-model"]
    with pytest.raises(ValidationException, match="already existing model"):
        store.create({"ModelName": "A-MODEL", "PrimaryContainer": {"Image": "img"}})
    with pytest.raises(ValidationException, match="PrimaryContainer or Containers"):
        store.create({"ModelName": "empty"})
    store.delete({"ModelName": "a-model"})
    with pytest.raises(ValidationException, match="Could not find model"):
        store.describe({"ModelName": "a-model"})
