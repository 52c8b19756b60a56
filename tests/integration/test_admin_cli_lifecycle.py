"""`fleet device suspend/resume/revoke/why`, `fleet cert`, `fleet audit`, locally and remotely.

The real `fleet` command runs in subprocesses: locally against the data
directory of a running `fleet serve` (the store directly), and remotely against
that server's admin API with a bearer token file or an admin client
certificate. Devices are enrolled over EST with curl, as in the EST tests.
Independent commands run concurrently to keep the module fast.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from cryptography import x509

from fleet.kernel.fingerprint import sha256_fingerprint
from fleet.records import ManifestEntry
from tests.integration.admin.conftest import Admin, make_admin
from tests.integration.est.conftest import Fleet, running_fleet
from tests.support.factory import make_bootstrap, manifest_csv, manifest_entry, write_pem
from tests.support.ports import free_port

Command = Sequence[str | Path]
THRESHOLD = 2


class Cli:
    """Runs `fleet` locally (FLEET_CONFIG) or remotely (--server + a credential)."""

    def __init__(self, cwd: Path, env: dict[str, str], remote: Sequence[str | Path] = ()) -> None:
        self.cwd = cwd
        self.env = env
        self.remote = [str(a) for a in remote]

    def argv(self, command: Command) -> list[str]:
        # Remote options go on the group (`fleet device --server URL ... list`).
        words = [str(c) for c in command]
        return [sys.executable, "-m", "fleet", words[0], *self.remote, *words[1:]]

    def __call__(self, *command: str | Path) -> subprocess.CompletedProcess[str]:
        return self.many(command)[0]

    def many(self, *commands: Command) -> list[subprocess.CompletedProcess[str]]:
        """Run independent commands at the same time; results in order."""
        procs = [
            subprocess.Popen(
                self.argv(c),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=self.env,
                cwd=self.cwd,
            )
            for c in commands
        ]
        results = []
        for proc, command in zip(procs, commands, strict=True):
            out, err = proc.communicate(timeout=60)
            results.append(subprocess.CompletedProcess(command, proc.returncode, out, err))
        return results


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (
        f"{result.args}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result.stdout


def ok_json(result: subprocess.CompletedProcess[str]) -> object:
    return json.loads(ok(result))


def refused(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit 1 with diagnostics (what happened, reason code, what to do) naming ``words``."""
    assert result.returncode == 1, (
        f"{result.args}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    assert result.stderr.startswith("error: "), result.stderr
    assert "reason: " in result.stderr
    assert "what to do: " in result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
    return result.stderr


def usage(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, (
        f"{result.args}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    for word in words:
        assert word in result.stderr, result.stderr


class Env:
    def __init__(self, admin: Admin, work: Path) -> None:
        self.admin = admin
        self.fleet: Fleet = admin.fleet
        base = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
        base["FLEET_ADMIN_BULK_CONFIRM_THRESHOLD"] = str(THRESHOLD)
        server = self.fleet.server
        self.local = Cli(work, {**base, "FLEET_CONFIG": str(server.config_path)})
        self.tokens: dict[str, Path] = {}
        for role, token in admin.tokens.items():
            path = work / f"{role}.token"
            path.write_text(token + "\n")
            path.chmod(0o600)
            self.tokens[role] = path
        self.url = server.base
        self.root = server.root_pem
        self.remote = self.remote_as("admin")
        # The operator's admin client certificate (mTLS), no token anywhere.
        self.mtls = Cli(
            work,
            base,
            ["--server", self.url, "--ca-file", self.root, "--admin-cert", admin.cert,
             "--admin-key", admin.key],
        )  # fmt: skip

    def remote_as(self, role: str) -> Cli:
        return Cli(
            self.local.cwd,
            {k: v for k, v in self.local.env.items() if k != "FLEET_CONFIG"},
            ["--server", self.url, "--ca-file", self.root, "--token-file", self.tokens[role]],
        )

    def enroll(self, batch: str, model: str = "m1") -> tuple[str, int]:
        """A device in the manifest with this batch, enrolled over EST: (id, serial)."""
        device = self.fleet.new_device(in_manifest=False)
        entry = ManifestEntry(
            device.device_id, sha256_fingerprint(device.bootstrap.certificate), model, batch
        )
        self.fleet.server.store(lambda s: s.import_manifest([entry], dt.datetime.now(dt.UTC)))
        _, csr = self.fleet.csr("op")
        cert = self.fleet.issued(self.fleet.enroll(device, csr), "op")
        serial = x509.load_pem_x509_certificate(cert.read_bytes()).serial_number
        return device.device_id, serial


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("cli-lifecycle")
    server_env = {"FLEET_ADMIN_BULK_CONFIRM_THRESHOLD": str(THRESHOLD)}
    with running_fleet(base, env=server_env) as fleet:
        work = base / "cli"
        work.mkdir()  # no fleet.toml here: remote mode must not need one
        yield Env(make_admin(fleet), work)


def _without_enrolled_pin(devices: object) -> object:
    """The admin API does not expose enrolled_bootstrap_sha256 (remote shows null)."""
    items = devices if isinstance(devices, list) else [devices]
    for item in items:
        assert isinstance(item, dict)
        item.pop("enrolled_bootstrap_sha256", None)
    return devices


@pytest.mark.parametrize("mode", ["local", "token", "mtls"])
def test_suspend_resume_revoke_why(env: Env, mode: str) -> None:
    cli = {"local": env.local, "token": env.remote, "mtls": env.mtls}[mode]
    device_id, serial = env.enroll("rt")

    assert f"Suspended device {device_id}: now suspended" in ok(
        cli("device", "suspend", device_id, "--note", "lost in transit")
    )
    resumed = ok_json(cli("device", "resume", device_id, "--json"))
    assert isinstance(resumed, dict)
    assert resumed["state"] == "active"
    assert "now active" in ok(cli("device", "resume", device_id))  # idempotent
    assert f"Revoked device {device_id} (keyCompromise)" in ok(
        cli("device", "revoke", device_id, "--reason", "key_compromise", "--note", "leaked")
    )
    again, suspend_revoked, shown, trace, why_text = cli.many(
        ("device", "revoke", device_id, "--reason", "superseded", "--json"),
        ("device", "suspend", device_id),
        ("device", "show", device_id, "--json"),
        ("device", "why", device_id, "--json"),
        ("device", "why", device_id),
    )
    again_json = ok_json(again)
    assert isinstance(again_json, dict)
    assert (again_json["changed"], again_json["device"]["state"]) == (False, "revoked")
    refused(suspend_revoked, "device_revoked")
    shown_json = ok_json(shown)
    assert isinstance(shown_json, dict)
    assert shown_json["state"] == "revoked"
    (cert,) = shown_json["certificates"]
    assert (cert["serial"], cert["status"]) == (f"{serial:x}", "revoked")
    assert cert["revocation_reason"] == "keyCompromise"

    trace_json = ok_json(trace)
    assert isinstance(trace_json, dict)
    actions = [(r["action"], r["outcome"], r["reason"]) for r in trace_json["trace"]]
    assert actions[-3:] == [
        ("suspend", "done", "admin_suspend"),
        ("resume", "done", "admin_resume"),
        ("revoke", "done", "keyCompromise"),
    ]
    assert actions[0][0] == "enroll"
    revoke_record = trace_json["trace"][-1]
    assert revoke_record["detail"]["note"] == "leaked"
    assert revoke_record["detail"]["serials"] == f"{serial:x}"
    actor = revoke_record["actor"]
    expected_actor = {"local": "@local", "token": "admin:admin-bot", "mtls": "admin:olivia"}
    assert expected_actor[mode] in actor
    text = ok(why_text)
    assert text.startswith(f"Device {device_id}: revoked")
    assert text.splitlines()[3].split() == [
        "TIME",
        "ACTOR",
        "ACTION",
        "OUTCOME",
        "REASON",
        "DETAILS",
    ]
    revoke_line = text.splitlines()[-1]
    assert "keyCompromise" in revoke_line
    assert "note=leaked" in revoke_line


def test_local_and_remote_output_is_identical(env: Env) -> None:
    device_id, _ = env.enroll("same")
    commands: list[Command] = [
        ("device", "show", device_id, "--json"),
        ("device", "list", "--batch", "same", "--json"),
        ("device", "why", device_id, "--json"),
        ("device", "list", "--batch", "same"),
        ("trust", "list"),
        ("cert", "expiring", "--days", "400"),
    ]
    local = env.local.many(*commands)
    remote = env.remote.many(*commands)
    for mine, theirs, command in zip(local, remote, commands, strict=True):
        if "--json" in command:
            mine_json, theirs_json = ok_json(mine), ok_json(theirs)
            if isinstance(mine_json, dict) and "trace" in mine_json:
                mine_json, theirs_json = mine_json["trace"], theirs_json["trace"]  # type: ignore[index]
            else:
                mine_json = _without_enrolled_pin(mine_json)
                theirs_json = _without_enrolled_pin(theirs_json)
            assert mine_json == theirs_json, command
        else:
            assert ok(mine) == ok(theirs), command
    # One codec: the CLI prints a device as the API serves it (same fields, same times).
    served = env.admin.call("GET", f"/api/v1/devices/{device_id}")
    assert served.status == 200
    shown = ok_json(local[0])
    assert isinstance(shown, dict)
    assert isinstance(served.body, dict)
    assert {k: shown[k] for k in served.body} == served.body


@pytest.mark.parametrize("mode", ["local", "token"])
def test_bulk_revoke_dry_run_threshold_confirm(env: Env, mode: str) -> None:
    cli = env.local if mode == "local" else env.remote
    batch = f"bulk-{mode}"
    enrolled = sorted(env.enroll(batch)[0] for _ in range(THRESHOLD + 1))

    dry, dry_json, both, neither, note = cli.many(
        ("device", "revoke", "--batch", batch, "--reason", "superseded", "--dry-run"),
        ("device", "revoke", "--batch", batch, "--model", "m1", "--reason", "superseded",
         "--dry-run", "--json"),
        ("device", "revoke", enrolled[0], "--batch", batch, "--reason", "superseded"),
        ("device", "revoke", "--reason", "superseded"),
        ("device", "revoke", "--batch", batch, "--reason", "superseded", "--note", "x"),
    )  # fmt: skip
    text = ok(dry)
    assert "Dry run, nothing changed" in text
    assert "devices:      3" in text
    assert "certificates: 3" in text
    assert ok_json(dry_json) == {
        "dry_run": True,
        "devices": 3,
        "certificates": 3,
        "revoked": [],
        "selection": {"batch": batch, "model": "m1"},
        "reason": "superseded",
    }
    usage(both, "exactly one of ID or a selector")
    usage(neither, "exactly one of ID or a selector")
    usage(note, "--note")

    error = refused(
        cli("device", "revoke", "--batch", batch, "--reason", "superseded"),
        "confirmation_required",
        "--confirm",
    )
    assert "nothing changed" in error
    states = ok_json(cli("device", "list", "--batch", batch, "--json"))
    assert isinstance(states, list)
    assert {d["state"] for d in states} == {"active"}

    done = ok_json(
        cli("device", "revoke", "--batch", batch, "--reason", "superseded", "--confirm", "--json")
    )
    assert isinstance(done, dict)
    assert (done["dry_run"], done["devices"], sorted(done["revoked"])) == (False, 3, enrolled)
    after = ok_json(cli("device", "list", "--batch", batch, "--state", "revoked", "--json"))
    assert isinstance(after, list)
    assert sorted(d["device_id"] for d in after) == enrolled
    # Already revoked devices are in no blast radius: nothing is left to cut off.
    again = ok_json(
        cli("device", "revoke", "--batch", batch, "--reason", "superseded", "--dry-run", "--json")
    )
    assert isinstance(again, dict)
    assert (again["devices"], again["certificates"]) == (0, 0)


@pytest.mark.parametrize("mode", ["local", "mtls"])
def test_cert_revoke_and_expiring(env: Env, mode: str) -> None:
    cli = env.local if mode == "local" else env.mtls
    batch = f"certs-{mode}"
    (kept, kept_serial), (cut, cut_serial) = env.enroll(batch), env.enroll(batch, model="m9")

    revoked = ok_json(cli("cert", "revoke", f"{cut_serial:x}", "--reason", "superseded", "--json"))
    assert isinstance(revoked, dict)
    assert revoked["changed"] is True
    assert revoked["certificate"]["device_id"] == cut
    assert revoked["certificate"]["status"] == "revoked"
    expiring, soon, table, listed, none_listed, again, bad, prefixed, colons = cli.many(
        ("cert", "expiring", "--days", "400", "--json"),
        ("cert", "expiring", "--days", "0", "--json"),
        ("cert", "expiring", "--days", "400"),
        ("device", "list", "--batch", batch, "--expiring-within", "400", "--json"),
        ("device", "list", "--batch", batch, "--model", "m1", "--expiring-within", "0"),
        ("cert", "revoke", f"{cut_serial:x}", "--reason", "superseded"),
        ("cert", "revoke", "xyz", "--reason", "superseded"),
        # int(text, 16) took "0x..." (and "_", spaces, non-ASCII digits); openssl's colons stay.
        ("cert", "revoke", f"0x{cut_serial:x}", "--reason", "superseded"),
        (
            "cert",
            "revoke",
            ":".join(re.findall("..", f"{cut_serial:040x}")),
            "--reason",
            "superseded",
        ),
    )
    serials = {c["serial"]: c for c in ok_json(expiring)}  # type: ignore[attr-defined]
    assert f"{kept_serial:x}" in serials
    assert serials[f"{kept_serial:x}"]["device_id"] == kept
    assert f"{cut_serial:x}" not in serials  # revoked certificates do not expire, they are dead
    assert f"{kept_serial:x}" not in {c["serial"] for c in ok_json(soon)}  # type: ignore[attr-defined]
    lines = ok(table).splitlines()
    assert lines[0].split() == ["SERIAL", "DEVICE", "NOT", "AFTER", "LEFT"]
    assert any(line.startswith(f"{kept_serial:x}") and kept in line for line in lines)
    assert [d["device_id"] for d in ok_json(listed)] == [kept]  # type: ignore[attr-defined]
    assert ok(none_listed).strip() == "No devices match."
    assert "already revoked; nothing changed" in ok(again)
    usage(bad, "not a certificate serial")
    usage(prefixed, "not a certificate serial")
    assert "already revoked; nothing changed" in ok(colons)
    device = ok_json(cli("device", "show", cut, "--json"))
    assert isinstance(device, dict)
    assert device["state"] == "active"  # one certificate revoked, the device is not


def test_remote_trust_manifest_token_approve(env: Env, tmp_path: Path) -> None:
    cli = env.remote
    from tests.support.factory import make_manufacturer

    globex = make_manufacturer("Globex")
    ca_pem, _ = write_pem(tmp_path / "globex.pem", globex)
    fingerprint = sha256_fingerprint(globex.certificate)
    added = ok(cli("trust", "add-manufacturer", ca_pem, "--name", "Globex"))
    assert "Trusted manufacturer CA 'Globex'" in added
    assert fingerprint in added

    csv_path = tmp_path / "manifest.csv"
    boots = [make_bootstrap(globex, f"gx-{i}") for i in range(2)]
    csv_path.write_text(manifest_csv(manifest_entry(b, model="GX", batch="g1") for b in boots))
    listed, imported, token, refused_token = cli.many(
        ("trust", "list", "--json"),
        ("manifest", "import", csv_path, "--json"),
        ("device", "token", "gx-new", "--expires-in", "2h", "--json"),
        ("device", "token", "gx-other", "--expires-in", "30m"),
    )
    assert "Globex" in {ca["name"] for ca in ok_json(listed)}  # type: ignore[attr-defined]
    removed = cli("trust", "remove", fingerprint)
    assert ok_json(imported) == {"entries": 2, "created": 2, "updated": 0}
    grant = ok_json(token)
    assert isinstance(grant, dict)
    assert (grant["device_id"], grant["device_created"], len(grant["token"])) == (
        "gx-new",
        True,
        43,
    )
    refused(refused_token, "whole hours")
    assert fingerprint in ok(removed)

    approved, rejected, unknown = cli.many(
        ("device", "approve", "gx-new"),
        ("device", "reject", "gx-0"),
        ("device", "show", "nobody-here"),
    )
    assert "Approved device gx-new: now registered" in ok(approved)
    refused(rejected, "not pending", "device_not_pending")
    refused(unknown, "device_not_found")
    shown = ok(cli("device", "show", "gx-0"))
    assert "model:                     GX" in shown.splitlines()


def test_remote_refusals(env: Env, tmp_path: Path) -> None:
    device_id, _ = env.enroll("refusals")
    viewer = env.remote_as("viewer")
    loose = tmp_path / "loose.token"
    loose.write_text(env.admin.tokens["admin"])
    loose.chmod(0o644)
    dead = f"https://127.0.0.1:{free_port()}"
    no_credential = Cli(env.local.cwd, env.remote.env, ["--server", env.url, "--ca-file", env.root])
    results = viewer.many(
        ("device", "revoke", device_id, "--reason", "keyCompromise"),
        ("device", "list", "--batch", "refusals", "--json"),
        ("audit", "verify"),
    )
    refused(results[0], "role_insufficient", "viewer", "Ask an admin")
    assert [d["device_id"] for d in ok_json(results[1])] == [device_id]  # type: ignore[attr-defined]
    refused(results[2], "role_insufficient")

    loose_cli = Cli(
        env.local.cwd, env.remote.env, ["--server", env.url, "--ca-file", env.root,
                                        "--token-file", loose]
    )  # fmt: skip
    dead_cli = Cli(
        env.local.cwd, env.remote.env, ["--server", dead, "--token-file", env.tokens["admin"]]
    )
    system_trust = Cli(
        env.local.cwd, env.remote.env, ["--server", env.url, "--token-file", env.tokens["admin"]]
    )
    env_token = Cli(
        env.local.cwd,
        {**env.remote.env, "FLEET_ADMIN_TOKEN": env.admin.tokens["operator"]},
        ["--server", env.url, "--ca-file", env.root],
    )
    on_line = Cli(env.local.cwd, env.remote.env, ["--server", env.url, "--token", "abc"])
    stray = Cli(env.local.cwd, env.local.env, ["--token-file", env.tokens["admin"]])
    loose_r, dead_r, tls_r, none_r, env_r, line_r, stray_r = [
        cli("device", "list") for cli in (
            loose_cli, dead_cli, system_trust, no_credential, env_token, on_line, stray
        )
    ]  # fmt: skip
    refused(loose_r, "readable by other users", "chmod 600")
    refused(dead_r, "connection refused", "server_unavailable")
    refused(tls_r, "tls_failed", "cannot verify the certificate", "--ca-file")
    refused(none_r, "needs an admin credential", "--token-file")
    assert device_id in ok(env_r)
    usage(line_r, "No such option")
    usage(stray_r, "--token-file is for remote mode")


def test_audit_verify_show_and_tampering(env: Env) -> None:
    device_id, _ = env.enroll("audit")
    ok(env.local("device", "suspend", device_id, "--note", "audit me"))
    local_verify, remote_verify, shown, shown_text, remote_shown = env.local.many(
        ("audit", "verify"),
        ("audit", *env.remote.remote, "verify", "--json"),
        ("audit", "show", "--device", device_id, "--json"),
        ("audit", "show", "--device", device_id),
        ("audit", *env.remote.remote, "show", "--device", device_id, "--json"),
    )
    intact = ok(local_verify).strip()
    assert intact.startswith("audit log intact: ")
    count = int(intact.removeprefix("audit log intact: ").removesuffix(" records"))
    remote_report = ok_json(remote_verify)
    assert isinstance(remote_report, dict)
    assert remote_report["intact"] is True
    assert remote_report["records"] >= count
    records = ok_json(shown)
    assert isinstance(records, list)
    assert records == ok_json(remote_shown)
    assert [r["action"] for r in records] == ["enroll", "suspend"]
    suspend = records[-1]
    assert suspend["detail"]["note"] == "audit me"
    header = ok(shown_text).splitlines()[0].split()
    assert header == ["SEQ", "TIME", "ACTOR", "ACTION", "OUTCOME", "REASON", "DEVICE", "DETAILS"]
    page = ok_json(env.local("audit", "show", "--after", str(suspend["seq"] - 1), "--limit", "1",
                             "--json"))  # fmt: skip
    assert page == [suspend]

    # Edit the suspend record's event in the database, behind fleet's back.
    database = env.fleet.server.data_dir / "fleet.db"
    seq = suspend["seq"]
    with sqlite3.connect(database) as db:
        (original,) = db.execute("SELECT event FROM audit WHERE seq = ?", (seq,)).fetchone()
        event = json.loads(original)
        event["detail"]["note"] = "nothing to see"
        db.execute("UPDATE audit SET event = ? WHERE seq = ?", (json.dumps(event), seq))
    try:
        local_broken, remote_broken, remote_broken_json = env.local.many(
            ("audit", "verify"),
            ("audit", *env.remote.remote, "verify"),
            ("audit", *env.remote.remote, "verify", "--json"),
        )
        for result in (local_broken, remote_broken):
            refused(result, "audit_chain_broken", "1 problem(s)")
            assert result.stdout.splitlines() == [f"record {seq}: edited"]
        report = json.loads(remote_broken_json.stdout)
        assert remote_broken_json.returncode == 1
        assert report["intact"] is False
        assert report["problems"] == [{"seq": seq, "problem": "edited"}]
    finally:
        with sqlite3.connect(database) as db:
            db.execute("UPDATE audit SET event = ? WHERE seq = ?", (original, seq))
    assert ok(env.local("audit", "verify")).startswith("audit log intact")


def test_help_lists_reasons_and_examples(env: Env) -> None:
    revoke_help, why_help, verify_help = env.local.many(
        ("device", "revoke", "--help"),
        ("device", "why", "--help"),
        ("audit", "verify", "--help"),
    )
    text = ok(revoke_help)
    for name in ("keyCompromise", "superseded", "cessationOfOperation", "--dry-run", "--server"):
        assert name in text
    assert "certificateHold" not in text  # that is what suspend is for
    assert "timeline" in ok(why_help)
    assert "audit log intact" in ok(verify_help)
    usage(env.local("device", "revoke", "x", "--reason", "stolen"), "unknown revocation reason")


@pytest.mark.parametrize("mode", ["local", "token", "mtls"])
def test_replacement_request_approve_replace_and_reject_revoke(env: Env, mode: str) -> None:
    cli = {"local": env.local, "token": env.remote, "mtls": env.mtls}[mode]
    fleet = env.fleet
    replaced, clone = fleet.new_device(), fleet.new_device()
    for device in (replaced, clone):
        _, csr = fleet.csr("op")
        assert fleet.enroll(device, csr).status == 200
    _, new_csr = fleet.csr("reset")
    assert fleet.enroll(replaced, new_csr).status == 202  # a factory reset (new key)
    _, clone_csr = fleet.csr("clone")
    assert fleet.enroll(clone, clone_csr).status == 202  # a clone (new key)

    shown = ok_json(cli("device", "show", replaced.device_id, "--json"))
    assert isinstance(shown, dict)
    assert shown["state"] == "active"
    assert shown["replacement_request"]["status"] == "pending"
    text = ok(cli("device", "show", replaced.device_id))
    assert "Replacement request (pending)" in text
    assert f"fleet device approve {replaced.device_id} --replace" in text
    refused(
        cli("device", "approve", replaced.device_id), "replacement_choice_required", "--replace"
    )
    refused(
        cli("device", "reject", fleet.new_device().device_id, "--revoke"), "no_replacement_request"
    )

    approved = ok_json(cli("device", "approve", replaced.device_id, "--replace", "--json"))
    assert isinstance(approved, dict)
    assert (approved["state"], approved["replacement_request"]["status"]) == ("active", "approved")
    assert fleet.enroll(replaced, new_csr).status == 200  # the new key, at its retry
    after = ok_json(cli("device", "show", replaced.device_id, "--json"))
    assert isinstance(after, dict)
    assert after["replacement_request"] is None
    statuses = sorted((c["status"], c["revocation_reason"]) for c in after["certificates"])
    assert statuses == [("good", None), ("revoked", "superseded")]

    ok(cli("device", "reject", clone.device_id, "--revoke"))
    again = fleet.enroll(clone, clone_csr)
    assert (again.status, again.headers["x-fleet-reason"]) == (403, "replacement_rejected")
    rejected = ok_json(cli("device", "show", clone.device_id, "--json"))
    assert isinstance(rejected, dict)
    assert rejected["state"] == "active"
    assert rejected["replacement_request"]["status"] == "rejected"
    assert [(c["status"], c["revocation_reason"]) for c in rejected["certificates"]] == [
        ("revoked", "keyCompromise")
    ]
    why = ok(cli("device", "why", clone.device_id))
    assert "Replacement request (rejected)" in why
    assert "replacement_rejected" in why
