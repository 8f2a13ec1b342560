"""LLM providers through their official SDKs, with one error vocabulary.

``openai`` (and any OpenAI-compatible server by ``base_url``: Ollama, LM Studio, vLLM,
OpenRouter, llama.cpp) speaks chat completions; ``anthropic`` speaks messages. Both clients are
created with ``max_retries=0``: retrying is this plugin's job (tenacity, in ``__init__``), so it is
never doubled and every attempt is visible.

Errors become :class:`ProviderError` (a :class:`~analyzer.errors.PluginError`) with a ``kind`` from
:class:`~analyzer.errors.ErrorType`, ``retryable`` (try again in this run), ``retry_after`` (what
the server asked for) and ``fatal_for_provider`` (401: stop calling this provider).
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from typing import Any, Literal

from analyzer.errors import ErrorType, PluginError

ProviderKind = Literal["openai", "anthropic", "openai-compatible"]


@dataclass
class Request:
    system: str | None
    prompt: str
    image_b64: str
    media_type: str
    max_tokens: int
    temperature: float | None
    json_output: bool


@dataclass
class Completion:
    text: str
    input_tokens: int
    output_tokens: int


class ProviderError(PluginError):
    """An LLM provider's error; ``kind`` (one of :class:`~analyzer.errors.ErrorType`) says which."""

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after: float | None = None,
        fatal_for_provider: bool = False,
        worth_retrying_later: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after
        self.fatal_for_provider = fatal_for_provider
        self.worth_retrying_later = retryable if worth_retrying_later is None else worth_retrying_later


def retry_after_seconds(headers: Any) -> float | None:
    """``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date), as seconds."""
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed is not None else None


FIXES = {
    400: "the request was refused as invalid; if the message mentions the image, lower "
    "ANALYZER_LLM__IMAGE_MAX_SIDE; otherwise check the model name and max_tokens",
    401: "the API key was refused: set OPENAI_API_KEY / ANTHROPIC_API_KEY or ANALYZER_LLM__API_KEY",
    403: "the key may not use this model or endpoint: check the account's permissions",
    404: "unknown model or endpoint: check ANALYZER_LLM__MODEL and ANALYZER_LLM__BASE_URL",
    413: "the request is too large: lower ANALYZER_LLM__IMAGE_MAX_SIDE",
}

CLIENT_ERRORS = {
    400: ErrorType.BAD_REQUEST,
    401: ErrorType.AUTHENTICATION_ERROR,
    403: ErrorType.PERMISSION_DENIED,
    404: ErrorType.NOT_FOUND,
    409: ErrorType.CONFLICT,
    413: ErrorType.REQUEST_TOO_LARGE,
    422: ErrorType.UNPROCESSABLE_ENTITY,
}
"""The kind of a 4xx answer, by status (the SDKs' class names; openai has none for 413)."""


def classify(exc: BaseException, sdk: Any) -> ProviderError:
    """Map an SDK exception (openai or anthropic: same class names) onto ProviderError."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, sdk.APITimeoutError):
        return ProviderError(ErrorType.TIMEOUT, f"request timed out: {exc}", retryable=True)
    if isinstance(exc, sdk.APIConnectionError):
        return ProviderError(ErrorType.CONNECTION_ERROR, f"cannot reach the provider: {exc}", retryable=True)
    if isinstance(exc, sdk.APIStatusError):
        status = exc.status_code
        after = retry_after_seconds(getattr(exc.response, "headers", None))
        detail = _api_message(exc)
        if status == 429:
            return ProviderError(
                ErrorType.RATE_LIMITED, f"429 rate limited: {detail}", retryable=True, status=status, retry_after=after
            )
        if status >= 500:  # 500, 502, 503, Anthropic's 529 overloaded
            kind = ErrorType.OVERLOADED if status == 529 else ErrorType.SERVER_ERROR
            return ProviderError(
                kind, f"{status} from the provider: {detail}", retryable=True, status=status, retry_after=after
            )
        if status == 408:
            return ProviderError(ErrorType.TIMEOUT, f"408 request timeout: {detail}", retryable=True, status=status)
        fix = FIXES.get(status, "a client error that retrying will not fix")
        return ProviderError(
            CLIENT_ERRORS.get(status, ErrorType.CLIENT_ERROR),
            f"{status}: {detail} ({fix})",
            retryable=False,
            status=status,
            fatal_for_provider=status == 401,
            worth_retrying_later=status in (401, 403, 404),
        )
    if isinstance(exc, (sdk.APIResponseValidationError, ValueError)):
        return ProviderError(
            ErrorType.MALFORMED_RESPONSE, f"the provider's answer could not be read: {exc}", retryable=True
        )
    if isinstance(exc, sdk.APIError):
        return ProviderError(ErrorType.PROVIDER_ERROR, f"{type(exc).__name__}: {exc}", retryable=True)
    raise exc


def _api_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    return str(getattr(exc, "message", exc))


class Provider:
    """One configured provider and model, with its SDK client."""

    def __init__(
        self, name: str, kind: ProviderKind, model: str, *, api_key: str | None, base_url: str | None, timeout: float
    ) -> None:
        self.name = name
        self.kind = kind
        self.model = model
        self.disabled: str | None = None
        if kind == "anthropic":
            import anthropic

            self.sdk: Any = anthropic
            self.client: Any = anthropic.AsyncAnthropic(
                api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout
            )
        else:
            import openai

            self.sdk = openai
            self.client = openai.AsyncOpenAI(
                api_key=api_key or ("not-needed" if kind == "openai-compatible" else None),
                base_url=base_url,
                max_retries=0,
                timeout=timeout,
            )

    async def close(self) -> None:
        await self.client.close()

    async def complete(self, request: Request) -> Completion:
        try:
            if self.kind == "anthropic":
                return await self._anthropic(request)
            return await self._openai(request)
        except Exception as exc:
            raise classify(exc, self.sdk) from exc

    async def _openai(self, request: Request) -> Completion:
        messages: list[dict[str, Any]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.append(
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": request.prompt},
                    {
                        "type": "image_url",
                        "image_url": {"url": f"data:{request.media_type};base64,{request.image_b64}"},
                    },
                ],
            }
        )
        extra: dict[str, Any] = {}
        if request.temperature is not None:
            extra["temperature"] = request.temperature
        if request.json_output:
            extra["response_format"] = {"type": "json_object"}
        # OpenAI's own API wants max_completion_tokens; compatible servers know max_tokens
        limit = "max_completion_tokens" if self.kind == "openai" else "max_tokens"
        extra[limit] = request.max_tokens
        # The SDK's own client.post (its documented route for raw requests: same auth, base_url, timeouts
        # and error classes) rather than chat.completions.create, whose walk of the params against the
        # TypedDicts costs ~3 ms of CPU per request for a body of plain strings it leaves unchanged;
        # tests/test_llm.py checks both send the same JSON.
        response = await self.client.post(
            "/chat/completions",
            body={"model": self.model, "messages": messages, **extra},
            cast_to=self.sdk.types.chat.ChatCompletion,
        )
        choices = getattr(response, "choices", None)
        if not choices:
            raise ProviderError(ErrorType.MALFORMED_RESPONSE, "the answer has no choices", retryable=True)
        message = choices[0].message
        if getattr(message, "refusal", None):
            raise ProviderError(ErrorType.REFUSAL, f"the model refused: {message.refusal}", retryable=False)
        text = message.content
        if not isinstance(text, str) or not text.strip():
            raise ProviderError(ErrorType.EMPTY_RESPONSE, "the answer is empty", retryable=True)
        usage = getattr(response, "usage", None)
        return Completion(text, getattr(usage, "prompt_tokens", 0) or 0, getattr(usage, "completion_tokens", 0) or 0)

    async def _anthropic(self, request: Request) -> Completion:
        extra: dict[str, Any] = {}
        if request.system:
            extra["system"] = request.system
        # anthropic 2.x's Messages API takes no temperature: the template's value is not sent
        response = await self.client.messages.create(
            model=self.model,
            max_tokens=request.max_tokens,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": request.media_type, "data": request.image_b64},
                        },
                        {"type": "text", "text": request.prompt},
                    ],
                }
            ],
            **extra,
        )
        if getattr(response, "stop_reason", None) == "refusal":
            raise ProviderError(ErrorType.REFUSAL, "the model refused to answer", retryable=False)
        blocks = getattr(response, "content", None) or []
        text = "".join(getattr(b, "text", "") for b in blocks if getattr(b, "type", "") == "text")
        if not text.strip():
            raise ProviderError(ErrorType.EMPTY_RESPONSE, "the answer is empty", retryable=True)
        usage = getattr(response, "usage", None)
        return Completion(text, getattr(usage, "input_tokens", 0) or 0, getattr(usage, "output_tokens", 0) or 0)
