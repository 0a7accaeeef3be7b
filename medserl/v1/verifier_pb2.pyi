from medserl.v1 import messages_pb2 as _messages_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VerifyRequest(_message.Message):
    __slots__ = ("id", "mode", "original", "modified", "error_sentence_id", "claimed_error_type", "reasoning_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_FIELD_NUMBER: _ClassVar[int]
    MODIFIED_FIELD_NUMBER: _ClassVar[int]
    ERROR_SENTENCE_ID_FIELD_NUMBER: _ClassVar[int]
    CLAIMED_ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    REASONING_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    mode: _messages_pb2.Mode
    original: _messages_pb2.Note
    modified: _messages_pb2.Note
    error_sentence_id: int
    claimed_error_type: str
    reasoning_json: str
    def __init__(self, id: _Optional[str] = ..., mode: _Optional[_Union[_messages_pb2.Mode, str]] = ..., original: _Optional[_Union[_messages_pb2.Note, _Mapping]] = ..., modified: _Optional[_Union[_messages_pb2.Note, _Mapping]] = ..., error_sentence_id: _Optional[int] = ..., claimed_error_type: _Optional[str] = ..., reasoning_json: _Optional[str] = ...) -> None: ...
