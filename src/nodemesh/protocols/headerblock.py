"""HPACK header blocks the cheap way, with the `hpack` library as the complete fallback.

Measured on the node proxy's new-connection path: the `hpack` library's encoder and decoder cost
~30% of the Python CPU of a new HBONE stream (table searches, Huffman, per-field logging). An
HBONE CONNECT carries a handful of fields whose values change per connection (`forwarded`,
`traceparent`), so the dynamic table buys nothing. So:

- `encode_block` writes every field as "Literal Header Field without Indexing" (RFC 7541 §6.2.2),
  with the name indexed from the static table when it is there, and no Huffman coding (§5.2,
  H=0). Any conforming decoder accepts this, and it leaves both ends' dynamic tables untouched.
- `decode_simple` decodes blocks made only of static-table references and non-Huffman literals
  without indexing / never indexed — what `encode_block` writes — and returns None for anything
  else (incremental indexing, dynamic-table references or size updates, Huffman strings). Such
  a block changes no HPACK state, so the caller can hand the SAME block to `hpack.Decoder` when
  None comes back, and the decoder's dynamic table stays exactly in step with the peer's.
"""

from __future__ import annotations

from hpack.table import HeaderTable

__all__ = ["decode_simple", "encode_block"]

_STATIC: tuple[tuple[str, str], ...] = tuple(
    (n.decode(), v.decode())
    for n, v in HeaderTable.STATIC_TABLE  # index i+1 (RFC 7541 App. A)
)
_STATIC_NAME: dict[str, int] = {}
for _i, (_name, _) in enumerate(_STATIC, start=1):
    _STATIC_NAME.setdefault(_name, _i)


def _int(value: int, prefix_bits: int, flags: int) -> bytes:
    """RFC 7541 §5.1 integer with an N-bit prefix; `flags` are the first octet's high bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([flags | value])
    out = bytearray([flags | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _str(text: str) -> bytes:
    raw = text.encode()
    return _int(len(raw), 7, 0x00) + raw


def encode_block(fields: list[tuple[str, str]], table_size_update: int | None = None) -> bytes:
    """A header block of literals without indexing (RFC 7541 §6.2.2), no Huffman; preceded by a
    dynamic table size update (§6.3) when the peer changed SETTINGS_HEADER_TABLE_SIZE."""
    out = bytearray()
    if table_size_update is not None:
        out += _int(table_size_update, 5, 0x20)
    for name, value in fields:
        index = _STATIC_NAME.get(name)
        if index is not None:
            out += _int(index, 4, 0x00)
        else:
            out.append(0x00)
            out += _str(name)
        out += _str(value)
    return bytes(out)


def _read_int(block: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    limit = (1 << prefix_bits) - 1
    value = block[pos] & limit
    pos += 1
    if value < limit:
        return value, pos
    shift = 0
    while True:
        if pos >= len(block) or shift > 28:
            raise ValueError("truncated or oversized HPACK integer")
        b = block[pos]
        pos += 1
        value += (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def _read_str(block: bytes, pos: int) -> tuple[str, int] | None:
    if pos >= len(block):
        raise ValueError("truncated HPACK string")
    if block[pos] & 0x80:
        return None  # Huffman: leave it to the library
    length, pos = _read_int(block, pos, 7)
    end = pos + length
    if end > len(block):
        raise ValueError("truncated HPACK string")
    return block[pos:end].decode("utf-8"), end


def decode_simple(block: bytes, max_list_size: int) -> list[tuple[str, str]] | None:
    """The fields of a block that touches no HPACK state, or None to use the full decoder.

    Raises ValueError for a block that is malformed whichever decoder reads it; the caller turns
    that into a COMPRESSION_ERROR."""
    fields: list[tuple[str, str]] = []
    pos = 0
    size = 0
    n = len(block)
    while pos < n:
        first = block[pos]
        if first & 0x80:  # indexed header field
            index, pos = _read_int(block, pos, 7)
            if not 0 < index <= len(_STATIC):
                return None
            name, value = _STATIC[index - 1]
        elif first & 0xE0 == 0:  # literal without indexing (0000) or never indexed (0001)
            index, pos = _read_int(block, pos, 4)
            if index == 0:
                got = _read_str(block, pos)
                if got is None:
                    return None
                name, pos = got
            elif index <= len(_STATIC):
                name = _STATIC[index - 1][0]
            else:
                return None
            got = _read_str(block, pos)
            if got is None:
                return None
            value, pos = got
        else:  # incremental indexing or a dynamic table size update: state changes
            return None
        size += len(name) + len(value) + 32  # RFC 7541 §4.1 entry size, as SETTINGS count it
        if size > max_list_size:
            return None  # let the library raise its oversized-list error
        fields.append((name, value))
    return fields
