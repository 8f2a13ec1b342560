"""The error tree drawn in ``analyzer/errors.py``, the one list of error types, and exit codes."""

from __future__ import annotations

import builtins
import importlib
import pkgutil
import re
import signal
from pathlib import Path

import httpx
import pytest

import analyzer
import analyzer_clip
import analyzer_llm
import analyzer_llm.providers
import analyzer_metadata
from analyzer import errors
from analyzer.errors import (
    EXIT_FAILURES,
    EXIT_OK,
    EXIT_USAGE,
    AnalyzerError,
    ConfigError,
    CorruptSidecar,
    ErrorType,
    FileChangedError,
    ImageError,
    ImageTooLarge,
    PluginError,
    PluginUnavailable,
    error_type,
    exit_code,
    exit_for_signal,
)
from analyzer.plugin import Failure
from analyzer_llm.providers import ProviderError, classify

ROOT = Path(__file__).parent.parent
SOURCES = sorted((ROOT / "analyzer").rglob("*.py")) + sorted((ROOT / "plugins").rglob("*.py"))
BUILT_IN = (analyzer, analyzer_metadata, analyzer_clip, analyzer_llm)
DRAWN_LINE = re.compile(r"^(?P<lead>[ │├└─]*)(?P<name>[A-Za-z_][\w.]*)\s{2,}(?P<says>\S.*)$")


def drawn_tree() -> dict[str, tuple[str | None, str]]:
    """``{class path: (drawn parent or None, description)}`` from the drawing in errors.py's docstring."""
    doc = errors.__doc__ or ""
    block = doc.split("::\n", 1)[1].strip("\n").split("\n\n")[0]
    tree: dict[str, tuple[str | None, str]] = {}
    stack: list[tuple[int, str]] = []
    for line in block.splitlines():
        match = DRAWN_LINE.match(line)
        assert match, f"not a line of the tree: {line!r}"
        column, name = match.start("name"), match["name"]
        while stack and stack[-1][0] >= column:
            stack.pop()
        tree[name] = (stack[-1][1] if stack else None, match["says"])
        stack.append((column, name))
    return tree


def resolve(path: str) -> type[BaseException]:
    module, _, name = path.rpartition(".")
    found = getattr(importlib.import_module(module) if module else errors, name)
    assert isinstance(found, type) and issubclass(found, BaseException), path
    return found


def defined_subclasses(cls: type) -> set[type]:
    """Every subclass of ``cls`` defined in analyzer or a built-in plugin (not in tests)."""
    found: set[type] = set()
    for sub in cls.__subclasses__():
        if sub.__module__.split(".")[0] in {package.__name__ for package in BUILT_IN}:
            found.add(sub)
        found |= defined_subclasses(sub)
    return found


def import_everything() -> None:
    for package in BUILT_IN:
        for module in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if not module.name.endswith("__main__"):
                importlib.import_module(module.name)


def test_the_drawn_tree_is_the_class_hierarchy():
    tree = drawn_tree()

    assert [name for name, (parent, _) in tree.items() if parent is None] == ["AnalyzerError"]
    for name, (parent, says) in tree.items():
        cls = resolve(name)
        in_tree = [base for base in cls.__bases__ if issubclass(base, AnalyzerError)]
        others = {base.__name__ for base in cls.__bases__ if not issubclass(base, AnalyzerError)}
        if parent is None:
            assert cls is AnalyzerError
            continue
        assert in_tree == [resolve(parent)], f"{name} is drawn under {parent}; its bases are {cls.__bases__}"
        also = set(re.findall(r"\(also an? (\w+)\)", says))
        assert others == also, f"{name}: draw its other bases as '(also a ...)'"
        assert all(isinstance(getattr(builtins, base, None), type) for base in also)
        assert ("plugin-defined" in says) == name.startswith("analyzer_"), name


def test_every_exception_class_of_the_project_is_drawn():
    import_everything()
    drawn = {resolve(name) for name in drawn_tree()}

    assert defined_subclasses(AnalyzerError) | {AnalyzerError} == drawn


def test_no_other_exception_classes_are_defined():
    import_everything()
    outside = {
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in defined_subclasses(BaseException)
        if not issubclass(cls, AnalyzerError)
    }

    assert outside == set()


def test_moved_classes_are_still_importable_from_where_they_were():
    from analyzer.hashing import FileChangedError as from_hashing
    from analyzer.sidecar import CorruptSidecar as from_sidecar

    assert from_hashing is FileChangedError and from_sidecar is CorruptSidecar
    assert issubclass(FileChangedError, OSError) and issubclass(CorruptSidecar, ValueError)


def failure_types_in(path: Path) -> list[tuple[int, str]]:
    text = path.read_text(encoding="utf-8")
    found = re.finditer(r"\b(Failure|ProviderError)\(\s*(\"[^\"]*\"|'[^']*'|type\()", text)
    return [(text.count("\n", 0, m.start()) + 1, m.group(0)) for m in found]


def test_failure_types_come_from_the_list():
    literal = [
        f"{path.relative_to(ROOT)}:{line}: {call}"
        for path in SOURCES
        for line, call in failure_types_in(path)
        if call.startswith("Failure") or call.split("(", 1)[1].strip()[1:-1] not in ErrorType.__members__.values()
    ]

    assert literal == [], "use an ErrorType member (or Failure.from_exception) for a Failure's type"


def test_every_error_type_named_in_the_source_exists():
    used = {name for path in SOURCES for name in re.findall(r"\bErrorType\.([A-Z_]+)\b", path.read_text())}

    assert used - set(ErrorType.__members__) == set()


def test_plugin_errors_name_a_listed_kind():
    import_everything()
    for cls in defined_subclasses(PluginError) | {PluginError}:
        assert cls.kind in ErrorType.__members__.values(), cls


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ImageError("corrupt"), ErrorType.IMAGE_ERROR),
        (ImageTooLarge("huge"), ErrorType.IMAGE_TOO_LARGE),
        (FileNotFoundError(2, "No such file"), ErrorType.FILE_NOT_FOUND),
        (PermissionError(13, "Permission denied"), ErrorType.PERMISSION_ERROR),
        (IsADirectoryError(21, "Is a directory"), ErrorType.IS_A_DIRECTORY),
        (OSError(5, "Input/output error"), ErrorType.OS_ERROR),
        (BlockingIOError(), ErrorType.OS_ERROR),
        (FileChangedError("x.png changed while it was being hashed"), ErrorType.FILE_CHANGED),
        (TimeoutError(), ErrorType.TIMEOUT_ERROR),
        (ConnectionResetError(), ErrorType.CONNECTION_ERROR),
        (BrokenPipeError(), ErrorType.CONNECTION_ERROR),
        (MemoryError(), ErrorType.OUT_OF_MEMORY),
        (ConfigError("no caption model"), ErrorType.CONFIG_ERROR),
        (PluginError("the plugin's own"), ErrorType.PLUGIN_ERROR),
        (PluginUnavailable("clip", "not installed"), ErrorType.PLUGIN_ERROR),
        (ValueError("a plugin bug"), ErrorType.PLUGIN_ERROR),
        (KeyError("k"), ErrorType.PLUGIN_ERROR),
        (ProviderError(ErrorType.RATE_LIMITED, "429", retryable=True), ErrorType.RATE_LIMITED),
        (ProviderError("Refusal", "no", retryable=False), ErrorType.REFUSAL),
        (ProviderError("SomethingNew", "?", retryable=False), ErrorType.PLUGIN_ERROR),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_error_type_of_an_exception(exc, expected):
    assert error_type(exc) is expected


def test_error_type_follows_the_class_not_the_module():
    class OutOfMemoryError(RuntimeError):  # what torch.cuda raises
        pass

    class QuotaExceeded(PluginError):  # a third-party plugin's own error
        kind = ErrorType.RATE_LIMITED

    class Peculiar(ConnectionAbortedError):
        pass

    assert error_type(OutOfMemoryError()) is ErrorType.OUT_OF_MEMORY
    assert error_type(QuotaExceeded("over quota")) is ErrorType.RATE_LIMITED
    assert error_type(Peculiar()) is ErrorType.CONNECTION_ERROR


def test_failures_record_types_from_the_list():
    assert Failure.from_exception(ConnectionResetError("reset")).type == "ConnectionError"
    assert Failure.from_exception(FileChangedError("moved under us")).type == "FileChanged"
    unknown = Failure.from_exception(ZeroDivisionError("division by zero"))
    assert unknown.type == "PluginError" and unknown.message.startswith("ZeroDivisionError")


def status_error(sdk, status: int) -> BaseException:
    response = httpx.Response(status, request=httpx.Request("POST", "http://127.0.0.1/v1"), json={})
    return sdk.APIStatusError(f"status {status}", response=response, body={"error": {"message": "nope"}})


@pytest.mark.parametrize("sdk_name", ["openai", "anthropic"])
@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, ErrorType.BAD_REQUEST),
        (401, ErrorType.AUTHENTICATION_ERROR),
        (404, ErrorType.NOT_FOUND),
        (413, ErrorType.REQUEST_TOO_LARGE),
        (418, ErrorType.CLIENT_ERROR),
        (429, ErrorType.RATE_LIMITED),
        (503, ErrorType.SERVER_ERROR),
        (529, ErrorType.OVERLOADED),
    ],
)
def test_provider_errors_are_classified_into_the_list(sdk_name, status, kind):
    sdk = pytest.importorskip(sdk_name)

    classified = classify(status_error(sdk, status), sdk)

    assert isinstance(classified, PluginError) and classified.kind == kind and error_type(classified) is kind


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (ConfigError("unknown plugin 'nope'"), EXIT_USAGE),
        (AnalyzerError("anything of ours"), EXIT_FAILURES),
        (PluginUnavailable("clip", "not installed"), EXIT_FAILURES),
        (ImageError("corrupt"), EXIT_FAILURES),
        (CorruptSidecar("x.json: not valid JSON"), EXIT_FAILURES),
        (KeyboardInterrupt(), 130),
        (RuntimeError("a bug"), EXIT_FAILURES),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_exit_codes(exc, code):
    assert exit_code(exc) == code


def test_run_outcomes_and_signals():
    assert (EXIT_OK, EXIT_FAILURES, EXIT_USAGE) == (0, 1, 2)
    assert exit_for_signal(signal.SIGINT) == 130
    assert exit_for_signal(signal.SIGTERM) == 143
