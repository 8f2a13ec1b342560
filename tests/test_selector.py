"""Selectors name one stored result: ``plugin.mode[@model][.field...]``."""

from __future__ import annotations

from typing import Any

import pytest

from analyzer.selector import (
    MISSING,
    Resolved,
    Selector,
    SelectorError,
    context_digest,
    render_template,
    template_selectors,
    to_text,
    value_digest,
)


def entry(result: Any, created_at: str = "2026-11-23T10:00:00.000Z") -> dict[str, Any]:
    return {"result": result, "created_at": created_at, "duration_s": 0.1, "parameters": {}}


def value(selector: str, analysis: dict[str, Any], preferred: tuple[str, ...] = ()) -> Any:
    resolved = Selector.parse(selector).resolve(analysis, preferred)
    return MISSING if resolved is None else resolved.value


def model(selector: str, analysis: dict[str, Any], preferred: tuple[str, ...] = ()) -> str | None:
    resolved = Selector.parse(selector).resolve(analysis, preferred)
    return None if resolved is None else resolved.model


METADATA = {
    "prompt": {"sd-parsers": entry("a cat on a sofa")},
    "parameters": {"sd-parsers": entry({"seed": 42, "cfg": 7.5, "loras": [{"name": "x", "weight": 0.8}]})},
}


# -- parsing -----------------------------------------------------------------------------


def test_a_selector_is_plugin_mode_and_an_optional_field_path() -> None:
    selector = Selector.parse("metadata.parameters.loras.0.name")
    assert (selector.plugin, selector.mode, selector.after_at) == ("metadata", "parameters", None)
    assert selector.fields == ("loras", "0", "name")
    assert str(selector) == selector.text == "metadata.parameters.loras.0.name"


def test_after_an_at_sign_the_model_and_fields_are_kept_whole_until_resolved() -> None:
    selector = Selector.parse("clip.best@ViT-L-14/openai+blip-large:32(flavors=32,chunk=1024).0")
    assert (selector.plugin, selector.mode, selector.fields) == ("clip", "best", ())
    assert selector.after_at == "ViT-L-14/openai+blip-large:32(flavors=32,chunk=1024).0"


def test_names_may_hold_digits_underscores_and_dashes() -> None:
    selector = Selector.parse("my-plugin_2.mode_1-x")
    assert (selector.plugin, selector.mode) == ("my-plugin_2", "mode_1-x")


def test_parsing_is_cached_and_selectors_compare_by_value() -> None:
    assert Selector.parse("llm.tags") is Selector.parse("llm.tags")
    assert Selector.parse("llm.tags") == Selector("llm.tags", "llm", "tags")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "it is empty"),
        ("metadata", "the mode is missing"),
        ("metadata.", "the mode is missing"),
        (".prompt", "the plugin name is missing"),
        ("Metadata.prompt", "plugin 'Metadata' may hold only lowercase letters, digits, '_' and '-'"),
        ("metadata.pr ompt", "mode 'pr ompt' may hold only"),
        ("metadata.parameters.", "a field name is empty"),
        ("metadata.parameters..seed", "a field name is empty"),
        ("llm.tags@", "no model after '@'"),
        ("llm.tags@.tags", "no model after '@'"),
        ("llm.tags@openai:gpt-4.1.", "a field name is empty"),
        ("llm.tags.tags@openai", "'@model' must come right after the mode"),
    ],
)
def test_malformed_selectors_say_what_is_wrong_and_show_the_form(text: str, problem: str) -> None:
    with pytest.raises(SelectorError) as caught:
        Selector.parse(text)
    message = str(caught.value)
    assert message.startswith(f"invalid selector {text!r}: {problem}")
    assert "expected plugin.mode[@model][.field...]" in message
    assert isinstance(caught.value, ValueError)


# -- resolving: modes and field paths ----------------------------------------------------


def test_plugin_mode_names_the_whole_result() -> None:
    resolved = Selector.parse("metadata.prompt").resolve(METADATA)
    assert resolved == Resolved("sd-parsers", "a cat on a sofa", METADATA["prompt"]["sd-parsers"])
    assert resolved is not None and resolved.entry is METADATA["prompt"]["sd-parsers"]


def test_field_paths_index_objects_by_key_and_lists_by_position() -> None:
    assert value("metadata.parameters.seed", METADATA) == 42
    assert value("metadata.parameters.loras", METADATA) == [{"name": "x", "weight": 0.8}]
    assert value("metadata.parameters.loras.0.weight", METADATA) == 0.8


@pytest.mark.parametrize(
    "selector",
    [
        "metadata.negative",  # no result for the mode
        "metadata.parameters.steps",  # no such key
        "metadata.parameters.loras.1",  # past the end of the list
        "metadata.parameters.loras.-1",  # indexes are non-negative
        "metadata.parameters.loras.first",  # a list is not indexed by name
        "metadata.parameters.seed.0",  # a number is not a container
        "metadata.prompt.0",  # nor is a string
        "metadata.parameters@pillow",  # no result from that model
    ],
)
def test_a_path_that_leads_nowhere_has_no_value_and_is_not_an_error(selector: str) -> None:
    assert Selector.parse(selector).resolve(METADATA) is None


def test_a_stored_null_is_a_value_unlike_a_missing_one() -> None:
    analysis = {"describe": {"m": entry({"caption": None})}}
    resolved = Selector.parse("llm.describe.caption").resolve(analysis)
    assert resolved is not None and resolved.value is None
    assert value("llm.describe.title", analysis) is MISSING


def test_keys_that_look_like_numbers_are_keys_of_objects() -> None:
    assert value("clip.scores.0", {"scores": {"m": entry({"0": "zero"})}}) == "zero"


# -- resolving: models named after @ -----------------------------------------------------

GPT = "openai:gpt-4.1#abc"
MINI = "openai:gpt-4.1-mini#3fa2c1d0e9ab"
CLIP = "ViT-L-14/openai+blip-large:32(flavors=32,chunk=1024)"
LLM = {
    "tags": {
        GPT: entry({"tags": ["cat", "sofa"]}, "2026-11-20T10:00:00.000Z"),
        MINI: entry({"tags": ["kitten"]}, "2026-11-22T10:00:00.000Z"),
        "anthropic:claude-haiku-4-5#77": entry({"tags": ["feline"]}, "2026-11-21T10:00:00.000Z"),
    }
}


def test_an_exact_model_id_names_that_model() -> None:
    assert value(f"llm.tags@{MINI}", LLM) == {"tags": ["kitten"]}
    assert value(f"llm.tags@{GPT}.tags.1", LLM) == "sofa"


def test_the_start_of_a_model_id_names_it_without_its_long_suffix() -> None:
    assert value("llm.tags@openai:gpt-4.1-mini", LLM) == {"tags": ["kitten"]}
    assert value("llm.tags@anthropic:claude-haiku-4-5.tags", LLM) == ["feline"]
    best = {"best": {CLIP: entry("a photo of a cat")}}
    assert value("clip.best@ViT-L-14/openai", best) == "a photo of a cat"
    assert value("clip.best@ViT-L-14", best) == "a photo of a cat"


def test_a_model_id_with_dots_is_split_from_the_field_path_by_the_stored_ids() -> None:
    # A naive split on dots would read model "openai:gpt-4" and fields "1", "tags".
    assert model("llm.tags@openai:gpt-4.1.tags", LLM) == GPT
    assert value("llm.tags@openai:gpt-4.1.tags", LLM) == ["cat", "sofa"]
    assert value("llm.tags@openai:gpt-4.1", LLM) == {"tags": ["cat", "sofa"]}


def test_a_prefix_does_not_name_a_longer_model_name() -> None:
    # "gpt-4.1" names "gpt-4.1#abc", never "gpt-4.1-mini#..." (nor "gpt-4" the "gpt-4.1" model).
    only_mini = {"tags": {MINI: entry({"tags": ["kitten"]})}}
    assert Selector.parse("llm.tags@openai:gpt-4.1").resolve(only_mini) is None
    assert Selector.parse("llm.tags@openai:gpt-4").resolve(LLM) is None
    assert Selector.parse("llm.tags@openai:gpt").resolve(LLM) is None


def test_the_longest_text_naming_a_stored_model_wins_even_if_its_field_path_leads_nowhere() -> None:
    analysis = {"describe": {"v1": entry({"2": {"y": "v1 field 2.y"}}), "v1.2": entry({"x": "v1.2"})}}
    assert value("llm.describe@v1.2", analysis) == {"x": "v1.2"}
    assert value("llm.describe@v1.2.x", analysis) == "v1.2"
    assert Selector.parse("llm.describe@v1.2.y").resolve(analysis) is None


def test_an_exact_id_beats_ids_that_start_with_it() -> None:
    analysis = {"caption": {"blip:large#2": entry("newer"), "blip:large": entry("exact", "2020-01-01T00:00:00Z")}}
    assert value("clip.caption@blip:large", analysis) == "exact"
    assert value("clip.caption@blip", analysis) == "newer"


# -- which model, when several have a result ---------------------------------------------


def test_the_first_preferred_model_with_a_result_wins() -> None:
    preferred = ("openai:gpt-5#1", "anthropic:claude-haiku-4-5#77", GPT)
    assert model("llm.tags", LLM, preferred) == "anthropic:claude-haiku-4-5#77"


def test_without_a_preferred_model_the_newest_result_wins() -> None:
    assert model("llm.tags", LLM) == MINI
    assert model("llm.tags", LLM, ("openai:gpt-5#1",)) == MINI


def test_created_at_is_compared_as_a_time_and_ties_go_to_the_first_model_id() -> None:
    analysis = {
        "best": {
            "b": entry("b", "2026-11-23T10:00:00.000Z"),
            "c": entry("c", "2026-11-23T11:00:00+01:00"),  # the same instant
            "a": entry("a", "not a time"),
        }
    }
    assert model("clip.best", analysis) == "b"
    del analysis["best"]["b"]
    assert model("clip.best", analysis) == "c"

    # times as the analyzer writes them (compared as text, the fast way): the newest, ties by name
    written = {"z": entry("z", "2026-11-23T10:00:00.001Z"), "y": entry("y", "2026-11-23T10:00:00.000Z")}
    assert model("clip.best", {"best": written}) == "z"
    written["x"] = entry("x", "2026-11-23T10:00:00.001Z")
    assert model("clip.best", {"best": written}) == "x"


def test_preference_and_age_also_choose_among_models_an_at_prefix_names() -> None:
    analysis = {"best": {"m:1#a": entry("a", "2026-01-01T00:00:00Z"), "m:1#b": entry("b", "2025-01-01T00:00:00Z")}}
    assert value("clip.best@m:1", analysis) == "a"
    assert value("clip.best@m:1", analysis, ("m:1#b",)) == "b"
    assert value("clip.best@m:1", analysis, ("other#x", "m:1#a")) == "a"


def test_entries_without_a_result_are_ignored() -> None:
    analysis = {"best": {"new": {"created_at": "2027-01-01T00:00:00Z"}, "old": entry("kept")}}
    assert model("clip.best", analysis) == "old"


# -- text --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("a cat, on a sofa", "a cat, on a sofa"),
        ("", ""),
        (None, ""),
        (MISSING, ""),
        (True, "true"),
        (False, "false"),
        (7, "7"),
        (7.0, "7.0"),
        (7.5, "7.5"),
        (["cat", "", None, 3, ["sofa", "lamp"], False], "cat, 3, sofa, lamp, false"),
        ([], ""),
        ({"z": 1, "a": ["x"], "é": None}, '{"z": 1, "a": ["x"], "é": null}'),
    ],
)
def test_values_become_text(value: Any, text: str) -> None:
    assert to_text(value) == text


# -- digests -----------------------------------------------------------------------------


def test_equal_values_have_equal_digests_whatever_their_key_order() -> None:
    assert value_digest({"a": 1, "b": [1, 2]}) == value_digest({"b": [1, 2], "a": 1})
    assert value_digest("cat") != value_digest("cats")
    assert len(value_digest("cat")) == 16
    assert int(value_digest("cat"), 16) >= 0


def test_missing_null_and_empty_string_all_have_different_digests() -> None:
    assert len({value_digest(MISSING), value_digest(None), value_digest(""), value_digest([])}) == 4


def test_the_context_digest_covers_selectors_and_values_but_not_their_order() -> None:
    context = {"metadata.prompt": "a cat", "clip.best": MISSING}
    assert context_digest(context) == context_digest(dict(reversed(context.items())))
    assert context_digest(context) != context_digest({"metadata.prompt": "a cat", "clip.best": None})
    assert context_digest(context) != context_digest({"metadata.prompt": "a dog", "clip.best": MISSING})
    assert context_digest(context) != context_digest({"metadata.negative": "a cat", "clip.best": MISSING})
    assert context_digest({}) != context_digest({"metadata.prompt": MISSING})


def test_missing_is_a_falsy_singleton_with_a_readable_repr() -> None:
    assert not MISSING
    assert repr(MISSING) == "MISSING"
    assert MISSING is not None


# -- templates ---------------------------------------------------------------------------

TEMPLATE = """Describe {file_name}. Its prompt was: {metadata.prompt}
CLIP saw {clip.best@ViT-L-14/openai}; seed {metadata.parameters.seed}; again {metadata.prompt}.
Answer as JSON: {"tags": ["..."], "rating": {"score": 1}} and keep {braces} and { metadata.prompt }."""


def test_template_selectors_are_found_in_order_once_each() -> None:
    assert [str(s) for s in template_selectors(TEMPLATE)] == [
        "metadata.prompt",
        "clip.best@ViT-L-14/openai",
        "metadata.parameters.seed",
    ]
    assert template_selectors('{"a": 1} {file_name} {Upper.case} {x}') == []


def test_a_malformed_selector_placeholder_is_an_error() -> None:
    with pytest.raises(SelectorError, match="a field name is empty"):
        template_selectors("tags: {llm.tags.}")


def test_render_fills_placeholders_and_leaves_other_braces_alone() -> None:
    values = {"metadata.prompt": "a cat", "clip.best@ViT-L-14/openai": "a {metadata.prompt} photo"}
    assert render_template(TEMPLATE, values, "cat.png") == (
        "Describe cat.png. Its prompt was: a cat\n"
        "CLIP saw a {metadata.prompt} photo; seed ; again a cat.\n"
        'Answer as JSON: {"tags": ["..."], "rating": {"score": 1}} and keep {braces} and { metadata.prompt }.'
    )


def test_render_does_not_fill_placeholders_inside_the_file_name() -> None:
    assert render_template("{file_name}: {metadata.prompt}", {"metadata.prompt": "x"}, "{metadata.prompt}.png") == (
        "{metadata.prompt}.png: x"
    )
