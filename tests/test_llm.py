"""The llm plugin against loopback servers speaking the OpenAI and Anthropic wire formats."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("openai", reason="the llm extra is not installed")
pytest.importorskip("anthropic", reason="the llm extra is not installed")

from PIL import Image

from analyzer_llm import Budget
from analyzer_llm.testing import FakeProvider, Reply, answer_shipped_templates, fake_provider, prompt_of

from conftest import a1111_png, make_image, sidecar

KEY = "sk-test-0123456789abcdef-secret"


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with fake_provider() as server:
        server.answer = answer_shipped_templates
        yield server


@pytest.fixture
def openai_env(fake: FakeProvider, monkeypatch: pytest.MonkeyPatch) -> FakeProvider:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANALYZER_LLM__BASE_URL", fake.base_url + "/v1")
    monkeypatch.setenv("ANALYZER_LLM__MODEL", "gpt-test")
    monkeypatch.setenv("ANALYZER_LLM__BACKOFF_BASE", "0.01")
    monkeypatch.setenv("ANALYZER_LLM__MAX_BACKOFF", "3")
    monkeypatch.setenv("ANALYZER_LLM__TIMEOUT", "5")
    return fake


@pytest.fixture
def images(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    make_image(root / "fox.png", size=(3000, 1500), color=(200, 80, 20))
    make_image(root / "owl.jpg", size=(40, 30), color=(20, 20, 20))
    return root


def result(image: Path, mode: str) -> Any:
    (entry,) = sidecar(image, "llm")["analysis"][mode].values()
    return entry


def test_openai_run_fills_every_shipped_mode(cli, images, openai_env):
    outcome = cli("run", images, "--plugins", "llm")

    assert outcome.code == 0, outcome.log
    fox = sidecar(images / "fox.png", "llm")
    assert set(fox["analysis"]) == {"describe", "tags", "sd_prompt", "negative_prompt"}
    assert result(images / "fox.png", "tags")["result"] == {"tags": ["fox", "snow", "winter"]}
    assert result(images / "fox.png", "sd_prompt")["result"] == "a red fox in snow, masterpiece"
    entry = result(images / "fox.png", "describe")
    assert entry["result"] == "A red fox stands in fresh snow."
    assert entry["usage"] == {"input_tokens": 120, "output_tokens": 12, "attempts": 1}
    assert entry["parameters"]["template"] == "describe" and entry["parameters"]["model"] == "gpt-test"
    (model_id,) = fox["analysis"]["describe"]
    assert model_id == f"openai:gpt-test#{entry['parameters']['template_hash']}"
    assert (images / "wildcards" / "llm_tags.txt").read_text() == "fox\nsnow\nwinter\n"
    assert "llm openai (gpt-test): 8 requests" in outcome.log


def test_requests_carry_a_downscaled_image_and_the_key_only_in_the_header(cli, images, openai_env, tmp_path):
    log_file = tmp_path / "run.jsonl"
    outcome = cli("run", images, "--plugins", "llm", "--modes", "describe", "--log-file", log_file)

    assert outcome.code == 0
    request = next(s for s in openai_env.seen if s.body["messages"][-1]["content"][0]["text"].startswith("Describe"))
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.body["messages"][0]["role"] == "system"
    url = request.body["messages"][-1]["content"][1]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    sizes = set()
    for seen in openai_env.seen:
        data = seen.body["messages"][-1]["content"][1]["image_url"]["url"].split(",", 1)[1]
        with Image.open(io.BytesIO(base64.b64decode(data))) as sent:
            sizes.add(sent.size)
    assert sizes == {(1024, 512), (40, 30)}  # the 3000x1500 image was downscaled, the small one kept
    everything = outcome.log + outcome.err + log_file.read_text()
    everything += "".join(p.read_text() for p in images.glob("*.json"))
    assert KEY not in everything


def test_anthropic_messages_wire_format(cli, images, fake, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("ANALYZER_LLM__PROVIDER", "anthropic")
    monkeypatch.setenv("ANALYZER_LLM__MODEL", "claude-test")
    monkeypatch.setenv("ANALYZER_LLM__BASE_URL", fake.base_url)

    outcome = cli("run", images, "--plugins", "llm", "--modes", "describe,tags")

    assert outcome.code == 0, outcome.log
    seen = fake.seen[0]
    assert seen.path == "/v1/messages"
    assert KEY in (seen.headers.get("x-api-key", ""), seen.headers.get("authorization", "").removeprefix("Bearer "))
    image_part = seen.body["messages"][0]["content"][0]
    assert image_part["type"] == "image" and image_part["source"]["media_type"] == "image/jpeg"
    assert seen.body["system"] and seen.body["max_tokens"] > 0
    entry = result(images / "owl.jpg", "tags")
    assert entry["result"] == {"tags": ["fox", "snow", "winter"]}
    assert entry["usage"]["input_tokens"] == 150


def test_two_providers_answer_side_by_side(cli, images, fake, monkeypatch):
    monkeypatch.setenv("ANALYZER_LLM__PROVIDERS__LOCAL__PROVIDER", "openai-compatible")
    monkeypatch.setenv("ANALYZER_LLM__PROVIDERS__LOCAL__BASE_URL", fake.base_url + "/v1")
    monkeypatch.setenv("ANALYZER_LLM__PROVIDERS__LOCAL__MODEL", "llava:13b")
    monkeypatch.setenv("ANALYZER_LLM__PROVIDERS__CLAUDE__PROVIDER", "anthropic")
    monkeypatch.setenv("ANALYZER_LLM__PROVIDERS__CLAUDE__BASE_URL", fake.base_url)
    monkeypatch.setenv("ANALYZER_LLM__PROVIDERS__CLAUDE__API_KEY", KEY)

    outcome = cli("run", images, "--plugins", "llm", "--modes", "describe")

    assert outcome.code == 0, outcome.log
    ids = sorted(sidecar(images / "owl.jpg", "llm")["analysis"]["describe"])
    assert [i.split("#")[0] for i in ids] == ["claude:claude-haiku-4-5", "local:llava:13b"]
    assert {s.path for s in fake.seen} == {"/v1/messages", "/v1/chat/completions"}


@pytest.mark.parametrize(
    ("reply", "min_wait"),
    [
        (Reply(status=429, headers={"retry-after": "1"}), 1.0),
        (Reply(status=429, headers={"retry-after-ms": "600"}), 0.6),
        (Reply(status=500), 0.0),
        (Reply(status=503), 0.0),
        (Reply(raw=b"{not json"), 0.0),
        (Reply(raw=b'{"id": "x", "object": "chat.completion", "choices": []}'), 0.0),
    ],
    ids=["429-retry-after", "429-retry-after-ms", "500", "503", "malformed-json", "no-choices"],
)
def test_transient_errors_are_retried_and_recorded(cli, images, openai_env, monkeypatch, reply, min_wait):
    monkeypatch.setenv("ANALYZER_LLM__REQUESTS_IN_FLIGHT", "1")
    openai_env.script.append(reply)
    started = time.monotonic()

    outcome = cli("run", images, "--plugins", "llm", "--modes", "describe", "--include", "owl.jpg")

    assert outcome.code == 0, outcome.log
    assert time.monotonic() - started >= min_wait
    entry = result(images / "owl.jpg", "describe")
    assert entry["result"] == "A red fox stands in fresh snow."
    assert entry["usage"]["attempts"] == 2 and len(entry["usage"]["retries"]) == 1
    assert "attempt 1 failed" in outcome.log and "retrying in" in outcome.log
    assert sidecar(images / "owl.jpg", "llm")["errors"] == {}


def test_anthropic_529_overloaded_is_retried(cli, images, fake, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("ANALYZER_LLM__PROVIDER", "anthropic")
    monkeypatch.setenv("ANALYZER_LLM__BASE_URL", fake.base_url)
    monkeypatch.setenv("ANALYZER_LLM__BACKOFF_BASE", "0.01")
    fake.script.extend([Reply(status=529), Reply(status=529)])

    outcome = cli("run", images, "--plugins", "llm", "--modes", "describe", "--include", "owl.jpg")

    assert outcome.code == 0, outcome.log
    retries = result(images / "owl.jpg", "describe")["usage"]["retries"]
    assert [r["type"] for r in retries] == ["Overloaded", "Overloaded"]


def test_timeouts_are_retried(cli, images, openai_env, monkeypatch):
    monkeypatch.setenv("ANALYZER_LLM__TIMEOUT", "0.5")
    openai_env.script.append(Reply(hang=True))

    outcome = cli("run", images, "--plugins", "llm", "--modes", "describe", "--include", "owl.jpg")

    assert outcome.code == 0, outcome.log
    assert result(images / "owl.jpg", "describe")["usage"]["retries"][0]["type"] == "Timeout"


def test_giving_up_records_an_error_and_never_a_result(cli, images, openai_env, monkeypatch):
    monkeypatch.setenv("ANALYZER_LLM__MAX_ATTEMPTS", "3")
    openai_env.answer = lambda body: Reply(status=500)

    outcome = cli("run", images, "--plugins", "llm", "--modes", "describe,sd_prompt", "--include", "owl.jpg")

    assert outcome.code == 1
    doc = sidecar(images / "owl.jpg", "llm")
    assert doc["analysis"] == {}
    (error,) = doc["errors"]["describe"].values()
    assert error["type"] == "ServerError" and error["attempts"] == 3 and error["retryable"] is True
    assert len(openai_env.seen) == 6
    assert "giving up on 'owl.jpg' after 3 attempt(s)" in outcome.log
    assert not (images / "wildcards" / "llm_describe.txt").exists()


def test_a_401_stops_calls_to_that_provider_and_says_what_to_fix(cli, images, openai_env, monkeypatch):
    monkeypatch.setenv("ANALYZER_LLM__REQUESTS_IN_FLIGHT", "1")
    monkeypatch.setenv("ANALYZER_LLM__CONCURRENCY", "1")
    openai_env.answer = lambda body: Reply(status=401)

    outcome = cli("run", images, "--plugins", "llm")

    assert outcome.code == 1
    assert len(openai_env.seen) == 1
    assert "no further calls to it this run" in outcome.log
    (error,) = sidecar(images / "fox.png", "llm")["errors"]["describe"].values()
    assert error["type"] in ("AuthenticationError", "ProviderDisabled")
    messages = [e["message"] for p in images.glob("*.*g") for e in sidecar(p, "llm")["errors"]["describe"].values()]
    assert any("OPENAI_API_KEY" in m for m in messages)


@pytest.mark.parametrize(("status", "hint"), [(400, "IMAGE_MAX_SIDE"), (403, "permissions")])
def test_client_errors_fail_at_once(cli, images, openai_env, status, hint):
    openai_env.answer = lambda body: Reply(status=status)

    outcome = cli("run", images, "--plugins", "llm", "--modes", "describe", "--include", "owl.jpg")

    assert outcome.code == 1
    assert len(openai_env.seen) == 1
    (error,) = sidecar(images / "owl.jpg", "llm")["errors"]["describe"].values()
    assert hint in error["message"] and error["attempts"] == 1


def test_answers_that_do_not_fit_the_schema_are_errors(cli, images, openai_env, monkeypatch):
    monkeypatch.setenv("ANALYZER_LLM__MAX_ATTEMPTS", "2")
    openai_env.answer = lambda body: Reply(text='{"labels": "fox"}')

    outcome = cli("run", images, "--plugins", "llm", "--modes", "tags", "--include", "owl.jpg")

    assert outcome.code == 1
    (error,) = sidecar(images / "owl.jpg", "llm")["errors"]["tags"].values()
    assert error["type"] == "InvalidOutput" and "does not match the schema" in error["message"]


def test_wildcard_entries_cannot_inject_lines_or_comments(cli, images, openai_env):
    openai_env.answer = lambda body: Reply(text="# comment\nsecond line\n__other_wildcard__")

    cli("run", images, "--plugins", "llm", "--modes", "describe")

    lines = (images / "wildcards" / "llm_describe.txt").read_text().splitlines()
    assert lines == ["comment second line __other_wildcard__"]


def test_editing_a_template_makes_its_results_missing_again(cli, images, openai_env, tmp_path, monkeypatch):
    template = tmp_path / "mine.toml"
    template.write_text('prompt = "Name the animal."\noutput = "line"\n')
    monkeypatch.setenv("ANALYZER_LLM__PROMPTS__ANIMAL__TEMPLATE", str(template))
    cli("run", images, "--plugins", "llm", "--include", "owl.jpg")
    assert "1 already up to date" in cli("run", images, "--plugins", "llm", "--include", "owl.jpg").log

    template.write_text('prompt = "Name the animal, in one word."\noutput = "line"\n')
    cli("run", images, "--plugins", "llm", "--include", "owl.jpg")

    assert len(sidecar(images / "owl.jpg", "llm")["analysis"]["animal"]) == 2


def test_templates_can_use_other_plugins_results(cli, tmp_path, openai_env):
    root = tmp_path / "sd"
    a1111_png(root / "gen.png", "a castle on a hill at dawn")
    cli("run", root, "--plugins", "metadata")

    outcome = cli("run", root, "--plugins", "llm", "--modes", "sd_prompt")

    assert outcome.code == 0
    assert "a castle on a hill at dawn" in prompt_of(openai_env.seen[-1].body)


def test_costs_are_estimated_when_prices_are_configured(cli, images, openai_env, monkeypatch):
    monkeypatch.setenv("ANALYZER_LLM__INPUT_PRICE_PER_MTOK", "0.15")
    monkeypatch.setenv("ANALYZER_LLM__OUTPUT_PRICE_PER_MTOK", "0.60")

    outcome = cli("run", images, "--plugins", "llm", "--modes", "describe")

    assert "2 requests, 0 retried, 0 gave up, 240 input + 24 output tokens, about $0.0001" in outcome.log


def test_a_missing_key_is_a_clear_setup_error(cli, images, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)

    outcome = cli("run", images, "--plugins", "llm,metadata")

    assert outcome.code == 1
    assert "plugin llm could not start" in outcome.log and "Set OPENAI_API_KEY" in outcome.log
    assert ".." not in outcome.log  # one full stop between the SDK's message and ours
    assert (images / "owl.jpg.metadata.json").exists()


def test_the_llm_plugin_only_runs_when_asked(cli, images, openai_env):
    cli("run", images)
    assert not list(images.glob("*.llm.json")) and not openai_env.seen


def test_budget_spaces_requests_per_window():
    async def scenario() -> float:
        budget = Budget(rpm=2, tpm=None, window=0.5)
        started = time.monotonic()
        for _ in range(3):
            await budget.acquire(10)
        return time.monotonic() - started

    assert asyncio.run(scenario()) >= 0.45


def test_json_answers_round_trip_in_the_sidecar(cli, images, openai_env):
    cli("run", images, "--plugins", "llm", "--modes", "tags", "--include", "owl.jpg")
    raw = (images / "owl.jpg.llm.json").read_text()
    assert json.loads(raw)["analysis"]["tags"]


def test_connection_errors_are_retried_then_recorded(cli, images, monkeypatch):
    import socket

    with socket.socket() as probe:  # a port on loopback that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANALYZER_LLM__BASE_URL", f"http://127.0.0.1:{port}/v1")
    monkeypatch.setenv("ANALYZER_LLM__MAX_ATTEMPTS", "2")
    monkeypatch.setenv("ANALYZER_LLM__BACKOFF_BASE", "0.01")

    outcome = cli("run", images, "--plugins", "llm", "--modes", "describe", "--include", "owl.jpg")

    assert outcome.code == 1
    (error,) = sidecar(images / "owl.jpg", "llm")["errors"]["describe"].values()
    assert error["type"] == "ConnectionError" and error["attempts"] == 2 and error["retryable"] is True


@pytest.mark.parametrize("kind", ["openai", "openai-compatible"])
async def test_openai_requests_are_what_the_sdks_create_method_sends(fake, kind):
    """The plugin posts through the SDK's client.post to skip create()'s slow param walk: same JSON, same headers."""
    from analyzer_llm.providers import Provider, Request

    provider = Provider("p", kind, "gpt-test", api_key=KEY, base_url=fake.base_url + "/v1", timeout=10)
    request = Request("Be brief.", "Describe it.", "aGVsbG8=", "image/png", 77, 0.3, json_output=True)
    completion = await provider.complete(request)
    limit = "max_completion_tokens" if kind == "openai" else "max_tokens"
    await provider.client.chat.completions.create(
        model="gpt-test",
        messages=fake.seen[0].body["messages"],
        temperature=0.3,
        response_format={"type": "json_object"},
        **{limit: 77},
    )
    await provider.close()

    ours, theirs = fake.seen
    assert completion.text == "A red fox stands in fresh snow." and completion.input_tokens == 120
    assert ours.path == theirs.path == "/v1/chat/completions"
    assert ours.body == theirs.body
    assert ours.body["messages"][1]["content"][1]["image_url"]["url"] == "data:image/png;base64,aGVsbG8="
    volatile = {"x-stainless-retry-count", "x-stainless-read-timeout", "content-length"}
    assert {k: v for k, v in ours.headers.items() if k not in volatile} == {
        k: v for k, v in theirs.headers.items() if k not in volatile
    }
