"""The protobuf wire format, as much as OTLP traces need: varints, fixed
64/32-bit fields and length-delimited fields, written and walked.

The device agent depends on the standard library and ``cryptography`` only, so
it carries this instead of the protobuf runtime; the tests check its output
against the official OTLP classes."""
from __future__ import annotations

import struct
from collections.abc import Iterator

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


class DecodeError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 as protobuf writes it: ten bytes, two's complement
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise DecodeError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise DecodeError("varint longer than ten bytes")


def key(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def length_field(field: int, payload: bytes) -> bytes:
    return key(field, LENGTH) + varint(len(payload)) + payload


def string_field(field: int, text: str) -> bytes:
    return length_field(field, text.encode()) if text else b""


def varint_field(field: int, value: int) -> bytes:
    return key(field, VARINT) + varint(value) if value else b""


def fixed64_field(field: int, value: int) -> bytes:
    return key(field, FIXED64) + struct.pack("<Q", value) if value else b""


def fixed32_field(field: int, value: int) -> bytes:
    return key(field, FIXED32) + struct.pack("<I", value) if value else b""


def double_field(field: int, value: float) -> bytes:
    return key(field, FIXED64) + struct.pack("<d", value)


def fields(data: bytes | memoryview) -> Iterator[tuple[int, int, int | bytes]]:
    """Every (field number, wire type, value) of one message, in order; a
    length-delimited value is its bytes, the others their integer."""
    view = memoryview(data)
    pos, end = 0, len(view)
    while pos < end:
        tag, pos = read_varint(view, pos)
        field, wire_type = tag >> 3, tag & 7
        if field == 0:
            raise DecodeError("field number 0")
        if wire_type == VARINT:
            value, pos = read_varint(view, pos)
        elif wire_type == FIXED64:
            if pos + 8 > end:
                raise DecodeError("truncated fixed64")
            value = int.from_bytes(view[pos:pos + 8], "little")
            pos += 8
        elif wire_type == LENGTH:
            size, pos = read_varint(view, pos)
            if pos + size > end:
                raise DecodeError("truncated length-delimited field")
            value = bytes(view[pos:pos + size])
            pos += size
        elif wire_type == FIXED32:
            if pos + 4 > end:
                raise DecodeError("truncated fixed32")
            value = int.from_bytes(view[pos:pos + 4], "little")
            pos += 4
        else:
            raise DecodeError(f"unsupported wire type {wire_type}")
        yield field, wire_type, value
