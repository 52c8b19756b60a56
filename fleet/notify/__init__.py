"""Webhook notifications of compromise-relevant events, with the audit log as outbox.

* :mod:`fleet.notify.events`  (pure) which audit records notify, and their JSON body
* :mod:`fleet.notify.signing` (pure) the ``X-Fleet-Signature`` HMAC, for senders and receivers
* :mod:`fleet.notify.secret`  the HMAC key, from a private file or ``FLEET_WEBHOOK_SECRET``
* :mod:`fleet.notify.webhooks` the delivery loop: follows the audit log from a
  persisted cursor per URL, signs, posts, retries with backoff, dead-letters

This package imports nothing itself, so the pure modules stay free of aiohttp.
"""
