"""The ``vllm`` backend: vLLM's OpenAI-compatible server, with runtime LoRA adapter loading."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from services.common.deadline import checkpoint, time_left
from services.inference.base import (
    Completion,
    GenerationParams,
    InferenceBackend,
    InferenceError,
    PolicyUpdateError,
    Prompt,
    checkpoint_sha256,
    encode_prompt,
)

log = logging.getLogger(__name__)


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
        self._adapter_path = ""  # the loaded adapter's path, to load it again after a server restart
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
            checkpoint(f"before POST {path}")  # for a gRPC call: never a request after its deadline
            try:
                # on behalf of a gRPC call the request waits no longer than the call has left
                timeout = max(0.05, min(self.timeout_s, time_left(self.timeout_s)))
                status, payload = _post_json(self.base_url + path, body, timeout, self._headers)
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
        name = f"policy-v{version}"  # one name per version: a name is never reused for other weights
        self._load_adapter(name, lora_path)
        with self._lock:
            old = [a for a in self._adapters if a != name]
            self._adapters = [name]
            self.served_model = name
            self._adapter_path = lora_path
        for adapter in old:
            try:
                self._post("/unload_lora_adapter", {"lora_name": adapter})
            except InferenceError as exc:
                log.warning("could not unload an old LoRA adapter", extra={"adapter": adapter, "error": str(exc)})
        self._hash, self._hash_source = None, Path(lora_path)  # not visible from here: the name identifies it

    def _load_adapter(self, name: str, lora_path: str) -> None:
        """Load an adapter; "already loaded" (a restarted client, the same server) is success."""
        try:
            self._post("/load_lora_adapter", {"lora_name": name, "lora_path": lora_path})
        except InferenceError as exc:
            if "already" in str(exc).lower() and "loaded" in str(exc).lower():
                log.info("LoRA adapter already loaded on the server", extra={"adapter": name})
                return
            raise PolicyUpdateError(f"vLLM refused adapter {name}: {exc}") from exc

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
        try:
            payload = self._post("/completions", body)
        except InferenceError as exc:
            # a restarted model server has dropped its runtime adapters (404 for our adapter name):
            # load ours again and retry once
            if " 404" not in str(exc) or self.served_model == self.base_model or not self._adapter_path:
                raise
            log.warning("model server lost the policy adapter; loading it again", extra={"adapter": self.served_model})
            self._load_adapter(self.served_model, self._adapter_path)
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
        raw_logprobs = lp.get("token_logprobs") or []
        if any(x is None for x in raw_logprobs):  # the learner needs every behaviour log-prob: never a NaN
            raise InferenceError("vLLM returned a completion with a missing token log-prob")
        token_logprobs = [float(x) for x in raw_logprobs]
        token_ids = choice.get("token_ids")
        if token_ids is None:
            token_ids = [self._token_id(t) for t in raw_tokens]
        token_ids = [int(t) for t in token_ids]
        if len(token_logprobs) != len(token_ids):
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
