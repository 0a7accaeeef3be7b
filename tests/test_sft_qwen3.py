"""The Qwen3-4B path up to the download: published config, LoRA targets on a meta model, memory."""

from __future__ import annotations

import pytest

from medserl_cli.cli import main
from trainer.memory import (
    QWEN3_4B_DIMS,
    QWEN3_LORA_TARGETS,
    ModelShape,
    attach_lora,
    estimate_training_memory,
    meta_model,
    qwen3_4b_config,
)
from trainer.sft import QWEN3_LORA_TARGETS as SFT_LORA_TARGETS
from trainer.sft import SFTRunConfig


@pytest.fixture(scope="module")
def config():
    return qwen3_4b_config()


def test_config_has_the_published_dimensions(config):
    assert config.model_type == "qwen3"
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (2560, 36, 32)
    assert (config.num_key_value_heads, config.head_dim, config.intermediate_size) == (8, 128, 9728)
    assert config.vocab_size == 151936 and config.tie_word_embeddings is True
    assert config.rope_parameters["rope_theta"] == QWEN3_4B_DIMS["rope_theta"]


def test_meta_model_and_lora_targets(config):
    model = meta_model(config)
    assert next(model.parameters()).device.type == "meta"  # nothing allocated, nothing downloaded
    total = sum(p.numel() for p in model.parameters())
    assert total == ModelShape.from_config(config).num_parameters()
    assert 4.0e9 < total < 4.05e9  # "Qwen3-4B": 4.02B with tied embeddings
    assert model.lm_head.weight is model.model.embed_tokens.weight

    peft_model = attach_lora(model, r=16, targets=QWEN3_LORA_TARGETS)
    adapted = [name for name, _ in peft_model.named_modules() if name.endswith(".lora_A")]
    assert len(adapted) == 36 * 7
    assert {name.rsplit(".", 2)[-2] for name in adapted} == set(QWEN3_LORA_TARGETS)
    assert set(QWEN3_LORA_TARGETS) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    # r * (in + out) per adapted projection, 36 layers
    per_layer = 16 * ((2560 + 4096) * 2 + (2560 + 1024) * 2 + (2560 + 9728) * 3)
    assert trainable == 36 * per_layer == ModelShape.from_config(config).num_lora_parameters(16)
    assert SFT_LORA_TARGETS == QWEN3_LORA_TARGETS == SFTRunConfig().lora_target_modules


def test_memory_estimate_orders_the_choices(config):
    full = estimate_training_memory(config, batch_size=4, seq_len=2048)
    lora = estimate_training_memory(config, batch_size=4, seq_len=2048, lora=True)
    full_ckpt = estimate_training_memory(config, batch_size=4, seq_len=2048, gradient_checkpointing=True)
    bigger = estimate_training_memory(config, batch_size=8, seq_len=2048)
    # bf16 full fine-tuning: weights + grads + AdamW = 8 bytes/parameter
    assert full.weights_gib + full.gradients_gib + full.optimizer_gib == pytest.approx(8 * 4.0225e9 / 2**30, rel=0.01)
    assert lora.gradients_gib + lora.optimizer_gib < 1 < full.optimizer_gib
    assert lora.total_gib < full.total_gib and full_ckpt.total_gib < full.total_gib
    assert bigger.activations_gib == pytest.approx(2 * full.activations_gib, rel=0.01)
    assert lora.trainable_parameters == 33_030_144
    with pytest.raises(ValueError):
        estimate_training_memory(config, batch_size=0)


def test_cli_prints_the_estimate_without_downloading(capsys):
    assert main(["train", "--estimate-memory", "--model-name", "Qwen/Qwen3-4B", "--batch-size", "4", "--max-length", "2048", "--lora"]) == 0
    out = capsys.readouterr().out
    assert "batch 4 x seq 2048" in out and "<- chosen" in out
    chosen = next(line for line in out.splitlines() if "<- chosen" in line)
    assert chosen.startswith("lora") and float(chosen.split()[-3]) > 10  # total GiB column
    assert "252 modules adapted" in out and "33,030,144 trainable" in out
    assert main(["train", "--estimate-memory", "--model-name", "nobody/no-such-model"]) == 2


def test_gpu_check_warns_when_the_recipe_does_not_fit(config, caplog, monkeypatch):
    """On an 80 GiB GPU the full-FT recipe at 2048-token chats does not fit; at 900 tokens it does."""
    import logging

    import torch

    from trainer.sft import warn_if_gpu_too_small

    class Props:
        total_memory = 80 * 2**30

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda _index: Props())
    with caplog.at_level(logging.INFO, logger="trainer.sft"):
        warn_if_gpu_too_small(SFTRunConfig(), config, 2048)
        warn_if_gpu_too_small(SFTRunConfig(), config, 900)
        warn_if_gpu_too_small(SFTRunConfig(gradient_checkpointing=True), config, 2048)
    levels = [r.levelname for r in caplog.records if r.name == "trainer.sft"]
    assert levels == ["WARNING", "INFO", "INFO"]
