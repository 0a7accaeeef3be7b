"""The Qwen3-4B path without the download: its config, LoRA targets, and a GPU memory estimate.

``qwen3_4b_config()`` rebuilds Qwen/Qwen3-4B's published config locally, so the architecture, the
LoRA attachment (on a meta-device model: no weights are allocated) and the memory budget can be
checked on a laptop before renting a GPU.

Memory model (bytes; P = all parameters, A = trainable LoRA parameters, T = batch x seq tokens):

* full fine-tuning, weights loaded in bf16 (the trainer's GPU recipe, as TRL does): weights 2P +
  gradients 2P + AdamW moments 4P (two bf16 states) = 8P.
* LoRA: frozen bf16 weights 2P + adapters kept in fp32 by peft: 4A weights + 4A gradients + 8A AdamW.
* activations: what autograd keeps per token and layer (norm inputs/outputs, q/k/v after norm and
  RoPE, SDPA output, residuals, the SwiGLU gate/up/act/product), in bf16; with gradient
  checkpointing only each layer's input plus one layer's activations.
* logits: bf16 logits + an fp32 copy for the loss + its gradient, for every token (T x vocab x 10).
* a fixed overhead for the CUDA context, cuBLAS workspaces and allocator fragmentation.

It is an analytic estimate (not yet checked against a measured peak on a GPU), meant for choosing a
batch size and between full/LoRA/checkpointing, not for packing a GPU to the last megabyte.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3
QWEN3_4B = "Qwen/Qwen3-4B"
QWEN3_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CUDA_OVERHEAD_BYTES = int(1.5 * GIB)

# Qwen/Qwen3-4B config.json as published on the hub (model card, April 2025)
QWEN3_4B_DIMS = {
    "vocab_size": 151936,
    "hidden_size": 2560,
    "intermediate_size": 9728,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "rope_theta": 1000000.0,
}


def qwen3_4b_config():
    """A ``Qwen3Config`` with Qwen3-4B's published dimensions, built without any download."""
    from transformers import Qwen3Config

    dims = dict(QWEN3_4B_DIMS)
    rope_theta = dims.pop("rope_theta")
    return Qwen3Config(**dims, rope_parameters={"rope_type": "default", "rope_theta": rope_theta})


def resolve_config(model_name: str):
    """The config for ``model_name``: a local folder, the HF cache, or the built-in Qwen3-4B one."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_name, local_files_only=True)
    except (OSError, ValueError):
        if model_name == QWEN3_4B:
            return qwen3_4b_config()
        raise


def meta_model(config):
    """The model with its full architecture on the meta device (shapes only, no memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def attach_lora(model, r: int = 16, alpha: int = 32, targets: tuple[str, ...] = QWEN3_LORA_TARGETS):
    """peft LoRA adapters on ``model`` (works on a meta-device model)."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(
        model, LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), task_type="CAUSAL_LM")
    )


@dataclass(frozen=True)
class ModelShape:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_word_embeddings: bool

    @classmethod
    def from_config(cls, config) -> ModelShape:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = text.num_attention_heads
        return cls(
            vocab_size=text.vocab_size,
            hidden_size=text.hidden_size,
            intermediate_size=text.intermediate_size,
            num_layers=text.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(text, "num_key_value_heads", None) or heads,
            head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
            tie_word_embeddings=bool(getattr(text, "tie_word_embeddings", False)),
        )

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each projection in one decoder layer."""
        h, q, kv, i = (
            self.hidden_size,
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
            self.intermediate_size,
        )
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def num_parameters(self) -> int:
        per_layer = sum(a * b for a, b in self.linear_shapes().values())
        per_layer += 2 * self.hidden_size + 2 * self.head_dim  # input/post norms, q_norm/k_norm (Qwen3)
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * per_layer + embeddings + self.hidden_size

    def num_lora_parameters(self, r: int, targets: tuple[str, ...] = QWEN3_LORA_TARGETS) -> int:
        shapes = self.linear_shapes()
        return self.num_layers * sum(r * (shapes[t][0] + shapes[t][1]) for t in targets if t in shapes)

    def activation_elements_per_token_layer(self) -> int:
        h, q, kv, i = (
            self.hidden_size,
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
            self.intermediate_size,
        )
        norms = 4 * h  # input + output of both RMSNorms
        attention = (
            2 * q + 2 * kv + q + q
        )  # q/k/v projections, q/k after norm+RoPE, SDPA output, o_proj input
        attention += kv  # v as SDPA input
        mlp = 4 * i  # gate, up, act(gate), act(gate) * up
        return norms + attention + mlp + h  # + residual


@dataclass(frozen=True)
class MemoryEstimate:
    mode: str  # "full" | "lora"
    batch_size: int
    seq_len: int
    gradient_checkpointing: bool
    num_parameters: int
    trainable_parameters: int
    weights_gib: float
    gradients_gib: float
    optimizer_gib: float
    activations_gib: float
    logits_gib: float
    overhead_gib: float

    @property
    def total_gib(self) -> float:
        return round(
            self.weights_gib
            + self.gradients_gib
            + self.optimizer_gib
            + self.activations_gib
            + self.logits_gib
            + self.overhead_gib,
            2,
        )


def estimate_training_memory(
    config,
    *,
    batch_size: int = 4,
    seq_len: int = 2048,
    lora: bool = False,
    lora_r: int = 16,
    lora_targets: tuple[str, ...] = QWEN3_LORA_TARGETS,
    gradient_checkpointing: bool = False,
    weight_bytes: int = 2,
) -> MemoryEstimate:
    """Peak GPU memory of one training step (see the module docstring for the model)."""
    if batch_size < 1 or seq_len < 1:
        raise ValueError("batch_size and seq_len must be positive")
    shape = config if isinstance(config, ModelShape) else ModelShape.from_config(config)
    params = shape.num_parameters()
    tokens = batch_size * seq_len
    if lora:
        trainable = shape.num_lora_parameters(lora_r, lora_targets)
        weights = weight_bytes * params + 4 * trainable
        gradients = 4 * trainable
        optimizer = 8 * trainable
    else:
        trainable = params
        weights = weight_bytes * params
        gradients = weight_bytes * params
        optimizer = 2 * weight_bytes * params
    per_layer = shape.activation_elements_per_token_layer() * 2  # bf16
    if gradient_checkpointing:
        activations = tokens * (shape.num_layers * shape.hidden_size * 2 + per_layer)
    else:
        activations = tokens * shape.num_layers * per_layer
    if lora:
        activations += tokens * shape.num_layers * len(lora_targets) * lora_r * 4
    logits = tokens * shape.vocab_size * 10
    return MemoryEstimate(
        mode="lora" if lora else "full",
        batch_size=batch_size,
        seq_len=seq_len,
        gradient_checkpointing=gradient_checkpointing,
        num_parameters=params,
        trainable_parameters=trainable,
        weights_gib=round(weights / GIB, 2),
        gradients_gib=round(gradients / GIB, 2),
        optimizer_gib=round(optimizer / GIB, 2),
        activations_gib=round(activations / GIB, 2),
        logits_gib=round(logits / GIB, 2),
        overhead_gib=round(CUDA_OVERHEAD_BYTES / GIB, 2),
    )


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def memory_table(
    config, *, batch_size: int, seq_len: int, lora_r: int = 16, chosen: str | None = None
) -> str:
    """A printable table: full vs LoRA, with and without gradient checkpointing."""
    header = f"{'mode':<6} {'ckpt':<5} {'params':>8} {'trainable':>10} {'weights':>8} {'grads':>7} {'optim':>7} {'activ':>7} {'logits':>7} {'total GiB':>10}"
    lines = [
        f"GPU memory estimate: batch {batch_size} x seq {seq_len} tokens, bf16, AdamW",
        header,
        "-" * len(header),
    ]
    for lora in (False, True):
        for ckpt in (False, True):
            est = estimate_training_memory(
                config,
                batch_size=batch_size,
                seq_len=seq_len,
                lora=lora,
                lora_r=lora_r,
                gradient_checkpointing=ckpt,
            )
            mark = "  <- chosen" if chosen == f"{est.mode}{'+ckpt' if ckpt else ''}" else ""
            lines.append(
                f"{est.mode:<6} {'yes' if ckpt else 'no':<5} {_count(est.num_parameters):>8} {_count(est.trainable_parameters):>10} "
                f"{est.weights_gib:>8.2f} {est.gradients_gib:>7.2f} {est.optimizer_gib:>7.2f} {est.activations_gib:>7.2f} "
                f"{est.logits_gib:>7.2f} {est.total_gib:>10.2f}{mark}"
            )
    return "\n".join(lines)
