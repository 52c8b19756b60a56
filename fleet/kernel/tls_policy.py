"""The TLS policy every fleet TLS server offers: EST server and both brokers.

TLS 1.2 and 1.3 only (TLS 1.2 stays on: libest, strongSwan 5.9 and many
embedded MQTT stacks cap themselves at it). In TLS 1.2 only forward-secret
AEAD suites (ECDHE with AES-GCM or ChaCha20-Poly1305): no CBC, no SHA-1 MACs,
no static RSA key exchange. TLS 1.3's suites are all AEAD and forward secret.

Strings only (OpenSSL cipher-list syntax), so that Python servers
(``ssl.SSLContext.set_ciphers``) and the generated mosquitto.conf
(``ciphers``, ``tls_version``) say the same thing.
"""

from __future__ import annotations

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
# Mosquitto's `tls_version` names the minimum version of a listener.
MOSQUITTO_MIN_TLS_VERSION = "tlsv1.2"
