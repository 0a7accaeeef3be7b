"""Bus throughput: publish+flush and consume+commit rates for the in-memory bus and real Kafka.

    python bench/bench_bus.py [--messages 20000] [--size 2048] [--kafka host:port]

Without --kafka (or KAFKA_BOOTSTRAP_SERVERS) a local broker is started from Maven Central jars.
Payloads are serialized Rollout protobufs of about --size bytes (a note plus token ids).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medserl.v1 import messages_pb2 as pb  # noqa: E402
from services.common.bus import Bus, MemoryBus  # noqa: E402


def payload(i: int, size: int) -> bytes:
    note = "x" * max(0, size - 200)
    return pb.Rollout(rollout_id=f"r{i}", seed_note_id=f"n{i % 97}", completion_token_ids=list(range(40)),
                      modified_note=pb.Note(text=note)).SerializeToString()


def run(bus: Bus, messages: int, size: int) -> dict[str, float]:
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    bus.ensure_topics([topic])
    data = [payload(i, size) for i in range(messages)]
    producer = bus.producer()
    started = time.perf_counter()
    for i, value in enumerate(data):
        producer.publish(topic, value, key=f"n{i % 97}")
    producer.flush()
    produce_s = time.perf_counter() - started
    consumer = bus.consumer([topic], f"bench-{uuid.uuid4().hex[:8]}")
    got = 0
    started = time.perf_counter()
    while got < messages:
        batch = consumer.poll(1.0, 1000)
        got += len(batch)
        if batch:
            consumer.commit(batch)
    consume_s = time.perf_counter() - started
    consumer.close()
    producer.close()
    return {"produce_msgs_s": messages / produce_s, "consume_msgs_s": messages / consume_s,
            "produce_mb_s": messages * size / produce_s / 2**20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--kafka", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    args = parser.parse_args()
    rows = [("memory", run(MemoryBus(), args.messages, args.size))]
    broker = None
    bootstrap = args.kafka
    if not bootstrap:
        from medserl_cli.kafka_local import start_broker

        broker = start_broker()
        bootstrap = broker.bootstrap
    try:
        from services.common.kafka_bus import KafkaBus

        rows.append(("kafka", run(KafkaBus(bootstrap), args.messages, args.size)))
    finally:
        if broker is not None:
            broker.cleanup()
    print(f"\n{args.messages} messages of ~{args.size} B, 1 producer, 1 consumer (commit per poll)")
    print(f"{'bus':<8} {'produce msg/s':>14} {'produce MB/s':>13} {'consume msg/s':>14}")
    for name, r in rows:
        print(f"{name:<8} {r['produce_msgs_s']:>14,.0f} {r['produce_mb_s']:>13.1f} {r['consume_msgs_s']:>14,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
