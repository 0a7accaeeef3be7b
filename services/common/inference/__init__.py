"""One inference interface for the injector and the assessor, three implementations.

``generate(prompts, params) -> list[Completion]``: prompts are chat messages (``[{"role", "content"}]``,
rendered with the model's chat template) or plain strings; each prompt yields ``params.n``
completions, prompt-major (``completion.prompt_index`` says which prompt).

* ``transformers``: in-process, batched with left padding, CPU or GPU, seeded. The sampler and the
  recorded log-probs come from the same forward pass.
* ``vllm``: vLLM's OpenAI-compatible server over HTTP (``/v1/completions`` with token-id prompts,
  ``return_token_ids`` and ``logprobs``); new policy versions are LoRA adapters loaded and unloaded
  at run time (``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``; the server needs
  ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``). vLLM itself is not a dependency of this module.
* ``openai_chat``: any OpenAI-compatible chat endpoint (GPT-4o as a reference assessor). It gives
  text and per-token log-probs but no token ids, so it cannot serve the policy.

Log-prob convention (every backend): ``Completion.logprobs[i]`` is the log-probability of the sampled
token under the model's *raw* next-token distribution (log-softmax of the logits: no temperature,
no top-p), which is what vLLM returns by default. A learner recomputes the same quantity.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import random
import threading
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from services.common import formats
from services.common.settings import ServiceSettings

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
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.top_logprobs < 0:
            raise ValueError(f"top_logprobs must be >= 0, got {self.top_logprobs}")
        return self

    def to_proto(self):
        from medserl.v1 import messages_pb2 as pb

        return pb.SamplingParams(temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens,
                                 n=self.n, seed=self.seed or 0)

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
    path = Path(uri)
    if not path.exists():
        raise PolicyUpdateError(f"checkpoint not found: {path}")
    return path


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".json", ".model", ".txt")


def checkpoint_sha256(path: str | Path) -> str:
    """sha256 over the weight and config files of a checkpoint folder (names and contents, sorted)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no checkpoint files in {path}")
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


# --------------------------------------------------------------------------------------------------
# transformers (in-process)
# --------------------------------------------------------------------------------------------------


class TransformersBackend(InferenceBackend):
    """A Hugging Face causal LM in this process. Batched sampling with a KV cache and left padding."""

    name = "transformers"

    def __init__(self, model_path: str | Path, *, device: str = "cpu", dtype: str = "auto",
                 max_batch_size: int = 16, chat_template_kwargs: dict | None = None,
                 adapter_path: str | Path | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_path = Path(model_path)
        if not self.model_path.exists():
            raise FileNotFoundError(f"model not found: {self.model_path}")
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if device == "auto" else device))
        self.max_batch_size = max_batch_size
        self.chat_template_kwargs = chat_template_kwargs or {}
        self._lock = threading.RLock()
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        torch_dtype = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16,
                       "float16": torch.float16}[dtype]
        self._dtype = torch_dtype
        self.model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch_dtype).to(self.device).eval()
        self._hash = checkpoint_sha256(self.model_path)
        self._adapter: str | None = None
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else ([eos] if eos is not None else []))
        if self.tokenizer.eos_token_id is not None:
            eos_ids.add(self.tokenizer.eos_token_id)
        self.eos_ids = sorted(eos_ids)
        # transformers 5 renamed ``past_key_values`` to ``cache`` (argument and output field)
        forward_args = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward_args else "past_key_values"
        if adapter_path:
            self.load_policy(0, str(adapter_path), "lora")

    @property
    def checkpoint_hash(self) -> str:
        return self._hash

    @property
    def model_name(self) -> str:
        return str(self.model_path)

    # --- policy updates ---------------------------------------------------------------------------
    def load_policy(self, version: int, checkpoint_uri: str, kind: str = "lora") -> None:
        """Swap in a new version: full weights, or a LoRA adapter on the base (the previous one is deleted)."""
        from transformers import AutoModelForCausalLM

        path = local_path(checkpoint_uri)
        if kind not in ("lora", "full"):
            raise PolicyUpdateError(f"unknown policy kind {kind!r}: use 'lora' or 'full'")
        try:
            if kind == "full":
                model = AutoModelForCausalLM.from_pretrained(path, dtype=self._dtype).to(self.device).eval()
                with self._lock:
                    self.model, self._adapter = model, None
            else:
                self._load_lora(path, f"policy-v{version}")
        except Exception as exc:  # noqa: BLE001 - any load failure keeps the old weights
            raise PolicyUpdateError(f"could not load {kind} checkpoint {path}: {type(exc).__name__}: {exc}") from exc
        self._hash = checkpoint_sha256(path)

    def _load_lora(self, path: Path, name: str) -> None:
        from peft import PeftModel

        with self._lock:
            previous = self._adapter
            if previous is None or not isinstance(self.model, PeftModel):
                self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name).to(self.device).eval()
            else:
                if name == previous:
                    self.model.delete_adapter(previous)  # the same version re-published: reload its weights
                    previous = None
                try:
                    self.model.load_adapter(str(path), adapter_name=name)
                    self.model.set_adapter(name)
                except Exception:
                    if name in self.model.peft_config and name != previous:
                        self.model.delete_adapter(name)
                    raise
                if previous and previous != name:
                    self.model.delete_adapter(previous)
                self.model.eval()
            self._adapter = name

    # --- generation -------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Prompt], params: GenerationParams) -> list[Completion]:
        params.validate()
        encoded = [encode_prompt(self.tokenizer, p, self.chat_template_kwargs) for p in prompts]
        rows = [(i, ids) for i, ids in enumerate(encoded) for _ in range(params.n)]
        seed = params.seed if params.seed is not None else random.randrange(2**31)
        out: list[Completion] = []
        with self._lock:
            for start in range(0, len(rows), self.max_batch_size):
                chunk = rows[start : start + self.max_batch_size]
                out.extend(self._generate_batch(chunk, params, seed + start))
        return out

    def _generate_batch(self, rows: list[tuple[int, list[int]]], params: GenerationParams, seed: int) -> list[Completion]:
        import torch

        device = self.device
        width = max(len(ids) for _, ids in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (_, ids) in enumerate(rows):
            if ids:
                input_ids[r, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
                attention[r, width - len(ids):] = 1
        input_ids, attention = input_ids.to(device), attention.to(device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        generator = torch.Generator(device=device).manual_seed(seed)
        eos = torch.tensor(self.eos_ids, device=device)
        batch = len(rows)
        done = torch.zeros(batch, dtype=torch.bool, device=device)
        stopped = torch.zeros(batch, dtype=torch.bool, device=device)
        tokens: list[list[int]] = [[] for _ in range(batch)]
        logprobs: list[list[float]] = [[] for _ in range(batch)]
        tops: list[list[dict[int, float]]] = [[] for _ in range(batch)]
        past = None
        step_ids, step_positions = input_ids, positions
        with torch.inference_mode():
            for _ in range(params.max_new_tokens):
                output = self.model(input_ids=step_ids, attention_mask=attention, position_ids=step_positions,
                                    use_cache=True, logits_to_keep=1, **{self._cache_arg: past})
                past = getattr(output, self._cache_arg)
                logits = output.logits[:, -1, :].float()
                raw = torch.log_softmax(logits, dim=-1)
                chosen = self._sample(logits, params, generator)
                chosen_lp = raw.gather(-1, chosen[:, None])[:, 0]
                if params.top_logprobs:
                    top_lp, top_ids = raw.topk(params.top_logprobs, dim=-1)
                chosen_list, lp_list = chosen.tolist(), chosen_lp.tolist()
                for r in range(batch):
                    if done[r]:
                        continue
                    tokens[r].append(chosen_list[r])
                    logprobs[r].append(lp_list[r])
                    if params.top_logprobs:
                        tops[r].append(dict(zip(top_ids[r].tolist(), top_lp[r].tolist(), strict=True)))
                hit_eos = torch.isin(chosen, eos) & ~done
                stopped |= hit_eos
                done |= hit_eos
                if bool(done.all()):
                    break
                step_ids = torch.where(done, torch.full_like(chosen, self.pad_id), chosen)[:, None]
                attention = torch.cat([attention, torch.ones((batch, 1), dtype=attention.dtype, device=device)], dim=1)
                step_positions = step_positions[:, -1:] + 1
        results = []
        for r, (prompt_index, ids) in enumerate(rows):
            top = None
            if params.top_logprobs:
                top = [{self.tokenizer.decode([t]): lp for t, lp in pos.items()} for pos in tops[r]]
            results.append(Completion(
                prompt_index=prompt_index,
                prompt_token_ids=list(ids),
                token_ids=tokens[r],
                logprobs=logprobs[r],
                text=self.tokenizer.decode(tokens[r], skip_special_tokens=True),
                finish_reason="stop" if bool(stopped[r]) else "length",
                tokens=[self.tokenizer.decode([t]) for t in tokens[r]],
                top_logprobs=top,
            ))
        return results

    @staticmethod
    def _sample(logits, params: GenerationParams, generator):
        import torch

        if params.temperature == 0:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits / params.temperature, dim=-1)
        if params.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            cumulative = sorted_probs.cumsum(dim=-1)
            drop = cumulative - sorted_probs > params.top_p  # keep the smallest prefix reaching top_p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        return torch.multinomial(probs, 1, generator=generator)[:, 0]

    def close(self) -> None:
        self.model = None


# --------------------------------------------------------------------------------------------------
# vLLM (OpenAI-compatible server, HTTP only)
# --------------------------------------------------------------------------------------------------


def _post_json(url: str, body: dict, timeout_s: float, headers: dict | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            payload = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        payload, status = exc.read(), exc.code
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise InferenceError(f"POST {url} failed: {exc}") from exc
    try:
        return status, json.loads(payload) if payload else None
    except ValueError:
        return status, payload.decode(errors="replace")


class VllmBackend(InferenceBackend):
    """vLLM's OpenAI-compatible server. Prompts are tokenized here (the served model's tokenizer), so
    the prompt token ids a rollout records are exactly the ones the server saw."""

    name = "vllm"

    def __init__(self, base_url: str, model: str, *, tokenizer_path: str | Path | None = None,
                 timeout_s: float = 300.0, api_key: str = "", chat_template_kwargs: dict | None = None,
                 max_retries: int = 2):
        from transformers import AutoTokenizer

        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.base_model = model
        self.served_model = model  # becomes the LoRA adapter's name once a policy version is loaded
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.chat_template_kwargs = chat_template_kwargs or {}
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or model)
        self._lock = threading.Lock()
        self._adapters: list[str] = []
        self._hash: str | None = None  # computed on first use: hashing a 4B model's weights takes a while
        self._hash_source = Path(tokenizer_path or model)

    @property
    def checkpoint_hash(self) -> str:
        """Hash of the served weights: the local model folder (the one vLLM serves) or the loaded adapter."""
        if self._hash is None:
            try:
                self._hash = checkpoint_sha256(self._hash_source) if self._hash_source.is_dir() else ""
            except OSError:
                self._hash = ""
            if not self._hash:
                self._hash = "model:" + self.served_model
        return self._hash

    @property
    def model_name(self) -> str:
        return self.served_model

    def _post(self, path: str, body: dict) -> Any:
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            try:
                status, payload = _post_json(self.base_url + path, body, self.timeout_s, self._headers)
            except InferenceError as exc:
                last = exc
            else:
                if status == 200:
                    return payload
                detail = payload.get("message") if isinstance(payload, dict) else payload
                if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
                    detail = payload["error"].get("message", detail)
                last = InferenceError(f"POST {path}: HTTP {status}: {str(detail)[:300]}")
                if status < 500:
                    raise last
            if attempt < self.max_retries:
                time.sleep(0.5 * 2**attempt)
        raise last or InferenceError(f"POST {path} failed")

    def load_policy(self, version: int, checkpoint_uri: str, kind: str = "lora") -> None:
        if kind != "lora":
            raise PolicyUpdateError("the vllm backend hot-loads LoRA adapters only; full weights need a server restart")
        # the path is read by the vLLM server (a volume it shares with the learner), not by us
        lora_path = checkpoint_uri[len("file://"):] if checkpoint_uri.startswith("file://") else checkpoint_uri
        name = f"policy-v{version}"
        try:
            self._post("/load_lora_adapter", {"lora_name": name, "lora_path": lora_path})
        except InferenceError as exc:
            raise PolicyUpdateError(f"vLLM refused adapter {name}: {exc}") from exc
        with self._lock:
            old = [a for a in self._adapters if a != name]
            self._adapters = [name]
            self.served_model = name
        for adapter in old:
            try:
                self._post("/unload_lora_adapter", {"lora_name": adapter})
            except InferenceError as exc:
                log.warning("could not unload an old LoRA adapter", extra={"adapter": adapter, "error": str(exc)})
        self._hash, self._hash_source = None, Path(lora_path)  # not visible from here: the name identifies it

    def generate(self, prompts: Sequence[Prompt], params: GenerationParams) -> list[Completion]:
        params.validate()
        encoded = [encode_prompt(self.tokenizer, p, self.chat_template_kwargs) for p in prompts]
        if not encoded:
            return []
        body = {
            "model": self.served_model,
            "prompt": encoded,
            "n": params.n,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "logprobs": max(1, params.top_logprobs),
            "return_token_ids": True,
            "return_tokens_as_token_ids": True,
            "skip_special_tokens": True,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        payload = self._post("/completions", body)
        choices = payload.get("choices") if isinstance(payload, dict) else None
        if not isinstance(choices, list) or len(choices) != len(encoded) * params.n:
            raise InferenceError(f"vLLM returned {len(choices) if isinstance(choices, list) else 'no'} choices "
                                 f"for {len(encoded)} prompts x n={params.n}")
        out = []
        for choice in sorted(choices, key=lambda c: c.get("index", 0)):
            index = int(choice.get("index", 0))
            prompt_index = index // params.n
            out.append(self._completion(choice, prompt_index, encoded[prompt_index], params))
        return out

    def _token_id(self, token: str) -> int:
        if token.startswith("token_id:"):
            return int(token[len("token_id:"):])
        return self.tokenizer.convert_tokens_to_ids(token)

    def _completion(self, choice: dict, prompt_index: int, prompt_ids: list[int], params: GenerationParams) -> Completion:
        lp = choice.get("logprobs") or {}
        raw_tokens = lp.get("tokens") or []
        token_logprobs = [float(x) if x is not None else float("nan") for x in (lp.get("token_logprobs") or [])]
        token_ids = choice.get("token_ids")
        if token_ids is None:
            token_ids = [self._token_id(t) for t in raw_tokens]
        token_ids = [int(t) for t in token_ids]
        if token_logprobs and len(token_logprobs) != len(token_ids):
            raise InferenceError(f"vLLM returned {len(token_logprobs)} log-probs for {len(token_ids)} tokens")
        top = None
        if params.top_logprobs and lp.get("top_logprobs"):
            top = [{self.tokenizer.decode([self._token_id(t)]): float(v) for t, v in (pos or {}).items()}
                   for pos in lp["top_logprobs"]]
        finish = choice.get("finish_reason") or "length"
        return Completion(
            prompt_index=prompt_index,
            prompt_token_ids=[int(t) for t in (choice.get("prompt_token_ids") or prompt_ids)],
            token_ids=token_ids,
            logprobs=token_logprobs,
            text=choice.get("text", ""),
            finish_reason="stop" if finish in ("stop", "eos") else finish,
            tokens=[self.tokenizer.decode([t]) for t in token_ids],
            top_logprobs=top,
        )

# --------------------------------------------------------------------------------------------------
# OpenAI-compatible chat (reference assessor)
# --------------------------------------------------------------------------------------------------


class OpenAIChatBackend(InferenceBackend):
    """Chat completions from any OpenAI-compatible endpoint; text and log-probs, no token ids."""

    name = "openai_chat"

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 timeout_s: float = 120.0, max_retries: int = 3):
        from openai import OpenAI

        self._model = model
        self.client = OpenAI(api_key=api_key or "EMPTY", base_url=base_url, timeout=timeout_s,
                             max_retries=max_retries)

    @property
    def model_name(self) -> str:
        return self._model

    @property
    def checkpoint_hash(self) -> str:
        # a hosted model has no weights to hash; the model name is what identifies it
        return "model:" + self._model

    def generate(self, prompts: Sequence[Prompt], params: GenerationParams) -> list[Completion]:
        import openai

        params.validate()
        out: list[Completion] = []
        for index, prompt in enumerate(prompts):
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            kwargs: dict[str, Any] = {"model": self._model, "messages": messages, "n": params.n,
                                      "temperature": params.temperature, "top_p": params.top_p,
                                      "max_tokens": params.max_new_tokens, "logprobs": True}
            if params.top_logprobs:
                kwargs["top_logprobs"] = min(params.top_logprobs, 20)
            if params.seed is not None:
                kwargs["seed"] = params.seed
            try:
                response = self.client.chat.completions.create(**kwargs)
            except openai.OpenAIError as exc:
                raise InferenceError(f"chat completion failed: {type(exc).__name__}: {exc}") from exc
            for choice in sorted(response.choices, key=lambda c: c.index):
                content = (choice.logprobs.content if choice.logprobs else None) or []
                top = None
                if params.top_logprobs:
                    top = [{alt.token: alt.logprob for alt in (item.top_logprobs or [])} for item in content]
                out.append(Completion(
                    prompt_index=index,
                    prompt_token_ids=[],
                    token_ids=[],
                    logprobs=[item.logprob for item in content],
                    text=choice.message.content or "",
                    finish_reason="stop" if choice.finish_reason == "stop" else (choice.finish_reason or "length"),
                    tokens=[item.token for item in content],
                    top_logprobs=top,
                ))
        return out


# --------------------------------------------------------------------------------------------------
# construction from settings
# --------------------------------------------------------------------------------------------------


@dataclass
class BackendConfig:
    """Everything any backend needs; services copy these fields from their settings."""

    backend: str = "transformers"
    model: str = ""  # model folder (transformers), served model name (vllm, openai_chat)
    device: str = "cpu"
    dtype: str = "auto"
    max_batch_size: int = 16
    base_url: str = ""  # vllm / openai_chat endpoint
    tokenizer: str = ""  # vllm: local tokenizer folder when ``model`` is not a path
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this variable, never from a file
    timeout_s: float = 300.0
    adapter: str = ""  # transformers: a LoRA adapter to load at start
    chat_template_kwargs: dict = field(default_factory=dict)


@dataclass
class ModelServiceSettings(ServiceSettings):
    """Settings of a service that runs a model (injector, assessor): which backend, which model."""

    backend: str = "transformers"  # transformers | vllm | openai_chat (assessor: also the baselines)
    model: str = ""  # model folder (transformers) or served model name (vllm, openai_chat)
    adapter: str = ""  # transformers: a LoRA adapter folder on top of ``model``
    device: str = "cpu"
    dtype: str = "auto"
    max_batch_size: int = 16
    base_url: str = ""  # vllm / openai_chat endpoint
    tokenizer: str = ""  # vllm: local tokenizer folder when ``model`` is not a path
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this variable, never from a file
    timeout_s: float = 300.0
    chat_template_kwargs: dict[str, object] = field(default_factory=lambda: dict(formats.CHAT_TEMPLATE_KWARGS))

    def backend_config(self) -> BackendConfig:
        """The backend part of these settings (BackendConfig's fields are a subset of ours)."""
        values = {f.name: getattr(self, f.name) for f in fields(BackendConfig)}
        return BackendConfig(**{**values, "chat_template_kwargs": dict(self.chat_template_kwargs or {})})


def build_backend(config: BackendConfig) -> InferenceBackend:
    import os

    if config.backend == "transformers":
        if not config.model:
            raise ValueError("the transformers backend needs model=<model folder>")
        return TransformersBackend(config.model, device=config.device, dtype=config.dtype,
                                   max_batch_size=config.max_batch_size,
                                   chat_template_kwargs=config.chat_template_kwargs, adapter_path=config.adapter or None)
    if config.backend == "vllm":
        if not config.base_url or not config.model:
            raise ValueError("the vllm backend needs base_url=<http://host:port> and model=<served model>")
        return VllmBackend(config.base_url, config.model, tokenizer_path=config.tokenizer or None,
                           timeout_s=config.timeout_s, api_key=os.environ.get(config.api_key_env, ""),
                           chat_template_kwargs=config.chat_template_kwargs)
    if config.backend == "openai_chat":
        if not config.model:
            raise ValueError("the openai_chat backend needs model=<chat model name>")
        return OpenAIChatBackend(config.model, base_url=config.base_url or None,
                                 api_key=os.environ.get(config.api_key_env), timeout_s=config.timeout_s)
    raise ValueError(f"unknown inference backend {config.backend!r}; choose one of {', '.join(BACKENDS)}")


def sequence_logprob(completion: Completion) -> float:
    """Sum of the completion's token log-probs (NaN-free)."""
    return math.fsum(x for x in completion.logprobs if not math.isnan(x))
