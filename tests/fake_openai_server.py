"""A local OpenAI-compatible HTTP server for the generator's tests and benchmark, with fault injection.

Speaks the parts of the real API the generator uses:

* ``POST /v1/chat/completions`` with ``response_format`` ``json_schema`` (strict), ``usage`` with
  ``prompt_tokens_details.cached_tokens`` (prompt caching: the longest prefix seen before, from 1024
  tokens, in 128-token steps), ``system_fingerprint`` and ``x-ratelimit-*`` headers from two token
  buckets (requests and tokens per minute; a request is charged prompt + max_completion_tokens).
* ``GET /v1/chat/completions?metadata[k]=v`` (stored completions, ``store: true``).
* ``POST /v1/files``, ``GET /v1/files/{id}/content``, ``POST /v1/batches``, ``GET /v1/batches[/{id}]``.

It answers like a careful model: the paraphrase task gets a one-sentence rule-based paraphrase of
the note it was sent (the offline paraphraser), the reasoning task a template explanation.

Faults (each a probability, drawn deterministically from the request body and how often it was seen):
``rate_limit`` (429 + retry-after), ``server_error`` (500), ``timeout`` (answers after the client gave
up, still billed), ``malformed`` (HTTP 200, truncated JSON body, billed), ``bad_content`` (content that
is not JSON), ``refusal``, ``drug_change`` / ``number_change`` (a paraphrase that changes a drug or a
number: the verifier must reject it). Content faults only hit a first try (no feedback message yet),
so a retry with feedback can succeed. ``batch_error`` puts Batch API lines in the error file.

Counters (``server.stats``) let tests compare: billed requests per body hash (the cache key), billed
tokens and dollars, faults served. Run standalone: ``python tests/fake_openai_server.py --port 8089``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import re
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web

from services.generator.offline import offline_paraphrase, offline_reasoning

TOKEN_RE = re.compile(r"\w+|[^\w\s]")
NOTE_LINE = re.compile(r"^\[(\d+)\] (.*)$")
DRUGS = ("amoxicillin", "metoprolol", "warfarin", "aspirin", "lisinopril", "metformin", "insulin", "ibuprofen",
         "acetaminophen", "prednisone", "heparin", "vancomycin", "ceftriaxone", "azithromycin", "doxycycline",
         "penicillin", "furosemide", "levothyroxine", "atorvastatin", "omeprazole", "albuterol", "morphine")
CONTENT_FAULTS = ("bad_content", "refusal", "drug_change", "number_change")
HTTP_FAULTS = ("rate_limit", "server_error", "timeout", "malformed")
PRICE = {"input": 2.50, "cached_input": 1.25, "output": 10.00}  # gpt-4o, USD per 1M tokens


def count_tokens(text: str) -> int:
    return len(TOKEN_RE.findall(text))


@dataclass
class FakeConfig:
    latency_s: float = 0.0
    requests_per_min: float | None = None
    tokens_per_min: float | None = None
    faults: dict[str, float] = field(default_factory=dict)
    timeout_sleep_s: float = 2.0  # how long a "timeout" fault holds the answer back
    batch_delay_s: float = 0.2
    cache_min_tokens: int = 1024  # prompt caching starts at this many tokens (OpenAI: 1024)
    seed: int = 0
    model: str = "gpt-4o-2024-08-06"


@dataclass
class FakeStats:
    requests: int = 0  # every HTTP request to /v1/chat/completions
    billed: Counter = field(default_factory=Counter)  # body hash -> times a completion was generated
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    batch_prompt_tokens: int = 0
    batch_cached_tokens: int = 0
    batch_completion_tokens: int = 0
    faults: Counter = field(default_factory=Counter)
    bad_paraphrases: list[str] = field(default_factory=list)  # changed-drug/number sentences served
    rate_tokens_charged: int = 0  # what the token bucket was charged (prompt + max_completion_tokens)
    batches_created: int = 0
    batch_lines: int = 0

    def cost_usd(self) -> float:
        online = ((self.prompt_tokens - self.cached_tokens) * PRICE["input"] + self.cached_tokens * PRICE["cached_input"]
                  + self.completion_tokens * PRICE["output"]) / 1e6
        batch = ((self.batch_prompt_tokens - self.batch_cached_tokens) * PRICE["input"]
                 + self.batch_cached_tokens * PRICE["cached_input"] + self.batch_completion_tokens * PRICE["output"]) / 2e6
        return online + batch

    def max_billed_per_key(self) -> int:
        return max(self.billed.values(), default=0)


class _Bucket:
    def __init__(self, limit: float | None):
        self.limit = limit
        self.level = limit or 0.0
        self.stamp = time.monotonic()

    def refill(self) -> None:
        now = time.monotonic()
        if self.limit:
            self.level = min(self.limit, self.level + (now - self.stamp) * self.limit / 60.0)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        if not self.limit or self.level >= amount:
            return 0.0
        return (amount - self.level) * 60.0 / self.limit

    def reset_s(self) -> float:
        return 0.0 if not self.limit else (self.limit - self.level) * 60.0 / self.limit


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes)}m{secs:.3f}s" if minutes else f"{secs:.3f}s"


class FakeOpenAI:
    """The server state and handlers; start with :meth:`start` (background thread) or :func:`main`."""

    def __init__(self, config: FakeConfig | None = None):
        self.config = config or FakeConfig()
        self.stats = FakeStats()
        self.seen = Counter()  # body hash -> times received (drives per-try fault draws)
        self.prefixes: set[str] = set()  # prompt-cache prefix hashes
        self.stored: dict[str, dict] = {}  # metadata medserl_key -> completion
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.requests = _Bucket(self.config.requests_per_min)
        self.tokens = _Bucket(self.config.tokens_per_min)
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._lock = threading.Lock()

    # --- lifecycle ----------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/chat/completions", self.list_stored)
        app.router.add_post("/v1/files", self.upload)
        app.router.add_get("/v1/files/{file_id}/content", self.file_content)
        app.router.add_post("/v1/batches", self.create_batch)
        app.router.add_get("/v1/batches", self.list_batches)
        app.router.add_get("/v1/batches/{batch_id}", self.get_batch)
        return app

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, port: int = 0) -> FakeOpenAI:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._runner = web.AppRunner(self.app(), handle_signals=False)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", port)
            self._loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())

        self._thread = threading.Thread(target=run, name="fake-openai", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake OpenAI server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    # --- helpers ------------------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        h = {"x-request-id": f"req_{uuid.uuid4().hex[:16]}", "openai-processing-ms": str(int(self.config.latency_s * 1000))}
        for name, bucket in (("requests", self.requests), ("tokens", self.tokens)):
            if bucket.limit:
                bucket.refill()
                h[f"x-ratelimit-limit-{name}"] = str(int(bucket.limit))
                h[f"x-ratelimit-remaining-{name}"] = str(max(0, int(bucket.level)))
                h[f"x-ratelimit-reset-{name}"] = _duration(bucket.reset_s())
        return h

    def _draw(self, body_hash: str, occurrence: int, names: tuple[str, ...]) -> str | None:
        """A fault for this body and try, or None; deterministic for a given seed."""
        rng = random.Random(f"{self.config.seed}:{body_hash}:{occurrence}:{names[0]}")
        x = rng.random()
        acc = 0.0
        for name in names:
            acc += self.config.faults.get(name, 0.0)
            if x < acc:
                return name
        return None

    def _prompt_tokens(self, body: dict) -> tuple[int, int]:
        """(prompt tokens, cached tokens) like the real API: chat overhead, schema, prompt caching."""
        tokens: list[str] = []
        for message in body["messages"]:
            tokens += ["<|msg|>", message.get("role", "")] + TOKEN_RE.findall(str(message.get("content") or ""))
        rf = body.get("response_format") or {}
        schema_tokens = TOKEN_RE.findall(json.dumps(rf, sort_keys=True)) if rf.get("type") == "json_schema" else []
        total = len(tokens) + len(schema_tokens) + 3
        cached = 0
        digest = hashlib.sha256()
        boundaries = []
        for i in range(0, len(tokens) - len(tokens) % 128, 128):
            digest.update("\x00".join(tokens[i:i + 128]).encode())
            end = i + 128
            if end >= self.config.cache_min_tokens:
                boundaries.append((end, digest.copy().hexdigest()))
        with self._lock:
            for end, h in boundaries:
                if h in self.prefixes:
                    cached = end
            self.prefixes.update(h for _end, h in boundaries)
        return total, cached

    def _completion(self, body: dict, content: str | None, refusal: str | None, finish: str,
                    prompt: int, cached: int) -> dict:
        completion_tokens = count_tokens(content or refusal or "")
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.config.model,
            "system_fingerprint": "fp_fake_medserl",
            "choices": [{"index": 0, "finish_reason": finish, "logprobs": None,
                         "message": {"role": "assistant", "content": content, "refusal": refusal}}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
                      "total_tokens": prompt + completion_tokens,
                      "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
                      "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                    "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
            "service_tier": "default",
        }

    def _answer(self, body: dict, fault: str | None) -> tuple[str | None, str | None, str]:
        """(content, refusal, finish_reason) for the task the schema names."""
        if fault == "refusal":
            return None, "I'm sorry, but I can't help with that request.", "stop"
        if fault == "bad_content":
            return '{"sentence_id": 2, "paraphrase": "The patient', None, "length"
        schema_name = body["response_format"]["json_schema"].get("name", "")
        note, feedback_count, fields = _parse_prompt(body["messages"])
        if schema_name == "medec_error_reasoning":
            reasoning = offline_reasoning(note, int(fields.get("Wrong sentence id", -1)), fields.get("Error type", ""),
                                          fields.get("Wrong sentence", ""), fields.get("Corrected sentence", ""))
            return json.dumps(reasoning), None, "stop"
        if schema_name == "one_sentence_paraphrase":
            if fault in ("drug_change", "number_change"):
                bad = _bad_paraphrase(note, fault)
                if bad is not None:
                    self.stats.bad_paraphrases.append(bad[1])
                    return json.dumps({"sentence_id": bad[0], "paraphrase": bad[1]}), None, "stop"
            choice = offline_paraphrase(note, hashlib.sha256(json.dumps(note).encode()).hexdigest(), feedback_count)
            if choice is None:  # nothing left to rewrite: copy a sentence (the verifier rejects "unchanged")
                choice = note[0] if note else (0, "")
            return json.dumps({"sentence_id": choice[0], "paraphrase": choice[1]}), None, "stop"
        return json.dumps(_fill(body["response_format"]["json_schema"].get("schema", {}))), None, "stop"

    def _validate(self, body: object) -> str | None:
        if not isinstance(body, dict):
            return "body must be a JSON object"
        if not body.get("model"):
            return "you must provide a model parameter"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "messages must be a non-empty array"
        rf = body.get("response_format")
        if not isinstance(rf, dict) or rf.get("type") != "json_schema":
            return "this fake server expects response_format of type json_schema"
        js = rf.get("json_schema") or {}
        schema = js.get("schema")
        if not js.get("name") or not isinstance(schema, dict):
            return "response_format.json_schema needs name and schema"
        if js.get("strict") and (schema.get("additionalProperties") is not False
                                 or set(schema.get("required", [])) != set(schema.get("properties", {}))):
            return "strict schemas need additionalProperties false and every property required"
        return None

    # --- chat completions ---------------------------------------------------------------------------
    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.stats.requests += 1
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "could not parse the JSON body", "invalid_request_error", self._headers())
        problem = self._validate(body)
        if problem:
            return _error(400, problem, "invalid_request_error", self._headers())
        body_hash = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        with self._lock:
            occurrence = self.seen[body_hash]
            self.seen[body_hash] += 1
        fault = self._draw(body_hash, occurrence, HTTP_FAULTS)
        prompt, cached = self._prompt_tokens(body)
        charge = prompt + int(body.get("max_completion_tokens") or body.get("max_tokens") or 4096)
        self.requests.refill()
        self.tokens.refill()
        wait = max(self.requests.wait_for(1), self.tokens.wait_for(charge))
        if fault == "rate_limit" or wait > 0:
            self.stats.faults["rate_limit" if fault == "rate_limit" else "rate_limited_by_bucket"] += 1
            retry = max(wait, 0.05 if fault == "rate_limit" else wait)
            headers = self._headers() | {"retry-after-ms": str(int(retry * 1000) + 1), "retry-after": str(int(retry) + 1)}
            return _error(429, "Rate limit reached for requests", "requests", headers, code="rate_limit_exceeded")
        if self.requests.limit:
            self.requests.level -= 1
        if self.tokens.limit:
            self.tokens.level -= charge
        self.stats.rate_tokens_charged += charge
        if fault == "server_error":
            self.stats.faults[fault] += 1
            return _error(500, "The server had an error while processing your request.", "server_error", self._headers())
        first_try = not any(m.get("role") == "user" and "rejected" in str(m.get("content", "")) for m in body["messages"][2:])
        content_fault = self._draw(body_hash, 0, CONTENT_FAULTS) if first_try else None
        if self.config.latency_s:
            await asyncio.sleep(self.config.latency_s)
        content, refusal, finish = self._answer(body, content_fault)
        if content_fault:
            self.stats.faults[content_fault] += 1
        completion = self._completion(body, content, refusal, finish, prompt, cached)
        self._bill(body_hash, completion, batch=False)
        if body.get("store") and isinstance(body.get("metadata"), dict):
            for value in body["metadata"].values():
                self.stored[str(value)] = completion
        if fault == "timeout":
            self.stats.faults[fault] += 1
            await asyncio.sleep(self.config.timeout_sleep_s)
        if fault == "malformed":
            self.stats.faults[fault] += 1
            text = json.dumps(completion)[: 40]
            return web.Response(text=text, content_type="application/json", headers=self._headers())
        return web.json_response(completion, headers=self._headers())

    def _bill(self, body_hash: str, completion: dict, batch: bool) -> None:
        usage = completion["usage"]
        with self._lock:
            self.stats.billed[body_hash] += 1
            if batch:
                self.stats.batch_prompt_tokens += usage["prompt_tokens"]
                self.stats.batch_cached_tokens += usage["prompt_tokens_details"]["cached_tokens"]
                self.stats.batch_completion_tokens += usage["completion_tokens"]
            else:
                self.stats.prompt_tokens += usage["prompt_tokens"]
                self.stats.cached_tokens += usage["prompt_tokens_details"]["cached_tokens"]
                self.stats.completion_tokens += usage["completion_tokens"]

    async def list_stored(self, request: web.Request) -> web.Response:
        wanted = {k[len("metadata["):-1]: v for k, v in request.query.items() if k.startswith("metadata[")}
        data = [c for key, c in self.stored.items() if key in wanted.values()]
        return web.json_response({"object": "list", "data": data[: int(request.query.get("limit", 20))],
                                  "first_id": None, "last_id": None, "has_more": False}, headers=self._headers())

    # --- files and batches --------------------------------------------------------------------------
    async def upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form.get("file")
        if upload is None or not hasattr(upload, "file"):
            return _error(400, "file is required", "invalid_request_error", {})
        data = upload.file.read()
        file_id = f"file-{uuid.uuid4().hex[:20]}"
        self.files[file_id] = data
        return web.json_response({"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                                  "filename": upload.filename or "input.jsonl", "purpose": form.get("purpose", "batch"),
                                  "status": "processed"})

    async def file_content(self, request: web.Request) -> web.Response:
        data = self.files.get(request.match_info["file_id"])
        if data is None:
            return _error(404, "No such File object", "invalid_request_error", {})
        return web.Response(body=data, content_type="application/octet-stream")

    def _batch_object(self, batch: dict) -> dict:
        return {k: v for k, v in batch.items() if not k.startswith("_")}

    async def create_batch(self, request: web.Request) -> web.Response:
        body = await request.json()
        input_id = body.get("input_file_id")
        if input_id not in self.files:
            return _error(400, "input_file_id not found", "invalid_request_error", {})
        batch_id = f"batch_{uuid.uuid4().hex[:20]}"
        batch = {"id": batch_id, "object": "batch", "endpoint": body.get("endpoint"), "input_file_id": input_id,
                 "completion_window": body.get("completion_window", "24h"), "status": "validating",
                 "output_file_id": None, "error_file_id": None, "created_at": int(time.time()), "errors": None,
                 "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": body.get("metadata")}
        self.batches[batch_id] = batch
        self.stats.batches_created += 1
        asyncio.get_running_loop().create_task(self._run_batch(batch))
        return web.json_response(self._batch_object(batch))

    async def list_batches(self, request: web.Request) -> web.Response:
        data = [self._batch_object(b) for b in reversed(self.batches.values())][: int(request.query.get("limit", 20))]
        return web.json_response({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                                  "last_id": data[-1]["id"] if data else None, "has_more": False})

    async def get_batch(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return _error(404, "No such Batch object", "invalid_request_error", {})
        return web.json_response(self._batch_object(batch))

    async def _run_batch(self, batch: dict) -> None:
        batch["status"] = "in_progress"
        await asyncio.sleep(self.config.batch_delay_s)
        out_lines, err_lines = [], []
        lines = [json.loads(x) for x in self.files[batch["input_file_id"]].decode().splitlines() if x.strip()]
        for line in lines:
            self.stats.batch_lines += 1
            custom_id, body = line.get("custom_id"), line.get("body") or {}
            problem = self._validate(body)
            body_hash = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
            occurrence = self.seen[body_hash]
            self.seen[body_hash] += 1
            if problem is None and self._draw(body_hash, occurrence, ("batch_error",)) == "batch_error":
                problem = "server_error"
                self.stats.faults["batch_error"] += 1
            if problem is not None:
                status = 500 if problem == "server_error" else 400
                err_lines.append({"id": f"batch_req_{uuid.uuid4().hex[:16]}", "custom_id": custom_id,
                                  "response": {"status_code": status, "request_id": uuid.uuid4().hex,
                                               "body": {"error": {"message": problem, "type": problem}}},
                                  "error": None})
                continue
            first_try = not any("rejected" in str(m.get("content", "")) for m in body["messages"][2:])
            content_fault = self._draw(body_hash, 0, CONTENT_FAULTS) if first_try else None
            prompt, cached = self._prompt_tokens(body)
            content, refusal, finish = self._answer(body, content_fault)
            if content_fault:
                self.stats.faults[content_fault] += 1
            completion = self._completion(body, content, refusal, finish, prompt, cached)
            self._bill(body_hash, completion, batch=True)
            out_lines.append({"id": f"batch_req_{uuid.uuid4().hex[:16]}", "custom_id": custom_id,
                              "response": {"status_code": 200, "request_id": uuid.uuid4().hex, "body": completion},
                              "error": None})
        for name, rows in (("output_file_id", out_lines), ("error_file_id", err_lines)):
            if rows:
                file_id = f"file-{uuid.uuid4().hex[:20]}"
                self.files[file_id] = ("\n".join(json.dumps(r) for r in rows) + "\n").encode()
                batch[name] = file_id
        batch["request_counts"] = {"total": len(lines), "completed": len(out_lines), "failed": len(err_lines)}
        batch["status"] = "completed"
        batch["completed_at"] = int(time.time())


def _error(status: int, message: str, kind: str, headers: dict, code: str | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "param": None, "code": code}},
                             status=status, headers=headers)


def _parse_prompt(messages: list[dict]) -> tuple[list[tuple[int, str]], int, dict[str, str]]:
    """The numbered note, how many feedback turns follow it, and 'Key: value' lines of the user turn."""
    note: list[tuple[int, str]] = []
    fields: dict[str, str] = {}
    user = [m for m in messages if m.get("role") == "user"]
    if user:
        for line in str(user[0].get("content", "")).splitlines():
            match = NOTE_LINE.match(line)
            if match:
                note.append((int(match.group(1)), match.group(2)))
            elif ": " in line:
                key, value = line.split(": ", 1)
                fields[key.strip()] = value.strip()
    return note, max(0, len(user) - 1), fields


def _bad_paraphrase(note: list[tuple[int, str]], fault: str) -> tuple[int, str] | None:
    """A reworded sentence that changes a drug (or else a number): what a careless model might write."""
    if fault == "drug_change":
        for sid, text in note:
            for drug in DRUGS:
                match = re.search(rf"\b{drug}\b", text, re.IGNORECASE)
                if match:
                    other = DRUGS[(DRUGS.index(drug) + 7) % len(DRUGS)]
                    return sid, text[: match.start()] + other + text[match.end():]
    for sid, text in note:
        match = re.search(r"\b(\d+)(\.\d+)?\b", text)
        if match:
            changed = str(int(match.group(1)) + 1) + (match.group(2) or "")
            return sid, text[: match.start()] + changed + text[match.end():]
    return None


def _fill(schema: dict) -> object:
    kind = schema.get("type")
    if kind == "object":
        return {k: _fill(v) for k, v in schema.get("properties", {}).items()}
    if kind == "array":
        return []
    return {"string": "", "integer": 0, "number": 0, "boolean": False}.get(kind)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Local OpenAI-compatible server with fault injection")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--rpm", type=float)
    parser.add_argument("--tpm", type=float)
    parser.add_argument("--fault", action="append", default=[], metavar="NAME=P", help="e.g. rate_limit=0.1")
    args = parser.parse_args(argv)
    faults = {k: float(v) for k, v in (f.split("=", 1) for f in args.fault)}
    server = FakeOpenAI(FakeConfig(latency_s=args.latency, requests_per_min=args.rpm, tokens_per_min=args.tpm,
                                   faults=faults)).start(args.port)
    print(f"READY base_url={server.base_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()

