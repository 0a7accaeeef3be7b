"""The vLLM backend through the faults a real cluster has: a model server that restarts (its runtime
LoRA adapters are gone), a restarted injector whose adapter is still loaded, a null log-prob."""

from __future__ import annotations

import pytest

from services.common import formats
from services.inference import GenerationParams, InferenceError
from services.inference.vllm_backend import VllmBackend
from tests.fake_vllm_server import FakeVllmServer, make_lora_adapter


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory):
    return make_lora_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "v1", seed=1)


@pytest.fixture()
def server(tiny_model_dir):
    with FakeVllmServer(tiny_model_dir, served_name="qwen-tiny") as fake:
        yield fake


PROMPT = [formats.injector_messages([(0, "The patient is a 54-year-old man."), (1, "He takes aspirin.")], "inject")]
PARAMS = GenerationParams(temperature=0, max_new_tokens=4)


def test_a_restarted_model_server_gets_the_adapter_again_and_the_call_succeeds(server, tiny_model_dir, adapter):
    backend = VllmBackend(server.base_url, "qwen-tiny", tokenizer_path=tiny_model_dir)
    backend.load_policy(1, str(adapter))
    server.restart()
    backend.generate(PROMPT, PARAMS)  # 404 for policy-v1 -> load it again -> retry
    assert server.state.lora_calls() == [("load_lora_adapter", "policy-v1"), ("load_lora_adapter", "policy-v1")]
    assert server.state.completions()[-1].body["model"] == "policy-v1"


def test_a_restarted_injector_finds_its_adapter_already_loaded_and_uses_it(server, tiny_model_dir, adapter):
    VllmBackend(server.base_url, "qwen-tiny", tokenizer_path=tiny_model_dir).load_policy(1, str(adapter))
    restarted = VllmBackend(server.base_url, "qwen-tiny", tokenizer_path=tiny_model_dir)
    restarted.load_policy(1, str(adapter))  # "already loaded" is success, not a refused update
    restarted.generate(PROMPT, PARAMS)
    assert restarted.model_name == "policy-v1"
    assert server.state.completions()[-1].body["model"] == "policy-v1"


def test_a_null_logprob_is_an_error_never_a_nan(server, tiny_model_dir):
    backend = VllmBackend(server.base_url, "qwen-tiny", tokenizer_path=tiny_model_dir)
    server.state.null_logprobs = 1
    with pytest.raises(InferenceError, match="missing token log-prob"):
        backend.generate(PROMPT, PARAMS)
    assert all(x == x for c in backend.generate(PROMPT, PARAMS) for x in c.logprobs)  # the next call is clean
