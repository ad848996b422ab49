"""Sans-IO wire protocols: HBONE (HTTP/2 CONNECT tunnels) with lean DATA framing.

Bytes in, events out, bytes to send; no sockets, clock or threads (see STYLE.md, h11/h2/aioquic).
The asyncio shell that drives these lives in `nodemesh.nodeproxy`.
"""

from nodemesh.protocols.connect import (
    BaggageFields,
    HboneAddress,
    baggage_header,
    connect_headers,
    connect_target,
    format_authority,
    forwarded_header,
    parse_authority,
    parse_baggage,
    traceparent_header,
)
from nodemesh.protocols.errors import ErrorCode, HboneError, LocalProtocolError, ProtocolError
from nodemesh.protocols.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    PingAcknowledged,
    RequestReceived,
    ResponseReceived,
    SettingsReceived,
    StreamEnded,
    StreamReset,
    StreamWritable,
)
from nodemesh.protocols.hbone import HboneClient, HboneConnection, HboneServer
from nodemesh.protocols.settings import HboneSettings
from nodemesh.protocols.streams import StreamState

__all__ = [
    "BaggageFields",
    "ConnectionTerminated",
    "DataReceived",
    "ErrorCode",
    "Event",
    "HboneAddress",
    "HboneClient",
    "HboneConnection",
    "HboneError",
    "HboneServer",
    "HboneSettings",
    "LocalProtocolError",
    "PingAcknowledged",
    "ProtocolError",
    "RequestReceived",
    "ResponseReceived",
    "SettingsReceived",
    "StreamEnded",
    "StreamReset",
    "StreamState",
    "StreamWritable",
    "baggage_header",
    "connect_headers",
    "connect_target",
    "format_authority",
    "forwarded_header",
    "parse_authority",
    "parse_baggage",
    "traceparent_header",
]
