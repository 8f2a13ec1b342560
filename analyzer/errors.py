"""Analyzer's own exceptions, the error types recorded in sidecars, and the CLI's exit codes.

Every exception the project raises on purpose is in this tree, each with a message that says
what to do next. A plugin's own exceptions subclass :class:`PluginError`. Classes defined in
another module are drawn with their module (``tests/test_errors.py`` checks the drawing against
the classes)::

    AnalyzerError                                base; ``exit_code`` is what the CLI exits with (1)
     ├── ConfigError                             bad settings, unknown plugin or mode (exit 2)
     │    └── analyzer.selector.SelectorError    a selector that does not parse (also a ValueError)
     ├── PluginUnavailable                       a plugin's extra is not installed, or its setup failed
     ├── ImageError                              an image cannot be read or decoded (recorded per image)
     │    └── ImageTooLarge                      more pixels than ``max_image_pixels`` (decompression bomb)
     ├── FileChangedError                        a file changed while it was hashed (also an OSError)
     ├── CorruptSidecar                          a sidecar that is not JSON or not our layout (also a ValueError)
     ├── OutputClosed                            the reader of the output went away, ``| head`` (exit 141, quietly)
     ├── analyzer.export.dataset.MissingResults  images lack results an export reads (named, with the command)
     ├── analyzer.export.files.LinkNotSupported  --link reflink|hard that these places cannot make (also an OSError)
     └── PluginError                             a plugin's own failure; ``kind`` is its ErrorType
          └── analyzer_llm.providers.ProviderError   plugin-defined: an LLM provider's error, ``kind`` says which

Other exceptions are bugs (``RuntimeError``, ``AssertionError``, ``TypeError``...): the CLI does
not catch them, so they end a command with a traceback.

What a failed analysis records as its ``type`` comes from one list, :class:`ErrorType`;
:func:`error_type` maps an exception onto it. What the CLI exits with comes from
:func:`exit_code` and the ``EXIT_*`` constants.
"""

from __future__ import annotations

import signal
from enum import StrEnum

__all__ = [
    "EXIT_FAILURES",
    "EXIT_OK",
    "EXIT_USAGE",
    "AnalyzerError",
    "ConfigError",
    "CorruptSidecar",
    "ErrorType",
    "FileChangedError",
    "ImageError",
    "ImageTooLarge",
    "PluginError",
    "PluginUnavailable",
    "error_type",
    "exit_code",
    "exit_for_signal",
]

EXIT_OK = 0
"""Everything asked was done (or had been done before)."""
EXIT_FAILURES = 1
"""The command ran, but some analyses failed or a plugin was unavailable; also any other error."""
EXIT_USAGE = 2
"""Bad arguments or settings (as argparse exits): nothing was done."""
EXIT_PIPE = 141
"""The reader of the output went away (``| head``): what a shell reports for a process ended by SIGPIPE."""


def exit_for_signal(signum: int) -> int:
    """The exit status of a command stopped by signal ``signum``: ``128 + signum``, as shells report it."""
    return 128 + int(signum)


class AnalyzerError(Exception):
    exit_code = EXIT_FAILURES


class ConfigError(AnalyzerError):
    exit_code = EXIT_USAGE


class PluginUnavailable(AnalyzerError):
    def __init__(self, plugin: str, message: str) -> None:
        super().__init__(f"plugin {plugin!r} is unavailable: {message}")
        self.plugin = plugin
        self.reason = message
        """What went wrong and what to do, without the plugin's name."""


class ImageError(AnalyzerError):
    """The file cannot be used as an image; retrying will not help until it changes."""


class ImageTooLarge(ImageError):
    pass


class FileChangedError(AnalyzerError, OSError):
    """The file changed while it was being read. An ``OSError`` too: ``except OSError`` catches it."""


class CorruptSidecar(AnalyzerError, ValueError):
    """A sidecar that is not valid JSON, not in the sidecar layout, or written by a newer analyzer."""


class OutputClosed(AnalyzerError):
    """The reader of standard output went away (``analyzer … | head``): stop at once, quietly."""

    exit_code = EXIT_PIPE


class PluginError(AnalyzerError):
    """A plugin's own failure. Subclass it for a plugin's exceptions.

    ``kind`` is what a failure it causes records as its ``type``: one of :class:`ErrorType`
    (anything else is recorded as ``PluginError``).
    """

    kind: str = "PluginError"


class ErrorType(StrEnum):
    """Every ``type`` an entry in a sidecar's ``errors`` may have: the one list.

    Each entry also records ``retryable``; the comments say what is usual. Entries that are not
    retryable are redone only with ``--retry-failed`` (or when the image changes).
    """

    # The image itself: permanent until the file changes.
    IMAGE_ERROR = "ImageError"  # not a readable image (empty, truncated, corrupt): not retryable
    IMAGE_TOO_LARGE = "ImageTooLarge"  # more pixels than max_image_pixels: raise it to allow the image; not retryable
    # Reading the file: retryable, it may be readable on a later run.
    FILE_NOT_FOUND = "FileNotFoundError"  # the file vanished between the scan and the read: retryable
    PERMISSION_ERROR = "PermissionError"  # the file may not be read: fix its permissions; retryable
    IS_A_DIRECTORY = "IsADirectoryError"  # a folder where an image was: retryable
    NOT_A_DIRECTORY = "NotADirectoryError"  # a file where a folder of the path was: retryable
    OS_ERROR = "OSError"  # any other I/O error (a failing disk, a lost network share): retryable
    FILE_CHANGED = "FileChanged"  # the file changed while it was analysed: retryable, redone once it is stable
    TIMEOUT_ERROR = "TimeoutError"  # an operation timed out: retryable
    CONNECTION_ERROR = "ConnectionError"  # a service could not be reached (the llm provider, too): retryable
    OUT_OF_MEMORY = "OutOfMemory"  # out of (GPU) memory: retryable, with smaller batches or on the CPU
    # The engine and plugins.
    INVALID_RESULT = "InvalidResult"  # the plugin returned a value that is not JSON (a plugin bug): not retryable
    CONFIG_ERROR = "ConfigError"  # the mode needs a setting the plugin lacks: set it; not retryable
    METADATA_ERROR = "MetadataError"  # metadata: the generation parameters cannot be parsed: not retryable
    PLUGIN_ERROR = (
        "PluginError"  # any other exception a plugin raised; the message starts with its class: not retryable
    )
    # The llm plugin's providers (analyzer_llm.providers.ProviderError kinds).
    TIMEOUT = "Timeout"  # the provider did not answer in time: retryable
    RATE_LIMITED = "RateLimited"  # 429: retryable, after what the provider asks
    OVERLOADED = "Overloaded"  # 529, the provider is overloaded: retryable
    SERVER_ERROR = "ServerError"  # a 5xx from the provider: retryable
    MALFORMED_RESPONSE = "MalformedResponse"  # the provider's answer could not be read: retryable
    EMPTY_RESPONSE = "EmptyResponse"  # the model answered nothing: retryable
    INVALID_OUTPUT = "InvalidOutput"  # the answer is not JSON or does not match the template's schema: retryable
    REFUSAL = "Refusal"  # the model refused to answer: not retryable
    PROVIDER_DISABLED = "ProviderDisabled"  # not called after an earlier 401 this run: retried on a later run
    BAD_REQUEST = "BadRequestError"  # 400, the request was refused as invalid: not retryable
    AUTHENTICATION_ERROR = "AuthenticationError"  # 401, the API key was refused: fix it; retried on a later run
    PERMISSION_DENIED = "PermissionDeniedError"  # 403, the key may not use this model: retried on a later run
    NOT_FOUND = "NotFoundError"  # 404, unknown model or endpoint: fix it; retried on a later run
    REQUEST_TOO_LARGE = "RequestTooLargeError"  # 413: lower image_max_side; not retryable
    CONFLICT = "ConflictError"  # 409: not retryable
    UNPROCESSABLE_ENTITY = "UnprocessableEntityError"  # 422: not retryable
    CLIENT_ERROR = "ClientError"  # any other 4xx the provider answered: not retryable
    PROVIDER_ERROR = "ProviderError"  # any other error the provider's SDK reported: retryable


_BY_NAME: dict[str, ErrorType] = {member.value: member for member in ErrorType} | {
    FileChangedError.__name__: ErrorType.FILE_CHANGED,
    "OutOfMemoryError": ErrorType.OUT_OF_MEMORY,  # torch.cuda.OutOfMemoryError
    "MemoryError": ErrorType.OUT_OF_MEMORY,
}


def error_type(exc: BaseException) -> ErrorType:
    """The :class:`ErrorType` a failure caused by ``exc`` records.

    A :class:`PluginError` records its ``kind``; any other exception the nearest class in its MRO
    that the list names (``ConnectionResetError`` is a ``ConnectionError``, ``ImageTooLarge`` an
    ``ImageTooLarge``); an exception the list does not know, ``PluginError``.
    """
    if isinstance(exc, PluginError):
        return _BY_NAME.get(exc.kind, ErrorType.PLUGIN_ERROR)
    for cls in type(exc).__mro__:
        if cls.__name__ in _BY_NAME:
            return _BY_NAME[cls.__name__]
    return ErrorType.PLUGIN_ERROR


def exit_code(exc: BaseException) -> int:
    """What the CLI exits with when ``exc`` ends a command.

    An :class:`AnalyzerError` its ``exit_code`` (a :class:`ConfigError` 2, the others 1); a
    ``KeyboardInterrupt`` 130, as a shell reports SIGINT; anything else 1. The CLI catches only
    the first two: any other exception is a bug, shown with its traceback (Python exits 1 then).
    """
    if isinstance(exc, AnalyzerError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return exit_for_signal(signal.SIGINT)
    return EXIT_FAILURES
