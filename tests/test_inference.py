"""The inference backends: transformers in-process, vLLM over HTTP (a local fake server), OpenAI chat."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from medec.prepare import read_medec_csv
from services.common import formats
from services.inference import (
    Completion,
    GenerationParams,
    InferenceError,
    PolicyUpdateError,
    checkpoint_sha256,
    encode_prompt,
)
from services.inference.openai_chat import OpenAIChatBackend
from services.inference.transformers_backend import TransformersBackend
from services.inference.vllm_backend import VllmBackend
from tests.fake_vllm_server import FakeVllmServer, make_lora_adapter

VALIDATION = "MEDEC-MS-ValidationSet-with-GroundTruth-and-ErrorType.csv"


@pytest.fixture(scope="module")
def notes(medec_path) -> list[list[tuple[int, str]]]:
    medec_notes, _ = read_medec_csv(medec_path / VALIDATION)
    return [[(int(i), s) for i, s in n.sentences] for n in medec_notes[:6]]


@pytest.fixture(scope="module")
def backend(tiny_model_dir) -> TransformersBackend:
    return TransformersBackend(tiny_model_dir, max_batch_size=8)


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return [make_lora_adapter(tiny_model_dir, root / f"v{i}", seed=i) for i in (1, 2)]


def full_forward_logprobs(backend: TransformersBackend, completion: Completion) -> list[float]:
    import torch

    ids = torch.tensor([completion.prompt_token_ids + completion.token_ids])
    with torch.inference_mode():
        logp = backend.model(input_ids=ids).logits[0].float().log_softmax(-1)
    start = len(completion.prompt_token_ids) - 1
    return [logp[start + i, t].item() for i, t in enumerate(completion.token_ids)]


# --------------------------------------------------------------------------------------------------
# transformers
# --------------------------------------------------------------------------------------------------


def test_batched_left_padded_generation_equals_one_prompt_at_a_time(backend, notes):
    prompts = [formats.assessor_messages(n) for n in notes[:4]]
    assert len({len(encode_prompt(backend.tokenizer, p)) for p in prompts}) > 1, "prompts of different lengths"
    params = GenerationParams(temperature=0, max_new_tokens=12)
    batched = backend.generate(prompts, params)
    assert [c.prompt_index for c in batched] == [0, 1, 2, 3]
    for i, prompt in enumerate(prompts):
        alone = backend.generate([prompt], params)[0]
        assert alone.token_ids == batched[i].token_ids
        assert alone.logprobs == pytest.approx(batched[i].logprobs, abs=1e-4)
        assert alone.prompt_token_ids == batched[i].prompt_token_ids


def test_logprobs_are_those_of_the_sampled_tokens(backend, notes):
    out = backend.generate([formats.injector_messages(notes[0], "inject")],
                           GenerationParams(temperature=1.0, top_p=0.9, max_new_tokens=16, n=2, seed=3))
    assert len(out) == 2 and {c.prompt_index for c in out} == {0}
    for completion in out:
        assert len(completion.logprobs) == len(completion.token_ids) == len(completion.tokens) > 0
        assert completion.logprobs == pytest.approx(full_forward_logprobs(backend, completion), abs=1e-4)
        assert completion.finish_reason in ("stop", "length")
        assert completion.text == backend.tokenizer.decode(completion.token_ids, skip_special_tokens=True)


def test_seeded_sampling_repeats_and_samples_of_a_group_differ(backend, notes):
    prompts = [formats.injector_messages(notes[1], "paraphrase")]
    params = GenerationParams(temperature=1.0, max_new_tokens=10, n=4, seed=11)
    first, second = backend.generate(prompts, params), backend.generate(prompts, params)
    assert [c.token_ids for c in first] == [c.token_ids for c in second]
    assert len({tuple(c.token_ids) for c in first}) > 1
    other = backend.generate(prompts, GenerationParams(temperature=1.0, max_new_tokens=10, n=4, seed=12))
    assert [c.token_ids for c in other] != [c.token_ids for c in first]


def test_top_logprobs_include_the_sampled_token(backend, notes):
    out = backend.generate([formats.assessor_messages(notes[2])],
                           GenerationParams(temperature=0, max_new_tokens=6, top_logprobs=3))[0]
    assert out.top_logprobs is not None and len(out.top_logprobs) == len(out.token_ids)
    for token, lp, top in zip(out.tokens, out.logprobs, out.top_logprobs, strict=True):
        assert len(top) <= 3 and top[token] == pytest.approx(lp, abs=1e-5)  # greedy: the best one


def test_bad_params_and_prompts_are_rejected(backend):
    with pytest.raises(ValueError, match="top_p"):
        backend.generate(["x"], GenerationParams(top_p=0))
    with pytest.raises(ValueError, match="prompt must be"):
        backend.generate([{"no": "role"}], GenerationParams(max_new_tokens=2))  # type: ignore[list-item]


def test_lora_policy_versions_load_without_a_restart(tiny_model_dir, adapters, notes):
    backend = TransformersBackend(tiny_model_dir)
    prompt = [formats.injector_messages(notes[0], "inject")]
    greedy = GenerationParams(temperature=0, max_new_tokens=6)
    base = backend.generate(prompt, greedy)[0]
    base_hash = backend.checkpoint_hash
    backend.load_policy(1, str(adapters[0]), "lora")
    v1 = backend.generate(prompt, greedy)[0]
    assert v1.logprobs != pytest.approx(base.logprobs, abs=1e-4)
    assert v1.logprobs == pytest.approx(full_forward_logprobs(backend, v1), abs=1e-4)
    assert backend.checkpoint_hash == checkpoint_sha256(adapters[0]) != base_hash
    backend.load_policy(2, f"file://{adapters[1]}", "lora")
    v2 = backend.generate(prompt, greedy)[0]
    assert v2.logprobs != pytest.approx(v1.logprobs, abs=1e-4)
    assert list(backend.model.peft_config) == ["policy-v2"], "the previous adapter is dropped"
    # a broken checkpoint is refused and the current version keeps serving
    with pytest.raises(PolicyUpdateError, match="not found"):
        backend.load_policy(3, "/nonexistent/adapter", "lora")
    assert backend.generate(prompt, greedy)[0].logprobs == pytest.approx(v2.logprobs, abs=1e-5)
    # full weights replace the model
    backend.load_policy(4, str(tiny_model_dir), "full")
    assert backend.generate(prompt, greedy)[0].logprobs == pytest.approx(base.logprobs, abs=1e-4)


# --------------------------------------------------------------------------------------------------
# vLLM over HTTP, against the fake server
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_vllm(tiny_model_dir):
    with FakeVllmServer(tiny_model_dir, served_name="qwen-tiny") as server:
        yield server


def test_vllm_backend_returns_token_ids_and_logprobs(fake_vllm, tiny_model_dir, notes):
    backend = VllmBackend(fake_vllm.base_url, "qwen-tiny", tokenizer_path=tiny_model_dir)
    prompts = [formats.injector_messages(n, "paraphrase") for n in notes[:3]]
    out = backend.generate(prompts, GenerationParams(temperature=1.0, top_p=0.95, max_new_tokens=8, n=2, seed=5))
    assert [c.prompt_index for c in out] == [0, 0, 1, 1, 2, 2]
    (call,) = fake_vllm.state.completions()
    body = call.body
    assert body["model"] == "qwen-tiny" and body["n"] == 2 and body["seed"] == 5 and body["max_tokens"] == 8
    assert body["return_token_ids"] is True and body["return_tokens_as_token_ids"] is True and body["logprobs"] >= 1
    local = TransformersBackend(tiny_model_dir)
    for i, completion in enumerate(out):
        assert completion.prompt_token_ids == encode_prompt(local.tokenizer, prompts[completion.prompt_index])
        assert body["prompt"][completion.prompt_index] == completion.prompt_token_ids
        choice = call.response["choices"][i]
        assert completion.token_ids == choice["token_ids"] and len(completion.logprobs) == len(completion.token_ids)
        # the fake server samples with the real model: its log-probs are the model's
        assert completion.logprobs == pytest.approx(full_forward_logprobs(local, completion), abs=1e-4)


def test_vllm_backend_loads_and_unloads_lora_adapters(fake_vllm, tiny_model_dir, adapters, notes):
    backend = VllmBackend(fake_vllm.base_url, "qwen-tiny", tokenizer_path=tiny_model_dir)
    prompt = [formats.injector_messages(notes[0], "inject")]
    params = GenerationParams(temperature=0, max_new_tokens=4)
    backend.generate(prompt, params)
    assert backend.checkpoint_hash == checkpoint_sha256(tiny_model_dir)
    backend.load_policy(1, str(adapters[0]))
    assert backend.checkpoint_hash == checkpoint_sha256(adapters[0])
    backend.generate(prompt, params)
    backend.load_policy(2, f"file://{adapters[1]}")
    backend.generate(prompt, params)
    assert fake_vllm.state.lora_calls() == [("load_lora_adapter", "policy-v1"), ("load_lora_adapter", "policy-v2"),
                                           ("unload_lora_adapter", "policy-v1")]
    assert [c.body["model"] for c in fake_vllm.state.completions()] == ["qwen-tiny", "policy-v1", "policy-v2"]
    load = next(c for c in fake_vllm.state.calls if c.path.endswith("load_lora_adapter"))
    assert load.body["lora_path"] == str(adapters[0])
    # refused updates keep the current adapter
    with pytest.raises(PolicyUpdateError):
        backend.load_policy(3, "/nonexistent/adapter")
    with pytest.raises(PolicyUpdateError, match="LoRA"):
        backend.load_policy(3, str(adapters[0]), "full")
    backend.generate(prompt, params)
    assert fake_vllm.state.completions()[-1].body["model"] == "policy-v2"
    backend.close()  # other replicas may share the server: closing unloads nothing
    assert fake_vllm.state.lora_calls()[-1] == ("unload_lora_adapter", "policy-v1")


def test_vllm_backend_retries_server_errors_and_reports_client_errors(fake_vllm, tiny_model_dir):
    backend = VllmBackend(fake_vllm.base_url, "qwen-tiny", tokenizer_path=tiny_model_dir, max_retries=2)
    fake_vllm.fail_next(503, times=2)
    assert len(backend.generate(["hello"], GenerationParams(max_new_tokens=3))) == 1
    fake_vllm.fail_next(500, times=3)
    with pytest.raises(InferenceError, match="HTTP 500"):
        backend.generate(["hello"], GenerationParams(max_new_tokens=3))
    wrong = VllmBackend(fake_vllm.base_url, "not-served", tokenizer_path=tiny_model_dir)
    with pytest.raises(InferenceError, match="404.*does not exist"):
        wrong.generate(["hello"], GenerationParams(max_new_tokens=3))
    down = VllmBackend("http://127.0.0.1:9", "qwen-tiny", tokenizer_path=tiny_model_dir, max_retries=0, timeout_s=2)
    with pytest.raises(InferenceError, match="failed"):
        down.generate(["hello"], GenerationParams(max_new_tokens=3))


# --------------------------------------------------------------------------------------------------
# OpenAI-compatible chat
# --------------------------------------------------------------------------------------------------


class _ChatHandler(BaseHTTPRequestHandler):
    requests: list[dict] = []

    def log_message(self, *_args):
        return

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        answer = ["error_flag", ":", " 1", "\n", "error_sentence_id", ":", " 2", "\n", "corrected_sentence", ":", " NA"]
        content = [{"token": t, "logprob": -0.1, "bytes": None,
                    "top_logprobs": [{"token": t, "logprob": -0.1, "bytes": None}] +
                    ([{"token": " 0", "logprob": -2.5, "bytes": None}] if t == " 1" else [])} for t in answer]
        payload = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                   "choices": [{"index": 0, "finish_reason": "stop", "logprobs": {"content": content},
                                "message": {"role": "assistant", "content": "".join(answer)}}],
                   "usage": {"prompt_tokens": 10, "completion_tokens": len(answer), "total_tokens": 10 + len(answer)}}
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_openai_chat_backend_returns_text_and_logprobs(notes):
    from services.assessor.detector import flag_probability

    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChatHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        backend = OpenAIChatBackend("gpt-4o", base_url=f"http://127.0.0.1:{server.server_address[1]}/v1",
                                    api_key="sk-test", max_retries=0)
        out = backend.generate([formats.assessor_messages(notes[0])],
                               GenerationParams(temperature=0, max_new_tokens=50, top_logprobs=5, seed=1))
    finally:
        server.shutdown()
        server.server_close()
    (completion,) = out
    request = _ChatHandler.requests[-1]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-test"
    assert request["body"]["logprobs"] is True and request["body"]["top_logprobs"] == 5
    assert request["body"]["messages"] == formats.assessor_messages(notes[0])
    parsed = formats.parse_assessor_output(completion.text)
    assert parsed == formats.AssessorOutput(True, 2, None)
    assert completion.token_ids == [] and len(completion.logprobs) == len(completion.tokens) == 11
    p = flag_probability(completion.tokens, completion.logprobs, completion.top_logprobs, True)
    assert p == pytest.approx(1 / (1 + pytest.importorskip("math").exp(-2.4)), abs=1e-9)
    assert backend.checkpoint_hash == "model:gpt-4o"
