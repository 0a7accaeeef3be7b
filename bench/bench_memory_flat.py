"""Memory stays flat under hostile input (issue 12): RSS while a stream worker and two gRPC services
take tens of thousands of hostile messages and calls.

    python bench/bench_memory_flat.py [--messages 20000] [--calls 20000] [--every 2000] [--medec-dir DIR]

Phase 1 (bus): the verifier's rollouts.generated worker and the injector's notes.seed worker, each fed
``--messages`` messages: garbage, truncated and bit-flipped real messages, another type's messages,
strings that are not UTF-8, 1-8 MB messages past the producer's limit, messages just under it whose
output would outgrow it, and real ones (MEDEC notes when there, else the demo set). The bus is a
pass-through (records made on demand, outputs and dead letters counted and dropped), so what is
measured is the worker and the service, not a broker's log.
Phase 2 (gRPC): the verifier (Verify) and the injector (Inject, SubmitSeeds) behind the real runtime,
``--calls`` calls in all: random bytes, huge fields (up to past the 8 MB message limit), invalid UTF-8,
requests with any field values and real ones.

Each phase prints RSS every ``--every`` items after a warm-up; growth is measured from the first row.
Python keeps freed memory for reuse, so a flat line means nothing accumulates per message: a leak grows
by the same amount every interval. Speed and memory are measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import random
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc  # noqa: E402
import psutil  # noqa: E402

from medserl.v1 import injector_pb2, verifier_pb2  # noqa: E402
from medserl.v1 import messages_pb2 as pb  # noqa: E402
from services.common import formats  # noqa: E402
from services.common.bus import Bus, Consumer, Producer, Record  # noqa: E402
from services.common.runtime import ServiceRuntime  # noqa: E402
from services.common.topics import NOTES_SEED, ROLLOUTS_GENERATED  # noqa: E402
from services.inference import Completion, InferenceBackend  # noqa: E402
from services.injector.service import InjectorService, InjectorSettings  # noqa: E402
from services.verifier.service import VerifierService, VerifierSettings  # noqa: E402

LIMIT = 1_000_000
MB = 1024 * 1024
COMMON = dict(grpc_host="127.0.0.1", grpc_port=0, metrics_port=-1, poll_timeout_s=0.0, max_attempts=1,
              retry_for_s=0.01, max_message_bytes=LIMIT, shutdown_grace_s=2)


class ScriptedBackend(InferenceBackend):
    """An instant policy: every completion edits sentence 0 (or is garbage, every other one)."""

    name = "scripted"

    def generate(self, prompts, params):
        edit = formats.render_injector_edit(formats.InjectorEdit(0, "Edited by the policy.", None, "x"))
        return [Completion(prompt_index=i, prompt_token_ids=[1, 2, 3], token_ids=[5, 6, 7], logprobs=[-0.5] * 3,
                           text=edit if j % 2 else "lorem ipsum", finish_reason="stop")
                for i, _ in enumerate(prompts) for j in range(params.n)]


def _malloc_trim():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: RSS then also holds freed blocks kept for reuse
        return None


MALLOC_TRIM = _malloc_trim()


def rss_mb() -> float:
    """Resident memory after a collection, with freed heap handed back to the OS (glibc keeps freed
    megabyte buffers otherwise, and RSS would show the largest message seen, not what is kept)."""
    gc.collect()
    if MALLOC_TRIM is not None:
        MALLOC_TRIM(0)
    return psutil.Process().memory_info().rss / MB


def trend(rows: list[float]) -> float:
    """Median RSS of the last third of the rows minus that of the first third: a leak shows as a steady
    rise; noise (a large message's buffers when a row is read) does not move the medians."""
    third = max(1, len(rows) // 3)
    return statistics.median(rows[-third:]) - statistics.median(rows[:third])


def load_notes(medec_dir: str | None) -> list:
    from medec.prepare import demo_csv_path, read_medec_csv

    root = Path(medec_dir) if medec_dir else Path(__file__).resolve().parents[2] / "shared" / "medec"
    path = root / "MEDEC-MS-ValidationSet-with-GroundTruth-and-ErrorType.csv"
    notes, _ = read_medec_csv(path if path.is_file() else demo_csv_path())
    return notes


def as_note(source, note_id: str) -> pb.Note:
    return pb.Note(note_id=note_id, text=source.text, sentences=[pb.Sentence(id=i, text=s) for i, s in source.sentences])


def real_group(source, key: str) -> pb.RolloutGroup:
    seed = as_note(source, f"{source.note_id}-{key}")
    gid = f"{seed.note_id}~{key}"
    group = pb.RolloutGroup(group_id=gid, seed_note_id=seed.note_id, mode=pb.MODE_INJECT, seed_note=seed)
    edited = pb.Note()
    edited.CopyFrom(seed)
    edited.note_id = f"{gid}-0"
    edited.sentences[0].text += " Stable."
    group.rollouts.append(pb.Rollout(rollout_id=f"{gid}-0", group_id=gid, mode=pb.MODE_INJECT, changed_sentence_id=0,
                                     completion_token_ids=[1, 2], behaviour_logprobs=[-1, -1], modified_note=edited,
                                     claimed_error_type="diagnosis"))
    group.rollouts.append(pb.Rollout(rollout_id=f"{gid}-1", group_id=gid, mode=pb.MODE_INJECT, parse_error="x",
                                     completion_token_ids=[3], behaviour_logprobs=[-1]))
    return group


def hostile(rng: random.Random, real: bytes, other: bytes) -> tuple[str, bytes]:
    """One hostile payload (kind, bytes) around a real message ``real`` of the topic's type."""
    kind = rng.choice(("garbage", "truncated", "flipped", "wrong_type", "utf8", "oversized", "near_limit", "real"))
    if kind == "garbage":
        return kind, rng.randbytes(rng.randint(0, 4000))
    if kind == "truncated":
        return kind, real[: rng.randint(0, len(real) - 1)]
    if kind == "flipped":
        data = bytearray(real)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return kind, bytes(data)
    if kind == "wrong_type":
        return kind, other
    if kind == "utf8":
        return kind, real + b"\x0a\x04\xff\xfe\xfd\xfc"  # field 1 (a string in both types) that is not UTF-8
    if kind == "oversized":
        return kind, rng.randbytes(rng.choice((LIMIT + 1, 2 * MB, 8 * MB)))
    if kind == "near_limit":
        pad = LIMIT - len(real) - rng.randint(200, 5000)
        return kind, real + b"\x0a" + _varint(pad) + b"y" * pad  # field 1 replaced by a string of ~1 MB
    return kind, real


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


class PassThroughBus(Bus):
    """Records made on demand from an iterator; everything published is counted and dropped."""

    kind = "memory"

    def __init__(self):
        self.source: Iterator[Record] = iter(())
        self.published: Counter = Counter()

    def producer(self) -> Producer:
        return _CountingProducer(self)

    def consumer(self, topics: Sequence[str], group_id: str, client_id: str | None = None) -> Consumer:
        return _IteratorConsumer(self)

    def ensure_topics(self, topics, partitions=4) -> None:
        pass

    def end_offsets(self, topic: str) -> list[int]:
        return [self.published[topic]]


class _CountingProducer(Producer):
    def __init__(self, bus: PassThroughBus):
        self.bus = bus

    def publish(self, topic, value, key=None, headers=()):
        self.bus.published[topic] += 1

    def flush(self, timeout_s=None):
        pass

    def close(self):
        pass


class _IteratorConsumer(Consumer):
    def __init__(self, bus: PassThroughBus):
        self.bus = bus
        self._idle = threading.Event()

    def poll(self, timeout_s=1.0, max_records=500):
        out = list(itertools.islice(self.bus.source, max_records))
        if not out and timeout_s:
            self._idle.wait(timeout_s)  # like a broker: an idle poll waits (the gRPC phase's workers idle)
        return out

    def commit(self, records=None):
        pass

    def assignment(self):
        return set()

    def close(self):
        pass


def records(topic: str, payloads: Iterator[tuple[str, bytes]], kinds: Counter) -> Iterator[Record]:
    for offset, (kind, value) in enumerate(payloads):
        kinds[kind] += 1
        yield Record(topic, 0, offset, f"m-{offset}".encode(), value)


def table_row(label: str, done: int, rss: float, base: float | None, started: float) -> None:
    growth = "" if base is None else f"{rss - base:+8.1f}"
    print(f"  {label:<40} {done:>8} {rss:>9.1f} {growth:>9} {time.perf_counter() - started:>8.1f}", flush=True)


def bus_phase(name: str, worker, bus: PassThroughBus, topic: str, make, count: int, every: int, warmup: int) -> float:
    rng = random.Random(12)
    kinds: Counter = Counter()
    payloads = (make(rng, i) for i in itertools.count())
    bus.source = records(topic, payloads, kinds)
    worker.max_batch = 16
    started, base, done = time.perf_counter(), None, 0
    while done < warmup:
        done += worker.run_once()
    base = rss_mb()
    table_row(f"{name} (after warm-up)", done, base, None, started)
    target = warmup + count
    next_row = warmup + every
    rows = [base]
    while done < target:
        done += worker.run_once()
        if done >= next_row:
            rows.append(rss_mb())
            table_row(name, done - warmup, rows[-1], base, started)
            next_row += every
    assert worker.error is None
    print(f"  {name}: {dict(kinds)}; published {dict(bus.published)}")
    return trend(rows), max(rows) - base


def grpc_phase(count: int, every: int, warmup: int, notes) -> float:
    verifier_bus, injector_bus = PassThroughBus(), PassThroughBus()
    serving = {**COMMON, "poll_timeout_s": 0.5}  # the stream workers idle while the API is hammered
    verifier = ServiceRuntime(VerifierService(VerifierSettings(**serving), verifier_bus)).start()
    injector = ServiceRuntime(InjectorService(InjectorSettings(**serving, model="scripted", learner_batch_rollouts=0,
                                                               group_size=2), injector_bus,
                                              backend=ScriptedBackend())).start()
    rng = random.Random(13)
    codes: Counter = Counter()
    options = [("grpc.max_send_message_length", 64 * MB), ("grpc.max_receive_message_length", 64 * MB)]
    with grpc.insecure_channel(f"127.0.0.1:{verifier.grpc_port}", options=options) as vch, \
            grpc.insecure_channel(f"127.0.0.1:{injector.grpc_port}", options=options) as ich:
        methods = [(vch.unary_unary("/medserl.v1.Verifier/Verify"), "verify"),
                   (ich.unary_unary("/medserl.v1.Injector/Inject"), "inject"),
                   (ich.unary_unary("/medserl.v1.Injector/SubmitSeeds"), "seeds")]

        def one(i: int) -> None:
            method, kind = methods[i % len(methods)]
            source = notes[rng.randrange(len(notes))]
            note = as_note(source, f"n{i}")
            if kind == "verify":
                edited = pb.Note()
                edited.CopyFrom(note)
                edited.sentences[0].text += " Stable."
                real = verifier_pb2.VerifyRequest(id=f"v{i}", mode=pb.MODE_PARAPHRASE, original=note, modified=edited)
            elif kind == "inject":
                real = injector_pb2.InjectRequest(note=note, mode=pb.MODE_INJECT)
            else:
                real = injector_pb2.SubmitSeedsRequest(notes=[note])
            shape = rng.choices(("garbage", "flipped", "utf8", "huge", "over_limit", "fields", "real"),
                                (16, 16, 16, 24, 1, 12, 15))[0]  # past 8 MB: slow to refuse (read, then cut)
            data = real.SerializeToString()
            if shape == "garbage":
                data = rng.randbytes(rng.randint(0, 2000))
            elif shape == "flipped":
                data = bytearray(data)
                for _ in range(4):
                    data[rng.randrange(len(data))] = rng.randrange(256)
                data = bytes(data)
            elif shape == "utf8":
                data += b"\x0a\x03\xff\xfe\xfd" if kind != "seeds" else b"\x0a\x05\x0a\x03\xff\xfe\xfd"
            elif shape in ("huge", "over_limit"):
                size = rng.choice((100_000, 1 * MB, 5 * MB)) if shape == "huge" else 9 * MB
                data += b"\x0a" + _varint(size + 4) + b"\x12" + _varint(size) + b"x" * size  # note.text / notes[].text
            elif shape == "fields":
                real.ClearField({"verify": "original", "inject": "note", "seeds": "notes"}[kind])
                data = real.SerializeToString() + b"\x10" + _varint(rng.randrange(2**31))
            try:
                method(data, timeout=30)
                codes["OK"] += 1
            except grpc.RpcError as exc:
                codes[exc.code().name] += 1

        started = time.perf_counter()
        for i in range(warmup):
            one(i)
        base = rss_mb()
        rows = [base]
        table_row("gRPC (after warm-up)", warmup, base, None, started)
        for i in range(count):
            one(warmup + i)
            if (i + 1) % every == 0:
                rows.append(rss_mb())
                table_row("gRPC verifier+injector", i + 1, rows[-1], base, started)
    verifier.shutdown()
    injector.shutdown()
    print(f"  gRPC status codes: {dict(codes)}")
    assert "INTERNAL" not in codes and "UNKNOWN" not in codes, codes
    return trend(rows), max(rows) - base


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000, help="hostile messages per stream worker")
    parser.add_argument("--calls", type=int, default=20_000, help="hostile gRPC calls")
    parser.add_argument("--every", type=int, default=2_000, help="print RSS every N items")
    parser.add_argument("--warmup", type=int, default=1_000, help="items before the first (baseline) row")
    parser.add_argument("--medec-dir", help="MEDEC CSVs (default ../shared/medec, else the demo set)")
    args = parser.parse_args()
    import logging

    logging.disable(logging.WARNING)  # a dead-letter warning per message would be the bench's own growth
    notes = load_notes(args.medec_dir)
    print(f"{len(notes)} notes; RSS at start {rss_mb():.1f} MB")
    print(f"  {'phase':<40} {'items':>8} {'RSS MB':>9} {'growth':>9} {'s':>8}")
    growth = {}

    bus = PassThroughBus()
    verifier = VerifierService(VerifierSettings(**COMMON), bus)
    (worker,) = verifier.workers()
    worker.configure(verifier.settings)
    other = pb.PolicyUpdate(version=3, checkpoint_uri="/x", checkpoint_sha256="ab" * 32, groups_consumed=3,
                            rollouts_wanted=2).SerializeToString()

    def groups(rng, i):
        return hostile(rng, real_group(notes[i % len(notes)], f"g{i}").SerializeToString(), other)

    growth["bus: verifier rollouts.generated"] = bus_phase("verifier rollouts.generated", worker, bus,
                                                           ROLLOUTS_GENERATED, groups, args.messages, args.every,
                                                           args.warmup)
    bus = PassThroughBus()
    injector = InjectorService(InjectorSettings(**COMMON, model="scripted", learner_batch_rollouts=0, group_size=2),
                               bus, backend=ScriptedBackend())
    seeds = next(w for w in injector.workers() if NOTES_SEED in w.topics)
    seeds.configure(injector.settings)

    def notes_seed(rng, i):
        return hostile(rng, as_note(notes[i % len(notes)], f"s{i}").SerializeToString(), other)

    growth["bus: injector notes.seed"] = bus_phase("injector notes.seed", seeds, bus, NOTES_SEED, notes_seed,
                                                   args.messages, args.every, args.warmup)
    growth["gRPC: verifier + injector"] = grpc_phase(args.calls, args.every, args.warmup, notes)
    print(f"\n  {'after warm-up (MB)':<34} {'trend':>7} {'peak':>7}   (trend: median of the last third of the rows"
          " minus the first third)")
    for name, (drift, peak) in growth.items():
        print(f"  {name:<34} {drift:+7.1f} {peak:+7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
