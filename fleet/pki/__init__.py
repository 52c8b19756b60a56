"""The pure PKI core: keys, CAs, device profiles, CSR checks, issuance, CRL, OCSP,
PKCS#7 and EST CSR attributes.

Everything here is a function of its arguments: time comes in as ``now``, keys and
certificates as objects, and no module does I/O. Only the standard library,
``cryptography``, ``asn1crypto`` and :mod:`fleet.kernel.errors` are imported.
"""
