"""Hostile input (issue 12): sentence splitting on runs of punctuation, and health-check latency
while a flood of heavy gRPC calls is in progress, with and without the per-service concurrency limit.

    python bench/bench_hostile.py [--max-chars 1000000] [--flood 12] [--probes 40] [--call-s 1.0]

Table 1: seconds to split texts built to be worst cases, linear splitter vs the old one (the old one
only up to 10^4 characters: it is quadratic, 10^6 dots would take hours).
Table 2: health Check latency (p50 / p95 / max) on a service with 8 server threads while ``--flood``
clients call a method that holds a thread for ``--call-s`` seconds (a model call), and how many of the
heavy calls were refused with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from medserl.v1 import trainer_pb2, trainer_pb2_grpc  # noqa: E402
from services.common.bus import MemoryBus  # noqa: E402
from services.common.runtime import GrpcBinding, Service, ServiceRuntime  # noqa: E402
from services.common.segment import _WEAK_ABBREVIATIONS, ABBREVIATIONS, split_sentences  # noqa: E402

_OLD_BOUNDARY = re.compile(r"([.?!]+)([\"'\u201d\u2019)\]]*)(\s+)(?=[\"'\u201c\u2018(\[]?[A-Z0-9])")
_OLD_WORD = re.compile(r"([A-Za-z][A-Za-z.]*)$")


def old_split(text: str) -> list[str]:
    """The splitter before issue 12 (backtracking regex, a search and two copies per boundary)."""
    out = []
    for line in text.split("\n"):
        start = 0
        for m in _OLD_BOUNDARY.finditer(line):
            if m.group(1) == ".":
                w = _OLD_WORD.search(line[start:m.start(1)])
                word = w.group(1).lower().rstrip(".") if w else ""
                nxt = line[m.end():]
                if word in ABBREVIATIONS and (word not in _WEAK_ABBREVIATIONS or nxt[:1].isdigit()):
                    continue
            out.append(line[start:m.end(2)].strip())
            start = m.end()
        out.append(line[start:].strip())
    return [s for s in out if s]


PATTERNS = {
    "dots": lambda n: "." * n,
    "?! runs": lambda n: "?!" * (n // 2),
    "'. ' pairs": lambda n: ". " * (n // 2),
    "'A. ' sentences": lambda n: "A. " * (n // 3),
    "one long word": lambda n: "a" * n + ". B",
}


def timed(fn, text: str) -> float:
    started = time.perf_counter()
    fn(text)
    return time.perf_counter() - started


def splitter_table(max_chars: int) -> None:
    sizes = [n for n in (10**3, 10**4, 10**5, 10**6) if n <= max_chars]
    print("\nsentence splitting, seconds (old: the quadratic splitter; '-' not run)")
    header = f"{'text':<18}" + "".join(f"{f'new {n:.0e}':>12}" for n in sizes) + "".join(
        f"{f'old {n:.0e}':>12}" for n in sizes if n <= 10**4)
    print(header)
    print("-" * len(header))
    for name, build in PATTERNS.items():
        row = f"{name:<18}"
        row += "".join(f"{timed(split_sentences, build(n)):>12.4f}" for n in sizes)
        row += "".join(f"{timed(old_split, build(n)):>12.4f}" for n in sizes if n <= 10**4)
        print(row)
    medec = Path(__file__).resolve().parents[2] / "shared" / "medec" / \
        "MEDEC-MS-ValidationSet-with-GroundTruth-and-ErrorType.csv"
    if medec.exists():
        from medec.prepare import read_medec_csv

        texts = [n.text for n in read_medec_csv(medec)[0]]
        per_note = {name: sum(timed(fn, t) for t in texts) / len(texts) * 1e6
                    for name, fn in (("new", split_sentences), ("old", old_split))}
        print(f"MEDEC validation notes ({len(texts)}): new {per_note['new']:.0f} us/note, old {per_note['old']:.0f} us/note")


class Heavy(trainer_pb2_grpc.TrainerServicer):
    def __init__(self, call_s: float):
        self.call_s = call_s

    def GetStatus(self, request, context):  # noqa: N802
        time.sleep(self.call_s)  # a model call: holds a server thread, releases the GIL
        return trainer_pb2.TrainerStatus(phase="idle")


class HeavyService(Service):
    name = "bench"

    def __init__(self, settings, bus, call_s: float):
        super().__init__(settings, bus)
        self.servicer = Heavy(call_s)

    def grpc_bindings(self):
        return [GrpcBinding(trainer_pb2_grpc.add_TrainerServicer_to_server, self.servicer, "medserl.v1.Trainer")]

    def topics(self):
        return []


def flood(limit: int, clients: int, probes: int, call_s: float) -> dict:
    from services.common.settings import ServiceSettings

    settings = ServiceSettings(grpc_host="127.0.0.1", grpc_port=0, metrics_port=-1, grpc_workers=8,
                               grpc_max_concurrent=limit)
    runtime = ServiceRuntime(HeavyService(settings, MemoryBus(), call_s)).start()
    target = f"127.0.0.1:{runtime.grpc_port}"
    stop = threading.Event()
    counts = {"ok": 0, "refused": 0}
    lock = threading.Lock()

    def client() -> None:
        with grpc.insecure_channel(target) as channel:
            stub = trainer_pb2_grpc.TrainerStub(channel)
            while not stop.is_set():
                try:
                    stub.GetStatus(trainer_pb2.TrainerStatusRequest(), timeout=60)
                    outcome = "ok"
                except grpc.RpcError as exc:
                    outcome = "refused" if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else "other"
                    if outcome == "refused":
                        time.sleep(0.05)  # a client backing off
                with lock:
                    counts[outcome] = counts.get(outcome, 0) + 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    latencies = []
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(probes):
            started = time.perf_counter()
            health.Check(health_pb2.HealthCheckRequest(service=""), timeout=60)
            latencies.append(time.perf_counter() - started)
            time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(call_s + 5)
    runtime.shutdown()
    latencies.sort()
    return {"p50": statistics.median(latencies), "p95": latencies[int(0.95 * (len(latencies) - 1))],
            "max": latencies[-1], **counts}


def flood_table(clients: int, probes: int, call_s: float) -> None:
    print(f"\nhealth Check latency, seconds: 8 server threads, {clients} clients calling a {call_s:g} s method")
    header = f"{'concurrency limit':<28}{'p50':>8}{'p95':>8}{'max':>8}{'heavy ok':>10}{'refused':>9}"
    print(header)
    print("-" * len(header))
    for label, limit in (("6 (default: threads - 2)", 0), ("off (100)", 100)):
        r = flood(limit, clients, probes, call_s)
        print(f"{label:<28}{r['p50']:>8.3f}{r['p95']:>8.3f}{r['max']:>8.3f}{r['ok']:>10}{r['refused']:>9}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-chars", type=int, default=10**6)
    parser.add_argument("--flood", type=int, default=12)
    parser.add_argument("--probes", type=int, default=40)
    parser.add_argument("--call-s", type=float, default=1.0)
    args = parser.parse_args()
    splitter_table(args.max_chars)
    flood_table(args.flood, args.probes, args.call_s)


if __name__ == "__main__":
    main()
