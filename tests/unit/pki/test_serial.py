from __future__ import annotations

from fleet.pki.serial import random_serial


def test_serials_are_positive_fit_20_octets_and_differ() -> None:
    serials = [random_serial() for _ in range(1000)]
    assert all(0 < s < 2**159 for s in serials)
    assert len(set(serials)) == len(serials)
    # 159 random bits: over 1000 draws the top bit must show up.
    assert max(s.bit_length() for s in serials) == 159
    assert all(len(s.to_bytes(20, "big", signed=True)) == 20 for s in serials)
