"""The frozen assessor's judgement of a note: a MEDEC verdict plus P(error) from the model's log-probs.

A detector sees only numbered sentences (``[(id, text)]``): never a note id, a file name or a
neighbouring note. Backends:

* a model through ``services.inference`` (``transformers``, ``vllm``, ``openai_chat``);
* trivial baselines that need no model at all: ``baseline_no_error`` (always "no error") and
  ``baseline_last_sentence`` (always flags the last sentence), the yardsticks MEDEC needs because
  the error is the last sentence in most notes.

The assessor is frozen: a detector records the hash of its checkpoint when it starts and refuses any
weight update.
"""

from __future__ import annotations

import math
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace

from services.common import formats
from services.inference import GenerationParams, InferenceBackend, PolicyUpdateError

BASELINES = ("baseline_no_error", "baseline_last_sentence")
Sentences = Sequence[tuple[int, str]]


class FrozenAssessorError(PolicyUpdateError):
    """Someone asked the frozen assessor to change its weights."""


@dataclass
class Detection:
    output: formats.AssessorOutput | formats.ParseFailure
    flag_probability: float  # P(error_flag = 1)
    raw_text: str
    generated_tokens: int
    latency_s: float

    @property
    def parsed(self) -> bool:
        return isinstance(self.output, formats.AssessorOutput)

    def to_verdict(self, checkpoint_hash: str):
        """The ``AssessorVerdict`` message; an unparsed output reads as "no error" with the reason."""
        from medserl.v1 import messages_pb2 as pb

        verdict = pb.AssessorVerdict(flag_probability=self.flag_probability, parsed=self.parsed,
                                     assessor_checkpoint_hash=checkpoint_hash, latency_ms=self.latency_s * 1000)
        if isinstance(self.output, formats.AssessorOutput):
            verdict.error_flag = self.output.error_flag
            verdict.error_sentence_id = self.output.sentence_id if self.output.error_flag else -1
            verdict.corrected_sentence = self.output.corrected_sentence or ""
        else:
            verdict.error_flag = False
            verdict.error_sentence_id = -1
            verdict.parse_error = self.output.reason[:500]
        return verdict


class Detector(ABC):
    name = "abstract"

    @property
    @abstractmethod
    def checkpoint_hash(self) -> str: ...

    @abstractmethod
    def detect(self, notes: Sequence[Sentences]) -> list[Detection]: ...

    def load_policy(self, *_args, **_kwargs) -> None:
        raise FrozenAssessorError(f"the assessor is frozen at checkpoint {self.checkpoint_hash[:16]}; "
                                  "start a new assessor to change its weights")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the model."""


# --------------------------------------------------------------------------------------------------
# P(error) from log-probs
# --------------------------------------------------------------------------------------------------

_FLAG_PREFIX = re.compile(r"error[_ ]flag\**\s*[:=]\s*\**\s*$", re.IGNORECASE)
_FLAG_VALUE = re.compile(r"error[_ ]flag\**\s*[:=]\s*\**\s*([01])", re.IGNORECASE)


def flag_probability(tokens: Sequence[str], logprobs: Sequence[float], top_logprobs, flag: bool | None) -> float:
    """P(error_flag = 1) at the position where the model wrote the flag digit.

    With alternatives (``top_logprobs``) holding both digits it is p("1") / (p("1") + p("0")) over the
    candidate tokens that would complete ``error_flag:`` with that digit; when only one digit is among
    them (or only the sampled token's log-prob is known) it is p("1"), or 1 - p("0"); with no
    log-probs it is the parsed flag itself (1.0 or 0.0).
    """
    fallback = 1.0 if flag else 0.0
    if not tokens:
        return fallback
    prefix = ""
    for i, token in enumerate(tokens):
        combined = prefix + token
        match = _FLAG_VALUE.search(combined)
        if match and match.start(1) >= len(prefix):  # the digit is inside this token
            before = prefix
            if top_logprobs and i < len(top_logprobs) and top_logprobs[i]:
                mass = {"0": 0.0, "1": 0.0}
                for alt, lp in top_logprobs[i].items():
                    m = _FLAG_VALUE.search(before + alt)
                    if m and m.start(1) >= len(before) and not math.isnan(lp):
                        mass[m.group(1)] += math.exp(lp)
                if mass["0"] > 0 and mass["1"] > 0:
                    return mass["1"] / (mass["0"] + mass["1"])
                if mass["1"] > 0:  # "0" is not among the alternatives: its mass is what "1" leaves
                    return mass["1"]
                if mass["0"] > 0:
                    return 1.0 - mass["0"]
            if i < len(logprobs) and not math.isnan(logprobs[i]):
                p = math.exp(logprobs[i])
                return p if match.group(1) == "1" else 1.0 - p
            return fallback
        if match:  # the digit was already written by an earlier token (should not happen)
            return fallback
        prefix = combined
    return fallback


# --------------------------------------------------------------------------------------------------
# detectors
# --------------------------------------------------------------------------------------------------


class ModelDetector(Detector):
    """A language model asked with the shared assessor prompt and read with the shared parser."""

    def __init__(self, backend: InferenceBackend, params: GenerationParams):
        self.backend = backend
        self.params = params.validate()
        self.name = backend.name
        self._hash = backend.checkpoint_hash  # recorded once: the assessor never changes it

    @property
    def checkpoint_hash(self) -> str:
        return self._hash

    def detect(self, notes: Sequence[Sentences], temperature: float | None = None) -> list[Detection]:
        """Verdicts; ``temperature`` overrides the configured sampling (a re-judge samples)."""
        if not notes:
            return []
        params = self.params if temperature is None else replace(self.params, temperature=temperature)
        started = time.perf_counter()
        completions = self.backend.generate([formats.assessor_messages(list(n)) for n in notes], params)
        elapsed = time.perf_counter() - started
        per_note = elapsed / len(notes)
        out = []
        for note, completion in zip(notes, completions, strict=True):
            ids = [sid for sid, _ in note]
            parsed = formats.parse_assessor_output(completion.text)
            if isinstance(parsed, formats.AssessorOutput) and parsed.error_flag and parsed.sentence_id not in ids:
                parsed = formats.ParseFailure(f"error_sentence_id {parsed.sentence_id} is not in the note",
                                              completion.text)
            flag = parsed.error_flag if isinstance(parsed, formats.AssessorOutput) else None
            prob = flag_probability(completion.tokens, completion.logprobs, completion.top_logprobs, flag)
            out.append(Detection(parsed, prob, completion.text, completion.num_tokens, per_note))
        return out

    def close(self) -> None:
        self.backend.close()


class BaselineDetector(Detector):
    """A trivial MEDEC baseline with no model: always "no error", or always the last sentence."""

    def __init__(self, kind: str):
        if kind not in BASELINES:
            raise ValueError(f"unknown baseline {kind!r}; choose one of {', '.join(BASELINES)}")
        self.name = kind

    @property
    def checkpoint_hash(self) -> str:
        return self.name

    def detect(self, notes: Sequence[Sentences]) -> list[Detection]:
        out = []
        for note in notes:
            started = time.perf_counter()
            if self.name == "baseline_no_error" or not note:
                output = formats.AssessorOutput(False, -1, None)
            else:
                last_id = max(sid for sid, _ in note)
                output = formats.AssessorOutput(True, last_id, None)
            text = formats.render_assessor_output(output)
            out.append(Detection(output, 1.0 if output.error_flag else 0.0, text, 0, time.perf_counter() - started))
        return out


def build_detector(settings) -> Detector:
    """A detector from assessor settings (``backend`` names a baseline or an inference backend)."""
    from services.inference import build_backend

    if settings.backend in BASELINES:
        return BaselineDetector(settings.backend)
    config = settings.backend_config()
    params = GenerationParams(temperature=settings.temperature, top_p=settings.top_p,
                              max_new_tokens=settings.max_new_tokens, n=1,
                              seed=settings.seed if settings.seed >= 0 else None,
                              top_logprobs=settings.top_logprobs)
    return ModelDetector(build_backend(config), params)
