"""The GenAI semantic conventions: a span's model, token counts and price,
read from its protobuf encoding without decoding every attribute."""
from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from opentelemetry.proto.common.v1 import common_pb2

from ..cost import CACHE_READ_KEYS, CACHE_WRITE_KEYS, PRICER
from .limits import _clean

# Operations whose usage, if any, aggregates their children's: not counted again.
AGENT_OPERATIONS = frozenset({"invoke_agent", "create_agent", "execute_tool"})


def _count(value) -> int:
    if type(value) is int:
        return value if 0 <= value <= 2**53 else (0 if value < 0 else 2**53)
    if isinstance(value, bool) or value is None:
        return 0
    if isinstance(value, str):
        try:
            value = int(float(value))
        except ValueError:
            return 0
    try:
        return max(0, min(int(value), 2**53))
    except (TypeError, ValueError, OverflowError):
        return 0


# The GenAI attributes read, by slot; a slot fed by several keys (old and new
# names of the same count) takes the first key present, in this order.
_OPERATION, _REQUEST_MODEL, _RESPONSE_MODEL, _PROVIDER, _SYSTEM, _INPUT, _OUTPUT = range(7)
_CACHE_READ, _CACHE_WRITE = 7, 8
GENAI_KEYS = (("gen_ai.operation.name", _OPERATION), ("gen_ai.request.model", _REQUEST_MODEL),
              ("gen_ai.response.model", _RESPONSE_MODEL), ("gen_ai.provider.name", _PROVIDER),
              ("gen_ai.system", _SYSTEM), ("gen_ai.usage.input_tokens", _INPUT),
              ("gen_ai.usage.output_tokens", _OUTPUT),
              *((key, _CACHE_READ) for key in CACHE_READ_KEYS),
              *((key, _CACHE_WRITE) for key in CACHE_WRITE_KEYS))
_SCALARS = frozenset({"string_value", "int_value", "double_value", "bool_value"})


def _span_attributes_class():
    """A message type that reads only a span's attributes, keyed by name.

    It declares Span's attributes field (9) as ``map<string, AnyValue>``: on the
    wire a map is exactly a repeated message of (key = 1, value = 2), which is
    what OTLP's ``repeated KeyValue`` is, so a span's encoding parses as this
    type too (the other fields are kept as unknown). Looking a few keys up in
    the map is done by protobuf in C; walking every KeyValue in Python costs
    ~0.4 µs per attribute, for every attribute of every LLM span.
    """
    file = descriptor_pb2.FileDescriptorProto(
        name="hangar/telemetry/span_attributes.proto", package="hangar.telemetry",
        syntax="proto3", dependency=[common_pb2.DESCRIPTOR.name])
    message = file.message_type.add(name="SpanAttributes")
    entry = message.nested_type.add(name="AttributesEntry")
    entry.options.map_entry = True
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    entry.field.add(name="key", number=1, label=optional,
                    type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING)
    entry.field.add(name="value", number=2, label=optional,
                    type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                    type_name=".opentelemetry.proto.common.v1.AnyValue")
    message.field.add(name="attributes", number=9,
                      label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
                      type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                      type_name=".hangar.telemetry.SpanAttributes.AttributesEntry")
    pool = descriptor_pool.Default()
    pool.Add(file)  # adding the same file again (a module reload) is allowed
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("hangar.telemetry.SpanAttributes"))


_SpanAttributes = _span_attributes_class()


def genai_values(data: bytes) -> list:
    """The GenAI attributes of a span (by slot, None when absent), from its
    protobuf encoding. Only the span's own attributes count (not its events' or
    links'); values that are not a string, int, double or bool are ignored; a
    key repeated in one span (which OTLP forbids) takes its last value, as
    protobuf does for map keys."""
    attributes = _SpanAttributes.FromString(data).attributes
    values = [None] * 9
    for key, slot in GENAI_KEYS:
        if key in attributes and values[slot] is None:
            value = attributes[key]
            which = value.WhichOneof("value")
            if which in _SCALARS:
                values[slot] = getattr(value, which)
    return values


def _genai(data: bytes, start_ns: int):
    """(model, input tokens, output tokens, cost, is an LLM call) of a span."""
    values = genai_values(data)
    if values[_INPUT] is None and values[_OUTPUT] is None:
        return None, None, None, None, False
    model = values[_RESPONSE_MODEL] or values[_REQUEST_MODEL]
    model = _clean(model, 255) if isinstance(model, str) and model else None
    input_tokens = _count(values[_INPUT])
    output_tokens = _count(values[_OUTPUT])
    if values[_OPERATION] in AGENT_OPERATIONS:
        return model, input_tokens, output_tokens, None, False
    provider = values[_PROVIDER] or values[_SYSTEM]
    cost = PRICER.price(model, provider if isinstance(provider, str) else None, input_tokens,
                        output_tokens, start_ns, cache_read=_count(values[_CACHE_READ]),
                        cache_write=_count(values[_CACHE_WRITE]))
    return model, input_tokens, output_tokens, cost, True

