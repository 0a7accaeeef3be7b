from medserl.v1 import messages_pb2 as _messages_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class TrainerStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TrainerStatus(_message.Message):
    __slots__ = ("phase", "step", "policy_version", "last_loss", "mean_reward", "rollouts_consumed")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_LOSS_FIELD_NUMBER: _ClassVar[int]
    MEAN_REWARD_FIELD_NUMBER: _ClassVar[int]
    ROLLOUTS_CONSUMED_FIELD_NUMBER: _ClassVar[int]
    phase: str
    step: int
    policy_version: int
    last_loss: float
    mean_reward: float
    rollouts_consumed: int
    def __init__(self, phase: _Optional[str] = ..., step: _Optional[int] = ..., policy_version: _Optional[int] = ..., last_loss: _Optional[float] = ..., mean_reward: _Optional[float] = ..., rollouts_consumed: _Optional[int] = ...) -> None: ...

class LatestPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
