"""The tiny offline Qwen3 model: loads like a hub model, tokenizes notes losslessly, chats Qwen-style."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from medserl_cli.cli import main
from services.common import formats
from trainer.medec_sft import medec_sft_records
from trainer.tiny_model import (
    BUILD_INFO_FILE,
    END_OF_TEXT,
    IM_END,
    IM_START,
    MEDEC_VALIDATION_CSV,
    build_tiny_model,
    model_size,
    read_note_texts,
)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_loads_as_qwen3_with_its_own_tokenizer(tiny, tiny_model_dir):
    model, tokenizer = tiny
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert model.config.model_type == "qwen3"
    assert model.config.vocab_size == len(tokenizer)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert tokenizer.eos_token == IM_END and tokenizer.pad_token == END_OF_TEXT
    assert model.config.eos_token_id == tokenizer.convert_tokens_to_ids(IM_END)
    for special in (IM_START, IM_END, END_OF_TEXT):
        assert len(tokenizer(special, add_special_tokens=False)["input_ids"]) == 1
    size = model_size(tiny_model_dir)
    assert size["parameters"] == sum(p.numel() for p in model.parameters())
    assert size["parameters"] < 5_000_000 and 0 < size["weights_mb"] < 20


def test_tokenizer_is_lossless_and_compact_on_medec_notes(tiny, medec_path):
    _, tokenizer = tiny
    texts = read_note_texts(medec_path / MEDEC_VALIDATION_CSV)[:200]
    total_chars = total_tokens = 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
        total_chars += len(text)
        total_tokens += len(ids)
    assert total_chars / total_tokens > 3.0  # trained BPE merges words, not bytes
    # characters the notes never contain still encode (byte-level: no unknown token)
    odd = "naïve café 5 µg ≥ 10 — 中文"
    assert tokenizer.decode(tokenizer(odd, add_special_tokens=False)["input_ids"]) == odd


def test_chat_template_is_qwen_style_and_marks_the_assistant_turn(tiny, medec_path):
    _, tokenizer = tiny
    record = medec_sft_records(medec_path / MEDEC_VALIDATION_CSV, max_records=1)[0]
    chat = formats.sft_messages(record, "assessor")
    text = tokenizer.apply_chat_template(chat, tokenize=False)
    assert text.startswith(f"{IM_START}system\n{chat[0]['content']}{IM_END}\n{IM_START}user\n")
    assert text.endswith(f"{IM_START}assistant\n{chat[-1]['content']}{IM_END}\n")
    prompt = tokenizer.apply_chat_template(chat[:-1], tokenize=False, add_generation_prompt=True)
    assert text.startswith(prompt) and prompt.endswith(f"{IM_START}assistant\n")
    encoded = tokenizer.apply_chat_template(
        chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    assistant_ids = [i for i, m in zip(encoded["input_ids"], encoded["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(assistant_ids) == chat[-1]["content"] + IM_END + "\n"


def test_generates_offline_and_stops_at_budget(tiny):
    model, tokenizer = tiny
    chat = formats.assessor_messages(
        [(0, "A 24-year-old woman has a headache."), (1, "She is given aspirin.")]
    )
    inputs = tokenizer.apply_chat_template(
        chat, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert out.shape[1] <= inputs["input_ids"].shape[1] + 8
    text = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :])
    assert isinstance(formats.parse_assessor_output(text), (formats.AssessorOutput, formats.ParseFailure))


def test_build_is_deterministic_for_a_seed(tmp_path, medec_path):
    texts = read_note_texts(medec_path / MEDEC_VALIDATION_CSV)[:60]
    a = build_tiny_model(tmp_path / "a", texts=texts, seed=3)
    b = build_tiny_model(tmp_path / "b", texts=texts, seed=3)
    c = build_tiny_model(tmp_path / "c", texts=texts, seed=4)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    wa, wb, wc = (AutoModelForCausalLM.from_pretrained(p).state_dict() for p in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    info = json.loads((a / BUILD_INFO_FILE).read_text())
    assert info["seed"] == 3 and info["format_version"] == formats.FORMAT_VERSION


def test_cli_builds_from_a_medec_dir_and_reports_errors(tmp_path, medec_path, capsys):
    out = tmp_path / "tiny"
    assert main(["model", "tiny", "--out", str(out), "--medec-dir", str(medec_path)]) == 0
    assert "parameters" in capsys.readouterr().out
    assert AutoTokenizer.from_pretrained(out).chat_template
    assert (
        main(["model", "tiny", "--out", str(tmp_path / "x"), "--medec-dir", str(tmp_path / "missing")]) == 2
    )
    assert "MEDEC" in capsys.readouterr().err
    assert main(["model", "info", str(out)]) == 0
    assert main(["model", "info", str(tmp_path / "missing")]) == 2
