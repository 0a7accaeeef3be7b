"""Injector rollouts/s and assessor verdicts/s with the tiny model on CPU (transformers backend).

    python bench/bench_inference.py [--model DIR] [--notes 16] [--group-size 4] [--max-new-tokens 64]

Without --model the tiny Qwen3-architecture model is built in a temporary folder (a few seconds).
Notes are MEDEC validation notes (--medec-dir, MEDSERL_MEDEC_DIR or ../shared/medec). The untrained
tiny model rarely writes its end-of-turn token, so nearly every completion runs to --max-new-tokens:
these are worst-case numbers for that length.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medserl.v1 import messages_pb2 as pb  # noqa: E402
from services.common.bus import MemoryBus  # noqa: E402

VALIDATION = "MEDEC-MS-ValidationSet-with-GroundTruth-and-ErrorType.csv"


def find_medec(arg: str | None) -> Path:
    for candidate in (arg, os.environ.get("MEDSERL_MEDEC_DIR"), Path(__file__).resolve().parents[2] / "shared" / "medec"):
        if candidate and (Path(candidate) / VALIDATION).is_file():
            return Path(candidate)
    raise SystemExit("MEDEC data not found: pass --medec-dir or set MEDSERL_MEDEC_DIR")


def load_notes(medec: Path, count: int) -> list[pb.Note]:
    from medec.prepare import read_medec_csv

    notes, _ = read_medec_csv(medec / VALIDATION)
    return [pb.Note(note_id=n.note_id, sentences=[pb.Sentence(id=int(i), text=s) for i, s in n.sentences])
            for n in notes[:count]]


def bench_injector(model: Path, notes: list[pb.Note], args) -> dict:
    from services.common.notes import note_sentences
    from services.injector.service import InjectorService, InjectorSettings

    settings = InjectorSettings(model=str(model), group_size=args.group_size, max_new_tokens=args.max_new_tokens,
                                max_batch_size=args.batch * args.group_size, metrics_port=-1, seed=0)
    service = InjectorService(settings, MemoryBus())
    items = [(n, note_sentences(n), service.choose_mode(n)) for n in notes]
    service.generate_groups(items[:1], service.params)  # warm-up
    started = time.perf_counter()
    rollouts = tokens = 0
    for i in range(0, len(items), args.batch):
        for group in service.generate_groups(items[i : i + args.batch], service.params):
            rollouts += len(group)
            tokens += sum(len(r.completion_token_ids) for r in group)
    elapsed = time.perf_counter() - started
    service.close()
    return {"what": f"injector (group {args.group_size})", "items": rollouts, "seconds": elapsed,
            "per_s": rollouts / elapsed, "tokens_per_s": tokens / elapsed}


def generated_tokens() -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("medserl_generated_tokens_total", {"service": "assessor"}) or 0.0


def bench_assessor(model: Path | None, notes: list[pb.Note], args) -> dict:
    from services.assessor.service import AssessorService, AssessorSettings
    from services.common.notes import note_sentences

    backend = "transformers" if model else "baseline_last_sentence"
    settings = AssessorSettings(backend=backend, model=str(model or ""), max_new_tokens=args.max_new_tokens,
                                max_batch_size=args.batch, metrics_port=-1)
    service = AssessorService(settings, MemoryBus())
    sentences = [note_sentences(n) for n in notes]
    service.assess(sentences[:1])  # warm-up
    tokens_before = generated_tokens()
    started = time.perf_counter()
    verdicts = []
    for i in range(0, len(sentences), args.batch):
        verdicts.extend(service.assess(sentences[i : i + args.batch]))
    elapsed = time.perf_counter() - started
    generated = generated_tokens() - tokens_before
    service.close()
    return {"what": f"assessor ({backend})", "items": len(verdicts), "seconds": elapsed,
            "per_s": len(verdicts) / elapsed, "tokens_per_s": generated / elapsed if model else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder (default: build the tiny model)")
    parser.add_argument("--medec-dir")
    parser.add_argument("--notes", type=int, default=16)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8, help="notes per generate call")
    args = parser.parse_args()

    import torch

    notes = load_notes(find_medec(args.medec_dir), args.notes)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else None
        if model is None:
            from trainer.tiny_model import build_tiny_model, medec_texts

            model = build_tiny_model(Path(tmp) / "tiny", medec_texts(find_medec(args.medec_dir)), seed=0)
        rows = [bench_injector(model, notes, args), bench_assessor(model, notes, args), bench_assessor(None, notes, args)]
    print(f"\ntiny model on CPU ({torch.get_num_threads()} threads), {args.notes} MEDEC notes, "
          f"max_new_tokens={args.max_new_tokens}, batch={args.batch} notes")
    print(f"{'what':<36}{'items':>8}{'seconds':>10}{'items/s':>10}{'gen tok/s':>11}")
    for row in rows:
        print(f"{row['what']:<36}{row['items']:>8}{row['seconds']:>10.2f}{row['per_s']:>10.2f}{row['tokens_per_s']:>11.1f}")


if __name__ == "__main__":
    main()
