"""A tiny Qwen3-architecture causal LM built locally, so every model path runs offline on a CPU.

Same architecture class as production (``Qwen3ForCausalLM``), random init, with its own byte-level
BPE tokenizer trained on clinical notes plus the task-format strings (``services.common.formats``),
and a Qwen-style chat template (``<|im_start|>role\\n...<|im_end|>``). It is saved with
``save_pretrained`` so ``AutoModelForCausalLM/AutoTokenizer.from_pretrained(out_dir)`` load it like
any hub model; nothing is downloaded.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from services.common import formats

log = logging.getLogger(__name__)

IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
SPECIAL_TOKENS = (END_OF_TEXT, IM_START, IM_END)

# Qwen-style chat template; the {% generation %} markers let TRL's assistant_only_loss find the
# assistant turn (its <|im_end|> included, so the model learns to stop). ``enable_thinking`` and
# ``tools`` are accepted and ignored so callers can pass Qwen3 kwargs unchanged.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}{{- message['content'] + '<|im_end|>\\n' }}{%- endgeneration %}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

MEDEC_VALIDATION_CSV = "MEDEC-MS-ValidationSet-with-GroundTruth-and-ErrorType.csv"
BUILD_INFO_FILE = "medserl_tiny_model.json"
FORMAT_TEXT_REPEATS = 50


@dataclass(frozen=True)
class TinyModelSpec:
    """Sizes of the tiny model: small enough for a CPU SFT test in well under a minute per epoch."""

    vocab_size: int = 4096  # BPE target; the real size is whatever the trainer reaches
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    max_position_embeddings: int = 4096
    min_frequency: int = 2


def read_note_texts(csv_path: str | os.PathLike) -> list[str]:
    """Note texts (``Text`` and, when present, ``Corrected Text``) from a MEDEC-format CSV."""
    texts: list[str] = []
    with open(csv_path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            for column in ("Text", "Corrected Text"):
                value = (row.get(column) or "").strip()
                if value and value != "NA":
                    texts.append(value)
    return texts


def medec_texts(medec_dir: str | os.PathLike) -> list[str]:
    """Training texts for the tokenizer from a MEDEC folder (validation notes only: never test)."""
    path = Path(medec_dir) / MEDEC_VALIDATION_CSV
    if not path.is_file():
        raise FileNotFoundError(f"no {MEDEC_VALIDATION_CSV} in {medec_dir}")
    return read_note_texts(path)


def demo_texts() -> list[str]:
    """Notes of the project's own demo set (MEDEC format), used when no MEDEC data is given."""
    try:
        from medec.prepare import demo_csv_path
    except ImportError as exc:  # pragma: no cover - only before the data module exists
        raise RuntimeError(
            "the demo set is not available (medec.prepare); pass texts or --medec-dir"
        ) from exc
    return read_note_texts(demo_csv_path())


def _format_texts() -> Iterator[str]:
    """The task-format strings, so prompts and answers tokenize into few, stable pieces."""
    yield formats.ASSESSOR_SYSTEM
    yield formats.INJECTOR_SYSTEM
    yield " ".join(formats.FORMAT_STRINGS)
    for sid in range(64):
        yield f"[{sid}] sentence_id: {sid}\nerror_sentence_id: {sid}"
    yield "error_flag: 0\nerror_sentence_id: -1\ncorrected_sentence: NA"
    yield "Mode: paraphrase\nNote:\nMode: inject\nNote:\nIs there a medical error in this note?"


def train_tokenizer(texts: Iterable[str], spec: TinyModelSpec = TinyModelSpec()):
    """A byte-level BPE tokenizer (any text encodes; no unknown tokens) wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        min_frequency=spec.min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # the format strings are repeated so BPE merges them even on a small corpus
    corpus = [*texts, *(list(_format_texts()) * FORMAT_TEXT_REPEATS)]
    tokenizer.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        model_max_length=spec.max_position_embeddings,
    )
    wrapped.add_special_tokens({"additional_special_tokens": [IM_START]})
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def build_tiny_model(
    out_dir: str | os.PathLike,
    texts: Iterable[str] | None = None,
    seed: int = 0,
    spec: TinyModelSpec = TinyModelSpec(),
) -> Path:
    """Train the tokenizer on ``texts`` (default: the demo notes), init a tiny Qwen3, save both.

    Deterministic for a given ``texts`` and ``seed``. Returns ``out_dir``.
    """
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    note_texts = list(texts) if texts is not None else demo_texts()
    if not note_texts:
        raise ValueError("no texts to train the tokenizer on")
    tokenizer = train_tokenizer(note_texts, spec)
    vocab_size = len(tokenizer)
    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.convert_tokens_to_ids(END_OF_TEXT),
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        eos_token_id=[config.eos_token_id, config.pad_token_id],
        pad_token_id=config.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    info = {
        "seed": seed,
        "num_texts": len(note_texts),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": vocab_size,
        "format_version": formats.FORMAT_VERSION,
        "spec": asdict(spec),
    }
    (out / BUILD_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    log.info(
        "tiny model built",
        extra={"out_dir": str(out), **{k: info[k] for k in ("num_parameters", "vocab_size")}},
    )
    return out


def model_size(model_dir: str | os.PathLike) -> dict:
    """Parameters, vocab size and on-disk MB of a saved model folder (for reports)."""
    from transformers import AutoConfig

    path = Path(model_dir)
    config = AutoConfig.from_pretrained(path)
    weights = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    info_file = path / BUILD_INFO_FILE
    params = json.loads(info_file.read_text())["num_parameters"] if info_file.is_file() else None
    return {"parameters": params, "vocab_size": config.vocab_size, "weights_mb": round(weights / 2**20, 2)}
