"""Benchmark: 500 MEDEC pairs through the generator against the local OpenAI-compatible server.

The server answers after 1 s and enforces 500 requests/min and 200k tokens/min (a request is
charged its prompt tokens plus max_completion_tokens, as OpenAI does). The floor is the least time
those limits allow for the work the run actually did: both buckets start full (one minute's worth),
then refill at the limit, plus one round-trip of latency. Cost is at GPT-4o list prices ($2.50 in,
$1.25 cached, $10 out per 1M tokens; the Batch API half of that).

    python bench/bench_generator.py                 # online, 500 pairs
    python bench/bench_generator.py --batch         # Batch API
    python bench/bench_generator.py --both --pairs 500
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medec.prepare import default_medec_dir  # noqa: E402
from services.generator.pipeline import GeneratorConfig, generate_sft  # noqa: E402
from tests.fake_openai_server import FakeConfig, FakeOpenAI  # noqa: E402


def floor_s(requests: int, tokens: int, rpm: float, tpm: float, latency: float) -> float:
    """Least wall time the rate limits allow for this work (buckets start full, refill per minute)."""
    by_requests = max(0.0, requests - rpm) / rpm * 60.0
    by_tokens = max(0.0, tokens - tpm) / tpm * 60.0
    return max(by_requests, by_tokens) + latency


def run(pairs_path: Path, pairs: int, batch: bool, latency: float, rpm: float, tpm: float, concurrency: int,
        faults: dict[str, float]) -> dict:
    server = FakeOpenAI(FakeConfig(latency_s=latency, requests_per_min=rpm, tokens_per_min=tpm, faults=faults,
                                   batch_delay_s=1.0)).start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-generator-") as out:
            config = GeneratorConfig(input_jsonl=str(pairs_path), output_dir=out, num_pairs=pairs, add_reasoning=True,
                                     base_url=server.base_url, api_key="sk-bench", concurrency=concurrency,
                                     batch=batch, batch_poll_s=0.5, progress=sys.stderr.isatty())
            started = time.perf_counter()
            report = generate_sft(config)
            wall = time.perf_counter() - started
        s = server.stats
        admitted = s.requests - s.faults["rate_limited_by_bucket"] - s.faults["rate_limit"]
        floor = None if batch else floor_s(admitted, s.rate_tokens_charged, rpm, tpm, latency)
        return {"mode": "batch" if batch else "online", "pairs": report["pairs"]["accepted"],
                "examples": report["examples"]["total"], "state": report["state"], "wall_s": wall, "floor_s": floor,
                "ratio": None if floor is None else wall / floor, "requests": report["requests"]["http_requests"],
                "retries": report["requests"]["retries"], "http_429": s.faults["rate_limited_by_bucket"],
                "tokens": report["tokens"], "rate_tokens_charged": s.rate_tokens_charged,
                "cost_usd": report["cost_usd"], "server_cost_usd": s.cost_usd(),
                "cost_per_500_pairs": report["cost_usd"] / max(1, report["pairs"]["accepted"]) * 500,
                "acceptance": {k: report["acceptance"][k]["rate"] for k in ("CORRECT", "INCORRECT")}}
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--input-jsonl", help="MEDEC pairs (default: the MS training pairs under MEDSERL_MEDEC_DIR)")
    parser.add_argument("--batch", action="store_true", help="Batch API mode only")
    parser.add_argument("--both", action="store_true", help="online, then Batch API")
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--rpm", type=float, default=500)
    parser.add_argument("--tpm", type=float, default=200_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--fault", action="append", default=[], metavar="NAME=P",
                        help="server faults, e.g. drug_change=0.1 (default: a realistic mix of content faults)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.input_jsonl:
        pairs_path = Path(args.input_jsonl)
    else:
        medec = default_medec_dir() or next((p for p in [ROOT.parent / "shared" / "medec"] if p.is_dir()), None)
        if medec is None:
            sys.exit("MEDEC data not found: pass --input-jsonl or set MEDSERL_MEDEC_DIR")
        pairs_path = Path(medec) / "train-pairs" / "medec_ms_train_pairs.jsonl"
    faults = ({k: float(v) for k, v in (f.split("=", 1) for f in args.fault)} if args.fault else
              {"refusal": 0.01, "bad_content": 0.01, "drug_change": 0.03, "number_change": 0.03})
    modes = [False, True] if args.both else [args.batch]
    results = [run(pairs_path, args.pairs, batch, args.latency, args.rpm, args.tpm, args.concurrency, faults)
               for batch in modes]
    print(f"\ngenerator bench: {args.pairs} pairs, server latency {args.latency}s, limits {args.rpm:.0f} req/min, "
          f"{args.tpm:.0f} tokens/min, faults {faults}")
    header = (f"{'mode':7} {'pairs':>5} {'wall s':>8} {'floor s':>8} {'x floor':>7} {'requests':>8} {'429s':>5} "
              f"{'prompt tok':>10} {'cached':>7} {'compl tok':>9} {'cost $':>8} {'$/500 pairs':>11} {'goal':>8}")
    print(header)
    print("-" * len(header))
    for r in results:
        goal = 4.0 if r["mode"] == "batch" else 8.0
        floor = f"{r['floor_s']:8.1f}" if r["floor_s"] is not None else f"{'n/a':>8}"
        ratio = f"{r['ratio']:7.2f}" if r["ratio"] is not None else f"{'n/a':>7}"
        print(f"{r['mode']:7} {r['pairs']:5d} {r['wall_s']:8.1f} {floor} {ratio} {r['requests']:8d} {r['http_429']:5d} "
              f"{r['tokens']['prompt']:10d} {r['tokens']['cached']:7d} {r['tokens']['completion']:9d} "
              f"{r['cost_usd']:8.4f} {r['cost_per_500_pairs']:11.4f} {'<$' + str(int(goal)):>8}")
    for r in results:
        print(f"{r['mode']}: state={r['state']} examples={r['examples']} acceptance={r['acceptance']} "
              f"server-billed ${r['server_cost_usd']:.4f} rate-limit tokens charged {r['rate_tokens_charged']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
