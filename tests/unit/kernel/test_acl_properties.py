"""The topic ACL on generated topics and filters: a device stays inside its own tree.

The table in test_acl.py names the known cases; these properties cover the
class. Topics are built from levels that include the device's own id,
another device's id, wildcards, ``$``, empty levels and NUL, so the
generator reaches the boundaries the rule is about.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fleet.kernel.acl import TopicAcl, filter_contained, is_valid_filter, topic_matches

ME, OTHER = "dev-1", "dev-2"
ACLS = [TopicAcl(), TopicAcl(("devices/{device_id}/#", "fleet/{device_id}/+/cmd"))]
level = st.sampled_from(
    ["devices", "fleet", ME, OTHER, "cmd", "x", "", "+", "#", "$SYS", "dev-1\0", "dev-1#", "+x"]
)
levels = st.lists(level, min_size=1, max_size=5).map("/".join)
plain = st.lists(level.filter(lambda v: v not in ("+", "#")), min_size=1, max_size=6).map("/".join)


@given(acl=st.sampled_from(ACLS), topic_filter=levels, topic=plain)
def test_a_subscription_allowed_delivers_only_topics_the_device_may_publish(
    acl: TopicAcl, topic_filter: str, topic: str
) -> None:
    if acl.may_subscribe(ME, topic_filter) and topic_matches(topic, topic_filter):
        assert acl.may_publish(ME, topic) or "\0" in topic or "#" in topic or "+" in topic


@given(acl=st.sampled_from(ACLS), topic=plain)
def test_no_topic_is_in_two_devices_trees(acl: TopicAcl, topic: str) -> None:
    assert not (acl.may_publish(ME, topic) and acl.may_publish(OTHER, topic))


@given(acl=st.sampled_from(ACLS), topic_filter=levels)
def test_an_allowed_subscription_is_inside_a_filter_of_the_device(
    acl: TopicAcl, topic_filter: str
) -> None:
    if acl.may_subscribe(ME, topic_filter):
        assert is_valid_filter(topic_filter)
        assert not topic_filter.startswith("$")
        assert any(filter_contained(topic_filter, f) for f in acl.filters_for(ME))
        assert not any(filter_contained(topic_filter, f) for f in acl.filters_for(OTHER))


@given(inner=levels, outer=levels, topic=plain)
def test_containment_is_sound(inner: str, outer: str, topic: str) -> None:
    valid = is_valid_filter(inner) and is_valid_filter(outer)
    if valid and filter_contained(inner, outer) and topic_matches(topic, inner):
        assert topic_matches(topic, outer)
