"""Client certificate chain verification with cryptography's verifier, per trust domain (pure).

The three trust domains are never mixed (DESIGN.md §2): a bootstrap
certificate is verified only against the trusted manufacturer CAs, an
operational certificate only against the fleet issuing CA. The chain itself
is built and checked by cryptography's verifier (signatures, CA basic
constraints, path length, key usage, validity); on top of it we add a clock
skew allowance for devices and the reasons a person can act on.

cryptography's verifier follows the Web PKI profile, with two relaxations
that device certificates need: the leaf may carry no subjectAltName (device
ids live in the CN), and its EKU is left to the kernel's own leaf rule
(``certs.client_cert_problem``: clientAuth, not a CA, an allowed key), which
operational and admin certificates must pass and bootstrap certificates
(IDevIDs often have no EKU) skip. It refuses Ed25519-signed chains (Ed25519
device *keys* are fine), so fleet CAs use EC or RSA keys.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
from collections.abc import Sequence

from cryptography import x509
from cryptography.x509 import verification

from fleet.kernel.certs import client_cert_problem, describe, issued_by, validity_problem
from fleet.kernel.errors import AuthError, CertificateExpired, UnknownIssuer


@dataclasses.dataclass(frozen=True, slots=True)
class TrustDomain:
    """Anchors that may issue the certificates of one purpose."""

    name: str  # "manufacturer", "fleet": appears in error messages
    anchors: tuple[x509.Certificate, ...]
    max_chain_depth: int = 3
    skew: dt.timedelta = dt.timedelta(minutes=5)
    require_client_auth_eku: bool = True
    # What to do when a chain stops at an issuer nobody provided (said after
    # the missing issuer's name), e.g. how to import an intermediate CA.
    missing_issuer_hint: str = ""


def verify_client_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    domain: TrustDomain,
    *,
    now: dt.datetime,
) -> list[x509.Certificate]:
    """The verified chain, leaf first; raises UnknownIssuer or CertificateExpired."""
    if not domain.anchors:
        raise UnknownIssuer(
            f"no {domain.name} CA is trusted, so no {domain.name} certificate can be accepted",
            hint="Trust one first (e.g. `fleet trust add-manufacturer CA.pem`).",
        )
    _check_validity(leaf, domain, now)
    # Inside the skew allowance, verify as of the nearest instant of validity.
    at = min(max(now, leaf.not_valid_before_utc), leaf.not_valid_after_utc)
    try:
        verifier = _verifier(domain, at)
        verified = verifier.verify(leaf, list(intermediates))
    except verification.VerificationError as exc:
        missing = missing_issuer(leaf, intermediates, domain.anchors)
        if missing is None:
            raise UnknownIssuer(
                f"{describe(leaf)} does not chain to a trusted {domain.name} CA: {exc}",
            ) from exc
        issuer = missing.rfc4514_string() or "(empty subject)"
        message = (
            f"{describe(leaf)} does not chain to a trusted {domain.name} CA: "
            f"its issuer {issuer!r} was not found"
        )
        if domain.missing_issuer_hint:
            message += f"; {domain.missing_issuer_hint}"
        raise UnknownIssuer(message, hint=domain.missing_issuer_hint or None) from exc
    if domain.require_client_auth_eku:
        # An operational certificate: the same leaf rule the brokers admit by.
        problem = client_cert_problem(leaf)
        if problem is not None:
            raise AuthError(problem.detail, reason=problem.reason)
    return list(verified.chain)


def missing_issuer(
    cert: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
) -> x509.Name | None:
    """The first issuer up from ``cert`` that neither the anchors nor the
    intermediates hold (by name and signature); None when the path reaches an
    anchor. Only a diagnosis: the verifier alone decides what is trusted."""
    pool = list(intermediates)
    while issued_by(cert, anchors) is None:
        parent = issued_by(cert, pool)
        if parent is None:
            return cert.issuer
        pool.remove(parent)  # each step uses up one: the walk ends
        cert = parent
    return None


def _check_validity(leaf: x509.Certificate, domain: TrustDomain, now: dt.datetime) -> None:
    problem = validity_problem(leaf, now, domain.skew)
    if problem is not None:
        raise CertificateExpired(problem.detail, reason=problem.reason)


def _verifier(domain: TrustDomain, at: dt.datetime) -> verification.ClientVerifier:
    # A verifier is bound to one verification time, so it is built per call;
    # the anchor store and the policies are not, and are reused.
    store, ca_policy, ee_policy = _domain_parts(domain)
    builder = (
        verification.PolicyBuilder()
        .store(store)
        .time(at)
        .max_chain_depth(domain.max_chain_depth)
        .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
    )
    return builder.build_client_verifier()


@functools.lru_cache(maxsize=32)
def _domain_parts(
    domain: TrustDomain,
) -> tuple[verification.Store, verification.ExtensionPolicy, verification.ExtensionPolicy]:
    ee_policy = verification.ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, verification.Criticality.AGNOSTIC, None
    )
    # The EKU is judged by the kernel's leaf rule after the chain (certs.client_cert_problem),
    # so that a refusal names it (not_client_cert) as the brokers do.
    ee_policy = ee_policy.may_be_present(
        x509.ExtendedKeyUsage, verification.Criticality.AGNOSTIC, None
    )
    ca_policy = verification.ExtensionPolicy.webpki_defaults_ca()
    return verification.Store(list(domain.anchors)), ca_policy, ee_policy
