"""Size limits on what a span carries: over-long names, attribute values,
event names and status messages are cut (never rejected) and listed in
``hangar.truncated_attributes``."""
from __future__ import annotations

MAX_NAME = 1024
MAX_ERROR = 2000


def _clean(text: str, limit: int = MAX_NAME) -> str:
    if "\x00" in text:
        text = text.replace("\x00", "")
    return text if len(text) <= limit else text[:limit]



def enforce_limits(span, cap: int) -> bool:
    """Cut every over-long value of ``span`` in place; True if anything was cut."""
    cut: list[str] = []
    if len(span.name) > MAX_NAME:
        span.name = span.name[:MAX_NAME]
        cut.append("(name)")
    _limit_attributes(span.attributes, cap, cut, "")
    for event in span.events:
        if len(event.name) > MAX_NAME:
            event.name = event.name[:MAX_NAME]
            cut.append("(event name)")
        _limit_attributes(event.attributes, cap, cut, f"event {event.name}: ")
    for link in span.links:
        _limit_attributes(link.attributes, cap, cut, "link: ")
    if len(span.status.message.encode()) > cap:
        span.status.message = _cut(span.status.message, cap)
        cut.append("(status message)")
    if not cut:
        return False
    marker = span.attributes.add()
    marker.key = "hangar.truncated_attributes"
    for name in cut[:64]:
        marker.value.array_value.values.add().string_value = name[:200]
    return True


def _cut(text: str, cap: int) -> str:
    encoded = text.encode()
    kept = encoded[:cap].decode(errors="ignore")
    return f"{kept}…[truncated {len(encoded) - len(kept.encode())} bytes]"


def _limit_attributes(kvs, cap: int, cut: list[str], prefix: str) -> None:
    for kv in kvs:
        if _limit_value(kv.value, cap):
            cut.append(prefix + kv.key)


def _limit_value(value, cap: int) -> bool:
    which = value.WhichOneof("value")
    if which == "string_value":
        if len(value.string_value) * 4 > cap and len(value.string_value.encode()) > cap:
            value.string_value = _cut(value.string_value, cap)
            return True
    elif which == "bytes_value":
        if len(value.bytes_value) > cap:
            value.bytes_value = value.bytes_value[:cap]
            return True
    elif which == "array_value":
        return any([_limit_value(item, cap) for item in value.array_value.values])
    elif which == "kvlist_value":
        return any([_limit_value(kv.value, cap) for kv in value.kvlist_value.values])
    return False

