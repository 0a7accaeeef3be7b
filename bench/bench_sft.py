"""SFT bench: tiny-model size, SFT time and loss curve on CPU, the Qwen3-4B memory estimate, and,
where a GPU is present, the time and peak memory of one bf16 training step of a Qwen3-4B-shaped model
(random init: nothing is downloaded).

    python bench/bench_sft.py [--medec-dir DIR] [--records 48] [--epochs 3] [--batch-size 8] [--lr 3e-3]

Notes come from the MEDEC validation CSV in --medec-dir (or $MEDSERL_MEDEC_DIR), else the demo set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.common import formats  # noqa: E402
from trainer.medec_sft import medec_sft_records  # noqa: E402
from trainer.memory import estimate_training_memory, memory_table, qwen3_4b_config  # noqa: E402
from trainer.sft import SFTRunConfig, load_sft_records, roles_for, run_sft, split_records  # noqa: E402
from trainer.tiny_model import MEDEC_VALIDATION_CSV, build_tiny_model, medec_texts, model_size  # noqa: E402


def build_model(workdir: Path, medec_dir: str | None) -> tuple[Path, float, str]:
    started = time.perf_counter()
    texts = medec_texts(medec_dir) if medec_dir else None
    path = build_tiny_model(workdir / "tiny", texts=texts, seed=0)
    return path, time.perf_counter() - started, "MEDEC validation notes" if medec_dir else "demo notes"


def sft_data(workdir: Path, medec_dir: str | None, records: int, max_sentences: int) -> Path:
    if medec_dir:
        csv_path = Path(medec_dir) / MEDEC_VALIDATION_CSV
    else:
        from medec.prepare import demo_csv_path

        csv_path = demo_csv_path()
    rows = medec_sft_records(csv_path, max_records=records, max_sentences=max_sentences)
    path = workdir / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def parse_rates(model_dir: Path, records: list[dict], roles, max_new_tokens: int = 96) -> dict:
    """How many greedy completions parse (and, for the injector, apply to the note) per role."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rates = {}
    for role in roles:
        ok = 0
        for record in records:
            prompt = formats.sft_messages(record, role)[:-1]
            inputs = tokenizer.apply_chat_template(
                prompt,
                add_generation_prompt=True,
                return_tensors="pt",
                return_dict=True,
                **formats.CHAT_TEMPLATE_KWARGS,
            )
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            text = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            if role == "assessor":
                parsed = formats.parse_assessor_output(text, num_sentences=len(record["note_sentences"]))
            else:
                edit = formats.parse_injector_edit(text)
                parsed = (
                    edit
                    if isinstance(edit, formats.ParseFailure)
                    else formats.apply_edit([tuple(s) for s in record["source_sentences"]], edit)
                )
            ok += not isinstance(parsed, formats.ParseFailure)
        rates[role] = (ok, len(records))
    return rates


def gpu_step(batch_size: int, seq_len: int, lora: bool) -> str:
    """Seconds per bf16 train step and peak GiB of a randomly initialised Qwen3-4B-shaped model."""
    import torch
    from transformers import AutoModelForCausalLM

    if not torch.cuda.is_available():
        return "no GPU on this machine: bf16 step not measured"
    config = qwen3_4b_config()
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).cuda()
    if lora:
        from trainer.memory import attach_lora

        model = attach_lora(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-5)
    ids = torch.randint(0, config.vocab_size, (batch_size, seq_len), device="cuda")
    times = []
    torch.cuda.reset_peak_memory_stats()
    for _ in range(4):
        torch.cuda.synchronize()
        started = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated() / 2**30
    estimate = estimate_training_memory(config, batch_size=batch_size, seq_len=seq_len, lora=lora)
    return (
        f"{torch.cuda.get_device_name()}: bf16 {'LoRA' if lora else 'full'} step {min(times[1:]):.3f} s "
        f"(batch {batch_size} x {seq_len}), peak {peak:.1f} GiB allocated vs estimate {estimate.total_gib:.1f} GiB"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--medec-dir", default=os.environ.get("MEDSERL_MEDEC_DIR"))
    parser.add_argument("--records", type=int, default=48, help="SFT records (x2 chats with --role both)")
    parser.add_argument(
        "--max-sentences", type=int, default=8, help="only notes with at most this many sentences"
    )
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--role", default="both", choices=("assessor", "injector", "both"))
    parser.add_argument("--gpu-seq-len", type=int, default=1024)
    parser.add_argument("--gpu-lora", action="store_true")
    args = parser.parse_args()

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model_dir, build_s, source = build_model(workdir, args.medec_dir)
        size = model_size(model_dir)
        print("== tiny model (Qwen3ForCausalLM, own byte-level BPE) ==")
        print(f"{'tokenizer trained on':<24} {source}")
        print(f"{'parameters':<24} {size['parameters']:,}")
        print(f"{'vocab':<24} {size['vocab_size']}")
        print(f"{'weights on disk':<24} {size['weights_mb']} MB (fp32 safetensors)")
        print(f"{'build time':<24} {build_s:.1f} s")

        data = sft_data(workdir, args.medec_dir, args.records, args.max_sentences)
        config = SFTRunConfig.for_tiny_model(
            str(model_dir),
            str(data),
            str(workdir / "sft"),
            num_epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            role=args.role,
            progress=False,
        )
        result = run_sft(config)
        log = [json.loads(line) for line in Path(result.metrics_file).read_text().splitlines()]
        rates = [r["tokens_per_second"] for r in log if "tokens_per_second" in r]
        lrs = {r["step"]: r["learning_rate"] for r in log if "learning_rate" in r}
        print(f"\n== SFT on CPU ({torch.get_num_threads()} threads), role {args.role} ==")
        print(f"{'chats train / eval':<24} {result.num_train_examples} / {result.num_eval_examples}")
        print(f"{'epochs x batch, lr':<24} {args.epochs:g} x {args.batch_size}, {args.lr:g}")
        print(f"{'optimizer steps':<24} {result.global_step}")
        print(
            f"{'train time':<24} {result.train_seconds:.1f} s ({result.train_seconds / max(1, result.global_step):.2f} s/step)"
        )
        if rates:
            print(f"{'tokens/s (median)':<24} {sorted(rates)[len(rates) // 2]:.0f}")
        print(f"\n{'step':>5} {'train loss':>11} {'lr':>10}")
        for step, loss in result.loss_curve:
            print(f"{step:>5} {loss:>11.4f} {lrs.get(step, float('nan')):>10.2e}")
        print(f"\n{'step':>5} {'eval loss':>11}")
        for step, loss in result.eval_curve:
            print(f"{step:>5} {loss:>11.4f}")
        first, last = result.loss_curve[0][1], result.loss_curve[-1][1]
        print(
            f"\ntrain loss {first:.3f} -> {last:.3f}; eval loss {result.eval_curve[0][1]:.3f} -> {result.eval_curve[-1][1]:.3f}"
        )
        held_out = split_records(load_sft_records(data), config.eval_fraction, config.seed)[1]
        print("\n== greedy outputs of the SFT model on held-out chats ==")
        for role, (ok, total) in parse_rates(Path(result.save_path), held_out, roles_for(args.role)).items():
            print(f"{role:<10} {ok}/{total} parse and fit the note")

    print("\n== Qwen/Qwen3-4B recipe (config built locally, nothing downloaded) ==")
    print(memory_table(qwen3_4b_config(), batch_size=4, seq_len=2048, chosen="full"))
    print("\n== GPU ==")
    print(gpu_step(4, args.gpu_seq_len, args.gpu_lora))
    return 0


if __name__ == "__main__":
    sys.exit(main())
