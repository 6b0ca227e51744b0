from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CallInfo(_message.Message):
    __slots__ = ("time_remaining_ms", "pid")
    TIME_REMAINING_MS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    time_remaining_ms: float
    pid: int
    def __init__(self, time_remaining_ms: _Optional[float] = ..., pid: _Optional[int] = ...) -> None: ...

class GetOrderRequest(_message.Message):
    __slots__ = ("id", "delay_ms")
    ID_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    id: str
    delay_ms: int
    def __init__(self, id: _Optional[str] = ..., delay_ms: _Optional[int] = ...) -> None: ...

class Order(_message.Message):
    __slots__ = ("id", "status", "call")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CALL_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: str
    call: CallInfo
    def __init__(self, id: _Optional[str] = ..., status: _Optional[str] = ..., call: _Optional[_Union[CallInfo, _Mapping]] = ...) -> None: ...

class WatchOrderRequest(_message.Message):
    __slots__ = ("id", "count", "interval_ms")
    ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    id: str
    count: int
    interval_ms: int
    def __init__(self, id: _Optional[str] = ..., count: _Optional[int] = ..., interval_ms: _Optional[int] = ...) -> None: ...

class OrderEvent(_message.Message):
    __slots__ = ("id", "seq", "status")
    ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    id: str
    seq: int
    status: str
    def __init__(self, id: _Optional[str] = ..., seq: _Optional[int] = ..., status: _Optional[str] = ...) -> None: ...

class ImportSummary(_message.Message):
    __slots__ = ("count", "ids")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    count: int
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, count: _Optional[int] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Note(_message.Message):
    __slots__ = ("seq", "text")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    seq: int
    text: str
    def __init__(self, seq: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...

class QueryOrderRequest(_message.Message):
    __slots__ = ("tag", "sleep_s")
    TAG_FIELD_NUMBER: _ClassVar[int]
    SLEEP_S_FIELD_NUMBER: _ClassVar[int]
    tag: str
    sleep_s: float
    def __init__(self, tag: _Optional[str] = ..., sleep_s: _Optional[float] = ...) -> None: ...

class QueryOrderReply(_message.Message):
    __slots__ = ("tag", "call")
    TAG_FIELD_NUMBER: _ClassVar[int]
    CALL_FIELD_NUMBER: _ClassVar[int]
    tag: str
    call: CallInfo
    def __init__(self, tag: _Optional[str] = ..., call: _Optional[_Union[CallInfo, _Mapping]] = ...) -> None: ...

class ForwardOrderRequest(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class ForwardOrderReply(_message.Message):
    __slots__ = ("status", "body", "call")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    CALL_FIELD_NUMBER: _ClassVar[int]
    status: int
    body: str
    call: CallInfo
    def __init__(self, status: _Optional[int] = ..., body: _Optional[str] = ..., call: _Optional[_Union[CallInfo, _Mapping]] = ...) -> None: ...
