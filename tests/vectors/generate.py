"""Build the trust vectors' CA hierarchy and every case's leaf certificate and key.

Usage (from the repository root)::

    python -m tests.vectors.generate OUT_DIR [--now 2026-06-01T12:00:00Z] [--seed N]

The table (``trust_cases.toml`` beside this file) says what each certificate
looks like relative to "now"; this script makes them. "now" defaults to the
real time, because real brokers check validity against the real clock: run it
right before the brokers are asked. The output is::

    OUT_DIR/ca/<name>.pem, <name>.key     root, issuing, issuing-2, admin, rogue-root,
                                          impostor-issuing, root-2, issuing-r2,
                                          link-root-2, rogue-link-root-2
    OUT_DIR/server.pem, server.key        a broker TLS certificate (127.0.0.1, localhost)
    OUT_DIR/issuers.pem                   the trusted issuing CAs, in table order
    OUT_DIR/anchors.pem                   the trusted roots, in table order
    OUT_DIR/bundle.pem                    issuing CAs + anchors (a broker's CA bundle)
    OUT_DIR/leaves/<case id>.pem, .key    the leaf followed by its issuer (what a client sends)
    OUT_DIR/vectors.json                  case id -> serial (hex), device id, paths; seed, now

Serial numbers come from a seeded PRNG (the seed is printed and recorded);
keys come from the operating system's RNG and are not reproducible. Keys are
shared between leaves of the same key type (one RSA-4096 key is enough), which
no check depends on.

Importable: :func:`generate` writes the files and returns a :class:`Generated`;
the table is parsed by tests.vectors.table (:func:`~tests.vectors.table.load_table`)
and the certificates minted by tests.vectors.mint.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import random
import sys
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.vectors.mint import Issued, Minter, pem, write_key, x509_name
from tests.vectors.table import CertSpec, Table, load_table


@dataclasses.dataclass(frozen=True, slots=True)
class Leaf:
    chain: Path  # leaf PEM followed by its issuer's
    key: Path
    cert: x509.Certificate

    @property
    def serial_hex(self) -> str:
        return f"{self.cert.serial_number:x}"


@dataclasses.dataclass(frozen=True, slots=True)
class Generated:
    directory: Path
    now: dt.datetime
    seed: int
    cas: dict[str, x509.Certificate]
    leaves: dict[str, Leaf]  # admission case id, and "acl-self" / "acl-other"
    server_cert: Path
    server_key: Path
    root: Path  # what clients trust for the broker's server certificate
    issuers: Path  # the trusted issuing CAs (PEM, table order)
    anchors: Path  # the trusted roots (PEM, table order: both roots of the rollover overlap)
    bundle: Path  # issuing CAs + anchors: what a broker's TLS layer trusts
    candidates: dict[str, x509.Certificate]  # CA-bundle case id -> its candidate CA

    def ca_path(self, name: str) -> Path:
        return self.directory / "ca" / f"{name}.pem"

    def ca_key_path(self, name: str) -> Path:
        return self.directory / "ca" / f"{name}.key"


def generate(
    out: Path,
    *,
    now: dt.datetime | None = None,
    seed: int | None = None,
    table: Table | None = None,
) -> Generated:
    """Write the hierarchy and every leaf of ``table`` into ``out``; see the module docstring."""
    table = table or load_table()
    now = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    seed = random.SystemRandom().randrange(2**32) if seed is None else seed
    mint = Minter(now, seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ca").mkdir(exist_ok=True)
    (out / "leaves").mkdir(exist_ok=True)

    org = (NameOID.ORGANIZATION_NAME, "fleet vectors")
    root_name = x509_name(org, (NameOID.COMMON_NAME, "fleet root CA"))
    issuing_name = x509_name(org, (NameOID.COMMON_NAME, "fleet issuing CA"))
    cas: dict[str, Issued] = {}
    cas["root"] = mint.ca(root_name, None, 1)
    cas["issuing"] = mint.ca(issuing_name, cas["root"], 0)
    cas["issuing-2"] = mint.ca(
        x509_name(org, (NameOID.COMMON_NAME, "fleet issuing CA 2")), cas["root"], 0
    )
    cas["admin"] = mint.ca(x509_name(org, (NameOID.COMMON_NAME, "fleet admin CA")), cas["root"], 0)
    # Impostors: same names as the real root and issuing CA, other keys.
    cas["rogue-root"] = mint.ca(root_name, None, 1)
    cas["impostor-issuing"] = mint.ca(issuing_name, cas["rogue-root"], 0)
    # Root rollover: a new root with the fleet root's name and a new key, its issuing CA,
    # the OldWithNew link (the new root's name and key, signed by the old root) and a link
    # for it that the rogue root signed.
    cas["root-2"] = mint.ca(root_name, None, 1)
    cas["issuing-r2"] = mint.ca(
        x509_name(org, (NameOID.COMMON_NAME, "fleet issuing CA R2")), cas["root-2"], 0
    )
    cas["link-root-2"] = mint.ca(root_name, cas["root"], 1, key=cas["root-2"].key)
    cas["rogue-link-root-2"] = mint.ca(root_name, cas["rogue-root"], 1, key=cas["root-2"].key)
    for name, issued in cas.items():
        (out / "ca" / f"{name}.pem").write_bytes(pem(issued.cert))
        write_key(out / "ca" / f"{name}.key", issued.key)

    server = mint.server(cas["root"])
    (out / "server.pem").write_bytes(pem(server.cert) + pem(cas["root"].cert))
    write_key(out / "server.key", server.key)
    issuers = out / "issuers.pem"
    issuers.write_bytes(b"".join(pem(cas[n].cert) for n in table.issuers))
    anchors = out / "anchors.pem"
    anchors.write_bytes(b"".join(pem(cas[n].cert) for n in table.anchors))
    bundle = out / "bundle.pem"
    bundle.write_bytes(b"".join(pem(cas[n].cert) for n in (*table.issuers, *table.anchors)))
    candidates: dict[str, x509.Certificate] = {}
    for bundle_case in table.ca_bundle:
        wanted = bundle_case.candidate
        if wanted is not None:
            candidates[bundle_case.id] = mint.ca(
                x509_name(org, (NameOID.COMMON_NAME, f"candidate {bundle_case.id}")),
                cas[wanted.issuer], wanted.path_length, is_ca=wanted.ca,
                not_before=wanted.not_before, not_after=wanted.not_after,
            ).cert  # fmt: skip

    specs: dict[str, CertSpec] = {c.id: c.cert for c in table.admission if c.cert is not None}
    specs["acl-self"] = CertSpec(cns=(table.acl_self,))
    specs["acl-other"] = CertSpec(cns=(table.acl_other,))
    leaves: dict[str, Leaf] = {}
    for case_id, spec in specs.items():
        issuer = cas[spec.issuer]
        issued = mint.leaf(spec, issuer)
        chain, key = out / "leaves" / f"{case_id}.pem", out / "leaves" / f"{case_id}.key"
        chain.write_bytes(pem(issued.cert) + pem(issuer.cert))
        write_key(key, issued.key)
        leaves[case_id] = Leaf(chain, key, issued.cert)

    manifest = {
        "version": table.version,
        "now": now.isoformat(),
        "seed": seed,
        "leaves": {
            case_id: {"serial": leaf.serial_hex, "chain": leaf.chain.name, "key": leaf.key.name}
            for case_id, leaf in leaves.items()
        },
    }
    (out / "vectors.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return Generated(
        directory=out,
        now=now,
        seed=seed,
        cas={name: issued.cert for name, issued in cas.items()},
        leaves=leaves,
        server_cert=out / "server.pem",
        server_key=out / "server.key",
        root=out / "ca" / "root.pem",
        issuers=issuers,
        anchors=anchors,
        bundle=bundle,
        candidates=candidates,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="directory to write into")
    parser.add_argument("--now", help="ISO 8601 instant (default: the real time)")
    parser.add_argument("--seed", type=int, help="serial-number seed (default: random, printed)")
    args = parser.parse_args(argv)
    now = dt.datetime.fromisoformat(args.now.replace("Z", "+00:00")) if args.now else None
    generated = generate(args.out, now=now, seed=args.seed)
    table = load_table()
    print(
        f"trust vectors v{table.version}: {len(table.admission)} admission + {len(table.acl)} ACL "
        f"+ {len(table.ca_bundle)} CA-bundle cases, now={generated.now.isoformat()} "
        f"seed={generated.seed} -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
