"""Topic ACL for devices (pure): each device publishes and subscribes only in its own tree.

A device's tree is given by templates such as ``devices/{device_id}/#``
(the default). The device id was validated before it gets here (``A-Z a-z 0-9
. _ -``), so substituting it cannot add a level or a wildcard.

Rules, with MQTT 3.1.1 wildcard semantics:

* publish: the topic name must be well formed (no wildcard, no NUL, not empty)
  and matched by one of the device's filters;
* subscribe: the filter must be well formed and *contained* in one of the
  device's filters, i.e. every topic it can match is one the device may read.
  ``devices/dev-1/+/x`` is contained in ``devices/dev-1/#``; ``devices/+/x`` and
  ``#`` are not;
* ``$``-topics (``$SYS``, ``$CONTROL``, ...) are refused both ways.
"""

from __future__ import annotations

import dataclasses

DEFAULT_TEMPLATE = "devices/{device_id}/#"
PLACEHOLDER = "{device_id}"
_PLACEHOLDER = PLACEHOLDER
MAX_TOPIC_BYTES = 65535


class AclConfigError(ValueError):
    """A template that cannot confine a device."""


def _levels_ok(levels: list[str]) -> bool:
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def is_valid_filter(text: str) -> bool:
    """A well-formed MQTT topic filter."""
    if not text or "\0" in text or len(text.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
        return False
    return _levels_ok(text.split("/"))


def is_valid_topic(text: str) -> bool:
    """A well-formed MQTT topic name (what a PUBLISH carries)."""
    if not text or "\0" in text or len(text.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
        return False
    return "+" not in text and "#" not in text


def topic_matches(topic: str, topic_filter: str) -> bool:
    """True if ``topic_filter`` matches the topic name ``topic`` (no ``$`` special case)."""
    flevels = topic_filter.split("/")
    tlevels = topic.split("/")
    for index, level in enumerate(flevels):
        if level == "#":
            return True
        if index >= len(tlevels):
            return False
        if level not in ("+", tlevels[index]):
            return False
    return len(flevels) == len(tlevels)


def filter_contained(inner: str, outer: str) -> bool:
    """True if every topic ``inner`` matches is also matched by ``outer``."""
    ilevels = inner.split("/")
    olevels = outer.split("/")
    for index, olevel in enumerate(olevels):
        if olevel == "#":
            return True
        if index >= len(ilevels):
            return False
        ilevel = ilevels[index]
        if ilevel == "#":
            # inner matches any depth here; only an outer '#' covers that.
            return False
        if olevel == "+":
            continue
        if ilevel != olevel:  # inner '+' against an outer literal is wider
            return False
    # A longer inner (outer has no '#') matches deeper topics outer does not.
    return len(ilevels) == len(olevels)


@dataclasses.dataclass(frozen=True, slots=True)
class TopicAcl:
    templates: tuple[str, ...] = (DEFAULT_TEMPLATE,)

    def __post_init__(self) -> None:
        if not self.templates:
            raise AclConfigError("at least one topic template is needed")
        for template in self.templates:
            if template.count(_PLACEHOLDER) < 1:
                raise AclConfigError(
                    f"topic template {template!r} lacks {_PLACEHOLDER}: every device would share it"
                )
            if template.startswith("$"):
                raise AclConfigError(f"topic template {template!r} starts with '$'")
            if not is_valid_filter(template.replace(_PLACEHOLDER, "x")):
                raise AclConfigError(f"topic template {template!r} is not a valid topic filter")
            for level in template.split("/"):
                if _PLACEHOLDER in level and level != _PLACEHOLDER:
                    raise AclConfigError(
                        f"topic template {template!r}: {_PLACEHOLDER} must be a whole level"
                    )

    def filters_for(self, device_id: str) -> tuple[str, ...]:
        return tuple(t.replace(_PLACEHOLDER, device_id) for t in self.templates)

    def may_publish(self, device_id: str, topic: str) -> bool:
        if not device_id or not is_valid_topic(topic) or topic.startswith("$"):
            return False
        return any(topic_matches(topic, f) for f in self.filters_for(device_id))

    def may_subscribe(self, device_id: str, topic_filter: str) -> bool:
        if not device_id or not is_valid_filter(topic_filter) or topic_filter.startswith("$"):
            return False
        return any(filter_contained(topic_filter, f) for f in self.filters_for(device_id))

    def may_receive(self, device_id: str, topic: str) -> bool:
        """A message on ``topic`` may be delivered to the device (same rule as publish)."""
        return self.may_publish(device_id, topic)
