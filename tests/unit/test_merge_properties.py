"""Property tests of the update-merge rules (U1, U3, U4, U6, D4) over generated updates."""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from dockyard.domain.merge import merge_environment
from tests.unit.test_merge import STORED_ENV

keys = st.from_regex(r"[A-Z][A-Z0-9_]{0,8}[A-Z0-9]", fullmatch=True)
env_maps = st.dictionaries(keys, st.text(max_size=8), max_size=4)
arg_lists = st.lists(st.text(min_size=1, max_size=8), max_size=4)
updates = st.fixed_dictionaries(
    {},
    optional={
        "serverPort": st.none() | st.integers(1024, 65535),
        "healthCheckPort": st.none() | st.integers(1024, 65535),
        "environmentVariables": st.none() | env_maps,
        "cmd": st.none() | arg_lists,
        "entrypoint": st.none() | arg_lists,
        "imageDigest": st.none() | st.just("sha256:" + "b" * 64),
    },
)


@settings(max_examples=300, deadline=None)
@given(updates)
def test_present_non_null_fields_replace_and_everything_else_stays(update: dict) -> None:
    before = copy.deepcopy(STORED_ENV)
    merged = merge_environment(STORED_ENV, update)
    assert STORED_ENV == before  # the stored value is never modified in place
    for field, value in update.items():
        if value is None:
            assert merged.get(field) == STORED_ENV.get(field)  # U4: null never clears
        else:
            assert merged[field] == value  # U1/U6: replaced whole
    for field in set(STORED_ENV) - set(update):
        assert merged[field] == STORED_ENV[field]  # U7: absent fields are kept
    assert merged["image"] and merged["imageDigest"]  # D4: never cleared
    assert merged["environmentConfigurationType"] == "OCIR_CONTAINER"


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(["serverPort", "cmd", "entrypoint", "environmentVariables", "image"]), st.none(), max_size=5))
def test_an_update_of_nulls_changes_nothing(update: dict) -> None:
    assert merge_environment(STORED_ENV, update) == STORED_ENV
