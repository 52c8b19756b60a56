"""A renewal must not outlive the revocation of the certificate that authenticated it.

The renewal decided on a read (the presented certificate good), then signed and
recorded. An admin revoking that certificate in between (keyCompromise: its key
is someone else's now) was acknowledged, and the renewal still recorded and
returned a fresh certificate to the key's holder. Now the store checks, in the
recording transaction, that the renewing certificate is still good; the
Authority decides again and refuses as for a revoked certificate.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from fleet.authority.enrollment import Authority
from fleet.kernel.clock import ManualClock
from fleet.kernel.errors import FleetError, StoreConflict
from fleet.pki.ca import certificate_to_pem, create_issuing_ca, create_root_ca
from fleet.pki.profile import DeviceProfile
from fleet.policy.enrollment import EnrollmentPolicy
from fleet.records import CertificateRecord, DeviceState, ManifestEntry, RevocationReason
from fleet.store.protocol import Store
from tests.contract.conftest import Backend
from tests.contract.test_store_contract import certificate, enrolled

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
ACTIVE = {DeviceState.ACTIVE}


async def test_a_renewal_by_a_revoked_certificate_is_not_recorded(store: Store) -> None:
    await enrolled(store, "d1", 0x51, NOW)
    await store.revoke_certificate(0x51, RevocationReason.KEY_COMPROMISE, NOW)
    head = await store.feed_head()
    with pytest.raises(StoreConflict, match="51"):
        await store.record_certificate(
            certificate(0x52, "d1", NOW), expected=ACTIVE, now=NOW, renewing=0x51
        )
    assert [c.serial for c in await store.list_certificates("d1")] == [0x51]
    assert await store.feed_head() == head


async def test_a_renewal_by_a_good_certificate_is_recorded_and_replays(store: Store) -> None:
    await enrolled(store, "d1", 0x51, NOW)
    new = certificate(0x52, "d1", NOW + dt.timedelta(seconds=1))
    for _ in range(2):  # the second call is a replay, after 0x51 was superseded
        await store.record_certificate(
            new, expected=ACTIVE, now=NOW, renewing=0x51, supersede=[0x51]
        )
    assert {c.serial for c in await store.list_certificates("d1")} == {0x51, 0x52}


async def test_the_authority_refuses_a_renewal_whose_certificate_was_revoked_meanwhile(
    backend: Backend,
) -> None:
    root = create_root_ca("Race Root", now=NOW)
    issuing = create_issuing_ca(root, "Race Devices", now=NOW)
    admin_side = await backend.open()
    device_side = await backend.open()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "d1")])
    current = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuing.certificate.subject)
        .public_key(key.public_key())
        .serial_number(0x51)
        .not_valid_before(NOW - dt.timedelta(hours=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .sign(issuing.private_key, hashes.SHA256())
    )
    try:
        await admin_side.import_manifest([ManifestEntry("d1", "ab" * 32)], NOW)
        await admin_side.record_certificate(
            CertificateRecord(
                0x51, "d1", current.not_valid_before_utc, current.not_valid_after_utc, NOW,
                certificate_to_pem(current).decode(),
            ),
            expected={DeviceState.REGISTERED},
            now=NOW,
        )  # fmt: skip
        revoked = False
        record = device_side.record_certificate

        async def revoke_first(*args: Any, **kwargs: Any) -> Any:
            # The admin's revocation lands after the decision, before the recording.
            nonlocal revoked
            if not revoked:
                revoked = True
                await admin_side.revoke_certificate(0x51, RevocationReason.KEY_COMPROMISE, NOW)
            return await record(*args, **kwargs)

        device_side.record_certificate = revoke_first  # type: ignore[method-assign]
        authority = Authority(
            store=device_side, issuer=issuing, policy=EnrollmentPolicy(),
            clock=ManualClock(NOW), retry_after=60,
        )  # fmt: skip
        csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
        with pytest.raises(FleetError) as refused:
            await authority.reenroll(current, "d1", csr, DeviceProfile())
        assert refused.value.reason == "certificate_revoked"
        assert [c.serial for c in await admin_side.list_certificates("d1")] == [0x51]
    finally:
        await device_side.close()
        await admin_side.close()
