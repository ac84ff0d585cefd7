"""The protocol-buffer wire format, just enough to read and write a SentencePiece model.

A SentencePiece `.model` file is one serialized protobuf message (`ModelProto`, defined in
sentencepiece_model.proto). The usual way to edit one is the generated `sentencepiece_model_pb2`
module, which needs the `protobuf` package; llama_np reads and writes the bytes itself, which
is short and shows what such a file is.

A message is a flat sequence of *fields*. Each field starts with a key, a varint holding
`field_number << 3 | wire_type`, followed by a value whose encoding the wire type gives:

    wire type 0  varint            an integer, 7 bits per byte, low bits first; the high bit
                                   of each byte says "another byte follows"
    wire type 1  64-bit            8 little-endian bytes (double, fixed64)
    wire type 2  length-delimited  a varint length, then that many bytes: a string, a bytes
                                   field, or a nested message (parsed the same way)
    wire type 5  32-bit            4 little-endian bytes (float, fixed32)

(Types 3 and 4, "start/end group", are deprecated and never used by SentencePiece.)
A repeated field is simply the same field number appearing again, in order. A reader
that meets a field it does not know can skip it, because the wire type says how long it is;
that is how this module keeps the parts of a model it does not interpret byte for byte.
"""
import struct

VARINT = 0
FIXED64 = 1
LENGTH_DELIMITED = 2
FIXED32 = 5

_FIXED_SIZES = {FIXED64: 8, FIXED32: 4}
_MAX_VARINT_BYTES = 10  # a 64-bit integer needs at most ceil(64 / 7) = 10 bytes


class ProtobufError(ValueError):
    """Bytes that are not a well-formed protobuf message."""


def read_varint(data, pos):
    """The varint starting at `data[pos]`, and the position just after it."""
    value = 0
    for k in range(_MAX_VARINT_BYTES):
        if pos + k >= len(data):
            raise ProtobufError(f"varint at byte {pos} runs past the end of the data")
        byte = data[pos + k]
        value |= (byte & 0x7F) << (7 * k)
        if byte < 0x80:
            return value, pos + k + 1
    raise ProtobufError(f"varint at byte {pos} is longer than {_MAX_VARINT_BYTES} bytes")


def encode_varint(value):
    """The varint bytes of a non-negative integer."""
    if value < 0:
        raise ValueError(f"a varint holds a non-negative integer, not {value}")
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_fields(data):
    """The fields of one serialized message, in order, as (field_number, wire_type, value).

    `value` is an int for a varint, and the raw bytes for the other wire types (a nested
    message is parsed by calling `read_fields` again on its bytes). Raises ProtobufError on
    anything malformed: a truncated value, an unknown wire type, or field number 0.
    """
    data = memoryview(data).cast("B")
    fields, pos = [], 0
    while pos < len(data):
        key, pos = read_varint(data, pos)
        field_number, wire_type = key >> 3, key & 0x7
        if field_number == 0:
            raise ProtobufError(f"field number 0 at byte {pos} (not a protobuf message)")
        if wire_type == VARINT:
            value, pos = read_varint(data, pos)
        elif wire_type == LENGTH_DELIMITED:
            length, pos = read_varint(data, pos)
            value, pos = _take(data, pos, length)
        elif wire_type in _FIXED_SIZES:
            value, pos = _take(data, pos, _FIXED_SIZES[wire_type])
        else:
            raise ProtobufError(f"wire type {wire_type} of field {field_number} is not supported")
        fields.append((field_number, wire_type, value))
    return fields


def _take(data, pos, length):
    if pos + length > len(data):
        raise ProtobufError(f"a field at byte {pos} claims {length} bytes, past the end of the data")
    return bytes(data[pos:pos + length]), pos + length


def encode_field(field_number, wire_type, value):
    """One field's bytes: its key, then `value` (an int for VARINT, bytes otherwise)."""
    key = encode_varint(field_number << 3 | wire_type)
    if wire_type == VARINT:
        return key + encode_varint(value)
    if wire_type == LENGTH_DELIMITED:
        return key + encode_varint(len(value)) + bytes(value)
    if wire_type in _FIXED_SIZES and len(value) == _FIXED_SIZES[wire_type]:
        return key + bytes(value)
    raise ValueError(f"cannot encode {value!r} as wire type {wire_type}")


def encode_float(field_number, value):
    """A `float` field (IEEE single precision, 32-bit wire type)."""
    return encode_field(field_number, FIXED32, struct.pack("<f", value))


def decode_float(raw):
    """The value of a `float` field's 4 raw bytes."""
    return struct.unpack("<f", raw)[0]
