"""A local stand-in for vLLM's OpenAI-compatible server, for tests of the ``vllm`` inference backend.

It speaks the parts of vLLM's HTTP API the backend uses and records every call:

* ``POST /v1/completions``: token-id or text prompts (batched), ``n``, ``max_tokens``, ``seed``,
  ``logprobs``, ``return_token_ids`` (``prompt_token_ids`` / ``token_ids`` on each choice) and
  ``return_tokens_as_token_ids`` (``token_id:<id>`` token strings). ``model`` must be the base model
  or a loaded LoRA adapter, else 404 as vLLM answers.
* ``POST /v1/load_lora_adapter`` / ``POST /v1/unload_lora_adapter`` (runtime LoRA updating): 400 for a
  missing path or a name already loaded, 404 for unloading an unknown name.
* ``GET /v1/models``, ``GET /health``.

Completions come from ``responder(prompt_token_ids, model_name, rng) -> str`` (tokenized with the
model's tokenizer, end-of-turn appended) or, without one, are sampled from the tiny model itself
with its true log-probs. ``fail_next(status, times)`` injects server errors.

Run standalone: ``python tests/fake_vllm_server.py --model DIR [--port N]``.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

Responder = Callable[[list[int], str, random.Random], str]


@dataclass
class Recorded:
    path: str
    body: Any
    status: int
    response: Any = None


@dataclass
class FakeVllmState:
    model_dir: Path
    served_name: str
    responder: Responder | None = None
    calls: list[Recorded] = field(default_factory=list)
    adapters: dict[str, str] = field(default_factory=dict)  # lora_name -> lora_path
    failures: list[int] = field(default_factory=list)
    null_logprobs: int = 0  # the next N completion calls return a null log-prob (a real vLLM edge case)
    lock: threading.Lock = field(default_factory=threading.Lock)
    tokenizer: Any = None
    backend: Any = None

    def completions(self) -> list[Recorded]:
        return [c for c in self.calls if c.path == "/v1/completions" and c.status == 200]

    def lora_calls(self) -> list[tuple[str, str]]:
        return [(c.path.rsplit("/", 1)[-1], c.body.get("lora_name")) for c in self.calls
                if c.path.endswith("_lora_adapter") and c.status == 200]


def _error(status: int, message: str, kind: str) -> tuple[int, dict]:
    return status, {"error": {"message": message, "type": kind, "code": status}}


class FakeVllmServer:
    def __init__(self, model_dir: str | Path, *, served_name: str | None = None, responder: Responder | None = None,
                 host: str = "127.0.0.1", port: int = 0):
        from transformers import AutoTokenizer

        self.state = FakeVllmState(Path(model_dir), served_name or str(model_dir), responder)
        self.state.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        state = self.state

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args):  # quiet
                return

            def _send(self, status: int, payload: Any) -> None:
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if isinstance(payload, str) else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/health":
                    return self._send(200, "")
                if self.path == "/v1/models":
                    models = [state.served_name, *state.adapters]
                    return self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in models]})
                return self._send(*_error(404, f"no route {self.path}", "NotFoundError"))

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    return self._send(*_error(400, "body is not JSON", "BadRequestError"))
                with state.lock:
                    failure = state.failures.pop(0) if state.failures else None
                if failure is not None:
                    status, payload = _error(failure, "injected failure", "InternalServerError")
                else:
                    status, payload = _route(state, self.path, body)
                with state.lock:
                    state.calls.append(Recorded(self.path, body, status, payload))
                self._send(status, payload)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="fake-vllm", daemon=True)

    def start(self) -> FakeVllmServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def restart(self) -> None:
        """What a model-server restart does to runtime state: every loaded LoRA adapter is gone."""
        with self.state.lock:
            self.state.adapters.clear()

    def fail_next(self, status: int = 500, times: int = 1) -> None:
        with self.state.lock:
            self.state.failures.extend([status] * times)

    def __enter__(self) -> FakeVllmServer:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()


def _route(state: FakeVllmState, path: str, body: dict) -> tuple[int, Any]:
    if path == "/v1/load_lora_adapter":
        name, lora_path = body.get("lora_name"), body.get("lora_path")
        if not name or not lora_path:
            return _error(400, "lora_name and lora_path are required", "BadRequestError")
        if name in state.adapters:
            return _error(400, f"The lora adapter '{name}' has already been loaded.", "InvalidUserInput")
        if not Path(lora_path).exists():
            return _error(400, f"Loading lora {name} failed: No adapter found for {lora_path}", "BadRequestError")
        state.adapters[name] = lora_path
        return 200, f"Success: LoRA adapter '{name}' added successfully."
    if path == "/v1/unload_lora_adapter":
        name = body.get("lora_name")
        if name not in state.adapters:
            return _error(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
        del state.adapters[name]
        return 200, f"Success: LoRA adapter '{name}' removed successfully."
    if path == "/v1/completions":
        return _completions(state, body)
    return _error(404, f"no route {path}", "NotFoundError")


def _completions(state: FakeVllmState, body: dict) -> tuple[int, Any]:
    model = body.get("model")
    if model != state.served_name and model not in state.adapters:
        return _error(404, f"The model `{model}` does not exist.", "NotFoundError")
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        prompts = [state.tokenizer(prompt, add_special_tokens=False)["input_ids"]]
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, list) for p in prompt):
        prompts = prompt
    else:
        return _error(400, "prompt must be a string, a token-id list or a list of token-id lists", "BadRequestError")
    n = int(body.get("n") or 1)
    max_tokens = int(body.get("max_tokens") or 16)
    k = body.get("logprobs")
    as_ids = bool(body.get("return_tokens_as_token_ids"))
    rng = random.Random(body.get("seed"))
    tokenizer = state.tokenizer
    choices = []
    nulls = state.null_logprobs > 0
    state.null_logprobs = max(0, state.null_logprobs - 1)
    for p_index, prompt_ids in enumerate(prompts):
        samples = _samples(state, prompt_ids, model, n, max_tokens, body, rng)
        for s_index, (ids, lps, finish) in enumerate(samples):
            name = (lambda t: f"token_id:{t}") if as_ids else (lambda t: tokenizer.convert_ids_to_tokens(t))
            choice: dict[str, Any] = {
                "index": p_index * n + s_index,
                "text": tokenizer.decode(ids, skip_special_tokens=True),
                "finish_reason": finish,
                "stop_reason": None,
            }
            if k is not None and nulls and s_index == 0:
                lps = [None, *lps[1:]]
            if k is not None:
                choice["logprobs"] = {
                    "tokens": [name(t) for t in ids],
                    "token_logprobs": lps,
                    "top_logprobs": [{name(t): lp} for t, lp in zip(ids, lps, strict=True)],
                    "text_offset": [0] * len(ids),
                }
            if body.get("return_token_ids"):
                choice["prompt_token_ids"] = list(prompt_ids)
                choice["token_ids"] = ids
            choices.append(choice)
    usage = {"prompt_tokens": sum(len(p) for p in prompts) * n,
             "completion_tokens": sum(len(c.get("token_ids") or []) for c in choices)}
    return 200, {"id": f"cmpl-{rng.getrandbits(32):08x}", "object": "text_completion", "model": model,
                 "choices": choices, "usage": usage}


def _samples(state: FakeVllmState, prompt_ids: list[int], model: str, n: int, max_tokens: int, body: dict,
             rng: random.Random) -> list[tuple[list[int], list[float], str]]:
    tokenizer = state.tokenizer
    if state.responder is not None:
        out = []
        for _ in range(n):
            text = state.responder(list(prompt_ids), model, rng)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            finish = "stop"
            if len(ids) > max_tokens:
                ids, finish = ids[:max_tokens], "length"
            out.append((ids, [round(-rng.random(), 4) for _ in ids], finish))
        return out
    from services.inference import GenerationParams
    from services.inference.transformers_backend import TransformersBackend

    if state.backend is None:
        state.backend = TransformersBackend(state.model_dir)
    params = GenerationParams(temperature=float(body.get("temperature", 1.0)), top_p=float(body.get("top_p", 1.0)),
                              max_new_tokens=max_tokens, n=n, seed=body.get("seed"))
    completions = state.backend.generate([list(prompt_ids)], params)
    return [(c.token_ids, c.logprobs, c.finish_reason) for c in completions]


def main() -> None:  # pragma: no cover - manual use
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="tiny model folder (tokenizer and weights)")
    parser.add_argument("--served-name", help="model name clients must send (default: the folder path)")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    server = FakeVllmServer(args.model, served_name=args.served_name, port=args.port)
    print(f"READY fake-vllm {server.base_url}", flush=True)
    server.httpd.serve_forever()


if __name__ == "__main__":
    main()


def make_lora_adapter(model_dir: str | Path, out_dir: str | Path, seed: int = 1) -> Path:
    """A LoRA adapter for the tiny model with random (non-zero) weights, so loading it changes outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(out_dir)
    return Path(out_dir)
