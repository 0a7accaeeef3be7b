from medserl.v1 import messages_pb2 as _messages_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InjectRequest(_message.Message):
    __slots__ = ("note", "mode", "sampling")
    NOTE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    note: _messages_pb2.Note
    mode: _messages_pb2.Mode
    sampling: _messages_pb2.SamplingParams
    def __init__(self, note: _Optional[_Union[_messages_pb2.Note, _Mapping]] = ..., mode: _Optional[_Union[_messages_pb2.Mode, str]] = ..., sampling: _Optional[_Union[_messages_pb2.SamplingParams, _Mapping]] = ...) -> None: ...

class InjectResponse(_message.Message):
    __slots__ = ("rollouts",)
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    rollouts: _containers.RepeatedCompositeFieldContainer[_messages_pb2.Rollout]
    def __init__(self, rollouts: _Optional[_Iterable[_Union[_messages_pb2.Rollout, _Mapping]]] = ...) -> None: ...

class SubmitSeedsRequest(_message.Message):
    __slots__ = ("notes",)
    NOTES_FIELD_NUMBER: _ClassVar[int]
    notes: _containers.RepeatedCompositeFieldContainer[_messages_pb2.Note]
    def __init__(self, notes: _Optional[_Iterable[_Union[_messages_pb2.Note, _Mapping]]] = ...) -> None: ...

class SubmitSeedsResponse(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    def __init__(self, accepted: _Optional[int] = ...) -> None: ...
