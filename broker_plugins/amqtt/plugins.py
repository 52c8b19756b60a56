"""fleet's amqtt plugins: certificate authentication and the device topic ACL.

They use amqtt's public plugin API and a live :class:`ConnectionGate` passed
in the plugin config (a ``Config`` field typed ``Any`` accepts live objects).
Both rely on :class:`HardenedBroker`: authentication reads the certificate of
the connection being served (gate.CURRENT_CONNECTION), never
``session.ssl_object``, which amqtt 0.12.1 carries over from an earlier
connection when a persistent session resumes (defect 2). Outside the hardened
broker there is no current connection and every connect is refused.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from amqtt.contexts import Action  # type: ignore[import-untyped]
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin  # type: ignore[import-untyped]

from broker_plugins.amqtt._hardening import SESSION_DEVICE_ID
from broker_plugins.amqtt.gate import CURRENT_CONNECTION, ConnectionGate
from fleet.kernel.admission import Allow


def _gate(plugin: Any) -> ConnectionGate | None:
    gate = getattr(plugin.context.config, "gate", None)
    return gate if isinstance(gate, ConnectionGate) else None


class FleetAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]
    @dataclasses.dataclass
    class Config:
        gate: Any = None

    async def authenticate(self, *, session: Any) -> bool | None:
        gate = _gate(self)
        conn = CURRENT_CONNECTION.get()
        if gate is None or conn is None:
            return False
        will_topic = (session.will_topic or "") if session.will_flag else None
        decision = gate.authorize(conn, session.client_id or "", will_topic=will_topic)
        return isinstance(decision, Allow)


class FleetTopicPlugin(BaseTopicPlugin):  # type: ignore[misc]
    @dataclasses.dataclass
    class Config:
        gate: Any = None

    async def topic_filtering(
        self, *, session: Any = None, topic: str | None = None, action: Any = None
    ) -> bool | None:
        gate = _gate(self)
        if gate is None or session is None or topic is None:
            return False
        device_id = session.attributes.get(SESSION_DEVICE_ID)
        if not isinstance(device_id, str):
            return False
        if action == Action.PUBLISH:
            return gate.acl.may_publish(device_id, topic)
        if action == Action.SUBSCRIBE:
            return gate.acl.may_subscribe(device_id, topic)
        if action == Action.RECEIVE:
            return gate.acl.may_receive(device_id, topic)
        return False
