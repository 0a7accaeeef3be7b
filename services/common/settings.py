"""Service settings: dataclass defaults < YAML/JSON file < MEDSERL_* environment < command-line flags.

The dataclasses are the one definition of every setting: ``add_dataclass_arguments`` turns one into
argparse flags (type, default and meaning from the field's trailing ``# comment``), so a flag list
or a ``--help`` page is never written by hand beside the dataclass it copies.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import functools
import inspect
import io
import json
import os
import sys
import textwrap
import tokenize
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T", bound="ServiceSettings")
D = TypeVar("D")

# Renamed settings: old name -> new name. The old one is accepted (file key, MEDSERL_* variable,
# --set, --old-flag) with a warning for one release, wherever the class has the new name only.
DEPRECATED_NAMES: dict[str, str] = {"model_name": "model"}


class SettingsError(ValueError):
    """A setting is unknown or has the wrong type; the message says which and where from."""


@dataclass
class ServiceSettings:
    """What every service shares. Services subclass this and add their own fields."""

    bus: str = "memory"  # memory | kafka
    kafka_bootstrap: str = ""  # host:port[,host:port]; also KAFKA_BOOTSTRAP_SERVERS
    grpc_host: str = "127.0.0.1"  # interface gRPC listens on; another (0.0.0.0) needs tokens or client certificates
    grpc_port: int = 50051  # 0 picks a free port
    metrics_port: int = 9100  # Prometheus /metrics; 0 picks a free port; -1 disables
    log_level: str = "INFO"  # DEBUG | INFO | WARNING | ERROR
    log_json: bool = True  # one JSON object per log line (false: plain text for a terminal)
    log_phi: bool = False  # clinical note text in logs only when asked for explicitly
    group_id: str = ""  # consumer group; defaults to medserl-<service>
    topic_suffix: str = ""  # appended to every topic name: isolated experiments (tenants) on one cluster
    max_batch: int = 32  # messages handled per poll
    poll_timeout_s: float = 0.5  # seconds a bus poll waits for messages
    max_attempts: int = 3  # tries before a message goes to the dead-letter topic
    retry_for_s: float = 120.0  # a transient failure (a model server restarting) pauses and retries this long first
    kafka_replication_factor: int = 0  # replicas of the topics a service creates; 0: min(3, brokers)
    # static group membership (KIP-345): a name stable across restarts (a StatefulSet pod's name) lets
    # a restarted replica take its partitions back at once instead of after the session timeout; a
    # replica stopped for good then holds them until the timeout. "" = dynamic membership
    kafka_group_instance_id: str = ""
    kafka_session_timeout_ms: int = 10_000  # a consumer silent this long leaves its group (>= broker's min, 6 s)
    # create missing topics at start-up; off where an operator owns them (Strimzi's Topic Operator, whose
    # KafkaUsers may not create): a missing topic is then an error that names it
    kafka_create_topics: bool = True
    shutdown_grace_s: float = 20.0  # seconds SIGTERM waits for the batch in hand before giving up
    grpc_workers: int = 8  # gRPC server threads
    # --- access control and limits (issue 12); secrets come from files or the environment, never flags
    metrics_host: str = "127.0.0.1"  # interface /metrics listens on (0.0.0.0 for a Prometheus scrape)
    grpc_insecure: bool = False  # allow a non-loopback gRPC bind with neither tokens nor client certificates
    grpc_tls_cert: str = ""  # PEM certificate (chain) of the gRPC server; with grpc_tls_key turns TLS on
    grpc_tls_key: str = ""  # PEM private key of grpc_tls_cert
    grpc_tls_client_ca: str = ""  # PEM CA bundle: clients must present a certificate it signed (mutual TLS)
    grpc_tokens_file: str = ""  # bearer tokens, one 'caller:token' a line (a mounted Secret); or $MEDSERL_GRPC_TOKENS
    grpc_reflection: bool = True  # serve gRPC reflection (behind the tokens when tokens are on)
    health_port: int = -1  # plaintext port with grpc.health.v1 only (kubelet probes when gRPC is TLS); -1: off
    grpc_max_message_bytes: int = 8 * 1024 * 1024  # largest gRPC request or response
    grpc_max_concurrent: int = 0  # calls handled at once, more are RESOURCE_EXHAUSTED; 0: grpc_workers - 2
    grpc_max_call_s: float = 3600.0  # server-side deadline of a call (streams are cut, handlers may check)
    max_message_bytes: int = 1_000_000  # largest bus message read or written (<= the broker's message.max.bytes)
    dead_letter_payload_bytes: int = 0  # bytes of a failed message copied into its dead letter (0: its offset, key, reason)
    max_deliveries: int = 3  # a message handed to its handler this often without completing is poison
    delivery_state_dir: str = ""  # delivery counts that survive a crash (an emptyDir); empty: in memory only
    message_auth: str = "auto"  # auto | required | off: HMAC-signed bus messages (services.common.auth)
    message_keys_dir: str = ""  # <service>.key files: this service's key and those of the producers it reads
    kafka_security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    kafka_ssl_cafile: str = ""  # PEM CA of the brokers (Strimzi: the cluster CA secret)
    kafka_ssl_certfile: str = ""  # PEM client certificate (Strimzi: the KafkaUser secret's user.crt)
    kafka_ssl_keyfile: str = ""  # PEM client key (user.key)
    kafka_sasl_mechanism: str = ""  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512 (with a SASL_* protocol)
    kafka_sasl_username: str = ""  # SASL user; the password from kafka_sasl_password_file or $MEDSERL_KAFKA_SASL_PASSWORD
    kafka_sasl_password_file: str = ""  # file holding the SASL password (a mounted Secret)


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


_warned: set[str] = set()


def deprecation_warning(message: str) -> None:
    """One line on stderr, once per process (``warnings`` hides DeprecationWarning by default)."""
    if message not in _warned:
        _warned.add(message)
        print(f"medserl: warning: {message}", file=sys.stderr)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for a near miss, else ``""``: the cheapest fix for a typo."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown(key: str, names: Iterable[str]) -> str:
    names = sorted(names)
    return f"unknown setting {key!r}{did_you_mean(key, names)}; known: {', '.join(names)}"


def _renamed(names: Iterable[str]) -> dict[str, str]:
    """The deprecated aliases that apply to a class: the old name is gone and the new one is there."""
    names = set(names)
    return {old: new for old, new in DEPRECATED_NAMES.items() if new in names and old not in names}


def _canonical(mapping: dict[str, Any], names: dict[str, Any], source: str, where: str = "") -> dict[str, Any]:
    """Keys normalised (dashes -> underscores, old names -> new ones with a warning); an explicit new
    name beats its old alias. Unknown keys are an error with a suggestion."""
    renamed = _renamed(names)
    out: dict[str, Any] = {}
    aliased: dict[str, Any] = {}
    for raw, value in mapping.items():
        key = str(raw).replace("-", "_")
        if key in names:
            out[key] = value
        elif key in renamed:
            deprecation_warning(f"setting {key!r} ({source}) is deprecated and will be removed: use {renamed[key]!r}")
            aliased[renamed[key]] = value
        else:
            raise SettingsError(f"{where}{_unknown(key, names)}")
    return {**aliased, **out}


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
        for key, value in _canonical(data, types_by_name, f"in {path}", f"{path}: ").items():
            values[key] = _coerce(value, types_by_name[key], key, str(path))
    env = os.environ if env is None else env
    for key, annotation in types_by_name.items():
        env_key = env_prefix + key.upper()
        if env_key in env:
            values[key] = _coerce(env[env_key], annotation, key, f"${env_key}")
    for old, new in _renamed(types_by_name).items():
        old_key, new_key = env_prefix + old.upper(), env_prefix + new.upper()
        if old_key in env:
            if new_key in env:
                deprecation_warning(f"${old_key} is deprecated and ignored: ${new_key} is set")
            else:
                deprecation_warning(f"${old_key} is deprecated and will be removed: use ${new_key}")
                values[new] = _coerce(env[old_key], types_by_name[new], new, f"${old_key}")
    if "kafka_bootstrap" in types_by_name and not values.get("kafka_bootstrap") and env.get("KAFKA_BOOTSTRAP_SERVERS"):
        values["kafka_bootstrap"] = env["KAFKA_BOOTSTRAP_SERVERS"]
    for key, value in _canonical(overrides or {}, types_by_name, "on the command line").items():
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


# ---------------------------------------------------------------------------------------------
# command-line flags generated from a dataclass


@functools.cache
def _source_comments(klass: type) -> dict[str, str]:
    """Field name -> the trailing ``# comment`` on its line(s) in ``klass``'s own source."""
    try:
        source = textwrap.dedent(inspect.getsource(klass))
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.COMMENT:
                comments[token.start[0]] = token.string.lstrip("#").strip()
        tree = ast.parse(source)
    except (SyntaxError, tokenize.TokenError):
        return {}
    body = next((n.body for n in tree.body if isinstance(n, ast.ClassDef)), [])
    found: dict[str, str] = {}
    for node in body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            lines = range(node.lineno, (node.end_lineno or node.lineno) + 1)
            text = " ".join(comments[n] for n in lines if n in comments)
            if text:
                found[node.target.id] = text
    return found


def field_help(cls: type) -> dict[str, str]:
    """What each field means: ``field(metadata={"help": ...})``, else its trailing ``# comment``, looked
    up through the base classes (a subclass that only changes a default keeps the base's meaning)."""
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            found.update(_source_comments(klass))
    for f in dataclasses.fields(cls):
        if f.metadata.get("help"):
            found[f.name] = str(f.metadata["help"])
    return found


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _shown(value: Any) -> str:
    if isinstance(value, tuple | list):
        return ",".join(map(str, value)) or "''"
    if isinstance(value, dict):
        return json.dumps(value)
    if value == "":
        return "''"
    return str(value)


def _base_type(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


class _Converter:
    """argparse ``type=``: the same coercion as a file or MEDSERL_* value, with argparse's message."""

    def __init__(self, annotation: Any, name: str):
        self.annotation = annotation
        self.name = name
        base = _base_type(annotation)
        self.__name__ = getattr(typing.get_origin(base) or base, "__name__", "value")

    def __call__(self, text: str) -> Any:
        try:
            return _coerce(text, self.annotation, self.name, "the command line")
        except SettingsError:
            raise argparse.ArgumentTypeError(f"invalid {self.__name__} value: {text!r}") from None


class _Toggle(argparse.Action):
    """``--x`` / ``--no-x`` for a boolean field (argparse's BooleanOptionalAction edits the help text)."""

    def __init__(self, option_strings, dest, **kwargs):
        kwargs.pop("type", None)
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, not (option_string or "").startswith("--no-"))


class _Deprecated(argparse.Action):
    """An old flag name: stores into the new dest and warns once."""

    def __init__(self, option_strings, dest, new_flag: str = "", **kwargs):
        self.new_flag = new_flag
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        deprecation_warning(f"{option_string} is deprecated and will be removed: use {self.new_flag}")
        setattr(namespace, self.dest, values)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_dataclass_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    defaults: bool = True,
    choices: dict[str, Sequence[str]] | None = None,
    exclude: Iterable[str] = (),
) -> None:
    """One flag per field of ``cls`` (``--field-name``; a bool gets ``--x/--no-x``), typed from its
    annotation, its help the field's meaning and default. Old names (``DEPRECATED_NAMES``) stay
    accepted as hidden flags that warn.

    ``defaults=True``: the namespace carries every field (``dataclass_from_args`` builds ``cls``).
    ``defaults=False``: only flags actually given appear, so they can be layered over a config file
    and the environment (``given_settings``) while ``--help`` still shows the dataclass default.
    """
    choices = choices or {}
    skipped = set(exclude)
    meaning = field_help(cls)
    types_by_name = _field_types(cls)
    for f in dataclasses.fields(cls):
        if f.name in skipped:
            continue
        annotation = types_by_name[f.name]
        default = field_default(f)
        text = meaning.get(f.name, "")
        help_text = (f"{text} (default: {_shown(default)})" if text else f"default: {_shown(default)}").replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": f.name, "help": help_text,
                                  "default": default if defaults else argparse.SUPPRESS}
        options = [flag_name(f.name)]
        if _base_type(annotation) is bool:
            options.append("--no-" + f.name.replace("_", "-"))
            kwargs["action"] = _Toggle
        else:
            kwargs["type"] = _Converter(annotation, f.name)
            if f.name in choices:
                kwargs["choices"] = tuple(choices[f.name])
            else:
                kwargs["metavar"] = "A,B,..." if typing.get_origin(annotation) in (list, tuple) else f.name.upper()
        parser.add_argument(*options, **kwargs)
    for old, new in _renamed(types_by_name).items():
        if new not in skipped:
            parser.add_argument(flag_name(old), dest=new, action=_Deprecated, new_flag=flag_name(new),
                                type=_Converter(types_by_name[new], new), default=argparse.SUPPRESS,
                                help=argparse.SUPPRESS)


def given_settings(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` that ``args`` carries (with ``defaults=False``: the flags given)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}


def dataclass_from_args(cls: type[D], args: argparse.Namespace) -> D:
    """``cls`` built from the flags ``add_dataclass_arguments`` generated for it."""
    return cls(**given_settings(args, cls))
