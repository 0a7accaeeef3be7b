"""The interface every backend implements (generate, load_policy), its data types and shared helpers."""

from __future__ import annotations

import hashlib
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Messages = list[dict]
Prompt = Messages | str | list[int]

BACKENDS = ("transformers", "vllm", "openai_chat")


class InferenceError(RuntimeError):
    """The backend could not produce completions (server down, bad response, model missing)."""


class PolicyUpdateError(InferenceError):
    """A new policy version could not be loaded; the previous one stays in use."""


@dataclass(frozen=True)
class GenerationParams:
    """Sampling parameters (the same names as ``medserl.v1.SamplingParams`` plus ``top_logprobs``)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    n: int = 1
    seed: int | None = None
    top_logprobs: int = 0  # alternatives to record per generated position (0: none)

    def validate(self) -> GenerationParams:
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.top_logprobs < 0:
            raise ValueError(f"top_logprobs must be >= 0, got {self.top_logprobs}")
        return self

    def merged_with_proto(self, proto) -> GenerationParams:
        """These defaults overridden by the fields a client set in a ``SamplingParams`` message."""
        changes: dict[str, Any] = {}
        if proto is None:
            return self
        if proto.temperature > 0:
            changes["temperature"] = proto.temperature
        if proto.top_p > 0:
            changes["top_p"] = proto.top_p
        if proto.max_new_tokens > 0:
            changes["max_new_tokens"] = proto.max_new_tokens
        if proto.n > 0:
            changes["n"] = proto.n
        if proto.seed:
            changes["seed"] = proto.seed
        return replace(self, **changes).validate()


@dataclass
class Completion:
    prompt_index: int
    prompt_token_ids: list[int]
    token_ids: list[int]  # generated ids, the end-of-turn token included when the model stopped
    logprobs: list[float]  # one per generated token (see the module doc for the convention)
    text: str  # decoded completion, special tokens removed
    finish_reason: str  # "stop" (end of turn) | "length" (max_new_tokens reached)
    tokens: list[str] = field(default_factory=list)  # text of each generated token
    top_logprobs: list[dict[str, float]] | None = None  # per position: token text -> log-prob

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids) if self.token_ids else len(self.tokens)


class InferenceBackend(ABC):
    """What the injector and the assessor call. Implementations are thread-safe."""

    name = "abstract"

    @abstractmethod
    def generate(self, prompts: Sequence[Prompt], params: GenerationParams) -> list[Completion]: ...

    def load_policy(self, version: int, checkpoint_uri: str, kind: str = "lora") -> None:
        """Switch to a new policy version without a restart (raise PolicyUpdateError if impossible)."""
        raise PolicyUpdateError(f"the {self.name} backend cannot load policy updates")

    @property
    def checkpoint_hash(self) -> str:
        """A content hash of the weights served (the assessor records it on every verdict)."""
        return ""

    @property
    def model_name(self) -> str:
        return ""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the model / connections."""


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def local_path(uri: str) -> Path:
    """A checkpoint URI as a local path (``file://`` or a plain path); other schemes are refused."""
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    elif "://" in uri:
        raise PolicyUpdateError(f"checkpoint uri {uri!r}: only local paths and file:// are supported here; "
                                "sync the checkpoint to a shared volume first")
    try:
        path = Path(uri)
        found = path.exists()
    except (OSError, ValueError) as exc:  # a name too long, a NUL byte: not a path at all
        raise PolicyUpdateError(f"checkpoint uri is not a usable path ({type(exc).__name__})") from None
    if not found:
        raise PolicyUpdateError(f"checkpoint not found: {str(path)[:300]}")
    return path


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".json", ".model", ".txt")


MAX_CHECKPOINT_ENTRIES = 10_000  # entries walked in a checkpoint folder before it is refused as not one
_TOP_LEVEL_SUFFIXES = (".safetensors", ".bin", ".pt")  # a checkpoint folder has its weights at the top...
_TOP_LEVEL_CONFIGS = ("config.json", "adapter_config.json")  # ...or its config


def checkpoint_sha256(path: str | Path, max_entries: int = MAX_CHECKPOINT_ENTRIES) -> str:
    """sha256 over the weight and config files of a checkpoint folder (names and contents, sorted).

    A folder must hold a weight or config file at its top level, and the walk stops after ``max_entries``
    entries: a policy update naming ``/`` (issue 12's fuzzing) is refused at once instead of hashing the
    whole file system."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_file():
        files = [path]
    else:
        if not any((p.suffix in _TOP_LEVEL_SUFFIXES or p.name in _TOP_LEVEL_CONFIGS) and p.is_file()
                   for p in path.iterdir()):
            raise FileNotFoundError(f"no checkpoint files in {path} (no weights or config.json at its top level)")
        files = []
        for n, p in enumerate(path.rglob("*"), start=1):
            if n > max_entries:
                raise ValueError(f"{path} has more than {max_entries} entries: not a checkpoint folder")
            if p.suffix in WEIGHT_SUFFIXES and p.is_file():
                files.append(p)
        files.sort()
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def apply_chat_template(tokenizer, messages: Messages, chat_template_kwargs: dict | None = None) -> list[int]:
    """Prompt token ids of a chat, ending with the assistant's generation prompt."""
    kwargs = dict(chat_template_kwargs or {})
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **kwargs)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_prompt(tokenizer, prompt: Prompt, chat_template_kwargs: dict | None = None) -> list[int]:
    """Token ids of a prompt given as chat messages, a string, or already as token ids."""
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return list(prompt)
    if isinstance(prompt, str):
        return list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
        return apply_chat_template(tokenizer, prompt, chat_template_kwargs)
    raise ValueError("a prompt must be a string, token ids, or a list of {'role', 'content'} messages")
