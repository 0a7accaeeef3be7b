from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODE_UNSPECIFIED: _ClassVar[Mode]
    MODE_PARAPHRASE: _ClassVar[Mode]
    MODE_INJECT: _ClassVar[Mode]
    MODE_MEDEC_INCORRECT: _ClassVar[Mode]
MODE_UNSPECIFIED: Mode
MODE_PARAPHRASE: Mode
MODE_INJECT: Mode
MODE_MEDEC_INCORRECT: Mode

class Sentence(_message.Message):
    __slots__ = ("id", "text")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    id: int
    text: str
    def __init__(self, id: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...

class Note(_message.Message):
    __slots__ = ("note_id", "text", "sentences", "source", "split")
    NOTE_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SENTENCES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    note_id: str
    text: str
    sentences: _containers.RepeatedCompositeFieldContainer[Sentence]
    source: str
    split: str
    def __init__(self, note_id: _Optional[str] = ..., text: _Optional[str] = ..., sentences: _Optional[_Iterable[_Union[Sentence, _Mapping]]] = ..., source: _Optional[str] = ..., split: _Optional[str] = ...) -> None: ...

class NotePair(_message.Message):
    __slots__ = ("pair_id", "incorrect", "correct", "error_type", "error_sentence_id", "error_sentence", "corrected_sentence", "split")
    PAIR_ID_FIELD_NUMBER: _ClassVar[int]
    INCORRECT_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    ERROR_SENTENCE_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_SENTENCE_FIELD_NUMBER: _ClassVar[int]
    CORRECTED_SENTENCE_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    pair_id: str
    incorrect: Note
    correct: Note
    error_type: str
    error_sentence_id: int
    error_sentence: str
    corrected_sentence: str
    split: str
    def __init__(self, pair_id: _Optional[str] = ..., incorrect: _Optional[_Union[Note, _Mapping]] = ..., correct: _Optional[_Union[Note, _Mapping]] = ..., error_type: _Optional[str] = ..., error_sentence_id: _Optional[int] = ..., error_sentence: _Optional[str] = ..., corrected_sentence: _Optional[str] = ..., split: _Optional[str] = ...) -> None: ...

class Check(_message.Message):
    __slots__ = ("name", "passed", "detail")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    name: str
    passed: bool
    detail: str
    def __init__(self, name: _Optional[str] = ..., passed: _Optional[bool] = ..., detail: _Optional[str] = ...) -> None: ...

class VerificationReport(_message.Message):
    __slots__ = ("subject_id", "mode", "passed", "checks", "changed_sentence_ids", "latency_ms")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    CHANGED_SENTENCE_IDS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    mode: Mode
    passed: bool
    checks: _containers.RepeatedCompositeFieldContainer[Check]
    changed_sentence_ids: _containers.RepeatedScalarFieldContainer[int]
    latency_ms: float
    def __init__(self, subject_id: _Optional[str] = ..., mode: _Optional[_Union[Mode, str]] = ..., passed: _Optional[bool] = ..., checks: _Optional[_Iterable[_Union[Check, _Mapping]]] = ..., changed_sentence_ids: _Optional[_Iterable[int]] = ..., latency_ms: _Optional[float] = ...) -> None: ...

class SftExample(_message.Message):
    __slots__ = ("example_id", "pair_id", "kind", "mode", "original", "modified", "changed_sentence_id", "original_sentence", "new_sentence", "error_type", "reasoning_json", "prompt_version", "prompt_hash", "model", "system_fingerprint", "model_written", "prompt_tokens", "cached_tokens", "completion_tokens", "cost_usd", "verification")
    EXAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    PAIR_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_FIELD_NUMBER: _ClassVar[int]
    MODIFIED_FIELD_NUMBER: _ClassVar[int]
    CHANGED_SENTENCE_ID_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_SENTENCE_FIELD_NUMBER: _ClassVar[int]
    NEW_SENTENCE_FIELD_NUMBER: _ClassVar[int]
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    REASONING_JSON_FIELD_NUMBER: _ClassVar[int]
    PROMPT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_HASH_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    MODEL_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    example_id: str
    pair_id: str
    kind: str
    mode: Mode
    original: Note
    modified: Note
    changed_sentence_id: int
    original_sentence: str
    new_sentence: str
    error_type: str
    reasoning_json: str
    prompt_version: str
    prompt_hash: str
    model: str
    system_fingerprint: str
    model_written: bool
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost_usd: float
    verification: VerificationReport
    def __init__(self, example_id: _Optional[str] = ..., pair_id: _Optional[str] = ..., kind: _Optional[str] = ..., mode: _Optional[_Union[Mode, str]] = ..., original: _Optional[_Union[Note, _Mapping]] = ..., modified: _Optional[_Union[Note, _Mapping]] = ..., changed_sentence_id: _Optional[int] = ..., original_sentence: _Optional[str] = ..., new_sentence: _Optional[str] = ..., error_type: _Optional[str] = ..., reasoning_json: _Optional[str] = ..., prompt_version: _Optional[str] = ..., prompt_hash: _Optional[str] = ..., model: _Optional[str] = ..., system_fingerprint: _Optional[str] = ..., model_written: _Optional[bool] = ..., prompt_tokens: _Optional[int] = ..., cached_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., cost_usd: _Optional[float] = ..., verification: _Optional[_Union[VerificationReport, _Mapping]] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("temperature", "top_p", "max_new_tokens", "n", "seed")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_p: float
    max_new_tokens: int
    n: int
    seed: int
    def __init__(self, temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., max_new_tokens: _Optional[int] = ..., n: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class AssessorVerdict(_message.Message):
    __slots__ = ("error_flag", "error_sentence_id", "corrected_sentence", "flag_probability", "parsed", "parse_error", "assessor_checkpoint_hash", "latency_ms")
    ERROR_FLAG_FIELD_NUMBER: _ClassVar[int]
    ERROR_SENTENCE_ID_FIELD_NUMBER: _ClassVar[int]
    CORRECTED_SENTENCE_FIELD_NUMBER: _ClassVar[int]
    FLAG_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    PARSED_FIELD_NUMBER: _ClassVar[int]
    PARSE_ERROR_FIELD_NUMBER: _ClassVar[int]
    ASSESSOR_CHECKPOINT_HASH_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    error_flag: bool
    error_sentence_id: int
    corrected_sentence: str
    flag_probability: float
    parsed: bool
    parse_error: str
    assessor_checkpoint_hash: str
    latency_ms: float
    def __init__(self, error_flag: _Optional[bool] = ..., error_sentence_id: _Optional[int] = ..., corrected_sentence: _Optional[str] = ..., flag_probability: _Optional[float] = ..., parsed: _Optional[bool] = ..., parse_error: _Optional[str] = ..., assessor_checkpoint_hash: _Optional[str] = ..., latency_ms: _Optional[float] = ...) -> None: ...

class RewardParts(_message.Message):
    __slots__ = ("total", "game", "verifier", "format", "outcome", "excluded")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    GAME_FIELD_NUMBER: _ClassVar[int]
    VERIFIER_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_FIELD_NUMBER: _ClassVar[int]
    total: float
    game: float
    verifier: float
    format: float
    outcome: str
    excluded: bool
    def __init__(self, total: _Optional[float] = ..., game: _Optional[float] = ..., verifier: _Optional[float] = ..., format: _Optional[float] = ..., outcome: _Optional[str] = ..., excluded: _Optional[bool] = ...) -> None: ...

class Rollout(_message.Message):
    __slots__ = ("rollout_id", "seed_note_id", "group_id", "mode", "policy_version", "prompt_token_ids", "completion_token_ids", "behaviour_logprobs", "sampling", "modified_note", "completion_text", "changed_sentence_id", "claimed_error_type", "verification", "verdict", "reward", "created_unix_ms", "parse_error")
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    SEED_NOTE_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    BEHAVIOUR_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    MODIFIED_NOTE_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TEXT_FIELD_NUMBER: _ClassVar[int]
    CHANGED_SENTENCE_ID_FIELD_NUMBER: _ClassVar[int]
    CLAIMED_ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    PARSE_ERROR_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    seed_note_id: str
    group_id: str
    mode: Mode
    policy_version: int
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    completion_token_ids: _containers.RepeatedScalarFieldContainer[int]
    behaviour_logprobs: _containers.RepeatedScalarFieldContainer[float]
    sampling: SamplingParams
    modified_note: Note
    completion_text: str
    changed_sentence_id: int
    claimed_error_type: str
    verification: VerificationReport
    verdict: AssessorVerdict
    reward: RewardParts
    created_unix_ms: int
    parse_error: str
    def __init__(self, rollout_id: _Optional[str] = ..., seed_note_id: _Optional[str] = ..., group_id: _Optional[str] = ..., mode: _Optional[_Union[Mode, str]] = ..., policy_version: _Optional[int] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., completion_token_ids: _Optional[_Iterable[int]] = ..., behaviour_logprobs: _Optional[_Iterable[float]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., modified_note: _Optional[_Union[Note, _Mapping]] = ..., completion_text: _Optional[str] = ..., changed_sentence_id: _Optional[int] = ..., claimed_error_type: _Optional[str] = ..., verification: _Optional[_Union[VerificationReport, _Mapping]] = ..., verdict: _Optional[_Union[AssessorVerdict, _Mapping]] = ..., reward: _Optional[_Union[RewardParts, _Mapping]] = ..., created_unix_ms: _Optional[int] = ..., parse_error: _Optional[str] = ...) -> None: ...

class RolloutGroup(_message.Message):
    __slots__ = ("group_id", "seed_note_id", "mode", "policy_version", "seed_note", "rollouts", "created_unix_ms")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    SEED_NOTE_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    SEED_NOTE_FIELD_NUMBER: _ClassVar[int]
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    seed_note_id: str
    mode: Mode
    policy_version: int
    seed_note: Note
    rollouts: _containers.RepeatedCompositeFieldContainer[Rollout]
    created_unix_ms: int
    def __init__(self, group_id: _Optional[str] = ..., seed_note_id: _Optional[str] = ..., mode: _Optional[_Union[Mode, str]] = ..., policy_version: _Optional[int] = ..., seed_note: _Optional[_Union[Note, _Mapping]] = ..., rollouts: _Optional[_Iterable[_Union[Rollout, _Mapping]]] = ..., created_unix_ms: _Optional[int] = ...) -> None: ...

class PolicyUpdate(_message.Message):
    __slots__ = ("version", "checkpoint_uri", "kind", "base_model", "checkpoint_sha256", "learner_step", "created_unix_ms", "groups_consumed", "rollouts_consumed", "step_group_ids", "rollouts_wanted")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_URI_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SHA256_FIELD_NUMBER: _ClassVar[int]
    LEARNER_STEP_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    GROUPS_CONSUMED_FIELD_NUMBER: _ClassVar[int]
    ROLLOUTS_CONSUMED_FIELD_NUMBER: _ClassVar[int]
    STEP_GROUP_IDS_FIELD_NUMBER: _ClassVar[int]
    ROLLOUTS_WANTED_FIELD_NUMBER: _ClassVar[int]
    version: int
    checkpoint_uri: str
    kind: str
    base_model: str
    checkpoint_sha256: str
    learner_step: int
    created_unix_ms: int
    groups_consumed: int
    rollouts_consumed: int
    step_group_ids: _containers.RepeatedScalarFieldContainer[str]
    rollouts_wanted: int
    def __init__(self, version: _Optional[int] = ..., checkpoint_uri: _Optional[str] = ..., kind: _Optional[str] = ..., base_model: _Optional[str] = ..., checkpoint_sha256: _Optional[str] = ..., learner_step: _Optional[int] = ..., created_unix_ms: _Optional[int] = ..., groups_consumed: _Optional[int] = ..., rollouts_consumed: _Optional[int] = ..., step_group_ids: _Optional[_Iterable[str]] = ..., rollouts_wanted: _Optional[int] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("source_topic", "source_partition", "source_offset", "key", "payload", "reason", "error_class", "service", "failed_unix_ms", "attempts")
    SOURCE_TOPIC_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PARTITION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_CLASS_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    FAILED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    source_topic: str
    source_partition: int
    source_offset: int
    key: bytes
    payload: bytes
    reason: str
    error_class: str
    service: str
    failed_unix_ms: int
    attempts: int
    def __init__(self, source_topic: _Optional[str] = ..., source_partition: _Optional[int] = ..., source_offset: _Optional[int] = ..., key: _Optional[bytes] = ..., payload: _Optional[bytes] = ..., reason: _Optional[str] = ..., error_class: _Optional[str] = ..., service: _Optional[str] = ..., failed_unix_ms: _Optional[int] = ..., attempts: _Optional[int] = ...) -> None: ...
