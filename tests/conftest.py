"""Shared fixtures: an isolated environment, real image files, and a way to run the CLI."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from analyzer.cli import main

DATA = Path(__file__).parent / "data"
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No user settings, caches or working-directory files leak into a test."""
    for name in list(os.environ):
        if name.upper().startswith("ANALYZER_"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # Installed model plugins stay out of tests that do not ask for them by name (--plugins).
    monkeypatch.setenv("ANALYZER_CLIP__ENABLED", "false")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield


def make_image(
    path: Path,
    size: tuple[int, int] = (8, 8),
    color: Any = (200, 30, 30),
    fmt: str | None = None,
    text: dict[str, str] | None = None,
) -> Path:
    """Write a real image file; ``text`` adds PNG text chunks (how A1111 stores parameters)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, color)
    kwargs: dict[str, Any] = {}
    if text:
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
        kwargs["pnginfo"] = info
    image.save(path, format=fmt, **kwargs)
    return path


def a1111_png(path: Path, prompt: str, negative: str = "blurry", seed: int = 1, color: Any = (10, 20, 30)) -> Path:
    """A PNG with AUTOMATIC1111-style generation parameters."""
    params = (
        f"{prompt}\nNegative prompt: {negative}\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: {seed}, "
        "Size: 8x8, Model: sd15"
    )
    return make_image(path, color=color, text={"parameters": params})


def png_bytes(size: tuple[int, int] = (8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def echo() -> Iterator[type[Any]]:
    """The EchoPlugin test plugin, registered for one test."""
    import analyzer

    from fakes import EchoPlugin

    EchoPlugin.reset()
    analyzer.register(EchoPlugin)
    yield EchoPlugin
    analyzer.unregister("echo")


@pytest.fixture
def sd_images(tmp_path: Path) -> Path:
    """A folder holding the real Stable Diffusion sample images."""
    root = tmp_path / "images"
    shutil.copytree(DATA / "sd-metadata", root, ignore=shutil.ignore_patterns("*.json"))
    return root


@pytest.fixture
def expected_metadata() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / "sd-metadata" / "expected.json").read_text())
    return data


@dataclass
class CliResult:
    code: int
    out: str
    err: str
    log: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture):  # type: ignore[no-untyped-def]
    """Run ``analyzer ARGS...`` in-process; returns exit code, stdout, stderr and log text."""

    def run(*args: str | Path) -> CliResult:
        caplog.clear()
        with caplog.at_level(logging.DEBUG):
            code = main([str(a) for a in args] + (["--progress", "plain"] if args and args[0] == "run" else []))
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err, caplog.text)

    return run


def sidecar(image: Path, plugin: str = "metadata") -> dict[str, Any]:
    data: dict[str, Any] = json.loads(image.with_name(f"{image.name}.{plugin}.json").read_text())
    return data


def result(image: Path, mode: str, plugin: str = "metadata") -> Any:
    by_model = sidecar(image, plugin)["analysis"][mode]
    assert len(by_model) == 1
    return next(iter(by_model.values()))["result"]


@pytest.fixture
def colours(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The classify plugin's deterministic embedder (``ColourEmbedder``) in place of open_clip, and a
    label set ``colours`` (red, green, blue)."""
    from analyzer_classify import embedder
    from analyzer_classify.testing import ColourEmbedder

    fake = ColourEmbedder()
    embedder.preload(fake)
    monkeypatch.setenv("ANALYZER_CLASSIFY__MODEL", fake.model_id)
    monkeypatch.setenv("ANALYZER_CLASSIFY__LABELS__COLOURS", "red,green,blue")
    yield fake
    embedder.forget_preloaded()
