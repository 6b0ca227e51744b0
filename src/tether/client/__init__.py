"""tether's HTTP client: ``Client``, its models and its typed errors."""

from tether.client.client import Client
from tether.client.cluster import Cluster, NoProviderAvailable
from tether.client.errors import (
    ConnectError,
    ConnectTimeout,
    HTTPError,
    HTTPStatusError,
    LocalProtocolError,
    NetworkError,
    PoolTimeout,
    ReadError,
    ReadTimeout,
    RemoteProtocolError,
    StreamConsumed,
    TimeoutException,
    TLSError,
    TransportError,
    WriteError,
    WriteTimeout,
)
from tether.client.identity import PoolKey, TLSIdentity
from tether.client.models import Headers, Response, Timeout
from tether.client.providers import ClusterConfig, ProviderState
from tether.client.websocket import WebSocket, WebSocketClosed, WebSocketRejected

__all__ = [
    "Client",
    "Cluster",
    "ClusterConfig",
    "ConnectError",
    "ConnectTimeout",
    "HTTPError",
    "HTTPStatusError",
    "Headers",
    "LocalProtocolError",
    "NetworkError",
    "NoProviderAvailable",
    "PoolKey",
    "PoolTimeout",
    "ProviderState",
    "ReadError",
    "ReadTimeout",
    "RemoteProtocolError",
    "Response",
    "StreamConsumed",
    "TLSError",
    "TLSIdentity",
    "Timeout",
    "TimeoutException",
    "TransportError",
    "WebSocket",
    "WebSocketClosed",
    "WebSocketRejected",
    "WriteError",
    "WriteTimeout",
]
