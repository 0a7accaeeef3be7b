"""The versioned prompt file: templates, JSON schemas and the hash every record stores.

Static text (system message) comes first and the note last, so provider-side prompt caching can
reuse the longest common prefix across requests. The hash covers the whole file (templates,
schemas, sampling parameters): any change gives a new hash and therefore new cache keys.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from services.common.formats import render_note

DEFAULT_PROMPT_FILE = Path(__file__).resolve().parents[2] / "configs" / "prompts" / "gpt4o_medec_safe_augmentation.json"
TASKS = ("paraphrase", "reasoning")
_REQUIRED = ("system", "user", "feedback", "temperature", "max_completion_tokens", "schema")


class PromptError(ValueError):
    """The prompt file is missing, not JSON, or lacks a required part (the message says which)."""


@dataclass(frozen=True)
class TaskPrompt:
    system: str
    user: str
    feedback: str
    temperature: float
    max_completion_tokens: int
    schema: dict  # the ``json_schema`` object of ``response_format`` (name, strict, schema)


@dataclass(frozen=True)
class PromptSet:
    name: str
    version: str
    hash: str  # sha256 of the canonical JSON of the whole file, first 16 hex digits
    paraphrase: TaskPrompt
    reasoning: TaskPrompt
    path: str

    def task(self, name: str) -> TaskPrompt:
        if name not in TASKS:
            raise KeyError(f"unknown task {name!r}")
        return getattr(self, name)

    # --- message builders (static first, note and feedback last) -------------------------------
    def paraphrase_messages(self, sentences: list[tuple[int, str]], feedback: str | None = None) -> list[dict]:
        p = self.paraphrase
        messages = [{"role": "system", "content": p.system},
                    {"role": "user", "content": p.user.format(note=render_note(sentences))}]
        if feedback:
            messages.append({"role": "user", "content": feedback})
        return messages

    def paraphrase_feedback(self, sentence_id: object, paraphrase: object, failed: list[str]) -> str:
        return self.paraphrase.feedback.format(sentence_id=sentence_id, paraphrase=json.dumps(str(paraphrase)),
                                               failed_checks="\n".join(f"- {f}" for f in failed))

    def reasoning_messages(self, sentences: list[tuple[int, str]], error_sentence_id: int, error_type: str,
                           error_sentence: str, corrected_sentence: str, feedback: str | None = None) -> list[dict]:
        r = self.reasoning
        user = r.user.format(note=render_note(sentences), error_sentence_id=error_sentence_id, error_type=error_type,
                             error_sentence=error_sentence, corrected_sentence=corrected_sentence)
        messages = [{"role": "system", "content": r.system}, {"role": "user", "content": user}]
        if feedback:
            messages.append({"role": "user", "content": feedback})
        return messages

    def reasoning_feedback(self, failed: list[str]) -> str:
        return self.reasoning.feedback.format(failed_checks="\n".join(f"- {f}" for f in failed))


def load_prompts(path: str | Path | None = None) -> PromptSet:
    """Read and validate the prompt file (default: configs/prompts/gpt4o_medec_safe_augmentation.json)."""
    path = Path(path) if path else DEFAULT_PROMPT_FILE
    if not path.is_file():
        raise PromptError(f"prompt file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise PromptError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise PromptError(f"{path}: expected a JSON object")
    tasks = {}
    for task in TASKS:
        section = data.get(task)
        if not isinstance(section, dict):
            raise PromptError(f"{path}: missing the {task!r} section")
        missing = [k for k in _REQUIRED if k not in section]
        if missing:
            raise PromptError(f"{path}: section {task!r} lacks {', '.join(missing)}")
        schema = section["schema"]
        if not isinstance(schema, dict) or "schema" not in schema or "name" not in schema:
            raise PromptError(f"{path}: {task}.schema must be a json_schema object with 'name' and 'schema'")
        tasks[task] = TaskPrompt(str(section["system"]), str(section["user"]), str(section["feedback"]),
                                 float(section["temperature"]), int(section["max_completion_tokens"]), schema)
    canonical = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]
    return PromptSet(str(data.get("name", path.stem)), str(data.get("version", "unversioned")), digest,
                     tasks["paraphrase"], tasks["reasoning"], str(path))
