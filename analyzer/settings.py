"""Settings: one pydantic-settings model, documented field by field.

Precedence, highest first: command-line flags > environment variables (``ANALYZER_`` prefix,
``__`` for nesting) > ``.env`` in the working directory > the TOML file (``--config``, or
``analyzer.toml`` in the working directory if present) > defaults.

Plugin sections are not fields of this model: every top-level TOML table, environment
variable or ``.env`` key that is not a core field (``[clip]``, ``ANALYZER_LLM__MODEL``…) is
collected into :attr:`Settings.plugin_options`, and validated later by the plugin of that
name against its own options model, so a typo there is an error too.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from .errors import ConfigError
from .images import DEFAULT_MAX_PIXELS

ENV_PREFIX = "ANALYZER_"
DEFAULT_CONFIG_FILE = Path("analyzer.toml")
NOT_SETTINGS = frozenset({"ANALYZER_LOAD_PLUGINS"})
"""Variables with the prefix that are read before the settings (by :mod:`analyzer.registry`), not settings."""


class WatchSettings(BaseModel):
    """``analyzer watch``: ``[watch]`` in the TOML file, ``ANALYZER_WATCH__<FIELD>`` in the environment."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    quiet_period: float = Field(default=2.0, ge=0)
    """Seconds an image's size and mtime must stay unchanged (and no event arrive) before it is analysed."""
    decode_timeout: float = Field(default=60.0, ge=0)
    """A stable image that still does not decode after this many seconds is analysed anyway, so its
    error is recorded (until then it is taken for a file still being written)."""
    polling: bool = False
    """Poll the folders instead of using inotify/FSEvents (for NFS/SMB mounts, where no events arrive)."""
    poll_interval: float = Field(default=5.0, gt=0)
    """Seconds between two polls when polling."""
    on_delete: Literal["keep", "delete"] = "keep"
    """What happens to a deleted image's sidecars; its results leave the wildcard files either way."""
    wildcards_debounce: float = Field(default=3.0, ge=0)
    """Wildcard files are rewritten once no result has changed for this many seconds (and at
    least every ten times this while changes keep coming)."""
    setup_retry_max: float = Field(default=300.0, gt=0)
    """Longest wait between two attempts to start a plugin that failed to start (doubling from 5 s)."""


class Settings(BaseSettings):
    """Every core setting. Environment variable: ``ANALYZER_<FIELD>`` (upper case)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",  # plugin sections are collected by PluginSectionsSource
        validate_default=True,
        use_attribute_docstrings=True,
    )

    roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    """Folders to analyse when a command is given none; in the environment separated by ``:``
    (``;`` on Windows)."""
    include: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Glob patterns (relative to the root, ``**`` allowed); when set, only matching images."""
    exclude: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Glob patterns of images or folders to skip."""
    follow_symlinks: bool = True
    """Follow symlinked folders and files; loops are detected and skipped."""
    sidecar_dir: Path | None = None
    """Write sidecars to a mirrored tree ``<sidecar_dir>/<root name>/…`` instead of beside images."""
    wildcards_dir: Path | None = None
    """Where wildcard files go; default ``<sidecar_dir>/wildcards``, else ``<first root>/wildcards``."""
    state_dir: Path | None = None
    """Where the index lives; default ``<root or its mirror>/.analyzer``."""
    host_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    """This machine's name in shared folders (its index, claims and temporary files); default: from
    ``/etc/machine-id``, else the host name. Give each machine sharing folders over NFS/SMB its own."""
    plugins: Annotated[list[str] | None, NoDecode] = None
    """Plugins to run; default: every installed plugin whose dependencies are present."""
    hash_workers: int = Field(default=4, ge=1, le=64)
    """Threads hashing images and reading sidecars in parallel."""
    queue_size: int = Field(default=256, ge=1, le=100_000)
    """Bound of each pipeline queue: memory stays flat however many images there are."""
    max_image_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1)
    """Images with more pixels are refused as possible decompression bombs."""
    grace_period: float = Field(default=30.0, ge=0)
    """Seconds in-flight work may take to finish after SIGINT/SIGTERM before it is abandoned."""
    heartbeat_interval: float = Field(default=60.0, ge=0)
    """Seconds between heartbeat log lines (items done, rate, RSS); 0 turns them off."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Least severe level printed on the console (the log file gets every record)."""
    log_file: Path | None = None
    """Also write JSON log lines (one object per line) to this file."""
    progress: Literal["auto", "bar", "plain"] = "auto"
    """Progress display: a bar on a terminal, plain log lines otherwise."""
    watch: WatchSettings = Field(default_factory=WatchSettings)
    """Settings of ``analyzer watch``."""
    plugin_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Plugin sections (``[clip]``, ``ANALYZER_LLM__MODEL``…); filled by PluginSectionsSource."""

    config_file: ClassVar[Path | None] = None

    @field_validator("include", "exclude", "plugins", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        # From the environment: "a,b" or a JSON list '["a", "b"]'.
        if isinstance(value, str) and value.lstrip().startswith("["):
            return json.loads(value)
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("roots", mode="before")
    @classmethod
    def _split_paths(cls, value: Any) -> Any:
        if isinstance(value, str) and value.lstrip().startswith("["):
            return json.loads(value)
        if isinstance(value, str):
            return [part for part in value.split(os.pathsep) if part]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = cls.config_file
        sources: list[PydanticBaseSettingsSource] = [
            init_settings,
            PluginSectionsSource(settings_cls, toml_file),
            env_settings,
            dotenv_settings,
        ]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    def secrets_masked(self) -> dict[str, Any]:
        """The effective settings as plain data, every secret replaced by ``**********``."""
        data: dict[str, Any] = mask_secrets(
            self.model_dump(mode="json", exclude={"plugin_options"}) | {"plugin_options": self.plugin_options}
        )
        return data


SECRET_WORDS = ("key", "token", "secret", "password")


def mask_secrets(value: Any, key: str = "") -> Any:
    if isinstance(value, SecretStr):
        return "**********"
    if isinstance(value, dict):
        return {k: mask_secrets(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v, key) for v in value]
    if value and isinstance(value, str) and any(word in key.lower() for word in SECRET_WORDS):
        return "**********"
    return value


def _core_fields() -> set[str]:
    """The settings a user can set (``plugin_options`` is where plugin sections go, not a setting)."""
    return set(Settings.model_fields) - {"plugin_options"}


class PluginSectionsSource(PydanticBaseSettingsSource):
    """Collects plugin sections from the environment, ``.env`` and the TOML file.

    ``ANALYZER_CLIP__MODEL=x`` and ``[clip] model = "x"`` both give ``{"clip": {"model": "x"}}``.
    A top-level name that is neither a core field nor a table is reported as unknown.
    """

    def __init__(self, settings_cls: type[BaseSettings], toml_file: Path | None) -> None:
        super().__init__(settings_cls)
        self.toml_file = toml_file

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        core = _core_fields()
        merged: dict[str, dict[str, Any]] = {}
        # Lowest precedence first; later layers overwrite earlier ones.
        if self.toml_file is not None and self.toml_file.exists():
            for key, value in read_toml(self.toml_file).items():
                if key in core:
                    continue
                if not isinstance(value, dict):
                    raise ConfigError(f"unknown setting {key!r} in {self.toml_file}")
                _deep_update(merged.setdefault(key, {}), value)
        env_file = self.config.get("env_file")
        layers: list[dict[str, str | None]] = []
        if isinstance(env_file, (str, Path)) and Path(env_file).is_file():
            layers.append(dict(dotenv_values(env_file)))
        layers.append(dict(os.environ))
        for layer in layers:
            for name, raw in layer.items():
                if raw is None or not name.upper().startswith(ENV_PREFIX) or name.upper() in NOT_SETTINGS:
                    continue
                parts = name[len(ENV_PREFIX) :].lower().split("__")
                if parts[0] in core:
                    continue
                if len(parts) < 2 or not all(parts):
                    raise ConfigError(
                        f"unknown setting {name!r}: core settings are {', '.join(sorted(core))}; "
                        f"plugin settings look like {ENV_PREFIX}<PLUGIN>__<OPTION>"
                    )
                node = merged.setdefault(parts[0], {})
                for depth, part in enumerate(parts[1:-1], start=2):
                    node = node.setdefault(part, {})
                    if not isinstance(node, dict):
                        whole = ENV_PREFIX + "__".join(parts[:depth]).upper()
                        raise ConfigError(f"{name} and {whole} both set {'.'.join(parts[:depth])}: keep one")
                if isinstance(node.get(parts[-1]), dict):
                    raise ConfigError(f"{name} and variables inside it (like {name}__…) are both set: keep one")
                node[parts[-1]] = raw
        return {"plugin_options": merged} if merged else {}


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data: dict[str, Any] = tomllib.load(handle)
            return data
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc


def _deep_update(target: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value


def resolve_config_file(config_file: Path | None) -> Path | None:
    """The TOML file settings are read from: ``config_file`` (which must exist), else
    ``./analyzer.toml`` when present, else none. Raises ConfigError."""
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"config file {config_file} does not exist")
    if config_file is None and DEFAULT_CONFIG_FILE.is_file():
        return DEFAULT_CONFIG_FILE
    return config_file


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from every source; ``overrides`` (CLI flags) win. Raises ConfigError."""
    Settings.config_file = resolve_config_file(config_file)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        raise ConfigError(f"invalid settings: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from exc
    finally:
        Settings.config_file = None
