"""``medserl train --phase rl``: REINFORCE++ self-play of the injector against a frozen assessor.

Runs verifier, injector, assessor and learner as services on one bus: embedded (``--bus memory``,
one process, the default) or over Kafka (``--bus kafka --kafka-bootstrap host:port``). Resumes from
``--checkpoint-dir`` (the learner's state and newest version). Prints progress, writes the
per-version history (``history.jsonl``) and every scored rollout, and ends with the headline.

    medserl train --phase rl --policy runs/latest/models/sft --assessor configs/assessor.yaml \\
        --seeds runs/latest/data/train_val_split/rl_train.jsonl --versions 16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The run's flags, generated from SelfPlayConfig, plus the inputs and the rounds."""
    from medserl_cli.selfplay import SelfPlayConfig
    from services.common.settings import add_dataclass_arguments

    p.add_argument("--assessor", required=True, metavar="CONFIG_OR_MODEL",
                   help="the frozen assessor: an assessor settings file (YAML/JSON with `model`) or a model folder")
    p.add_argument("--seeds", required=True, help="seed notes: a pairs JSONL (e.g. rl_train.jsonl); correct notes are used")
    p.add_argument("--out", default=None, help="where rl_rollouts.jsonl goes (default: the checkpoint dir)")
    p.add_argument("--max-note-chars", type=int, default=0, help="only seed notes up to this length (0: all)")
    p.add_argument("--rounds", type=int, default=1,
                   help="self-play rounds: after each round's --versions, a fresh assessor is fine-tuned on its "
                        "original data plus the edits that fooled it, frozen, and play goes on (default: 1)")
    p.add_argument("--assessor-base", default="", help="with --rounds > 1: the model a fresh assessor starts from")
    p.add_argument("--assessor-data", default="", help="with --rounds > 1: the assessor's original SFT records (JSONL)")
    p.add_argument("--assessor-epochs", type=float, default=1.0, help="with --rounds > 1: SFT epochs (default: 1)")
    p.add_argument("--eval-reference", default="",
                   help="a MEDEC CSV: report the assessor's MEDIQA-CORR metrics after every round")
    add_dataclass_arguments(p, SelfPlayConfig, exclude=("assessor_model", "progress", "trainer_overrides"),
                            choices={"bus": ("memory", "kafka"), "reward": ("ladder", "flat")})
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _assessor_model(value: str) -> str:
    path = Path(value)
    if path.is_dir():
        return str(path)
    if path.is_file():
        from services.assessor.service import AssessorSettings
        from services.common.settings import load_settings

        settings = load_settings(AssessorSettings, path, env={})
        if not settings.model:
            raise SystemExit(f"medserl: error: --assessor {value}: the settings file names no `model`")
        return settings.model
    raise SystemExit(f"medserl: error: --assessor {value}: no such settings file or model folder")


def run(args: argparse.Namespace) -> int:
    from medec.prepare import MedecFormatError, load_pairs_jsonl
    from medserl.v1 import messages_pb2 as pb
    from medserl_cli.selfplay import RoundsConfig, SelfPlayConfig, run_rounds
    from services.common.settings import dataclass_from_args

    if args.rounds < 1:
        print("medserl: error: --rounds must be at least 1", file=sys.stderr)
        return 2
    if args.rounds > 1 and not (args.assessor_base and args.assessor_data):
        print("medserl: error: --rounds > 1 needs --assessor-base (the model a fresh assessor starts from) and "
              "--assessor-data (its original SFT records, e.g. sft_combined_safe.jsonl)", file=sys.stderr)
        return 2
    if not args.policy or not Path(args.policy).is_dir():
        print(f"medserl: error: --policy {args.policy or '(missing)'}: no such model folder (train one with "
              "`medserl train --phase sft`)", file=sys.stderr)
        return 2
    if args.bus == "kafka" and not args.kafka_bootstrap:
        print("medserl: error: --bus kafka needs --kafka-bootstrap host:port", file=sys.stderr)
        return 2
    try:
        pairs = load_pairs_jsonl(args.seeds)
    except (OSError, MedecFormatError) as exc:
        print(f"medserl: error: --seeds {args.seeds}: {exc}", file=sys.stderr)
        return 2
    if args.max_note_chars:
        pairs = [p for p in pairs if len(p.correct_note) <= args.max_note_chars]
    seeds = [pb.Note(note_id=p.note_id, text=p.correct_note, split=p.split, source=p.source,
                     sentences=[pb.Sentence(id=i, text=s) for i, s in p.correct_sentences]) for p in pairs]
    if not seeds:
        print(f"medserl: error: --seeds {args.seeds}: no seed notes (check --max-note-chars)", file=sys.stderr)
        return 2
    config = dataclass_from_args(SelfPlayConfig, args)
    config.assessor_model = _assessor_model(args.assessor)
    config.progress = not args.no_progress
    rounds = RoundsConfig(rounds=args.rounds, assessor_base=args.assessor_base, assessor_data=args.assessor_data,
                          sft_epochs=args.assessor_epochs, eval_reference=args.eval_reference)
    outcome = run_rounds(config, rounds, seeds, Path(args.out or args.checkpoint_dir))
    timed_out = False
    for entry in outcome["rounds"]:
        print(f"round {entry['round']}: {entry['rollouts']} scored rollouts, versions {entry['versions']}, "
              f"{entry['fooled']} edits fooled the assessor ({entry['assessor']})")
        for h in entry["history"]:
            print(f"  v{h['version']:>3}  reward {h['reward_total']:+.2f}  valid {h['valid_rate']:.0%}  "
                  f"fool {h['fool_rate']:.0%}  kl {h['mean_kl']:.4f}  staleness {h['staleness_mean']:.1f}")
        metrics = entry.get("assessor_metrics")
        if metrics:
            print(f"  assessor: flag accuracy {metrics.get('error_flag_accuracy', 0):.3f}, sentence accuracy "
                  f"{metrics.get('error_sentence_accuracy', 0):.3f}")
        timed_out = timed_out or not entry["versions"]
    return 1 if timed_out else 0
