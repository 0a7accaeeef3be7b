"""The ``transformers`` backend: a Hugging Face causal LM in this process (CPU or GPU)."""

from __future__ import annotations

import inspect
import logging
import random
import threading
from collections.abc import Sequence
from pathlib import Path

from services.common.deadline import checkpoint
from services.inference.base import (
    Completion,
    GenerationParams,
    InferenceBackend,
    PolicyUpdateError,
    Prompt,
    checkpoint_sha256,
    encode_prompt,
    local_path,
)

log = logging.getLogger(__name__)


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
                checkpoint("between batches")  # a gRPC call past its deadline stops here (a no-op otherwise)
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
                checkpoint("between generated tokens")
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
