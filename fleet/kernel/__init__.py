"""The trust kernel: every rule that decides trust, written once.

Server, device agent and both brokers import it; the device agent imports it
and nothing else of ``fleet`` (it ships on devices), so it is kept small and
pure: the standard library and ``cryptography`` only, no I/O beyond
:mod:`fleet.kernel.files`, and no import of any other ``fleet`` package (an
import-linter contract and ``tests/unit/kernel/test_kernel_imports.py`` check
both).

=====================  =============================================================
module                 the rule it holds
=====================  =============================================================
``reasons``            the reason-code vocabulary (logs, metrics, HTTP, audit, C plugin)
``errors``             the FleetError tree, each with a reason code and a next step
``device_id``          the device-id alphabet, length and reserved ids
``keys``               the key types and sizes a fleet certificate may carry
``certs``              leaf checks: validity with skew, CA flag, EKU clientAuth, issuer
``chain``              chain verification per trust domain (cryptography's verifier)
``domains``            the four trust domains and the rule that they never overlap
``rollover``           root rollover: a new root only through a link from a trusted one
``ca_bundle``          which issuing CAs and roots a broker adopts from EST /cacerts
``admission``          client-certificate admission at a broker (ordered checks)
``acl``                the topic ACL: SUBSCRIBE, PUBLISH and the Will
``wire``               the EST wire codec (base64 bodies, certs-only PKCS#7)
``decoding``           untrusted X.509/ASN.1 input: every decode failure becomes a 4xx
``fingerprint``        SHA-256 certificate fingerprints and their spellings
``files``              atomic, durable file writes
``clock``              injected time
``tls_policy``         the TLS versions and suites every fleet TLS server offers
``broker_certs``       the broker TLS server and sidecar certificate profiles
``cheader``            generates the C plugin's header from the above
=====================  =============================================================
"""
