"""Small plugins for tests, registered the way a third party could (``analyzer.register``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from analyzer.plugin import AnalyzerPlugin, Failure, ImageRef, Outcome, PluginOptions, Result


class EchoOptions(PluginOptions):
    delay: float = 0.0
    suffix: str = ""


class EchoPlugin(AnalyzerPlugin):
    """Answers with the file name; records every call so tests can see batching and concurrency."""

    name = "echo"
    version = "1"
    modes = ("name", "upper", "size")
    wildcard_modes = ("name",)
    batch_size_hint = 4
    concurrency_hint = 2
    Options = EchoOptions

    calls: ClassVar[list[tuple[str, list[str]]]] = []
    setups: ClassVar[int] = 0
    in_flight: ClassVar[int] = 0
    max_in_flight: ClassVar[int] = 0

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        assert isinstance(self.options, EchoOptions)
        self.opts: EchoOptions = self.options

    @classmethod
    def reset(cls) -> None:
        cls.calls = []
        cls.setups = 0
        cls.in_flight = 0
        cls.max_in_flight = 0

    def model_ids(self, mode: str) -> tuple[str, ...]:
        return (f"echo-v1{self.opts.suffix}",)

    async def setup(self) -> None:
        type(self).setups += 1

    async def analyze(self, mode: str, model_id: str, images: Sequence[ImageRef]) -> Sequence[Outcome]:
        cls = type(self)
        cls.calls.append((mode, [i.rel_path for i in images]))
        cls.in_flight += 1
        cls.max_in_flight = max(cls.max_in_flight, cls.in_flight)
        try:
            if self.opts.delay:
                await asyncio.sleep(self.opts.delay)
            return [self._one(mode, image) for image in images]
        finally:
            cls.in_flight -= 1

    def _one(self, mode: str, image: ImageRef) -> Outcome:
        stem = Path(image.rel_path).stem
        if mode == "name":
            return Result(stem, {"how": "stem"})
        if mode == "upper":
            return Result(stem.upper())
        return Result({"bytes": image.size})


class SaboteurPlugin(AnalyzerPlugin):
    """Deletes or rewrites the image it is analysing, as another program might mid-run."""

    name = "saboteur"
    modes = ("look",)

    def model_ids(self, mode: str) -> tuple[str, ...]:
        return ("s1",)

    async def analyze(self, mode: str, model_id: str, images: Sequence[ImageRef]) -> Sequence[Outcome]:
        for image in images:
            if image.path.stem.startswith("delete"):
                image.path.unlink()
            elif image.path.stem.startswith("rewrite"):
                time.sleep(0.01)
                image.path.write_bytes(image.path.read_bytes() + b"more")
        return [Result("seen") for _ in images]


class BrokenSetupPlugin(AnalyzerPlugin):
    name = "brokensetup"
    modes = ("x",)

    def model_ids(self, mode: str) -> tuple[str, ...]:
        return ("b1",)

    async def setup(self) -> None:
        raise RuntimeError("model weights not found: download them with `example fetch` into ~/.cache/example")

    async def analyze(self, mode: str, model_id: str, images: Sequence[ImageRef]) -> Sequence[Outcome]:
        raise AssertionError("never called")


class NeedsMissingModule(AnalyzerPlugin):
    name = "needsextra"
    modes = ("x",)
    requires = ("module_that_is_not_installed_anywhere",)
    install_hint = "pip install 'analyzer[needsextra]'"

    def model_ids(self, mode: str) -> tuple[str, ...]:
        return ("n1",)

    async def analyze(self, mode: str, model_id: str, images: Sequence[ImageRef]) -> Sequence[Outcome]:
        raise AssertionError("never called")


class FlakyPlugin(AnalyzerPlugin):
    """Raises for whole batches, returns non-JSON results, or fails retryably, by file name."""

    name = "flaky"
    modes = ("x",)

    def model_ids(self, mode: str) -> tuple[str, ...]:
        return ("f1",)

    async def analyze(self, mode: str, model_id: str, images: Sequence[ImageRef]) -> Sequence[Outcome]:
        if any("raise" in i.rel_path for i in images):
            raise ConnectionError("provider unreachable")
        out: list[Outcome] = []
        for image in images:
            if "object" in image.rel_path:
                out.append(Result(object()))
            elif "busy" in image.rel_path:
                out.append(Failure("RateLimited", "429 too many requests", retryable=True, attempts=3))
            else:
                out.append(Result("fine"))
        return out


class SlowPlugin(AnalyzerPlugin):
    """Takes ``delay`` seconds per batch: for shutdown tests."""

    name = "slow"
    modes = ("wait",)
    batch_size_hint = 2
    Options = EchoOptions

    def model_ids(self, mode: str) -> tuple[str, ...]:
        return ("slow1",)

    async def analyze(self, mode: str, model_id: str, images: Sequence[ImageRef]) -> Sequence[Outcome]:
        delay = self.options.delay if isinstance(self.options, EchoOptions) else 0.2
        await asyncio.sleep(delay)
        return [Result(i.rel_path) for i in images]


class CountOptions(PluginOptions):
    log: str = ""
    """File that gets one line per analysed image: ``rel<TAB>hash<TAB>size``."""
    delay: float = 0.0
    fail_setups: int = 0
    """Fail this many setups first (by attempt count in the process), like weights not yet downloaded."""


class CountingPlugin(AnalyzerPlugin):
    """Logs every image it analyses to a file, so tests across processes can count analyses."""

    name = "count"
    version = "1"
    modes = ("seen",)
    wildcard_modes = ("seen",)
    batch_size_hint = 8
    Options = CountOptions
    setup_attempts: ClassVar[int] = 0

    def model_ids(self, mode: str) -> tuple[str, ...]:
        return ("count1",)

    async def setup(self) -> None:
        cls = type(self)
        cls.setup_attempts += 1
        assert isinstance(self.options, CountOptions)
        if cls.setup_attempts <= self.options.fail_setups:
            raise RuntimeError(f"weights not there yet (attempt {cls.setup_attempts})")

    async def analyze(self, mode: str, model_id: str, images: Sequence[ImageRef]) -> Sequence[Outcome]:
        assert isinstance(self.options, CountOptions)
        if self.options.delay:
            await asyncio.sleep(self.options.delay)
        if self.options.log:
            lines = "".join(f"{i.rel_path}\t{i.hash}\t{i.size}\n" for i in images)
            with open(self.options.log, "a") as handle:
                handle.write(lines)
        return [Result(Path(i.rel_path).stem) for i in images]


class SourceOptions(PluginOptions):
    fail: str = "fail"
    """Images whose name contains this fail (permanently); empty: none fails."""


class SourcePlugin(AnalyzerPlugin):
    """A cheap plugin whose results another one reads: ``text`` is the image's stem."""

    name = "source"
    modes = ("text", "shape")
    Options = SourceOptions

    def model_ids(self, mode: str) -> tuple[str, ...]:
        return ("src1",)

    async def analyze(self, mode: str, model_id: str, images: Sequence[ImageRef]) -> Sequence[Outcome]:
        assert isinstance(self.options, SourceOptions)
        fail = self.options.fail
        return [
            Failure("ImageError", "cannot read it") if fail and fail in i.rel_path else Result(Path(i.rel_path).stem)
            for i in images
        ]


class ReaderPlugin(AnalyzerPlugin):
    """Reads ``source.text`` for each image; records what it was given."""

    name = "reader"
    modes = ("echo",)
    seen: ClassVar[list[dict[str, Any]]] = []

    def model_ids(self, mode: str) -> tuple[str, ...]:
        return ("r1",)

    def reads(self, mode: str) -> tuple[str, ...]:
        return ("source.text",)

    async def analyze(self, mode: str, model_id: str, images: Sequence[ImageRef]) -> Sequence[Outcome]:
        type(self).seen.extend(dict(i.context) for i in images)
        return [Result(f"read:{i.context['source.text']}") for i in images]


class SecondReaderPlugin(AnalyzerPlugin):
    """Reads ``reader.echo``: the third link of a chain source -> reader -> reader2."""

    name = "reader2"
    modes = ("twice",)

    def model_ids(self, mode: str) -> tuple[str, ...]:
        return ("r2",)

    def reads(self, mode: str) -> tuple[str, ...]:
        return ("reader.echo",)

    async def analyze(self, mode: str, model_id: str, images: Sequence[ImageRef]) -> Sequence[Outcome]:
        return [Result(f"again:{i.context['reader.echo']}") for i in images]
