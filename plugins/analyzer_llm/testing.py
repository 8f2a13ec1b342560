"""A small HTTP server on 127.0.0.1 speaking OpenAI chat completions and Anthropic messages (for tests and bench).

Each request is answered by the next scripted :class:`Reply` (or the default), so a test can
say: "the first call gets a 429 with retry-after: 1, then answer normally". Requests are
recorded (path, headers, JSON body) for assertions.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    text: str | None = "a red fox in the snow"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    raw: bytes | None = None
    """Send these bytes as the body instead (a malformed answer)."""
    hang: bool = False
    """Never answer (until the client gives up)."""


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class FakeProvider:
    def __init__(self) -> None:
        self.script: deque[Reply] = deque()
        self.default = Reply()
        self.answer: Callable[[dict[str, Any]], Reply] | None = None
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def next_reply(self, body: dict[str, Any]) -> Reply:
        with self.lock:
            if self.script:
                return self.script.popleft()
        return self.answer(body) if self.answer is not None else self.default


def _openai_body(reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model"),
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": reply.text, "refusal": None},
            }
        ],
        "usage": {"prompt_tokens": 120, "completion_tokens": 12, "total_tokens": 132},
    }


def _anthropic_body(reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": body.get("model"),
        "content": [{"type": "text", "text": reply.text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 150, "output_tokens": 15},
    }


def _error_body(path: str, status: int) -> dict[str, Any]:
    kinds = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        429: "rate_limit_error",
        500: "api_error",
        529: "overloaded_error",
    }
    message = {
        429: "Rate limit reached",
        401: "Incorrect API key provided",
        529: "Overloaded",
        400: "image exceeds 5 MB maximum",
    }.get(status, "Internal error")
    if path.endswith("/messages"):
        return {"type": "error", "error": {"type": kinds.get(status, "api_error"), "message": message}}
    return {"error": {"message": message, "type": kinds.get(status, "server_error"), "code": None}}


def _handler(fake: FakeProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
            with fake.lock:
                fake.seen.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                fake.in_flight += 1
                fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
            try:
                reply = fake.next_reply(body)
                if reply.hang:
                    time.sleep(30)
                    return
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.raw is not None:
                    payload = reply.raw
                elif reply.status != 200:
                    payload = json.dumps(_error_body(self.path, reply.status)).encode()
                elif self.path.endswith("/messages"):
                    payload = json.dumps(_anthropic_body(reply, body)).encode()
                else:
                    payload = json.dumps(_openai_body(reply, body)).encode()
                self.send_response(reply.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                with fake.lock:
                    fake.in_flight -= 1

    return Handler


def prompt_of(body: dict[str, Any]) -> str:
    """The text of a request's last user message (OpenAI or Anthropic shape)."""
    if "messages" in body and body["messages"] and body["messages"][-1]["role"] == "user":
        content = body["messages"][-1]["content"]
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def answer_shipped_templates(body: dict[str, Any]) -> Reply:
    """Answer each shipped template in its expected shape (set as :attr:`FakeProvider.answer`)."""
    prompt = prompt_of(body)
    if '{"tags"' in prompt:
        return Reply(text='```json\n{"tags": ["fox", "snow", "winter"]}\n```')
    if "negative prompt" in prompt:
        return Reply(text="blurry, lowres")
    if "Stable Diffusion prompt" in prompt:
        return Reply(text="a red fox in snow,\n masterpiece")
    return Reply(text="A red fox stands in fresh snow.")


@contextmanager
def fake_provider() -> Iterator[FakeProvider]:
    fake = FakeProvider()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    fake.server = server
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


async def serve_fast(host: str, port: int, answer: Callable[[str, dict[str, Any]], Reply], ready: Any = None) -> None:
    """A lean asyncio HTTP/1.1 server (keep-alive) for benchmarks, where a thread per connection
    would add its own latency to what is measured. Same wire formats as :func:`fake_provider`."""
    import asyncio

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                length = next(
                    (
                        int(v)
                        for k, _, v in (line.partition(":") for line in lines[1:])
                        if k.strip().lower() == "content-length"
                    ),
                    0,
                )
                body = json.loads(await reader.readexactly(length) or b"{}")
                reply = answer(path, body)
                if reply.delay:
                    await asyncio.sleep(reply.delay)
                if reply.status != 200:
                    payload = json.dumps(_error_body(path, reply.status)).encode()
                elif path.endswith("/messages"):
                    payload = json.dumps(_anthropic_body(reply, body)).encode()
                else:
                    payload = json.dumps(_openai_body(reply, body)).encode()
                extra = "".join(f"{k}: {v}\r\n" for k, v in reply.headers.items())
                writer.write(
                    f"HTTP/1.1 {reply.status} X\r\ncontent-type: application/json\r\ncontent-length: {len(payload)}\r\n"
                    f"{extra}\r\n".encode()
                    + payload
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port)
    if ready is not None:
        ready.put(f"http://{host}:{server.sockets[0].getsockname()[1]}")
    async with server:
        await server.serve_forever()
