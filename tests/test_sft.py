"""SFT on the tiny Qwen3 model (CPU): assistant-only loss, loss falls, resume reproduces the curve,
LoRA, telemetry, CLI. Records come from MEDEC validation notes (generator layout)."""

from __future__ import annotations

import json
import math
import socket
import urllib.request

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from medserl_cli.cli import build_parser, main
from services.common import formats, metrics
from trainer.medec_sft import medec_sft_records
from trainer.sft import (
    SFTError,
    SFTRunConfig,
    build_trainer,
    load_sft_records,
    run_sft,
    sft_examples,
    split_records,
)
from trainer.tiny_model import IM_END, MEDEC_VALIDATION_CSV


@pytest.fixture(scope="module")
def sft_records(medec_path) -> list[dict]:
    """Short MEDEC validation notes (<= 8 sentences) as CORRECT/INCORRECT SFT records."""
    return medec_sft_records(medec_path / MEDEC_VALIDATION_CSV, max_sentences=8, max_records=48)


@pytest.fixture(scope="module")
def sft_jsonl(sft_records, tmp_path_factory):
    path = tmp_path_factory.mktemp("sft_data") / "sft_combined_safe.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in sft_records))
    return path


def tiny_config(model_dir, data, save_path, **overrides) -> SFTRunConfig:
    return SFTRunConfig.for_tiny_model(str(model_dir), str(data), str(save_path), progress=False, **overrides)


def test_recipe_defaults_match_the_strategy():
    config = SFTRunConfig()
    assert (config.model, config.num_epochs, config.batch_size, config.learning_rate) == (
        "Qwen/Qwen3-4B",
        3,
        4,
        5e-5,
    )
    assert config.train_data == "data/sft_production/sft_combined_safe.jsonl"
    assert config.save_path == "outputs/qwen3_4b_sft"
    args = build_parser().parse_args(["train", "--phase", "sft"])
    assert (args.model, args.num_epochs, args.batch_size, args.learning_rate) == (
        "Qwen/Qwen3-4B",
        3,
        4,
        5e-5,
    )
    assert not args.lora and not args.resume and args.metrics_port is None


def test_labels_cover_exactly_the_assistant_turn(tiny_model_dir, sft_jsonl, sft_records, tmp_path):
    """Every label that is not -100 is an assistant token, and every assistant token is a label."""
    config = tiny_config(
        tiny_model_dir, sft_jsonl, tmp_path / "out", role="both", max_examples=10, eval_fraction=0
    )
    prepared = build_trainer(config)
    tokenizer = prepared.tokenizer
    expected = set()
    for example in sft_examples(sft_records[:10], "both"):
        prompt = tokenizer.apply_chat_template(example["prompt"], tokenize=False, add_generation_prompt=True)
        expected.add((prompt, example["completion"][0]["content"] + IM_END + "\n"))
    rows = prepared.trainer.train_dataset
    assert len(rows) == 20  # 10 records x 2 roles
    seen = set()
    for row in rows:
        ids, labels = row["input_ids"], row["labels"]
        trained = [i for i, label in enumerate(labels) if label != -100]
        start = trained[0]
        assert trained == list(range(start, len(ids))), "the trained span is one contiguous suffix"
        assert [labels[i] for i in trained] == ids[start:]
        prompt_text, completion_text = tokenizer.decode(ids[:start]), tokenizer.decode(ids[start:])
        assert prompt_text.endswith("<|im_start|>assistant\n")
        assert (prompt_text, completion_text) in expected
        seen.add((prompt_text, completion_text))
        parsed = (formats.parse_assessor_output, formats.parse_injector_edit)
        assert any(
            not isinstance(p(completion_text.removesuffix(IM_END + "\n")), formats.ParseFailure)
            for p in parsed
        )
    assert seen == expected


def test_tiny_model_loss_falls_on_medec_sft(tiny_model_dir, sft_jsonl, tmp_path):
    save = tmp_path / "sft"
    result = run_sft(
        tiny_config(tiny_model_dir, sft_jsonl, save, role="both", num_epochs=2, batch_size=4, max_examples=24)
    )
    losses = [loss for _, loss in result.loss_curve]
    vocab = AutoTokenizer.from_pretrained(tiny_model_dir).vocab_size
    assert result.global_step == len(losses) > 8
    assert losses[0] > math.log(vocab) - 1  # random init: about uniform over the vocabulary
    assert sum(losses[-3:]) / 3 < losses[0] - 3.0, losses
    assert len(result.eval_curve) == 2 and result.num_eval_examples > 0
    assert result.eval_curve[-1][1] < result.eval_curve[0][1] < math.log(vocab)
    assert result.device == "cpu" and result.dtype == "float32" and not result.interrupted

    # saved model + tokenizer load back; telemetry went to the JSONL log and the gauges
    AutoModelForCausalLM.from_pretrained(save)
    assert AutoTokenizer.from_pretrained(save).chat_template
    log = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in log if r["event"] == "log" and "loss" in r]
    assert [r["step"] for r in steps] == [s for s, _ in result.loss_curve]
    assert all("learning_rate" in r for r in steps) and any(r.get("tokens_per_second", 0) > 0 for r in steps)
    assert any("eval_loss" in r for r in log)
    assert metrics.TRAIN_STEP.labels("sft")._value.get() == result.global_step
    run_info = json.loads((save / "medserl_sft.json").read_text())
    assert run_info["format_version"] == formats.FORMAT_VERSION and run_info["config"]["role"] == "both"


def test_resumed_run_reproduces_the_uninterrupted_loss_curve(tiny_model_dir, sft_jsonl, tmp_path):
    common = dict(role="assessor", num_epochs=2, batch_size=4, max_examples=14, eval_fraction=0.2)
    full = run_sft(tiny_config(tiny_model_dir, sft_jsonl, tmp_path / "full", **common))
    # the interruption at step 4 lands mid-way through epoch 2, after epoch 1's eval and checkpoint
    assert full.eval_curve[0][0] < 4 < full.eval_curve[1][0]

    split = tmp_path / "split"
    first = run_sft(tiny_config(tiny_model_dir, sft_jsonl, split, stop_after_steps=4, **common))
    assert first.interrupted and first.global_step == 4 and (split / "checkpoint-4").is_dir()
    assert not (split / "model.safetensors").exists()  # an interrupted run leaves only the checkpoint
    resumed = run_sft(tiny_config(tiny_model_dir, sft_jsonl, split, resume=True, **common))
    assert resumed.extra["resumed_from"].endswith("checkpoint-4")
    assert resumed.global_step == full.global_step > 4

    assert [s for s, _ in resumed.loss_curve] == [s for s, _ in full.loss_curve]
    for (_, a), (_, b) in zip(resumed.loss_curve, full.loss_curve, strict=True):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5)
    assert [s for s, _ in resumed.eval_curve] == [s for s, _ in full.eval_curve]
    for (_, a), (_, b) in zip(resumed.eval_curve, full.eval_curve, strict=True):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5)


class _Scrape(TrainerCallback):
    def __init__(self, port: int):
        self.port, self.pages = port, []

    def on_step_end(self, args, state, control, **kwargs):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as response:
            self.pages.append(response.read().decode())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_lora_run_serves_metrics_and_saves_an_adapter(tiny_model_dir, sft_jsonl, tmp_path):
    port = _free_port()
    scrape = _Scrape(port)
    save = tmp_path / "lora"
    config = tiny_config(
        tiny_model_dir,
        sft_jsonl,
        save,
        role="injector",
        lora=True,
        lora_r=4,
        num_epochs=1,
        max_examples=8,
        batch_size=4,
        eval_fraction=0,
        metrics_port=port,
    )
    result = run_sft(config, extra_callbacks=[scrape])
    assert result.metrics_port == port and result.global_step >= 2
    page = scrape.pages[-1]
    for name in ("medserl_train_loss", "medserl_train_learning_rate", "medserl_train_step"):
        assert f'{name}{{phase="sft"}}' in page
    adapter = json.loads((save / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and set(adapter["target_modules"]) == set(config.lora_target_modules)
    assert (save / "adapter_model.safetensors").is_file() and not (save / "model.safetensors").exists()


def test_cli_trains_and_reports_bad_input(tiny_model_dir, sft_jsonl, tmp_path, capsys):
    argv = [
        "train",
        "--phase",
        "sft",
        "--model-name",
        str(tiny_model_dir),
        "--train-data",
        str(sft_jsonl),
        "--save-path",
        str(tmp_path / "cli"),
        "--num-epochs",
        "1",
        "--batch-size",
        "4",
        "--learning-rate",
        "1e-3",
        "--max-examples",
        "4",
        "--eval-fraction",
        "0",
        "--role",
        "assessor",
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    assert "SFT saved to" in capsys.readouterr().out

    bad = tmp_path / "bad.jsonl"
    bad.write_text(sft_jsonl.read_text().splitlines()[0] + "\n{not json\n")
    assert main([*argv[:6], str(bad), *argv[7:]]) == 2
    assert f"{bad}:2: not valid JSON" in capsys.readouterr().err
    assert main([*argv, "--batch-size", "0"]) == 2
    assert (
        main(
            [
                "train",
                "--model-name",
                str(tmp_path / "no-model"),
                "--train-data",
                str(sft_jsonl),
                "--save-path",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "no such folder" in capsys.readouterr().err


def test_records_are_validated_and_split_by_pair(sft_records, tmp_path):
    train, held = split_records(sft_records, 0.25, seed=1)
    assert held and train and len(train) + len(held) == len(sft_records)
    assert not {r["pair_id"] for r in train} & {r["pair_id"] for r in held}
    assert split_records(sft_records, 0.25, seed=1) == (train, held)
    assert split_records(list(reversed(sft_records)), 0.25, seed=1)[1] == list(reversed(held))

    broken = dict(sft_records[0], changed_sentence_id=999)
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(sft_records[1]) + "\n" + json.dumps(broken) + "\n")
    with pytest.raises(SFTError, match=r":2: changed_sentence_id 999"):
        load_sft_records(path)
    path.write_text(json.dumps({k: v for k, v in sft_records[0].items() if k != "note_sentences"}) + "\n")
    with pytest.raises(SFTError, match="missing fields"):
        load_sft_records(path)
    with pytest.raises(SFTError, match="role"):
        SFTRunConfig(role="judge").validate()


def test_qwen3_chat_template_trains_the_answer_after_an_empty_think_block(
    tiny_model_dir, sft_jsonl, tmp_path
):
    """Production path: Qwen3's own chat template (TRL ships the original) with enable_thinking=False.
    The prompt ends in an empty <think></think> block and the loss covers the answer + <|im_end|>."""
    import shutil
    from importlib import resources

    qwen3_template = (resources.files("trl") / "chat_templates" / "qwen3.jinja").read_text()
    model_dir = tmp_path / "tiny_qwen3_template"
    shutil.copytree(tiny_model_dir, model_dir)
    (model_dir / "chat_template.jinja").write_text(qwen3_template)
    config = tiny_config(model_dir, sft_jsonl, tmp_path / "out", role="both", max_examples=4, eval_fraction=0)
    prepared = build_trainer(config)
    assert prepared.tokenizer.chat_template == qwen3_template
    for row in prepared.trainer.train_dataset:
        start = next(i for i, label in enumerate(row["labels"]) if label != -100)
        prompt = prepared.tokenizer.decode(row["input_ids"][:start])
        answer = prepared.tokenizer.decode(row["input_ids"][start:])
        assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
        assert answer.endswith(IM_END + "\n") and "<think>" not in answer
        content = answer.removesuffix(IM_END + "\n")
        parsed = (formats.parse_assessor_output(content), formats.parse_injector_edit(content))
        assert any(not isinstance(p, formats.ParseFailure) for p in parsed)
