"""The ``openai_chat`` backend: any OpenAI-compatible chat endpoint (GPT-4o as a reference assessor)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from services.common.deadline import checkpoint
from services.inference.base import (
    Completion,
    GenerationParams,
    InferenceBackend,
    InferenceError,
    Prompt,
)

log = logging.getLogger(__name__)


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
            checkpoint("between prompts")  # a gRPC call past its deadline stops here (a no-op otherwise)
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
