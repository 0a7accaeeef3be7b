"""``medserl generate-sft``: build the 50/50 SFT data set (CORRECT paraphrases + INCORRECT MEDEC notes).

Test run (3 pairs -> 6 examples)::

    medserl generate-sft --input-jsonl data_processed/medec_paired/train_val_split/sft_train.jsonl \\
        --output-dir data/sft_test --num-pairs 3 --add-reasoning

Production run (500 pairs -> 1,000 examples)::

    medserl generate-sft --input-jsonl data_processed/medec_paired/train_val_split/sft_train.jsonl \\
        --output-dir data/sft_production --prompt-file configs/prompts/gpt4o_medec_safe_augmentation.json \\
        --num-pairs 500 --add-reasoning    # the key from $OPENAI_API_KEY or --openai-api-key-file

The key is read from ``$OPENAI_API_KEY`` or from ``--openai-api-key-file`` (a file with the key, mode
0600, e.g. a mounted Secret). ``--openai-api-key KEY`` still works but warns: a key in the arguments is
visible to every user of the machine in ``ps`` and stays in the shell's history.

Without a key and without --base-url the offline rule-based paraphraser is used (records say
model_written=false). Re-running the same command resumes: finished pairs are skipped and every
answer already paid for comes from the ledger in --output-dir.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

NO_VALUE = object()  # --openai-api-key given with nothing after it
ARGV_KEY_WARNING = ("medserl: warning: --openai-api-key puts the key in the command line, where every user of this "
                    "machine sees it (`ps`) and the shell keeps it in its history; `export OPENAI_API_KEY=...` or "
                    "pass --openai-api-key-file PATH (a file only you can read) instead")


def read_key_file(path: str | None) -> str | None:
    """The API key in ``path`` (surrounding whitespace dropped); a missing or empty file is an error
    that names the file, never its content."""
    from medserl_cli.cli import CliError

    if not path:
        return None
    try:
        key = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"--openai-api-key-file {path} cannot be read ({getattr(exc, 'strerror', None) or type(exc).__name__})") from None
    if not key:
        raise CliError(f"--openai-api-key-file {path} is empty: put the key on its first line")
    return key


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate-sft", help="generate SFT data (GPT-4o one-sentence paraphrases + MEDEC errors)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input-jsonl", required=True, help="MEDEC pairs: a prepared split file or a raw pair JSONL")
    p.add_argument("--output-dir", default="data/sft_production", help="where outputs, report and ledger go")
    p.add_argument("--prompt-file", help="versioned prompt file (default configs/prompts/gpt4o_medec_safe_augmentation.json)")
    p.add_argument("--num-pairs", type=int, help="accepted pairs wanted (each gives one CORRECT + one INCORRECT); default all")
    p.add_argument("--add-reasoning", action="store_true", help="ask the model why each MEDEC error is wrong")
    # nargs="?": `--openai-api-key $OPENAI_API_KEY` with the variable unset must say so, not "expected one argument"
    p.add_argument("--openai-api-key", nargs="?", const=NO_VALUE,
                   help="deprecated: a key here shows in `ps`; set $OPENAI_API_KEY or use --openai-api-key-file")
    p.add_argument("--openai-api-key-file", metavar="PATH",
                   help="file holding the API key (default: $OPENAI_API_KEY); never logged")
    p.add_argument("--base-url", help="any OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", default="gpt-4o", help="model name (default gpt-4o)")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight at once (default 16)")
    p.add_argument("--max-cost-usd", type=float, help="hard budget: a request that could exceed it is not sent")
    p.add_argument("--seed", type=int, default=0, help="sampling seed and the shuffle of the combined file")
    p.add_argument("--batch", action="store_true", help="use the OpenAI Batch API (half price, up to 24 h)")
    p.add_argument("--dry-run", action="store_true", help="estimate tokens and cost locally; send nothing")
    p.add_argument("--max-tries", type=int, default=3, help="model answers per task incl. feedback retries (default 3)")
    p.add_argument("--max-retries", type=int, default=6, help="HTTP retries per request on 429/5xx/timeouts (default 6)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per HTTP request (default 60)")
    p.add_argument("--no-store", action="store_true",
                   help="do not store completions at the provider (then a request in flight when the process is "
                        "killed may be paid twice on resume)")
    p.add_argument("--batch-poll", type=float, default=30.0, help="seconds between Batch API status polls")
    p.add_argument("--offline", action="store_true", help="force the offline rule-based backend")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medserl_cli.cli import CliError
    from services.generator.pipeline import GeneratorConfig, GeneratorError, generate_sft
    from services.generator.prompts import PromptError

    if args.openai_api_key is NO_VALUE or args.openai_api_key == "":
        raise CliError("--openai-api-key was given no value (is $OPENAI_API_KEY set? `export OPENAI_API_KEY=sk-...`); "
                       "or drop the flag to use $OPENAI_API_KEY, or the offline paraphraser when there is no key")
    if args.openai_api_key:
        print(ARGV_KEY_WARNING, file=sys.stderr)
    api_key = args.openai_api_key or read_key_file(args.openai_api_key_file) or os.environ.get("OPENAI_API_KEY") or None
    config = GeneratorConfig(
        input_jsonl=args.input_jsonl, output_dir=args.output_dir, prompt_file=args.prompt_file,
        num_pairs=args.num_pairs, add_reasoning=args.add_reasoning, api_key=api_key, base_url=args.base_url,
        model=args.model, concurrency=args.concurrency, max_cost_usd=args.max_cost_usd, seed=args.seed,
        batch=args.batch, dry_run=args.dry_run, max_tries=args.max_tries, max_retries=args.max_retries,
        request_timeout_s=args.timeout, store=not args.no_store, progress=not args.no_progress and sys.stderr.isatty(),
        batch_poll_s=args.batch_poll, offline=True if args.offline else None)
    try:
        report = generate_sft(config)
    except (GeneratorError, PromptError) as exc:
        raise CliError(str(exc)) from exc
    if args.dry_run:
        print(json.dumps(report, indent=2))
        return 0
    tokens = report["tokens"]
    print(f"{report['state']}: {report['message']}")
    print(f"examples: {report['examples']['total']} ({report['examples']['correct']} CORRECT + "
          f"{report['examples']['incorrect']} INCORRECT) in {args.output_dir}")
    print(f"requests: {report['requests']['http_requests']} sent, {report['requests']['retries']} retries, "
          f"{report['requests']['cache_hits']} from cache; tokens: {tokens['prompt']} prompt "
          f"({tokens['cached']} cached), {tokens['completion']} completion; cost ${report['cost_usd']:.4f}; "
          f"wall {report['wall_time_s']:.1f}s")
    if report["state"] == "budget_exhausted":
        return 3
    return 0
