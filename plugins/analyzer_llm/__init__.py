"""The ``llm`` plugin: modes that are prompts, answered by OpenAI, Anthropic or OpenAI-compatible models.

Every mode is a named prompt template (``config/prompts/*.toml`` ship four: ``describe``,
``tags``, ``sd_prompt``, ``negative_prompt``). Each configured provider and model answers each
mode; results are keyed ``<provider>:<model>#<template hash>``, so two models' answers live side
by side and editing a template makes its results missing again.

Requests go out many at a time (``requests_in_flight`` per provider), within optional
requests-per-minute and tokens-per-minute budgets, and are retried with tenacity (exponential
backoff with jitter, or what ``retry-after``/``retry-after-ms`` asks) on 429, 5xx, 529, timeouts,
connection errors and unreadable answers. 400/403/404 fail at once with what to fix; a 401 stops
every further call to that provider for the run. An error is never stored as a result.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import logging
import math
import re
import time
import tomllib
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from analyzer.errors import ConfigError, ErrorType, PluginUnavailable, error_type
from analyzer.plugin import AnalyzerPlugin, Failure, ImageRef, Outcome, PluginOptions, Result, SharedWork
from analyzer.selector import SelectorError, render_template, template_selectors, to_text

from .providers import Completion, Provider, ProviderError, ProviderKind, Request

log = logging.getLogger(__name__)

__all__ = ["LlmOptions", "LlmPlugin", "PromptOptions", "ProviderOptions"]

TEMPLATES = Path(__file__).parent / "shipped-prompts"  # config/prompts (a link: not a package name)
DEFAULT_MODELS = {"openai": "gpt-4.1-mini", "anthropic": "claude-haiku-4-5", "openai-compatible": "llava"}


class ProviderOptions(BaseModel):
    """One provider and model. Keys: ``api_key`` (else ``OPENAI_API_KEY``/``ANTHROPIC_API_KEY``)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    provider: ProviderKind = "openai"
    """The API spoken: ``openai-compatible`` is any server speaking OpenAI's chat completions at
    ``base_url`` (Ollama, LM Studio, vLLM, llama.cpp, OpenRouter)."""
    model: str | None = None
    """Model name; default per provider: gpt-4.1-mini (openai), claude-haiku-4-5 (anthropic),
    llava (openai-compatible)."""
    base_url: str | None = None
    """The API's address (needed by ``openai-compatible``); default: the provider's own."""
    api_key: SecretStr | None = None
    """API key, never printed nor logged; default: the SDK's own variable (``OPENAI_API_KEY``,
    ``ANTHROPIC_API_KEY``)."""
    requests_in_flight: int = Field(default=16, ge=1, le=1024)
    """Requests sent to this provider at once."""
    requests_per_minute: int | None = Field(default=None, ge=1)
    """Requests started over a sliding minute, at most; unset: no limit."""
    tokens_per_minute: int | None = Field(default=None, ge=1)
    """Tokens (estimated before each request) over a sliding minute, at most; unset: no limit."""
    timeout: float = Field(default=60.0, gt=0)
    """Seconds a request may take before it is given up (and retried)."""
    input_price_per_mtok: float | None = Field(default=None, ge=0)
    """USD per million input tokens, for the cost estimate in the run summary."""
    output_price_per_mtok: float | None = Field(default=None, ge=0)
    """USD per million output tokens, for the cost estimate in the run summary."""


class PromptOptions(BaseModel):
    """One LLM mode: a template (a shipped name or a path), with optional overrides."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    template: str | None = None
    """A template's name (looked up in ``templates_dir``, then among the shipped ones) or a path
    ending in ``.toml``; default: the mode's own name, unless ``prompt`` is given."""
    system: str | None = None
    """System prompt; replaces the template's."""
    prompt: str | None = None
    """The prompt (``{metadata.prompt}``: another result of the image; ``{file_name}``); replaces the template's."""
    max_tokens: int | None = Field(default=None, ge=1)
    """Longest answer, in tokens; replaces the template's (default 512)."""
    temperature: float | None = Field(default=None, ge=0, le=2)
    """Sampling temperature (OpenAI-style providers only); replaces the template's."""
    output: Literal["text", "line", "json"] | None = None
    """What the answer is: ``line`` keeps one line, ``json`` is checked against ``schema``;
    replaces the template's (default text)."""
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    """The JSON Schema a ``json`` answer must match; replaces the template's."""
    wildcard: str | None = None
    """For ``json`` answers: the field whose strings feed the mode's wildcard file."""
    providers: list[str] | None = None
    """Which configured providers answer this mode (default: all)."""


class LlmOptions(PluginOptions, ProviderOptions):
    """``[llm]``: the default provider's keys at the top, more under ``[llm.providers.<name>]``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)

    enabled: bool = False
    """Off unless asked for (``--plugins llm`` or ``ANALYZER_LLM__ENABLED=true``): requests cost money."""
    providers: dict[str, ProviderOptions] = Field(default_factory=dict)
    """Named providers; when any are given, they replace the top-level one."""
    prompts: dict[str, PromptOptions] = Field(default_factory=dict)
    """Modes; default: the shipped templates (describe, tags, sd_prompt, negative_prompt)."""
    templates_dir: Path | None = None
    """Extra folder searched for ``<name>.toml`` templates before the shipped ones."""
    image_max_side: int = Field(default=1024, ge=64, le=8192)
    """Images are downscaled to at most this many pixels on their longer side before they are sent."""
    image_format: Literal["jpeg", "png", "webp"] = "jpeg"
    """Images are re-encoded in this format before they are sent (so any input format is accepted)."""
    image_quality: int = Field(default=90, ge=1, le=100)
    """Quality of the re-encoded JPEG or WebP images."""
    max_attempts: int = Field(default=6, ge=1, le=50)
    """Attempts per request, the first included, before giving up on it."""
    backoff_base: float = Field(default=0.5, gt=0)
    """Seconds: waits between attempts are random, up to this times 2 to the attempt number
    (unless the server says how long)."""
    max_backoff: float = Field(default=60.0, gt=0)
    """Longest wait between two attempts in seconds, a server's ``retry-after`` included."""


@dataclass
class Template:
    name: str
    source: str
    system: str | None
    prompt: str
    max_tokens: int
    temperature: float | None
    output: Literal["text", "line", "json"]
    schema: dict[str, Any] | None
    wildcard: str | None
    providers: list[str] | None
    digest: str = ""

    def __post_init__(self) -> None:
        identity = json.dumps(
            [self.system, self.prompt, self.max_tokens, self.temperature, self.output, self.schema, self.wildcard],
            sort_keys=True,
        )
        self.digest = hashlib.sha256(identity.encode()).hexdigest()[:12]

    def reads(self) -> tuple[str, ...]:
        """The selectors its placeholders name (``{metadata.prompt}``), in order."""
        found = template_selectors((self.system or "") + "\n" + self.prompt)
        return tuple(dict.fromkeys(sel.text for sel in found))

    def render(self, image: ImageRef) -> tuple[str | None, str]:
        """System and user prompt for an image: placeholders filled with the results they name."""
        texts = {key: to_text(value) for key, value in image.context.items()}
        name = Path(image.rel_path).name

        def fill(text: str) -> str:
            return render_template(text, texts, name).strip()

        return (fill(self.system) if self.system else None), fill(self.prompt)


def load_template(name: str, opts: PromptOptions, templates_dir: Path | None) -> Template:
    data: dict[str, Any] = {}
    source = "inline"
    ref = opts.template if opts.template is not None else (None if opts.prompt else name)
    if ref is not None:
        candidates = [Path(ref)] if ref.endswith(".toml") else []
        if templates_dir is not None:
            candidates.append(templates_dir / f"{ref}.toml")
        candidates.append(TEMPLATES / f"{ref}.toml")
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            raise ConfigError(f"LLM mode {name!r}: no template {ref!r} (looked in {', '.join(map(str, candidates))})")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"LLM mode {name!r}: cannot read template {path}: {exc}") from exc
        source = str(path.resolve())
    prompt = opts.prompt or data.get("prompt")
    if not prompt:
        raise ConfigError(f"LLM mode {name!r} has no prompt")
    try:
        template_selectors((opts.system or data.get("system") or "") + "\n" + prompt)
    except SelectorError as exc:
        raise ConfigError(f"LLM mode {name!r}: {exc}") from exc
    template = Template(
        name=name,
        source=source,
        system=opts.system or data.get("system"),
        prompt=prompt,
        max_tokens=int(opts.max_tokens or data.get("max_tokens", 512)),
        temperature=opts.temperature if opts.temperature is not None else data.get("temperature"),
        output=opts.output or data.get("output", "text"),
        schema=opts.schema_ or data.get("schema"),
        wildcard=opts.wildcard or data.get("wildcard"),
        providers=opts.providers,
    )
    if template.schema is not None:
        try:
            import jsonschema
        except ImportError:  # `analyzer status` without the extra: the schema is checked when it runs
            return template
        try:
            jsonschema.Draft202012Validator.check_schema(template.schema)
        except jsonschema.SchemaError as exc:
            raise ConfigError(f"LLM mode {name!r}: invalid JSON schema: {exc.message}") from exc
    return template


def parse_output(template: Template, text: str) -> Any:
    """The answer as the template asks for it; raises ValueError when it does not fit."""
    text = text.strip()
    if template.output == "text":
        return text
    fenced = re.fullmatch(r"```[a-zA-Z0-9]*\s*(.*?)\s*```", text, re.S)
    if fenced:
        text = fenced.group(1)
    if template.output == "line":
        line = re.sub(r"\s+", " ", text).strip().strip('"').strip()
        if not line:
            raise ValueError("the answer is empty")
        return line
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the answer is not JSON: {exc.msg}") from exc
    if template.schema is not None:
        import jsonschema

        errors = sorted(jsonschema.Draft202012Validator(template.schema).iter_errors(value), key=str)
        if errors:
            where = "/".join(str(p) for p in errors[0].absolute_path) or "the answer"
            raise ValueError(f"{where} does not match the schema: {errors[0].message}")
    return value


class Budget:
    """Requests-per-minute and tokens-per-minute over a sliding minute."""

    def __init__(self, rpm: int | None, tpm: int | None, window: float = 60.0) -> None:
        self.rpm, self.tpm, self.window = rpm, tpm, window
        self._log: deque[tuple[float, int]] = deque()
        self._lock = asyncio.Lock()

    async def acquire(self, tokens: int) -> None:
        if self.rpm is None and self.tpm is None:
            return
        async with self._lock:
            while True:
                now = time.monotonic()
                while self._log and now - self._log[0][0] >= self.window:
                    self._log.popleft()
                used = sum(t for _, t in self._log)
                if (self.rpm is None or len(self._log) < self.rpm) and (
                    self.tpm is None or used + tokens <= self.tpm or not self._log
                ):
                    self._log.append((now, tokens))
                    return
                await asyncio.sleep(max(0.01, self.window - (now - self._log[0][0])))


@dataclass
class Usage:
    requests: int = 0
    failed: int = 0
    retries: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class _Live:
    options: ProviderOptions
    provider: Provider
    semaphore: asyncio.Semaphore
    budget: Budget
    usage: Usage = field(default_factory=Usage)


def _check_enabled(live: _Live) -> None:
    if live.provider.disabled is not None:
        raise ProviderError(
            ErrorType.PROVIDER_DISABLED, live.provider.disabled, retryable=False, worth_retrying_later=True
        )


class LlmPlugin(AnalyzerPlugin):
    name = "llm"
    version = "1.0.0"
    requires = ("openai", "anthropic", "jsonschema")
    install_hint = "pip install 'analyzer[llm]'"
    batch_size_hint = 8
    costly = True
    Options = LlmOptions

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        assert isinstance(self.options, LlmOptions)
        self.opts: LlmOptions = self.options
        self.provider_options = self._provider_options()
        prompts = self.opts.prompts or {path.stem: PromptOptions() for path in sorted(TEMPLATES.glob("*.toml"))}
        self.templates = {name: load_template(name, p, self.opts.templates_dir) for name, p in prompts.items()}
        for template in self.templates.values():
            unknown = [p for p in template.providers or [] if p not in self.provider_options]
            if unknown:
                raise ConfigError(f"LLM mode {template.name!r} names unknown provider(s) {', '.join(unknown)}")
        self.modes = tuple(self.templates)
        self.wildcard_modes = tuple(n for n, t in self.templates.items() if t.output != "json" or t.wildcard)
        self.live: dict[str, _Live] = {}
        self._images: SharedWork[str, tuple[str, str] | Failure] = SharedWork(capacity=256)

    def _provider_options(self) -> dict[str, ProviderOptions]:
        if self.opts.providers:
            named = dict(self.opts.providers)
        else:
            top = ProviderOptions(**{k: getattr(self.opts, k) for k in ProviderOptions.model_fields})
            named = {top.provider: top}
        for name, options in named.items():
            if options.model is None:
                named[name] = options.model_copy(update={"model": DEFAULT_MODELS[options.provider]})
            if options.provider == "openai-compatible" and not options.base_url:
                raise ConfigError(f"LLM provider {name!r} is openai-compatible but has no base_url")
        return named

    @property
    def concurrency(self) -> int:
        if self.options.concurrency:
            return self.options.concurrency
        in_flight = max(p.requests_in_flight for p in self.provider_options.values())
        return max(2, 2 * math.ceil(in_flight / self.batch_size))

    # -- identity ----------------------------------------------------------------------
    def model_ids(self, mode: str) -> tuple[str, ...]:
        template = self.templates[mode]
        names = template.providers or list(self.provider_options)
        return tuple(f"{n}:{self.provider_options[n].model}#{template.digest}" for n in names)

    def reads(self, mode: str) -> tuple[str, ...]:
        return self.templates[mode].reads()

    def wildcard_entries(self, mode: str, value: Any) -> Any:
        template = self.templates.get(mode)
        if template is not None and template.output == "json":
            field_value = value.get(template.wildcard) if isinstance(value, dict) and template.wildcard else None
            return [v for v in field_value if isinstance(v, str)] if isinstance(field_value, list) else []
        return super().wildcard_entries(mode, value)

    # -- life cycle --------------------------------------------------------------------
    async def setup(self) -> None:
        for name, options in self.provider_options.items():
            key = options.api_key.get_secret_value() if options.api_key is not None else None
            try:  # importing an SDK takes about a second: not on the event loop
                provider = await asyncio.to_thread(
                    Provider,
                    name,
                    options.provider,
                    options.model or "",
                    api_key=key,
                    base_url=options.base_url,
                    timeout=options.timeout,
                )
            except Exception as exc:  # the SDKs refuse to start without a key
                env = "ANTHROPIC_API_KEY" if options.provider == "anthropic" else "OPENAI_API_KEY"
                reason = str(exc).rstrip(". ")  # the SDKs' messages end with a full stop already
                raise PluginUnavailable(
                    self.name, f"provider {name!r}: {reason}. Set {env}, or ANALYZER_LLM__API_KEY in .env"
                ) from exc
            self.live[name] = _Live(
                options,
                provider,
                asyncio.Semaphore(options.requests_in_flight),
                Budget(options.requests_per_minute, options.tokens_per_minute),
            )
            log.info(
                "llm provider %s: %s %s%s",
                name,
                options.provider,
                options.model,
                f" at {options.base_url}" if options.base_url else "",
            )

    async def close(self) -> None:
        for live in self.live.values():
            await live.provider.close()

    # -- analysis ----------------------------------------------------------------------
    async def analyze(self, mode: str, model_id: str, images: Sequence[ImageRef]) -> Sequence[Outcome]:
        template = self.templates[mode]
        live = self.live[model_id.split(":", 1)[0]]
        encoded = await asyncio.gather(*(asyncio.to_thread(self._encoded, image) for image in images))
        return await asyncio.gather(
            *(self._one(template, live, image, enc) for image, enc in zip(images, encoded, strict=True))
        )

    def _encoded(self, image: ImageRef) -> tuple[str, str] | Failure:
        return self._images.get_or_compute(image.hash, lambda: self._encode(image))

    def _encode(self, image: ImageRef) -> tuple[str, str] | Failure:
        """(base64 data, media type): downscaled to ``image_max_side`` and re-encoded."""
        from PIL import Image

        picture = image.read(
            lambda opened: opened.convert("RGBA") if opened.mode in ("P", "LA", "PA") else opened.copy()
        )
        if isinstance(picture, Failure):
            return picture
        picture.thumbnail((self.opts.image_max_side, self.opts.image_max_side), Image.Resampling.LANCZOS)
        fmt = self.opts.image_format
        if fmt == "jpeg" and picture.mode != "RGB":
            background = Image.new("RGB", picture.size, (255, 255, 255))
            rgba = picture.convert("RGBA")
            background.paste(rgba, mask=rgba.getchannel("A"))
            picture = background
        buffer = io.BytesIO()
        picture.save(buffer, format=fmt.upper(), quality=self.opts.image_quality)
        return base64.b64encode(buffer.getvalue()).decode("ascii"), f"image/{fmt}"

    async def _one(
        self, template: Template, live: _Live, image: ImageRef, encoded: tuple[str, str] | Failure
    ) -> Outcome:
        if isinstance(encoded, Failure):
            return encoded
        system, prompt = template.render(image)
        request = Request(
            system, prompt, encoded[0], encoded[1], template.max_tokens, template.temperature, template.output == "json"
        )
        estimate = (len(prompt) + len(system or "")) // 4 + 1000 + template.max_tokens
        retries: list[dict[str, Any]] = []
        try:
            completion, value = await self._call(live, request, estimate, template, image, retries)
        except ProviderError as exc:
            live.usage.failed += 1
            log.warning(
                "llm %s %s: giving up on %r after %d attempt(s): %s",
                live.provider.name,
                template.name,
                image.rel_path,
                len(retries) + 1,
                exc.message,
            )
            return Failure(exc.kind, exc.message, retryable=exc.worth_retrying_later, attempts=len(retries) + 1)
        usage: dict[str, Any] = {
            "input_tokens": completion.input_tokens,
            "output_tokens": completion.output_tokens,
            "attempts": len(retries) + 1,
        }
        if retries:
            usage["retries"] = retries
        parameters = {
            "provider": live.provider.name,
            "kind": live.options.provider,
            "model": live.provider.model,
            "template": template.name,
            "template_source": template.source,
            "template_hash": template.digest,
            "max_tokens": template.max_tokens,
            "temperature": template.temperature,
            "output": template.output,
            "image_max_side": self.opts.image_max_side,
        }
        return Result(value, parameters, usage)

    async def _call(
        self,
        live: _Live,
        request: Request,
        estimate: int,
        template: Template,
        image: ImageRef,
        retries: list[dict[str, Any]],
    ) -> tuple[Completion, Any]:
        from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

        backoff = wait_random_exponential(multiplier=self.opts.backoff_base, max=self.opts.max_backoff)

        def wait(state: Any) -> float:
            exc = state.outcome.exception()
            if isinstance(exc, ProviderError) and exc.retry_after is not None:
                return min(exc.retry_after, self.opts.max_backoff)
            return float(backoff(state))

        def note(state: Any) -> None:
            exc = state.outcome.exception()
            live.usage.retries += 1
            retries.append(
                {
                    "type": error_type(exc) if exc is not None else None,
                    "message": str(exc),
                    "attempt": state.attempt_number,
                }
            )
            log.warning(
                "llm %s %s: %r attempt %d failed (%s); retrying in %.1fs",
                live.provider.name,
                template.name,
                image.rel_path,
                state.attempt_number,
                exc,
                state.next_action.sleep,
            )

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.opts.max_attempts),
            wait=wait,
            before_sleep=note,
            reraise=True,
            retry=retry_if_exception(lambda e: isinstance(e, ProviderError) and e.retryable),
        )
        async for attempt in retrying:
            with attempt:
                _check_enabled(live)
                await live.budget.acquire(estimate)
                async with live.semaphore:
                    _check_enabled(live)  # again: a 401 may have arrived while this request waited
                    live.usage.requests += 1
                    try:
                        completion = await live.provider.complete(request)
                    except ProviderError as exc:
                        if exc.fatal_for_provider and live.provider.disabled is None:
                            live.provider.disabled = f"not called again this run after: {exc.message}"
                            log.error(
                                "llm provider %s: %s; no further calls to it this run", live.provider.name, exc.message
                            )
                        raise
                live.usage.input_tokens += completion.input_tokens
                live.usage.output_tokens += completion.output_tokens
                try:
                    return completion, parse_output(template, completion.text)
                except ValueError as exc:
                    raise ProviderError(ErrorType.INVALID_OUTPUT, str(exc), retryable=True) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def summary_lines(self) -> list[str]:
        lines = []
        totals: dict[str, float] = defaultdict(float)
        for name, live in self.live.items():
            u, o = live.usage, live.options
            if not u.requests:
                continue
            cost = ""
            if o.input_price_per_mtok is not None and o.output_price_per_mtok is not None:
                dollars = (u.input_tokens * o.input_price_per_mtok + u.output_tokens * o.output_price_per_mtok) / 1e6
                totals["cost"] += dollars
                cost = f", about ${dollars:.4f}"
            lines.append(
                f"  llm {name} ({o.model}): {u.requests} requests, {u.retries} retried, {u.failed} gave up, "
                f"{u.input_tokens} input + {u.output_tokens} output tokens{cost}"
            )
        return lines
