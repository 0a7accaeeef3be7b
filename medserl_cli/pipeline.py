"""The whole MedSeRL pipeline in one process (embedded mode): what ``make run`` runs.

    data prepare -> SFT set (offline generator + verifier) -> tiny model -> SFT (both roles)
      -> RL self-play: verifier, injector, frozen assessor and the REINFORCE++ learner as services
         on the in-memory bus, exactly the code that runs distributed over Kafka
      -> MEDIQA-CORR evaluation of the frozen assessor beside the trivial baselines
      -> runs/<name>/report.md with plots and summary.json

Every stage writes its outputs under ``--out`` and the report links them. Nothing here needs a
network or a GPU; swap ``--model`` for a real model and the bus for Kafka to scale it up.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from services.common.fileio import write_atomic

log = logging.getLogger(__name__)


@dataclass
class PipelineConfig:
    """The embedded demo run (``medserl run``); its flags are generated from these fields."""

    out: str = "runs/latest"  # output folder: report.md, summary.json, models, data
    medec_dir: str | None = None  # MEDEC CSVs / pair JSONL (none: $MEDSERL_MEDEC_DIR, else the bundled demo set)
    seed: int = 0  # seeds data splits, models, sampling
    max_note_chars: int = 600  # use notes up to this length (the CPU demo model learns short notes)
    sft_pairs: int = 80  # MEDEC pairs for the SFT set (2 examples each: CORRECT + INCORRECT)
    sft_epochs: float = 6.0  # SFT epochs of the tiny model
    rl_seed_notes: int = 200  # distinct rl_train notes, cycled as the injector drains them
    rl_updates: int = 40  # policy versions the learner publishes
    rl_rollouts_per_update: int = 32  # rollouts per learner step
    rl_group_size: int = 4  # edits sampled per seed note (the per-note baseline)
    rl_learning_rate: float = 3e-4  # the learner's rate (full weights of the tiny model)
    rl_max_new_tokens: int = 96  # the injector's longest edit
    eval_max_new_tokens: int = 48  # the assessor's longest answer in the MEDEC evaluation (3 short lines)
    rl_timeout_s: float = 900.0  # stop self-play after this long
    eval_seed_notes: int = 16  # held-out (eval split) seed notes for the injector evaluation
    eval_notes: int = 60  # MEDEC test notes for the frozen assessor's evaluation
    resume: bool = False  # reuse the stages a previous run in --out finished (their results are kept)
    progress: bool = True  # progress bars


@contextmanager
def stage(name: str, seconds: dict[str, float]):
    """Print a stage header and record how long the stage took."""
    print(f"\n== {name}", flush=True)
    started = time.perf_counter()
    yield
    seconds[name] = round(time.perf_counter() - started, 1)
    print(f"   {name}: {seconds[name]} s", flush=True)


def resolve_inputs(medec_dir: str | None) -> tuple[list[Path], str]:
    """Data files to prepare and a label for the report. The demo set only when no data folder was
    named at all: a folder that is named (flag or $MEDSERL_MEDEC_DIR) but missing or empty is an
    error that says so, never a silent switch to 12 demo pairs (``data prepare`` refuses it too)."""
    import os

    from medec.prepare import demo_csv_path, find_medec_files

    env = os.environ.get("MEDSERL_MEDEC_DIR", "")
    source = "--medec-dir" if medec_dir else "MEDSERL_MEDEC_DIR"
    named = medec_dir or env
    if not named:
        return [demo_csv_path()], "demo set (medec/demo_data; --medec-dir or MEDSERL_MEDEC_DIR for MEDEC)"
    root = Path(named).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{source} {root} is not a folder: point it at the folder with the MEDEC CSVs "
                                f"(e.g. ../shared/medec), or {'omit it' if medec_dir else 'unset it'} to use the demo set")
    csvs, jsonls = find_medec_files(root)
    if not csvs and not jsonls:
        raise FileNotFoundError(f"{source} {root} has no MEDEC CSV or pair JSONL files: point it at the folder "
                                f"with MEDEC-MS-*.csv, or {'omit it' if medec_dir else 'unset it'} to use the demo set")
    return [*csvs, *jsonls], f"MEDEC ({root})"


def stage_data(config: PipelineConfig, out: Path) -> dict:
    from medec.prepare import prepare, write_prepared

    inputs, label = resolve_inputs(config.medec_dir)
    result = prepare(inputs, seed=config.seed)
    paths = write_prepared(result, out / "data")
    summary = result.summary()
    print(f"   {label}: {summary['pairs']} pairs {summary['pairs_per_split']}")
    return {"label": label, "summary": summary, "paths": {k: str(v) for k, v in paths.items()},
            "eval_csv": next((str(p) for p in inputs if "test" in p.name.lower() and p.suffix == ".csv"),
                             next((str(p) for p in inputs if p.suffix == ".csv"), None))}


def short_pairs(path: str, max_chars: int) -> list:
    """Pairs whose notes fit ``max_chars`` (falls back to all pairs when none is that short)."""
    from medec.prepare import load_pairs_jsonl

    pairs = load_pairs_jsonl(path)
    short = [p for p in pairs if max(len(p.correct_note), len(p.incorrect_note)) <= max_chars]
    return short or pairs


def stage_sft_data(config: PipelineConfig, out: Path, data: dict) -> dict:
    from services.generator.pipeline import GeneratorConfig, generate_sft

    pairs = short_pairs(data["paths"]["sft_train"], config.max_note_chars)
    report = generate_sft(GeneratorConfig(output_dir=str(out / "sft_data"), num_pairs=config.sft_pairs,
                                          seed=config.seed, offline=True, add_reasoning=True,
                                          progress=config.progress), pairs=pairs)
    return report


def stage_tiny_model(config: PipelineConfig, out: Path, data: dict) -> dict:
    from trainer.tiny_model import build_tiny_model, model_size

    texts = []
    for line in Path(data["paths"]["notes"]).read_text().splitlines():
        record = json.loads(line)
        if record.get("split") != "eval":  # the tokenizer never sees evaluation notes
            texts.append(record["text"])
    model_dir = build_tiny_model(out / "models" / "tiny", texts, seed=config.seed)
    return {"path": str(model_dir), **model_size(model_dir)}


def stage_sft(config: PipelineConfig, out: Path, tiny: dict) -> dict:
    from trainer.sft import SFTRunConfig, run_sft

    result = run_sft(SFTRunConfig.for_tiny_model(tiny["path"], str(out / "sft_data" / "sft_combined_safe.jsonl"),
                                                 str(out / "models" / "sft"), num_epochs=config.sft_epochs,
                                                 role="both", seed=config.seed, eval_fraction=0.1,
                                                 logging_steps=5, progress=config.progress, save_total_limit=1))
    return {"save_path": result.save_path, "loss_curve": result.loss_curve, "eval_curve": result.eval_curve,
            "steps": result.global_step, "seconds": round(result.train_seconds, 1),
            "train_examples": result.num_train_examples, "eval_examples": result.num_eval_examples}


def _seed_notes(rl_train_path: str, limit: int, max_chars: int):
    from medserl.v1 import messages_pb2 as pb

    notes = []
    for pair in short_pairs(rl_train_path, max_chars)[:limit]:
        notes.append(pb.Note(note_id=pair.note_id, text=pair.correct_note, split=pair.split, source=pair.source,
                             sentences=[pb.Sentence(id=i, text=s) for i, s in pair.correct_sentences]))
    return notes


def stage_rl(config: PipelineConfig, out: Path, sft: dict, data: dict, reward: str = "ladder") -> dict:
    """Self-play on the in-memory bus with the same services that run on Kafka in production."""
    from medserl_cli.selfplay import SelfPlayConfig, run_selfplay

    seeds = _seed_notes(data["paths"]["rl_train"], config.rl_seed_notes, config.max_note_chars)
    selfplay = SelfPlayConfig(policy=sft["save_path"], checkpoint_dir=str(out / "models" / "rl"),
                              versions=config.rl_updates, rollouts_per_update=config.rl_rollouts_per_update,
                              group_size=config.rl_group_size, max_new_tokens=config.rl_max_new_tokens,
                              learning_rate=config.rl_learning_rate, seed=config.seed, timeout_s=config.rl_timeout_s,
                              progress=config.progress, reward=reward)
    result = run_selfplay(selfplay, seeds, out)
    # the edits that fooled the assessor are note text: a private file, never summary.json or the report
    fooled = result.pop("fooled", [])
    fooled_file = out / "rl_fooled.jsonl"
    write_atomic(fooled_file, "".join(json.dumps(edit, ensure_ascii=False) + "\n" for edit in fooled), private=True)
    return {**result, "fooled_edits": len(fooled), "fooled_file": str(fooled_file)}


def stage_injector_eval(config: PipelineConfig, out: Path, sft: dict, rl: dict, data: dict) -> dict | None:
    """v0 (the SFT policy) against the final version on held-out seeds, same seeds, same sampling."""
    from medserl_cli.selfplay import evaluate_injector

    if not rl.get("final_policy"):
        return None
    held_out = _seed_notes(data["paths"]["eval"], config.eval_seed_notes, config.max_note_chars)
    if not held_out:
        return None
    results = {}
    for label, policy in (("v0 (SFT)", sft["save_path"]), (f"v{rl['updates'][-1]['version']} (final)",
                                                            rl["final_policy"])):
        results[label] = evaluate_injector(policy, sft["save_path"], held_out, samples=config.rl_group_size,
                                           seed=config.seed + 1000, max_new_tokens=config.rl_max_new_tokens,
                                           label=label)
    (out / "injector_eval.json").write_text(json.dumps(results, indent=2) + "\n")
    return {"held_out_seeds": len(held_out), "results": results}


def stage_eval(config: PipelineConfig, out: Path, sft: dict, data: dict) -> dict | None:
    from medec import mediqa_eval as me
    from services.assessor.evaluate import assess_reference

    if not data.get("eval_csv"):
        return None
    reference = me.load_reference(data["eval_csv"])
    short = [row for row in reference if len(row.text) <= config.max_note_chars]
    reference = short or reference  # the CPU demo model only ever learned short notes
    outcome = assess_reference(reference, None, {"model": sft["save_path"], "max_batch_size": 16,
                                                "max_new_tokens": config.eval_max_new_tokens},
                               out_path=out / "eval" / "assessor-run.txt", limit=config.eval_notes,
                               progress=config.progress)
    rows = outcome.reference
    return {"reference": data["eval_csv"], "notes": len(rows), "max_note_chars": config.max_note_chars, "flag_rate": outcome.flag_rate,
            "unparsed": outcome.unparsed,
            "assessor": me.score(rows, outcome.run),
            "baseline_no_error": me.score(rows, me.baseline_run(rows, None)),
            "baseline_last_sentence": me.score(rows, me.baseline_run(rows, outcome.last_sentence_ids))}


def run_pipeline(config: PipelineConfig) -> dict:
    from medserl_cli.report import write_report

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    results: dict = {"config": asdict(config)}
    done = out / "stages"
    done.mkdir(exist_ok=True)

    def run_stage(key: str, title: str, fn):
        """A stage, or (``--resume``) the result a previous run in ``out`` saved for it."""
        saved = done / f"{key}.json"
        if config.resume and saved.exists():
            print(f"\n== {title}: reused from {saved}", flush=True)
            results[key] = json.loads(saved.read_text())
            return
        with stage(title, seconds):
            results[key] = fn()
        saved.write_text(json.dumps(results[key], default=str) + "\n")

    run_stage("data", "1/7 data prepare", lambda: stage_data(config, out))
    run_stage("sft_data", "2/7 SFT set (offline generator, verified)",
              lambda: stage_sft_data(config, out, results["data"]))
    run_stage("tiny_model", "3/7 tiny model", lambda: stage_tiny_model(config, out, results["data"]))
    run_stage("sft", "4/7 SFT", lambda: stage_sft(config, out, results["tiny_model"]))
    run_stage("rl", "5/7 RL self-play (verifier, injector, assessor, learner on the in-memory bus)",
              lambda: stage_rl(config, out, results["sft"], results["data"]))
    run_stage("injector_eval", "6/7 injector evaluation on held-out seeds (v0 vs final)",
              lambda: stage_injector_eval(config, out, results["sft"], results["rl"], results["data"]))
    run_stage("eval", "7/7 MEDIQA-CORR evaluation of the frozen assessor",
              lambda: stage_eval(config, out, results["sft"], results["data"]))
    results["stage_seconds"] = seconds
    (out / "summary.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    report = write_report(results, out)
    for line in headline(results):
        print(line)
    print(f"report: {report}")
    return results


def headline(results: dict) -> list[str]:
    """The numbers a user wants at the end of the terminal: did self-play learn?"""
    rl = results.get("rl") or {}
    history = rl.get("history") or []
    lines = ["", "== headline"]
    if history:
        first, last = history[0], history[-1]
        lines.append(f"   RL: {rl.get('rollouts')} scored rollouts, {len(rl.get('updates', []))} policy versions; "
                     f"batch reward {first['reward_total']:+.2f} (v{first['version']}) -> {last['reward_total']:+.2f} "
                     f"(v{last['version']}); valid edits {first['valid_rate']:.0%} -> {last['valid_rate']:.0%}; "
                     f"fool rate {first['fool_rate']:.0%} -> {last['fool_rate']:.0%}")
    ev = (results.get("injector_eval") or {}).get("results") or {}
    if len(ev) == 2:
        (l0, v0), (l1, v1) = ev.items()
        lines.append(f"   held-out seeds: reward {v0['mean_reward']:+.2f} -> {v1['mean_reward']:+.2f}, "
                     f"valid {v0['valid_rate']:.0%} -> {v1['valid_rate']:.0%}, "
                     f"fool rate {v0['fool_rate']:.0%} -> {v1['fool_rate']:.0%}  ({l0} vs {l1})")
    ev_a = results.get("eval") or {}
    if ev_a.get("assessor"):
        lines.append(f"   frozen assessor on MEDEC test ({ev_a['notes']} notes): flag accuracy "
                     f"{ev_a['assessor'].get('error_flag_accuracy', float('nan')):.3f}")
    return lines
