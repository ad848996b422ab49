"""The lean HPACK encoder and the fast-path decoder (RFC 7541)."""

from __future__ import annotations

import hpack
from hypothesis import given
from hypothesis import strategies as st

from nodemesh.protocols.headerblock import decode_simple, encode_block

names = st.sampled_from(
    [":authority", ":method", ":status", "baggage", "forwarded", "traceparent"]
) | st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=40)
values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=300)


@given(st.lists(st.tuples(names, values), max_size=12))
def test_literal_blocks_decode_the_same_with_both_decoders(fields: list[tuple[str, str]]) -> None:
    """RFC 7541 §6.2.2 and §5.1/§5.2: literals without indexing, prefix-coded lengths, no Huffman;
    a stock decoder reads exactly the fields, and so does the fast path."""
    block = encode_block(fields)
    assert [(str(n), str(v)) for n, v in hpack.Decoder().decode(block)] == fields
    assert decode_simple(block, 1 << 20) == fields


@given(st.lists(st.tuples(names, values), min_size=1, max_size=6))
def test_stateful_blocks_are_left_to_the_library(fields: list[tuple[str, str]]) -> None:
    """Blocks that change the dynamic table (incremental indexing, §6.2.1) or use Huffman (§5.2)
    are not decoded by the fast path (None), so the library's state stays in step."""
    block = hpack.Encoder().encode(fields)
    simple = decode_simple(block, 1 << 20)
    assert simple is None or simple == fields
