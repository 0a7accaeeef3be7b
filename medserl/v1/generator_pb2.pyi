from medserl.v1 import messages_pb2 as _messages_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubmitPairsRequest(_message.Message):
    __slots__ = ("pairs", "add_reasoning", "seed", "max_cost_usd")
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    ADD_REASONING_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_COST_USD_FIELD_NUMBER: _ClassVar[int]
    pairs: _containers.RepeatedCompositeFieldContainer[_messages_pb2.NotePair]
    add_reasoning: bool
    seed: int
    max_cost_usd: float
    def __init__(self, pairs: _Optional[_Iterable[_Union[_messages_pb2.NotePair, _Mapping]]] = ..., add_reasoning: _Optional[bool] = ..., seed: _Optional[int] = ..., max_cost_usd: _Optional[float] = ...) -> None: ...

class JobRef(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("job_id", "state", "pairs_total", "examples_accepted", "examples_rejected", "cost_usd", "message", "output_dir")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAIRS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_REJECTED_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: str
    pairs_total: int
    examples_accepted: int
    examples_rejected: int
    cost_usd: float
    message: str
    output_dir: str
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[str] = ..., pairs_total: _Optional[int] = ..., examples_accepted: _Optional[int] = ..., examples_rejected: _Optional[int] = ..., cost_usd: _Optional[float] = ..., message: _Optional[str] = ..., output_dir: _Optional[str] = ...) -> None: ...
