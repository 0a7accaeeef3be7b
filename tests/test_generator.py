"""SFT generator against real MEDEC pairs and a local OpenAI-compatible server that injects faults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from medec.prepare import load_pairs_jsonl
from services.common.formats import sft_messages
from services.generator.costs import Budget, BudgetExhausted, TokenCounter
from services.generator.pipeline import GeneratorConfig, GeneratorError, generate_sft, read_jsonl
from services.generator.prompts import load_prompts
from services.generator.ratelimit import RateLimiter, parse_duration, retry_after_s
from services.verifier.checks import verify
from tests.fake_openai_server import FakeConfig, FakeOpenAI

ROOT = Path(__file__).resolve().parents[1]
CONTENT_FAULTS = {"refusal": 0.05, "bad_content": 0.05, "drug_change": 0.12, "number_change": 0.12}


@pytest.fixture
def pairs_path(medec_path: Path) -> Path:
    return medec_path / "train-pairs" / "medec_ms_train_pairs.jsonl"


@pytest.fixture
def fake_server():
    servers: list[FakeOpenAI] = []

    def start(**kwargs) -> FakeOpenAI:
        server = FakeOpenAI(FakeConfig(**kwargs)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def online_config(server: FakeOpenAI, pairs_path: Path, out: Path, **kw) -> GeneratorConfig:
    base = {"input_jsonl": str(pairs_path), "output_dir": str(out), "base_url": server.base_url, "api_key": "sk-test",
            "add_reasoning": True, "progress": False, "backoff_base_s": 0.01, "request_timeout_s": 5.0,
            "batch_poll_s": 0.02}
    base.update(kw)
    return GeneratorConfig(**base)


def assert_balanced(out: Path, pairs: int) -> list[dict]:
    correct = read_jsonl(out / "sft_correct.jsonl")
    incorrect = read_jsonl(out / "sft_incorrect.jsonl")
    combined = read_jsonl(out / "sft_combined_safe.jsonl")
    assert len(correct) == len(incorrect) == pairs
    kinds = Counter(r["kind"] for r in combined)
    assert kinds == {"CORRECT": pairs, "INCORRECT": pairs}
    assert {r["pair_id"] for r in correct} == {r["pair_id"] for r in incorrect}
    assert len({r["id"] for r in combined}) == 2 * pairs
    return combined


def test_offline_backend_makes_exact_50_50_with_verified_one_sentence_paraphrases(tmp_path, pairs_path):
    out = tmp_path / "offline"
    report = generate_sft({"input_jsonl": str(pairs_path), "output_dir": str(out), "num_pairs": 30,
                           "add_reasoning": True, "progress": False, "seed": 7})
    assert report["state"] == "done" and report["backend"] == "offline"
    combined = assert_balanced(out, 30)
    pairs = {p.pair_id: p for p in load_pairs_jsonl(pairs_path)}
    for record in combined:
        assert record["messages"] == sft_messages(record, "assessor")
        assert record["messages"][-1]["role"] == "assistant"
        source = [tuple(x) for x in record["source_sentences"]]
        note = [tuple(x) for x in record["note_sentences"]]
        pair = pairs[record["pair_id"]]
        assert record["prompt_hash"] == load_prompts().hash
        if record["kind"] == "CORRECT":
            assert record["model_written"] is False
            changed = [i for (i, a), (_, b) in zip(source, note, strict=True) if a != b]
            assert changed == [record["changed_sentence_id"]]
            assert verify("paraphrase", source, note).passed
            assert record["messages"][-1]["content"].startswith("error_flag: 0")
        else:
            assert record["note_text"] == pair.incorrect_note  # MEDEC note byte for byte
            assert note == [tuple(x) for x in pair.incorrect_sentences]
            assert record["new_sentence"] == pair.error_sentence
            assert record["reasoning"]["wrong_finding"] and record["verifier"]["passed"]
            assert record["messages"][-1]["content"].startswith(f"error_flag: 1\nerror_sentence_id: {pair.error_sentence_id}")
    # the combined file is shuffled by the seed: same seed same order, other seed other order
    again = tmp_path / "again"
    generate_sft({"input_jsonl": str(pairs_path), "output_dir": str(again), "num_pairs": 30, "add_reasoning": True,
                  "progress": False, "seed": 7})
    assert [r["id"] for r in read_jsonl(again / "sft_combined_safe.jsonl")] == [r["id"] for r in combined]
    kinds = [r["kind"] for r in combined]
    assert kinds != sorted(kinds)


def test_fault_storm_keeps_balance_and_rejects_changed_drugs_and_numbers(tmp_path, pairs_path, fake_server):
    server = fake_server(latency_s=0.005, faults={"rate_limit": 0.1, "server_error": 0.1, "malformed": 0.05,
                                                  **CONTENT_FAULTS})
    out = tmp_path / "storm"
    report = generate_sft(online_config(server, pairs_path, out, num_pairs=25))
    assert report["state"] == "done"
    assert_balanced(out, 25)
    accepted = {r["new_sentence"] for r in read_jsonl(out / "sft_correct.jsonl")}
    assert server.stats.bad_paraphrases, "the fault plan served no changed-fact paraphrase"
    assert not accepted & set(server.stats.bad_paraphrases)
    # every changed-fact paraphrase was caught by a named entity check and fed back as a failure
    per_check = report["acceptance"]["per_check"]
    failed_checks = {name for name, c in per_check.items() if c["failed"]}
    assert failed_checks & {"drug_preserved", "quantity_preserved", "measurement_preserved"}
    outcomes = report["requests"]["outcomes"]
    assert outcomes.get("rate_limited") and outcomes.get("server_error") and outcomes.get("malformed_response")
    assert report["requests"]["retries"] > 0
    assert report["acceptance"]["answer_failures"]  # refusals / cut-off answers were seen and retried
    for record in read_jsonl(out / "sft_correct.jsonl"):
        assert record["model_written"] is True and record["system_fingerprint"] == "fp_fake_medserl"
        assert record["tokens"]["prompt"] > 0 and record["cost_usd"] > 0


def test_report_tokens_and_cost_equal_the_servers(tmp_path, pairs_path, fake_server):
    server = fake_server(latency_s=0.002, cache_min_tokens=256,
                         faults={"rate_limit": 0.1, "server_error": 0.1, **CONTENT_FAULTS})
    out = tmp_path / "tokens"
    report = generate_sft(online_config(server, pairs_path, out, num_pairs=12))
    s = server.stats
    assert report["tokens"] == {"prompt": s.prompt_tokens, "cached": s.cached_tokens, "completion": s.completion_tokens}
    assert report["tokens"]["cached"] > 0  # the static system prompt prefix was cached
    assert report["cost_usd"] == pytest.approx(s.cost_usd(), abs=1e-9)
    assert report["price_table"]["usd_per_1m_tokens"] == {"input": 2.5, "cached_input": 1.25, "output": 10.0}
    assert sum(s.billed.values()) == report["requests"]["succeeded"]
    # records add up to the run's spend (every billed answer belongs to exactly one record or reject)
    rows = read_jsonl(out / "sft_correct.jsonl") + read_jsonl(out / "sft_incorrect.jsonl") + [
        r.get("record", r) for r in read_jsonl(out / "rejected.jsonl")]
    assert sum(r["cost_usd"] for r in rows) == pytest.approx(report["cost_usd"], abs=1e-6)


def test_budget_is_never_exceeded_under_a_fault_storm(tmp_path, pairs_path, fake_server):
    server = fake_server(latency_s=0.005, timeout_sleep_s=0.6,
                         faults={"rate_limit": 0.1, "server_error": 0.1, "timeout": 0.08, "malformed": 0.08,
                                 **CONTENT_FAULTS})
    out = tmp_path / "budget"
    budget = 0.05
    report = generate_sft(online_config(server, pairs_path, out, num_pairs=60, max_cost_usd=budget,
                                        request_timeout_s=0.3, concurrency=8))
    assert report["state"] == "budget_exhausted" and "max-cost-usd" in report["message"]
    assert server.stats.cost_usd() <= budget  # what the provider billed
    assert report["cost_usd"] + report["cost_usd_possibly_billed"] <= budget + 1e-9
    assert server.stats.faults["timeout"] > 0
    pairs = report["pairs"]["accepted"]
    assert 0 < pairs < 60
    assert_balanced(out, pairs)


def test_budget_reservations_are_a_hard_cap():
    budget = Budget(1.0)
    r1 = budget.reserve(0.6)
    with pytest.raises(BudgetExhausted):
        budget.reserve(0.5)
    budget.settle(r1, 0.2)
    r2 = budget.reserve(0.5)
    budget.forfeit(r2)  # unknown outcome counts as spent
    assert budget.committed == pytest.approx(0.7)
    with pytest.raises(BudgetExhausted):
        budget.reserve(0.31)
    counter = TokenCounter("gpt-4o")
    text = "Hemoglobin 7.2 g/dL; started metoprolol 25 mg twice daily."
    assert counter.upper(text) >= counter.expected(text) > 0


def test_killed_run_resumes_with_zero_repeated_paid_requests(tmp_path, pairs_path, fake_server):
    server = fake_server(latency_s=0.08)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "medserl_cli", "generate-sft", "--input-jsonl", str(pairs_path), "--output-dir", str(out),
           "--num-pairs", "30", "--add-reasoning", "--base-url", server.base_url, "--concurrency", "3",
           "--no-progress"]
    env = {**os.environ, "OPENAI_API_KEY": "sk-test-not-logged"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    progress = out / "progress.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if progress.exists() and len(progress.read_text().splitlines()) >= 8:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    billed_before = sum(server.stats.billed.values())
    done_before = len(read_jsonl(progress))  # a line torn by the kill does not count
    assert 8 <= done_before < 30

    resumed = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "sk-test-not-logged" not in resumed.stdout + resumed.stderr
    assert server.stats.max_billed_per_key() == 1  # no request was ever paid twice
    assert sum(server.stats.billed.values()) > billed_before
    assert_balanced(out, 30)
    report = json.loads((out / "report.json").read_text())
    assert report["pairs"]["done_before_this_run"] == done_before
    assert report["state"] == "done"

    # a third run over the same ledger, outputs gone, pays nothing: every answer is in the cache
    for name in ("sft_correct.jsonl", "sft_incorrect.jsonl", "progress.jsonl", "rejected.jsonl"):
        (out / name).unlink(missing_ok=True)
    billed = sum(server.stats.billed.values())
    requests = server.stats.requests
    report = generate_sft(online_config(server, pairs_path, out, num_pairs=30, api_key="sk-test-not-logged",
                                        concurrency=3))
    assert server.stats.requests == requests and sum(server.stats.billed.values()) == billed
    assert report["requests"]["cache_hits"] > 0 and report["cost_usd"] == 0
    assert_balanced(out, 30)


def test_batch_mode_resubmits_only_failed_lines_at_half_price(tmp_path, pairs_path, fake_server):
    server = fake_server(batch_delay_s=0.02, faults={"batch_error": 0.25, **CONTENT_FAULTS})
    out = tmp_path / "batch"
    report = generate_sft(online_config(server, pairs_path, out, num_pairs=12, batch=True))
    assert report["state"] == "done" and report["backend"] == "openai-batch"
    assert_balanced(out, 12)
    s = server.stats
    assert s.faults["batch_error"] > 0 and report["requests"]["batches"] >= 2
    # every line sent was either answered once or failed and was resent: nothing succeeded twice
    assert s.max_billed_per_key() == 1
    assert s.batch_lines == len(s.billed) + s.faults["batch_error"]
    assert report["tokens"] == {"prompt": s.batch_prompt_tokens, "cached": s.batch_cached_tokens,
                                "completion": s.batch_completion_tokens}
    assert report["cost_usd"] == pytest.approx(s.cost_usd(), abs=1e-9)  # half of list price
    assert report["price_table"]["batch"] is True


def test_dry_run_estimates_without_sending(tmp_path, pairs_path, fake_server):
    server = fake_server()
    report = generate_sft(online_config(server, pairs_path, tmp_path / "dry", num_pairs=500, dry_run=True))
    assert server.stats.requests == 0
    assert report["requests_first_try"] == 1000 and report["examples_if_all_pass"] == 1000
    assert 0 < report["cost_usd_estimate"] < report["cost_usd_worst_case_first_tries"]
    assert report["cost_usd_estimate"] < 8.0
    batch = generate_sft(online_config(server, pairs_path, tmp_path / "dry", num_pairs=500, dry_run=True, batch=True))
    assert batch["cost_usd_estimate"] == pytest.approx(report["cost_usd_estimate"] / 2)


def test_cli_reports_user_errors_with_exit_code_2(tmp_path, pairs_path, capsys):
    from medserl_cli.cli import main

    assert main(["generate-sft", "--input-jsonl", str(tmp_path / "missing.jsonl"), "--output-dir", str(tmp_path)]) == 2
    assert "input file not found" in capsys.readouterr().err
    assert main(["generate-sft", "--input-jsonl", str(pairs_path), "--output-dir", str(tmp_path), "--batch",
                 "--offline"]) == 2
    assert "--batch needs the OpenAI API" in capsys.readouterr().err
    bad = tmp_path / "prompt.json"
    bad.write_text('{"paraphrase": {}}')
    assert main(["generate-sft", "--input-jsonl", str(pairs_path), "--output-dir", str(tmp_path), "--prompt-file",
                 str(bad)]) == 2
    assert "lacks" in capsys.readouterr().err
    # the documented test run: 3 pairs -> 6 examples (offline backend: no key, no base URL)
    env_key = os.environ.pop("OPENAI_API_KEY", None)
    try:
        assert main(["generate-sft", "--input-jsonl", str(pairs_path), "--output-dir", str(tmp_path / "t"),
                     "--num-pairs", "3", "--add-reasoning", "--no-progress"]) == 0
    finally:
        if env_key is not None:
            os.environ["OPENAI_API_KEY"] = env_key
    assert_balanced(tmp_path / "t", 3)
    # resuming with other settings is refused rather than mixing two runs in one directory
    with pytest.raises(GeneratorError, match="other settings"):
        generate_sft({"input_jsonl": str(pairs_path), "output_dir": str(tmp_path / "t"), "num_pairs": 3,
                      "progress": False})


def test_rate_limit_headers_drive_the_client_limiter():
    assert parse_duration("6m0s") == 360 and parse_duration("120ms") == pytest.approx(0.12)
    assert parse_duration("1.5s") == 1.5 and parse_duration(None) is None
    assert retry_after_s({"retry-after": "2"}) == 2 and retry_after_s({"retry-after-ms": "250"}) == 0.25
    limiter = RateLimiter()
    limiter.update({"x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "3",
                    "x-ratelimit-limit-tokens": "200000", "x-ratelimit-remaining-tokens": "1000"})
    assert limiter.requests.limit == 500 and limiter.tokens.limit == 200000
    assert limiter.requests.level <= 4 and limiter.tokens.wait_for(5000) > 0


def test_a_request_in_flight_when_the_process_died_is_recovered_not_repaid(tmp_path, pairs_path, fake_server):
    import asyncio

    from services.generator.client import ChatRequest, OnlineExecutor, make_openai_client
    from services.generator.costs import price_for
    from services.generator.ledger import Ledger

    server = fake_server()
    pair = load_pairs_jsonl(pairs_path)[0]
    prompts = load_prompts()
    req = ChatRequest(pair.pair_id, "paraphrase", 0, prompts.paraphrase_messages(pair.correct_sentences),
                      prompts.paraphrase.schema, "gpt-4o", 0.7, 300, 0, prompts.hash)

    async def scenario() -> tuple[str, int]:
        ledger = Ledger(tmp_path / "ledger.sqlite")
        # the dead run: marked pending, sent (and billed), never recorded
        ledger.mark_pending(req.key)
        dead = make_openai_client("sk-test", server.base_url, 5)
        await dead.chat.completions.create(**req.body(store=True))
        await dead.close()
        executor = OnlineExecutor(make_openai_client("sk-test", server.base_url, 5), ledger, Budget(1.0),
                                  TokenCounter("gpt-4o"), price_for("gpt-4o"))
        result = await executor.call(req)
        await executor.aclose()
        return result.via, executor.stats.http_requests

    via, sent = asyncio.run(scenario())
    assert via == "recovered" and sent == 0
    assert server.stats.max_billed_per_key() == 1 and sum(server.stats.billed.values()) == 1


def test_batch_run_killed_while_its_batch_is_open_polls_it_instead_of_paying_again(tmp_path, pairs_path, fake_server):
    server = fake_server(batch_delay_s=1.5)
    out = tmp_path / "batch-killed"
    cmd = [sys.executable, "-m", "medserl_cli", "generate-sft", "--input-jsonl", str(pairs_path), "--output-dir", str(out),
           "--num-pairs", "6", "--add-reasoning", "--base-url", server.base_url, "--batch", "--batch-poll", "0.05",
           "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "OPENAI_API_KEY": "sk-test"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and server.stats.batches_created < 1:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL and server.stats.batches_created == 1
    report = generate_sft(online_config(server, pairs_path, out, num_pairs=6, batch=True))
    assert report["state"] == "done"
    assert_balanced(out, 6)
    s = server.stats
    assert s.max_billed_per_key() == 1 and s.batch_lines == len(s.billed)  # the open batch was not resubmitted
