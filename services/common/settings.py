"""Service settings: dataclass defaults < YAML/JSON file < MEDSERL_* environment < command-line flags."""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T", bound="ServiceSettings")


class SettingsError(ValueError):
    """A setting is unknown or has the wrong type; the message says which and where from."""


@dataclass
class ServiceSettings:
    """What every service shares. Services subclass this and add their own fields."""

    bus: str = "memory"  # memory | kafka
    kafka_bootstrap: str = ""  # host:port[,host:port]; also KAFKA_BOOTSTRAP_SERVERS
    grpc_host: str = "0.0.0.0"
    grpc_port: int = 50051  # 0 picks a free port
    metrics_port: int = 9100  # 0 picks a free port; -1 disables
    log_level: str = "INFO"
    log_json: bool = True
    log_phi: bool = False  # clinical note text in logs only when asked for explicitly
    group_id: str = ""  # consumer group; defaults to medserl-<service>
    topic_suffix: str = ""  # appended to every topic name: isolated experiments (tenants) on one cluster
    max_batch: int = 32  # messages handled per poll
    poll_timeout_s: float = 0.5
    max_attempts: int = 3  # tries before a message goes to the dead-letter topic
    shutdown_grace_s: float = 20.0
    grpc_workers: int = 8


def _coerce(value: Any, annotation: Any, name: str, source: str) -> Any:
    """Turn a string/YAML value into the field's declared type, with a message naming the source."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        annotation = args[0]
        origin = typing.get_origin(annotation)
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"not a boolean: {value!r}")
        if annotation is int:
            return int(value)
        if annotation is float:
            return float(value)
        if annotation is str:
            return str(value)
        if origin in (list, tuple):
            items = value if isinstance(value, list | tuple) else [v for v in str(value).split(",") if v]
            (inner, *_) = typing.get_args(annotation) or (str,)
            return origin(_coerce(v, inner, name, source) for v in items)
        if origin is dict and isinstance(value, str):
            return json.loads(value)
        return value
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"setting {name!r} from {source}: {exc}") from exc


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def load_settings(
    cls: type[T],
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    env_prefix: str = "MEDSERL_",
) -> T:
    """Build settings from defaults, then a file, then the environment, then explicit overrides."""
    types_by_name = _field_types(cls)
    values: dict[str, Any] = {}
    if config_file:
        path = Path(config_file)
        if not path.exists():
            raise SettingsError(f"config file not found: {path}")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
        if not isinstance(data, dict):
            raise SettingsError(f"{path}: expected a mapping of setting names to values")
        for key, value in data.items():
            key = key.replace("-", "_")
            if key not in types_by_name:
                raise SettingsError(f"{path}: unknown setting {key!r}; known: {', '.join(sorted(types_by_name))}")
            values[key] = _coerce(value, types_by_name[key], key, str(path))
    env = os.environ if env is None else env
    for key, annotation in types_by_name.items():
        env_key = env_prefix + key.upper()
        if env_key in env:
            values[key] = _coerce(env[env_key], annotation, key, f"${env_key}")
    if "kafka_bootstrap" in types_by_name and not values.get("kafka_bootstrap") and env.get("KAFKA_BOOTSTRAP_SERVERS"):
        values["kafka_bootstrap"] = env["KAFKA_BOOTSTRAP_SERVERS"]
    for key, value in (overrides or {}).items():
        key = key.replace("-", "_")
        if key not in types_by_name:
            raise SettingsError(f"unknown setting {key!r}; known: {', '.join(sorted(types_by_name))}")
        values[key] = _coerce(value, types_by_name[key], key, "command line")
    return cls(**values)


def parse_set_flags(pairs: list[str] | None) -> dict[str, str]:
    """``--set key=value`` flags into a dict, with a clear error for a malformed one."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise SettingsError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value
    return out
