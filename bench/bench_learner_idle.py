"""Learner idle fraction under simulated model latencies: is the learner ever waiting for input?

Real verifier, real REINFORCE++ learner (the tiny model, full weights), real in-memory bus; stand-in
model servers with fixed latencies: the injector takes ``--injector-s`` per group (1 s), the
assessor ``--assessor-s`` per note (0.3 s), each with ``--replicas`` replicas (a GPU pool). The
learner prepares old/reference log-probs as groups arrive, and the admission window keeps
``(1 + max_staleness)`` batches in flight, so with enough upstream capacity it should not wait.

    python bench/bench_learner_idle.py [--versions 6] [--replicas 8]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", type=int, default=6)
    parser.add_argument("--rollouts-per-update", type=int, default=32)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--injector-s", type=float, default=1.0, help="seconds per group")
    parser.add_argument("--assessor-s", type=float, default=0.3, help="seconds per note")
    parser.add_argument("--replicas", type=int, default=8, help="injector and assessor replicas each")
    parser.add_argument("--medec-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "medec"))
    args = parser.parse_args()

    from medec.prepare import find_medec_files, read_medec_csv
    from medserl.v1 import messages_pb2 as pb
    from services.assessor.detector import BaselineDetector
    from services.assessor.service import AssessorService, AssessorSettings
    from services.common import formats
    from services.common.bus import MemoryBus
    from services.common.runtime import ServiceRuntime
    from services.common.topics import ALL_TOPICS, NOTES_SEED
    from services.inference import Completion, InferenceBackend
    from services.injector.service import InjectorService, InjectorSettings
    from services.verifier.service import VerifierService, VerifierSettings
    from trainer.service import TrainerService, TrainerSettings
    from trainer.tiny_model import build_tiny_model

    csvs, _ = find_medec_files(args.medec_dir)
    notes = [n for n in read_medec_csv(next(p for p in csvs if "Validation" in p.name))[0] if not n.error_flag]
    model_dir = str(build_tiny_model(Path(tempfile.mkdtemp()) / "tiny", [n.text for n in notes], seed=0))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    class SlowInjector(InferenceBackend):
        """A stand-in model server: ``injector_s`` per prompt, canned one-sentence edits."""

        name = "stand-in"

        def load_policy(self, version, checkpoint_uri, kind="lora"):
            return None  # the stand-in serves no weights

        def generate(self, prompts, params):
            time.sleep(args.injector_s * len(prompts))
            rng = random.Random(params.seed)
            out = []
            for i, _ in enumerate(prompts):
                for _ in range(params.n):
                    edit = formats.InjectorEdit(0, "The patient was seen in clinic today.", "diagnosis", "")
                    text = formats.render_injector_edit(edit)
                    ids = tokenizer(text, add_special_tokens=False)["input_ids"][: params.max_new_tokens]
                    out.append(Completion(i, list(range(3, 300)), ids, [-rng.random() for _ in ids], text, "stop"))
            return out

    class SlowAssessor(BaselineDetector):
        def detect(self, batch):
            time.sleep(args.assessor_s * len(batch))
            return super().detect(batch)

    bus = MemoryBus(default_partitions=max(4, args.replicas))
    bus.ensure_topics(list(ALL_TOPICS), partitions=max(4, args.replicas))
    common = {"bus": "memory", "grpc_host": "127.0.0.1", "grpc_port": 0, "metrics_port": -1, "poll_timeout_s": 0.1}
    checkpoints = Path(tempfile.mkdtemp()) / "rl"
    trainer = TrainerService(TrainerSettings(**common, model=model_dir, checkpoint_dir=str(checkpoints), lora=False,
                                             rollouts_per_update=args.rollouts_per_update, micro_batch_size=8,
                                             learning_rate=1e-5, max_updates=args.versions), bus)
    services = [VerifierService(VerifierSettings(**common), bus)]
    services += [AssessorService(AssessorSettings(**common, backend="baseline_last_sentence", max_batch=4), bus,
                                 detector=SlowAssessor("baseline_last_sentence")) for _ in range(args.replicas)]
    services += [InjectorService(InjectorSettings(**common, model=model_dir, group_size=args.group_size, max_batch=1,
                                                  learner_batch_rollouts=args.rollouts_per_update,
                                                  verify_checkpoint_sha256=True), bus, backend=SlowInjector())
                 for _ in range(args.replicas)]
    services.append(trainer)
    runtimes = [ServiceRuntime(s).start() for s in services]
    producer = bus.producer()
    for i in range(args.versions * 40):
        note = notes[i % len(notes)]
        producer.publish(NOTES_SEED, pb.Note(note_id=f"{note.note_id}#{i}", text=note.text).SerializeToString(),
                         key=note.note_id)
    producer.flush()
    done = threading.Event()
    started = time.monotonic()
    while trainer.loop.version < args.versions and time.monotonic() - started < 900:
        done.wait(0.5)
    for runtime in reversed(runtimes):
        runtime.shutdown()
    history = list(trainer.loop.history)[1:]  # the first version includes the pipeline's start-up
    print(f"learner idle fraction: injector {args.injector_s} s/group, assessor {args.assessor_s} s/note, "
          f"{args.replicas} replicas each, batch {args.rollouts_per_update} rollouts, tiny model on CPU")
    print(f"{'version':>8} {'idle':>7} {'step s':>7} {'rollouts/s':>11} {'staleness':>10}")
    for h in history:
        print(f"{h['version']:>8} {h['idle_fraction']:7.1%} {h['seconds']:7.2f} {h['rollouts_per_s']:11.1f} "
              f"{h['staleness_mean']:10.1f}")
    if history:
        print(f"{'median':>8} {statistics.median(h['idle_fraction'] for h in history):7.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
