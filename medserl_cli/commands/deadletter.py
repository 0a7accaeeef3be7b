"""``medserl deadletter list|replay``: inspect the dead-letter topic and put letters back to work.

``list`` prints one line per letter: where it came from (topic, partition, offset), which service
gave up, the error class, attempts and reason (never the payload: it may be a clinical note).

``replay`` puts the selected letters back, once: a seed or a policy update goes back to its own
topic as it was; a rollout group goes back as its *seed note* on ``notes.seed`` (the learner has
already counted the group as lost and would drop a copy as a duplicate, so the work is redone with
the current policy instead). Replayed letters are recorded on ``deadletter.replayed``, so running
replay again only replays new letters (``--again`` replays them anyway).

The broker: ``--kafka-bootstrap``, else KAFKA_BOOTSTRAP_SERVERS / MEDSERL_KAFKA_BOOTSTRAP, else the
one ``medserl up`` started (``--state-dir``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from medserl_cli.commands.up import DEFAULT_STATE_DIR, read_state

REPLAYED = "deadletter.replayed"  # one marker per replayed letter: key "<partition>:<offset>"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("deadletter", help="list or replay dead letters", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="deadletter_command", metavar="<action>")
    for name, func, text in (("list", run_list, "print the dead letters"),
                             ("replay", run_replay, "put dead letters back (each once)")):
        q = actions.add_parser(name, help=text, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        q.add_argument("--kafka-bootstrap", default="", help="HOST:PORT (default: see above)")
        q.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="where `medserl up` keeps its state")
        q.add_argument("--topic-suffix", default=None, help="the deployment's topic namespace (e.g. .exp42; "
                       "default: the one `medserl up` runs, else none)")
        q.add_argument("--service", default="", help="only letters from this service")
        q.add_argument("--source-topic", default="", help="only letters that came from this topic")
        q.add_argument("--error-class", default="", help="only letters with this error class")
        q.add_argument("--limit", type=int, default=0, help="at most this many (0: all)")
        if name == "list":
            q.add_argument("--json", action="store_true", help="one JSON object a line")
        else:
            q.add_argument("--dry-run", action="store_true", help="say what would be replayed, replay nothing")
            q.add_argument("--again", action="store_true", help="also letters replayed before")
        q.set_defaults(func=func)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


@dataclass
class Letter:
    partition: int
    offset: int
    letter: object  # medserl.v1.DeadLetter

    @property
    def position(self) -> str:
        return f"{self.partition}:{self.offset}"


def resolve_bootstrap(args: argparse.Namespace) -> str:
    from medserl_cli.cli import CliError

    bootstrap = (args.kafka_bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
                 or os.environ.get("MEDSERL_KAFKA_BOOTSTRAP", ""))
    if not bootstrap:
        state = read_state(args.state_dir)
        bootstrap = (state or {}).get("bootstrap", "")
    if not bootstrap:
        raise CliError("which broker? pass --kafka-bootstrap HOST:PORT (or set KAFKA_BOOTSTRAP_SERVERS); "
                       f"no `medserl up` state in {args.state_dir}")
    return bootstrap


def read_topic(bus, topic: str) -> list:
    """Every record of ``topic`` now, read without a consumer group (nothing is committed)."""
    from kafka import KafkaConsumer, TopicPartition

    from services.common.bus import Record

    ends = bus.end_offsets(topic)
    if not any(ends):
        return []
    consumer = bus._client(lambda: KafkaConsumer(bootstrap_servers=bus.bootstrap_servers, group_id=None,
                                                 enable_auto_commit=False, client_id=f"{bus.client_id}-deadletter"))
    try:
        tps = [TopicPartition(topic, p) for p in range(len(ends))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[Record] = []
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < ends[tp.partition] for tp in tps) and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500, max_records=5000).items():
                out.extend(Record(r.topic, r.partition, r.offset, r.key, r.value, (), r.timestamp)
                           for r in records if r.offset < ends[tp.partition])
        return sorted(out, key=lambda r: (r.partition, r.offset))
    finally:
        consumer.close()


def _matches(args: argparse.Namespace) -> Callable[[object], bool]:
    def keep(letter) -> bool:
        return ((not args.service or letter.service == args.service)
                and (not args.source_topic or letter.source_topic == args.source_topic)
                and (not args.error_class or letter.error_class == args.error_class))

    return keep


def load_letters(bus, args: argparse.Namespace) -> list[Letter]:
    from google.protobuf.message import DecodeError

    from medserl.v1 import messages_pb2 as pb
    from services.common.topics import DEAD_LETTER

    keep = _matches(args)
    out = []
    for record in read_topic(bus, f"{DEAD_LETTER}{args.topic_suffix}"):
        try:
            letter = pb.DeadLetter.FromString(record.value)
        except DecodeError:
            continue
        if keep(letter):
            out.append(Letter(record.partition, record.offset, letter))
    return out[: args.limit or None]


def _bus(args: argparse.Namespace):
    from services.common.kafka_bus import KafkaBus

    if args.topic_suffix is None:  # the namespace of what `medserl up` runs, when it runs one
        suffixes = (read_state(args.state_dir) or {}).get("topic_suffixes") or [""]
        args.topic_suffix = suffixes[0] if len(suffixes) == 1 else ""

    return KafkaBus(resolve_bootstrap(args), client_id="medserl-deadletter", connect_timeout_s=5)


def run_list(args: argparse.Namespace) -> int:
    bus = _bus(args)
    try:
        letters = load_letters(bus, args)
        replayed = _replayed(bus, args.topic_suffix)
    finally:
        bus.close()
    for item in letters:
        letter = item.letter
        row = {"position": item.position, "service": letter.service, "source": f"{letter.source_topic}"
               f"[{letter.source_partition}]@{letter.source_offset}", "error_class": letter.error_class,
               "attempts": letter.attempts, "reason": letter.reason,
               "failed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(letter.failed_unix_ms / 1000)),
               "replayed": item.position in replayed}
        if args.json:
            print(json.dumps(row))
        else:
            mark = " (replayed)" if row["replayed"] else ""
            print(f"{row['position']:>8} {row['failed']} {row['service']:<9} {row['source']} {row['error_class']} "
                  f"x{row['attempts']}: {row['reason'][:160]}{mark}")
    if not args.json:
        print(f"{len(letters)} dead letters" + (f", {sum(i.position in replayed for i in letters)} replayed"
                                                if letters else ""))
    return 0


def _replayed(bus, suffix: str) -> set[str]:
    return {(r.key or b"").decode() for r in read_topic(bus, f"{REPLAYED}{suffix}")}


def original_payload(letter, bus=None) -> bytes:
    """The failed message: copied into the letter, or (by default none is copied: no note text on the
    dead-letter topic) re-read from its source topic, partition and offset; b"" when it is gone."""
    if letter.payload or bus is None:
        return letter.payload
    record = bus.read_at(letter.source_topic, letter.source_partition, letter.source_offset)
    return record.value if record is not None else b""


def replay_target(letter, suffix: str, bus=None) -> tuple[str, bytes, bytes | None] | None:
    """(topic, payload, key) that puts a letter back to work, or None when there is nothing to redo
    (also when the original message is past its topic's retention)."""
    from google.protobuf.message import DecodeError

    from medserl.v1 import messages_pb2 as pb
    from services.common.topics import (
        NOTES_SEED,
        POLICY_UPDATES,
        ROLLOUTS_GENERATED,
        ROLLOUTS_SCORED,
        ROLLOUTS_VERIFIED,
    )

    source = letter.source_topic
    pipeline = {f"{t}{suffix}" for t in (ROLLOUTS_GENERATED, ROLLOUTS_VERIFIED, ROLLOUTS_SCORED)}
    if source not in pipeline | {f"{NOTES_SEED}{suffix}", f"{POLICY_UPDATES}{suffix}"}:
        return None
    payload = original_payload(letter, bus)
    if not payload:
        return None
    if source in (f"{NOTES_SEED}{suffix}", f"{POLICY_UPDATES}{suffix}"):
        return source, payload, letter.key or None
    if source in pipeline:
        try:
            group = pb.RolloutGroup.FromString(payload)
        except DecodeError:
            return None
        if not group.HasField("seed_note") or not group.seed_note.note_id:
            return None
        return f"{NOTES_SEED}{suffix}", group.seed_note.SerializeToString(), group.seed_note.note_id.encode()
    return None


def run_replay(args: argparse.Namespace) -> int:
    bus = _bus(args)
    try:
        letters = load_letters(bus, args)
        done = set() if args.again else _replayed(bus, args.topic_suffix)
        todo = [(item, replay_target(item.letter, args.topic_suffix, bus)) for item in letters
                if item.position not in done]
        skipped = [item for item, target in todo if target is None]
        todo = [(item, target) for item, target in todo if target is not None]
        for item, (topic, _payload, _key) in todo:
            print(f"{'would replay' if args.dry_run else 'replay'} {item.position} "
                  f"({item.letter.source_topic}, {item.letter.error_class}) -> {topic}")
        if todo and not args.dry_run:
            bus.ensure_topics([f"{REPLAYED}{args.topic_suffix}"], partitions=1)
            producer = bus.producer()
            try:
                for _item, (topic, payload, key) in todo:
                    producer.publish(topic, payload, key=key)
                producer.flush()  # the work is back before it is marked as replayed
                for item, _target in todo:
                    producer.publish(f"{REPLAYED}{args.topic_suffix}", str(int(time.time() * 1000)).encode(),
                                     key=item.position)
                producer.flush()
            finally:
                producer.close()
    finally:
        bus.close()
    print(f"{len(todo)} {'to replay' if args.dry_run else 'replayed'}, {len(letters) - len(todo) - len(skipped)} "
          f"replayed before, {len(skipped)} with nothing to redo (undecodable or not pipeline work)")
    return 0
