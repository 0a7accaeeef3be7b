"""Backend settings (one definition) and the factory that builds a backend from them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

from services.common import formats
from services.common.settings import ServiceSettings
from services.inference.base import BACKENDS, InferenceBackend


@dataclass
class BackendConfig:
    """Everything any backend needs. The one definition: model services inherit these fields."""

    backend: str = "transformers"  # transformers | vllm | openai_chat (assessor: also the baselines)
    model: str = ""  # model folder or hub id (transformers), served model name (vllm, openai_chat)
    adapter: str = ""  # transformers: a LoRA adapter folder to load on top of ``model`` at start
    device: str = "cpu"
    dtype: str = "auto"
    max_batch_size: int = 16
    base_url: str = ""  # vllm / openai_chat endpoint
    tokenizer: str = ""  # vllm: local tokenizer folder when ``model`` is not a path
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this variable, never from a file
    timeout_s: float = 300.0
    chat_template_kwargs: dict[str, object] = field(default_factory=lambda: dict(formats.CHAT_TEMPLATE_KWARGS))

    def backend_config(self) -> BackendConfig:
        """Just the backend part (a model service's settings carry more)."""
        values = {f.name: getattr(self, f.name) for f in fields(BackendConfig)}
        return BackendConfig(**{**values, "chat_template_kwargs": dict(self.chat_template_kwargs or {})})


@dataclass
class ModelServiceSettings(ServiceSettings, BackendConfig):
    """Settings of a service that runs a model (injector, assessor): the runtime's plus the backend's."""


def build_backend(config: BackendConfig) -> InferenceBackend:
    """The backend ``config.backend`` names; each module is imported only when chosen."""
    if config.backend == "transformers":
        from services.inference.transformers_backend import TransformersBackend

        if not config.model:
            raise ValueError("the transformers backend needs model=<model folder>")
        return TransformersBackend(config.model, device=config.device, dtype=config.dtype,
                                   max_batch_size=config.max_batch_size,
                                   chat_template_kwargs=config.chat_template_kwargs, adapter_path=config.adapter or None)
    if config.backend == "vllm":
        from services.inference.vllm_backend import VllmBackend

        if not config.base_url or not config.model:
            raise ValueError("the vllm backend needs base_url=<http://host:port> and model=<served model>")
        return VllmBackend(config.base_url, config.model, tokenizer_path=config.tokenizer or None,
                           timeout_s=config.timeout_s, api_key=os.environ.get(config.api_key_env, ""),
                           chat_template_kwargs=config.chat_template_kwargs)
    if config.backend == "openai_chat":
        from services.inference.openai_chat import OpenAIChatBackend

        if not config.model:
            raise ValueError("the openai_chat backend needs model=<chat model name>")
        return OpenAIChatBackend(config.model, base_url=config.base_url or None,
                                 api_key=os.environ.get(config.api_key_env), timeout_s=config.timeout_s)
    raise ValueError(f"unknown inference backend {config.backend!r}; choose one of {', '.join(BACKENDS)}")
