"""Header field checks for HTTP/2 requests and responses (RFC 9113 §8.2-8.3, §8.5 for CONNECT).

A header block that breaks these rules is "malformed": a stream error of type PROTOCOL_ERROR
(§8.1.1), never a connection error, so one bad request cannot take down the other streams.
"""

from __future__ import annotations

from nodemesh.protocols.events import Headers

__all__ = ["REQUEST_PSEUDO", "MalformedError", "split_fields"]

_CONNECTION_HEADERS = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}
)
REQUEST_PSEUDO = frozenset({":method", ":scheme", ":authority", ":path"})


class MalformedError(Exception):
    """A header block that is malformed (RFC 9113 §8.1.1): a stream error PROTOCOL_ERROR."""


def split_fields(
    fields: list[tuple[str, str]], allowed_pseudo: frozenset[str]
) -> tuple[dict[str, str], Headers]:
    """Pseudo-headers and regular headers, checked per RFC 9113 §8.2-8.3 (malformed otherwise):
    lower-case names, pseudo-headers first, known and not repeated, no connection-specific
    fields, `te` only as `trailers`."""
    pseudo: dict[str, str] = {}
    regular: list[tuple[str, str]] = []
    for name, value in fields:
        if not name or name != name.lower():
            raise MalformedError(f"header name {name!r} is not lower-case")
        if name[0] == ":":
            if regular:
                raise MalformedError(f"pseudo-header {name} after a regular header")
            if name not in allowed_pseudo or name in pseudo:
                raise MalformedError(f"pseudo-header {name} is unknown here or repeated")
            pseudo[name] = value
            continue
        if name in _CONNECTION_HEADERS or (name == "te" and value != "trailers"):
            raise MalformedError(f"connection-specific header {name!r}")
        regular.append((name, value))
    return pseudo, tuple(regular)
