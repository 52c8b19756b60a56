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

# OpenSSL's X509_V_FLAG_NO_CHECK_TIME (Python's ssl has no name for it). Every fleet TLS
# endpoint that verifies a peer sets it: the handshake still verifies signatures and the
# chain, and the peer certificate's validity is judged after it by the kernel
# (``fleet.kernel.certs.validity_problem``) with the process's clock and a skew allowance —
# so a wrong device clock gets a reason instead of an alert, and the simulator's clock
# (``fleet.kernel.clock.SimulatedClock``) moves every enforcer, which OpenSSL's cannot.
# Set it with ``context.verify_flags |= X509_V_FLAG_NO_CHECK_TIME``.
X509_V_FLAG_NO_CHECK_TIME = 0x200000
