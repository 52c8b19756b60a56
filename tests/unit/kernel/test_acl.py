from __future__ import annotations

import pytest

from fleet.kernel.acl import AclConfigError, TopicAcl, filter_contained, topic_matches

ACL = TopicAcl()


@pytest.mark.parametrize(
    ("topic", "allowed"),
    [
        ("devices/d1/t", True),
        ("devices/d1", True),  # 'a/#' matches 'a'
        ("devices/d1/a/b/c", True),
        ("devices/d2/t", False),
        ("devices/d1+/t", False),
        ("devices/+/t", False),
        ("devices/d1/#", False),
        ("$SYS/x", False),
        ("", False),
        ("devices/d1/\0", False),
    ],
)
def test_publish(topic: str, allowed: bool) -> None:
    assert ACL.may_publish("d1", topic) is allowed


@pytest.mark.parametrize(
    ("topic_filter", "allowed"),
    [
        ("devices/d1/#", True),
        ("devices/d1/+/cmd", True),
        ("devices/d1", True),
        ("devices/d1/a/#", True),
        ("#", False),
        ("+/#", False),
        ("devices/#", False),
        ("devices/+/cmd", False),
        ("devices/+", False),
        ("devices/d2/#", False),
        ("devices/d1/a#", False),
        ("$SYS/#", False),
        ("devices/d1/#/x", False),
    ],
)
def test_subscribe(topic_filter: str, allowed: bool) -> None:
    assert ACL.may_subscribe("d1", topic_filter) is allowed


def test_containment_and_matching() -> None:
    assert filter_contained("a/+/c", "a/+/+")
    assert not filter_contained("a/+/#", "a/+/+")
    assert not filter_contained("a/b/c/d", "a/+/+")
    assert topic_matches("a/b", "a/#")
    assert topic_matches("a", "a/#")
    assert not topic_matches("a/b/c", "a/+")


@pytest.mark.parametrize(
    "template", ["devices/#", "$SYS/{device_id}", "devices/x{device_id}/#", "a/#/{device_id}"]
)
def test_unsafe_templates_are_refused(template: str) -> None:
    with pytest.raises(AclConfigError):
        TopicAcl((template,))
