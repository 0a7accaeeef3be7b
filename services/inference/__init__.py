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

from services.inference.base import (
    BACKENDS,
    Completion,
    GenerationParams,
    InferenceBackend,
    InferenceError,
    PolicyUpdateError,
    checkpoint_sha256,
    encode_prompt,
    local_path,
)
from services.inference.config import BackendConfig, ModelServiceSettings, build_backend

__all__ = [
    "BACKENDS", "BackendConfig", "Completion", "GenerationParams", "InferenceBackend", "InferenceError",
    "ModelServiceSettings", "PolicyUpdateError", "build_backend", "checkpoint_sha256", "encode_prompt", "local_path",
]
