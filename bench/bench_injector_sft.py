"""Injector SFT bench: can the SFT'd tiny injector write usable edits before RL starts?

RL self-play only learns when the policy it starts from writes edits the verifier accepts: a group
of four unparseable or invalid edits carries no signal the learner can use. This bench builds what
``make run`` builds (MEDEC -> prepared splits -> offline SFT set -> tiny model -> SFT of both roles,
with the pipeline's defaults and ``SFTRunConfig.for_tiny_model``), then samples the injector the way
the RL stage does (the ``transformers`` backend, group size 4, top_p 1, the RL ``max_new_tokens``) on
held-out seed notes: the ``rl_train`` split's correct notes, which SFT never saw, short ones as the
pipeline selects them. Every seed is asked in both modes. It prints, per temperature and mode, the
parseable rate (the edit parses and names a sentence of the note, so ``apply_edit`` succeeds), the
verifier-valid rate (``services.verifier.checks.verify`` in the rollout's mode, with the claimed id
and error type, exactly as the verifier service runs it), the verifier checks that fail most, and
the seconds each preparation stage took on this machine.

    python bench/bench_injector_sft.py [--medec-dir DIR] [--sft-pairs 80] [--sft-epochs 6]
        [--max-note-chars 600] [--seeds 32] [--temperatures 1.0,0.7] [--lr ...] [--batch-size ...]
        [--workdir DIR] [--model DIR (skip building and training: sample this SFT'd model)]

Issue 10 asks for >= 80% parseable and >= 50% verifier-valid at temperature 1.0. No note text is
printed; ``--dump FILE`` writes the completions (they quote note text) to a JSONL file for reading.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.common import formats  # noqa: E402

DEFAULT_MEDEC = Path(__file__).resolve().parents[2] / "shared" / "medec"


@dataclass
class Tally:
    """Counts for one (temperature, mode) cell."""

    samples: int = 0
    parsed: int = 0
    valid: int = 0
    truncated: int = 0  # hit max_new_tokens without the end-of-turn token
    tokens: int = 0
    distinct_valid_groups: list[int] = field(default_factory=list)  # distinct valid edits per group
    failed_checks: Counter = field(default_factory=Counter)
    parse_failures: Counter = field(default_factory=Counter)

    def pct(self, n: int) -> float:
        return 100.0 * n / max(1, self.samples)


def _reason_kind(reason: str) -> str:
    """A parse-failure reason without the quoted model output (which may quote note text)."""
    for cut in (":", " (", " '", ' "', ";"):
        if cut in reason:
            reason = reason.split(cut, 1)[0]
    words = reason.split()
    return " ".join(w for w in words if not w.isdigit())[:60]


# ---------------------------------------------------------------------------------------------
# preparation, as ``make run`` does it (medserl_cli/pipeline.py stages 1-4)


def prepare_data(medec_dir: Path, out: Path, seed: int) -> dict[str, Path]:
    from medec.prepare import find_medec_files, prepare, write_prepared

    csvs, jsonls = find_medec_files(medec_dir)
    if not csvs and not jsonls:
        raise SystemExit(f"no MEDEC CSV or pair JSONL under {medec_dir}")
    return write_prepared(prepare([*csvs, *jsonls], seed=seed), out / "data")


def short_pairs(path: Path, max_chars: int) -> list:
    """Pairs whose notes fit ``max_chars`` (all pairs when none does): the pipeline's selection."""
    from medec.prepare import load_pairs_jsonl

    pairs = load_pairs_jsonl(path)
    short = [p for p in pairs if max(len(p.correct_note), len(p.incorrect_note)) <= max_chars]
    return short or pairs


def build_sft_set(paths: dict[str, Path], out: Path, args) -> Path:
    from services.generator.pipeline import GeneratorConfig, generate_sft

    pairs = short_pairs(paths["sft_train"], args.max_note_chars)
    generate_sft(GeneratorConfig(output_dir=str(out / "sft_data"), num_pairs=args.sft_pairs, seed=args.seed,
                                 offline=True, add_reasoning=True, progress=False), pairs=pairs)
    return out / "sft_data" / "sft_combined_safe.jsonl"


def build_model(paths: dict[str, Path], out: Path, seed: int) -> Path:
    from trainer.tiny_model import build_tiny_model

    texts = [r["text"] for r in map(json.loads, paths["notes"].read_text().splitlines())
             if r.get("split") != "eval"]  # the tokenizer never sees evaluation notes
    return build_tiny_model(out / "models" / "tiny", texts, seed=seed)


def train(model_dir: Path, data: Path, out: Path, args):
    from trainer.sft import SFTRunConfig, run_sft

    overrides = {name: value for name, value in (("learning_rate", args.lr), ("batch_size", args.batch_size),
                                                 ("max_length", args.max_length)) if value is not None}
    # the arguments medserl_cli/pipeline.py stage_sft passes, plus the bench's overrides
    config = SFTRunConfig.for_tiny_model(str(model_dir), str(data), str(out / "models" / "sft"),
                                         num_epochs=args.sft_epochs, role="both", seed=args.seed,
                                         eval_fraction=0.1, logging_steps=5, progress=False, save_total_limit=1,
                                         **overrides)
    return config, run_sft(config)


# ---------------------------------------------------------------------------------------------
# sampling the injector like the RL stage


def seed_notes(rl_train: Path, limit: int, max_chars: int) -> list[list[tuple[int, str]]]:
    return [[(int(i), s) for i, s in p.correct_sentences] for p in short_pairs(rl_train, max_chars)[:limit]]


def sample(model_dir: Path, seeds, args, dump) -> dict[tuple[float, str], Tally]:
    from services.inference import GenerationParams
    from services.inference.transformers_backend import TransformersBackend
    from services.verifier.checks import verify

    backend = TransformersBackend(model_dir, device="cpu", max_batch_size=16,
                                  chat_template_kwargs=dict(formats.CHAT_TEMPLATE_KWARGS))
    tallies: dict[tuple[float, str], Tally] = {}
    for temperature in args.temperatures:
        for mode in formats.MODES:
            tally = tallies.setdefault((temperature, mode), Tally())
            prompts = [formats.injector_messages(s, mode) for s in seeds]
            params = GenerationParams(temperature=temperature, top_p=1.0, max_new_tokens=args.max_new_tokens,
                                      n=args.group_size, seed=args.seed + 1).validate()
            groups: dict[int, set] = {}
            for completion in backend.generate(prompts, params):
                sentences = seeds[completion.prompt_index]
                tally.samples += 1
                tally.tokens += completion.num_tokens
                tally.truncated += completion.finish_reason == "length"
                edit = formats.parse_injector_edit(completion.text)
                modified = formats.apply_edit(sentences, edit) if isinstance(edit, formats.InjectorEdit) else edit
                record = {"T": temperature, "mode": mode, "seed": completion.prompt_index, "text": completion.text}
                if isinstance(modified, formats.ParseFailure):
                    tally.parse_failures[_reason_kind(modified.reason)] += 1
                    record["parse_failure"] = modified.reason
                else:
                    tally.parsed += 1
                    result = verify(mode, list(sentences), modified, error_sentence_id=edit.sentence_id,
                                    claimed_error_type=(edit.error_type or None) if mode == "inject" else None)
                    failed = [c.name for c in result.failed_checks()]
                    tally.failed_checks.update(failed)
                    record["failed_checks"] = failed
                    if result.passed:
                        tally.valid += 1
                        groups.setdefault(completion.prompt_index, set()).add(tuple(modified))
                if dump is not None:
                    dump.write(json.dumps(record) + "\n")
            tally.distinct_valid_groups = [len(groups.get(i, ())) for i in range(len(seeds))]
    backend.close()
    return tallies


def print_table(tallies: dict[tuple[float, str], Tally], top: int) -> None:
    print(f"\n{'T':>4} {'mode':<11} {'n':>4} {'parseable':>10} {'valid':>7} {'valid|parsed':>13} "
          f"{'truncated':>10} {'tok/edit':>9} {'groups w/ >=2 valid edits':>26}")
    for (temperature, mode), t in tallies.items():
        rich = sum(1 for d in t.distinct_valid_groups if d >= 2)
        print(f"{temperature:>4g} {mode:<11} {t.samples:>4} {t.pct(t.parsed):>9.1f}% {t.pct(t.valid):>6.1f}% "
              f"{100.0 * t.valid / max(1, t.parsed):>12.1f}% {t.pct(t.truncated):>9.1f}% "
              f"{t.tokens / max(1, t.samples):>9.1f} {rich:>14}/{len(t.distinct_valid_groups)}")
    for temperature in sorted({k[0] for k in tallies}, reverse=True):
        cells = [t for (temp, _), t in tallies.items() if temp == temperature]
        n = sum(t.samples for t in cells)
        print(f"{temperature:>4g} {'both':<11} {n:>4} {100.0 * sum(t.parsed for t in cells) / max(1, n):>9.1f}% "
              f"{100.0 * sum(t.valid for t in cells) / max(1, n):>6.1f}%")
    for (temperature, mode), t in tallies.items():
        checks = ", ".join(f"{name} {100.0 * k / max(1, t.parsed):.0f}%" for name, k in t.failed_checks.most_common(top))
        fails = ", ".join(f"{name} {k}" for name, k in t.parse_failures.most_common(3))
        print(f"\nT={temperature:g} {mode}: failing checks (share of parsed edits): {checks or '-'}")
        print(f"T={temperature:g} {mode}: parse failures: {fails or '-'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--medec-dir", default=os.environ.get("MEDSERL_MEDEC_DIR") or str(DEFAULT_MEDEC))
    parser.add_argument("--workdir", help="keep the outputs here (default: a temporary folder)")
    parser.add_argument("--model", help="an SFT'd model folder to sample: skips data, model and SFT")
    parser.add_argument("--seed", type=int, default=0, help="the pipeline's seed (PipelineConfig.seed)")
    parser.add_argument("--sft-pairs", type=int, default=80)
    parser.add_argument("--sft-epochs", type=float, default=6.0)
    parser.add_argument("--max-note-chars", type=int, default=600)
    parser.add_argument("--lr", type=float, help="override the tiny preset's learning rate")
    parser.add_argument("--batch-size", type=int, help="override the tiny preset's batch size")
    parser.add_argument("--max-length", type=int, help="override the tiny preset's max_length")
    parser.add_argument("--seeds", type=int, default=32, help="held-out seed notes (PipelineConfig.rl_seed_notes)")
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=96, help="PipelineConfig.rl_max_new_tokens")
    parser.add_argument("--temperatures", default="1.0,0.7")
    parser.add_argument("--top-checks", type=int, default=4)
    parser.add_argument("--dump", help="write every completion (quotes note text) to this JSONL file")
    args = parser.parse_args()
    args.temperatures = [float(t) for t in args.temperatures.split(",")]

    import logging

    import torch

    torch.set_num_threads(int(os.environ.get("MEDSERL_TORCH_THREADS", "2")))
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.workdir or tmp)
        out.mkdir(parents=True, exist_ok=True)
        seconds: dict[str, float] = {}
        started = time.perf_counter()
        paths = prepare_data(Path(args.medec_dir), out, args.seed)
        seconds["data prepare"] = time.perf_counter() - started
        if args.model:
            model_dir = Path(args.model)
        else:
            started = time.perf_counter()
            data = build_sft_set(paths, out, args)
            seconds["SFT set"] = time.perf_counter() - started
            started = time.perf_counter()
            tiny = build_model(paths, out, args.seed)
            seconds["tiny model"] = time.perf_counter() - started
            started = time.perf_counter()
            config, result = train(tiny, data, out, args)
            seconds["SFT (run_sft)"] = time.perf_counter() - started
            model_dir = Path(result.save_path)
            info = json.loads((tiny / "medserl_tiny_model.json").read_text())
            print(f"== SFT ({torch.get_num_threads()} threads): {result.num_train_examples} train / "
                  f"{result.num_eval_examples} eval chats, {result.dropped_too_long} too long, "
                  f"{result.global_step} steps, lr {config.learning_rate:g}, batch {config.batch_size}, "
                  f"epochs {config.num_epochs:g}, max_length {config.max_length}; tiny model "
                  f"{info['num_parameters']:,} parameters, vocab {info['vocab_size']}; {formats.FORMAT_VERSION}")
            if result.loss_curve:
                print(f"   train loss {result.loss_curve[0][1]:.3f} -> {result.loss_curve[-1][1]:.3f}"
                      + (f"; eval loss {result.eval_curve[-1][1]:.3f}" if result.eval_curve else ""))
        seeds = seed_notes(paths["rl_train"], args.seeds, args.max_note_chars)
        dump = open(args.dump, "w", encoding="utf-8") if args.dump else None  # noqa: SIM115
        try:
            started = time.perf_counter()
            tallies = sample(model_dir, seeds, args, dump)
            seconds["sampling"] = time.perf_counter() - started
        finally:
            if dump is not None:
                dump.close()
        print(f"\n== injector on {len(seeds)} held-out rl_train seed notes (<= {args.max_note_chars} chars), "
              f"group size {args.group_size}, top_p 1, max_new_tokens {args.max_new_tokens}, both modes")
        print_table(tallies, args.top_checks)
        print("\n" + "  ".join(f"{name} {s:.1f} s" for name, s in seconds.items()))
        prep = sum(s for name, s in seconds.items() if name in ("SFT set", "tiny model", "SFT (run_sft)"))
        if prep:
            print(f"SFT set + tiny model + SFT: {prep:.1f} s (budget ~240 s on 2 cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
