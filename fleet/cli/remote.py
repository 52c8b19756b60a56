"""The admin operations over the admin REST API (/api/v1) of a running fleet server.

A small synchronous HTTPS client (http.client + ssl): the server is verified
with --ca-file or the system trust store; the admin is an mTLS client
certificate or a bearer token read from a 0600 file or FLEET_ADMIN_TOKEN.
API errors (JSON ``{error, message}``) become a FleetError with the server's
reason code, so the CLI prints the same diagnostics as in local mode.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import http.client
import json
import os
import socket
import ssl
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fleet.authority.admin import ImportResult, TrustResult
from fleet.authority.lifecycle import BulkResult, BulkSelection
from fleet.cli.common import read_secret_file
from fleet.cli.ops import ChainReport, DeviceQuery, TokenGrant
from fleet.kernel.errors import (
    ConfigError,
    CredentialsRequired,
    FleetError,
    NotFound,
    RequestInvalid,
    ServerUnavailable,
    StateConflict,
)
from fleet.records import (
    AuditEvent,
    AuditRecord,
    CertificateRecord,
    CertificateStatus,
    Device,
    DeviceState,
    ManifestEntry,
    Manufacturer,
    ManufacturerCA,
    ReplacementRequest,
    ReplacementStatus,
    RevocationReason,
)
from fleet.store.audit_chain import ChainProblem

API = "/api/v1"
TIMEOUT_SECONDS = 30.0
_PAGE = 500
_CREDENTIAL_HINT = (
    "Give an admin credential: --token-file FILE (or FLEET_ADMIN_TOKEN), or --admin-cert "
    "and --admin-key; an admin makes one with `fleet admin token NAME --role ROLE`."
)
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


class TlsFailed(FleetError):
    reason = "tls_failed"
    hint = (
        "Check the server URL and --ca-file: for a fleet server pass its fleet root "
        "(DATA/ca/root.pem); the server certificate must also name the host in the URL."
    )


@dataclasses.dataclass(frozen=True)
class Connection:
    """Where the admin API is and how to reach it; ``request`` does one call."""

    host: str
    port: int
    prefix: str  # path of the server URL, without a trailing slash
    context: ssl.SSLContext | None  # None: plain HTTP (loopback only)
    token: str | None
    url: str

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int | None] | None = None,
        body: Any = None,
        raw: bytes | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """Call the API; the parsed JSON answer, or a FleetError."""
        target = self.prefix + API + path
        params = {k: str(v) for k, v in (query or {}).items() if v is not None}
        if params:
            target += "?" + urllib.parse.urlencode(params)
        headers = {"Accept": "application/json"}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        payload = raw if raw is not None else None if body is None else json.dumps(body).encode()
        if payload is not None:
            headers["Content-Type"] = content_type
        conn: http.client.HTTPConnection
        if self.context is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT_SECONDS)
        else:
            conn = http.client.HTTPSConnection(
                self.host, self.port, context=self.context, timeout=TIMEOUT_SECONDS
            )
        try:
            conn.request(method, target, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except ssl.SSLCertVerificationError as exc:
            raise TlsFailed(
                f"cannot verify the certificate of {self.url}: {exc.verify_message}"
            ) from None
        except ssl.SSLError as exc:
            raise TlsFailed(f"TLS with {self.url} failed: {exc.reason or exc}") from None
        except ConnectionRefusedError:
            raise ServerUnavailable(
                f"cannot connect to {self.url}: connection refused",
                hint="Check --server (or FLEET_SERVER) and that `fleet serve` runs there.",
            ) from None
        except socket.gaierror as exc:
            raise ServerUnavailable(
                f"cannot resolve {self.host}: {exc.strerror}", hint="Check the --server URL."
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ServerUnavailable(
                f"no answer from {self.url}: {text or type(exc).__name__}"
            ) from None
        finally:
            conn.close()
        return _answer(response.status, data, f"{method} {API}{path}")


def connect(
    url: str,
    *,
    ca_file: Path | None,
    admin_cert: Path | None,
    admin_key: Path | None,
    token_file: Path | None,
) -> Connection:
    """A connection to the server at ``url`` with exactly one admin credential."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname
    if parts.scheme not in ("https", "http") or not host:
        raise ConfigError(
            f"--server {url!r} is not an https:// URL",
            hint="Give the server's base URL, e.g. https://fleet.example.com:8443.",
        )
    if parts.scheme == "http" and host not in _LOOPBACK:
        raise ConfigError(
            f"--server {url!r} is plain HTTP: the admin credential would travel unencrypted",
            hint="Use the server's https:// URL (plain http is allowed to loopback only).",
        )
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ConfigError(f"--server {url!r} has an invalid port") from None
    token = _token(token_file)
    if (admin_cert is None) != (admin_key is None):
        raise ConfigError(
            "--admin-cert and --admin-key go together", hint="Give both files, or neither."
        )
    if token is not None and admin_cert is not None:
        raise ConfigError(
            "two admin credentials given (a bearer token and a client certificate)",
            hint="Use one: --token-file / FLEET_ADMIN_TOKEN, or --admin-cert and --admin-key.",
        )
    if token is None and admin_cert is None:
        raise CredentialsRequired("remote mode needs an admin credential", hint=_CREDENTIAL_HINT)
    context = None if parts.scheme == "http" else _tls_context(ca_file, admin_cert, admin_key)
    prefix = parts.path.rstrip("/")
    return Connection(host, port, prefix, context, token, url)


def _token(token_file: Path | None) -> str | None:
    if token_file is not None:
        secret = read_secret_file(token_file)
    else:
        secret = os.environ.get("FLEET_ADMIN_TOKEN", "").strip().encode()
        if not secret:
            return None
    try:
        return secret.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError("the admin token is not ASCII text") from None


def _tls_context(
    ca_file: Path | None, admin_cert: Path | None, admin_key: Path | None
) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot use --ca-file {ca_file}: {getattr(exc, 'strerror', None) or exc}",
            hint="Give a PEM file of CA certificates, e.g. the fleet root DATA/ca/root.pem.",
        ) from None
    if admin_cert is not None and admin_key is not None:
        read_secret_file(admin_key)  # refuses a key other users can read
        try:
            context.load_cert_chain(str(admin_cert), str(admin_key))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot use the admin certificate {admin_cert} with key {admin_key}: "
                f"{getattr(exc, 'strerror', None) or exc}",
                hint="Give the NAME.pem and NAME.key written by `fleet admin create`.",
            ) from None
    return context


# -- answers ---------------------------------------------------------------------------
def _hints() -> dict[str, str]:
    """reason code -> hint, from the FleetError tree (the server sends no hints)."""
    found: dict[str, str] = {}
    pending: list[type[FleetError]] = [FleetError]
    while pending:
        cls = pending.pop()
        found.setdefault(cls.reason, cls.hint)
        pending += cls.__subclasses__()
    return found


_STATUS_HINTS = {
    400: RequestInvalid.hint,
    401: _CREDENTIAL_HINT,
    404: NotFound.hint,
    409: StateConflict.hint,
    503: ServerUnavailable.hint,
}


def _answer(status: int, data: bytes, what: str) -> Any:
    try:
        parsed: Any = json.loads(data)
    except ValueError:
        parsed = None
    if 200 <= status < 300 and parsed is not None:
        return parsed
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        reason = parsed["error"]
        message = str(parsed.get("message") or reason)
        hint = (
            _CREDENTIAL_HINT
            if status == 401
            else _hints().get(reason) or _STATUS_HINTS.get(status) or FleetError.hint
        )
        raise FleetError(message, reason=reason, hint=hint)
    raise ServerUnavailable(
        f"unexpected answer to {what}: HTTP {status}, not the admin API's JSON",
        reason="unexpected_answer",
        hint="Check that --server names a fleet server (its base URL, without /api/v1).",
    )


# -- JSON -> records --------------------------------------------------------------------
def _time(value: Any) -> dt.datetime:
    return dt.datetime.fromisoformat(str(value))


def _maybe_time(value: Any) -> dt.datetime | None:
    return None if value is None else _time(value)


def _device(data: Mapping[str, Any]) -> Device:
    return Device(
        device_id=data["device_id"],
        state=DeviceState(data["state"]),
        created_at=_time(data["created_at"]),
        updated_at=_time(data["updated_at"]),
        bootstrap_sha256=data.get("bootstrap_sha256"),
        model=data.get("model") or "",
        batch=data.get("batch") or "",
        # Not part of the API's device object.
        enrolled_bootstrap_sha256=data.get("enrolled_bootstrap_sha256"),
        enrolled_at=_maybe_time(data.get("enrolled_at")),
        state_reason=data.get("state_reason") or "",
        manufacturer=_device_manufacturer(data.get("manufacturer")),
    )


def _device_manufacturer(data: Any) -> Manufacturer | None:
    if not isinstance(data, Mapping):
        return None
    return Manufacturer(str(data["sha256"]), str(data.get("name") or ""))


def _replacement(device_id: str, data: Mapping[str, Any] | None) -> ReplacementRequest | None:
    if data is None:
        return None
    return ReplacementRequest(
        device_id=device_id,
        bootstrap_sha256=data["bootstrap_sha256"],
        key_sha256=data["key_sha256"],
        first_seen=_time(data["first_seen"]),
        last_seen=_time(data["last_seen"]),
        attempts=int(data["attempts"]),
        keys_seen=int(data.get("keys_seen") or 1),
        source=data.get("source") or "",
        status=ReplacementStatus(data["status"]),
        decided_at=_maybe_time(data.get("decided_at")),
        decided_by=data.get("decided_by") or "",
    )


def _certificate(data: Mapping[str, Any]) -> CertificateRecord:
    reason = data.get("revocation_reason")
    return CertificateRecord(
        serial=int(data["serial"], 16),
        device_id=data["device_id"],
        not_before=_time(data["not_before"]),
        not_after=_time(data["not_after"]),
        issued_at=_time(data["issued_at"]),
        pem=data.get("pem") or "",
        status=CertificateStatus(data["status"]),
        revoked_at=_maybe_time(data.get("revoked_at")),
        revocation_reason=None if reason is None else RevocationReason(reason),
    )


def _audit(data: Mapping[str, Any]) -> AuditRecord:
    event = AuditEvent(
        at=_time(data["at"]),
        actor=data["actor"],
        action=data["action"],
        outcome=data["outcome"],
        reason=data["reason"],
        device_id=data.get("device_id"),
        detail={str(k): str(v) for k, v in (data.get("detail") or {}).items()},
    )
    # The API does not send the previous hash; verification happens server-side.
    return AuditRecord(seq=data["seq"], event=event, prev_sha256="", sha256=data["sha256"])


def _manufacturer(data: Mapping[str, Any]) -> ManufacturerCA:
    return ManufacturerCA(data["sha256"], data["name"], data["pem"], _time(data["added_at"]))


def _device_path(device_id: str, action: str = "") -> str:
    path = "/devices/" + urllib.parse.quote(device_id, safe="")
    return f"{path}/{action}" if action else path


class RemoteOps:
    """AdminOps over the admin API; the server checks the admin's role and audits."""

    def __init__(self, connection: Connection) -> None:
        self.api = connection

    def list_devices(self, query: DeviceQuery) -> list[Device]:
        params: dict[str, str | int | None] = {
            "state": None if query.state is None else query.state.value,
            "batch": query.batch,
            "model": query.model,
            "expiring_within_days": query.expiring_within_days,
            "limit": _PAGE,
        }
        found: list[Device] = []
        while True:
            page = self.api.request("GET", "/devices", query=params)
            found += [_device(d) for d in page["items"]]
            if not page.get("next"):
                return found
            params["after"] = page["next"]

    def show_device(self, device_id: str) -> tuple[Device, list[CertificateRecord]]:
        device = _device(self.api.request("GET", _device_path(device_id)))
        certs = self.api.request("GET", _device_path(device_id, "certificates"))["items"]
        return device, [_certificate(c) for c in certs]

    def replacement_request(self, device_id: str) -> ReplacementRequest | None:
        data = self.api.request("GET", _device_path(device_id))
        return _replacement(device_id, data.get("replacement_request"))

    def approve(self, device_id: str, *, replace: bool = False, key: str | None = None) -> Device:
        body: dict[str, object] | None = {"replace": True} if replace else None
        if body is not None and key is not None:
            body["key_sha256"] = key
        return _device(self.api.request("POST", _device_path(device_id, "approve"), body=body))

    def reject(self, device_id: str, *, revoke: bool = False) -> Device:
        body = {"revoke": True} if revoke else None
        return _device(self.api.request("POST", _device_path(device_id, "reject"), body=body))

    def issue_token(self, device_id: str, lifetime: dt.timedelta) -> TokenGrant:
        hours, rest = divmod(int(lifetime.total_seconds()), 3600)
        if rest or hours < 1:
            raise RequestInvalid(
                f"the admin API grants tokens in whole hours; {lifetime} is not",
                hint="Use --expires-in in hours, days or weeks (e.g. 12h, 7d) with --server.",
            )
        body = {"expires_in_hours": hours}
        data = self.api.request("POST", _device_path(device_id, "token"), body=body)
        return TokenGrant(
            data["device_id"], data["token"], _time(data["expires_at"]), data["device_created"]
        )

    def suspend(self, device_id: str, note: str) -> Device:
        body = {"note": note} if note else None
        return _device(self.api.request("POST", _device_path(device_id, "suspend"), body=body))

    def resume(self, device_id: str, note: str) -> Device:
        body = {"note": note} if note else None
        return _device(self.api.request("POST", _device_path(device_id, "resume"), body=body))

    def revoke_device(
        self, device_id: str, reason: RevocationReason, note: str
    ) -> tuple[Device, bool]:
        body = {"reason": reason.value, **({"note": note} if note else {})}
        data = self.api.request("POST", _device_path(device_id, "revoke"), body=body)
        return _device(data["device"]), bool(data["changed"])

    def bulk_revoke(
        self, selection: BulkSelection, reason: RevocationReason, *, dry_run: bool, confirm: bool
    ) -> BulkResult:
        body = {
            **selection.describe(),
            "reason": reason.value,
            "dry_run": dry_run,
            "confirm": confirm,
        }
        data = self.api.request("POST", "/revocations/bulk", body=body)
        return BulkResult(
            data["devices"], data["certificates"], tuple(data["revoked"]), data["dry_run"]
        )

    def why(self, device_id: str) -> tuple[Device, list[AuditRecord]]:
        data = self.api.request("GET", _device_path(device_id, "why"))
        return _device(data["device"]), [_audit(r) for r in data["trace"]]

    def revoke_certificate(
        self, serial: int, reason: RevocationReason, note: str
    ) -> tuple[CertificateRecord, bool]:
        body = {"reason": reason.value, **({"note": note} if note else {})}
        data = self.api.request("POST", f"/certificates/{serial:x}/revoke", body=body)
        return _certificate(data["certificate"]), bool(data["changed"])

    def expiring(self, days: int, limit: int) -> list[CertificateRecord]:
        query: dict[str, str | int | None] = {"days": days, "limit": limit}
        data = self.api.request("GET", "/certificates/expiring", query=query)
        return [_certificate(c) for c in data["items"]]

    def audit(self, device_id: str | None, after: int, limit: int) -> list[AuditRecord]:
        query: dict[str, str | int | None] = {
            "device_id": device_id,
            "after_seq": after,
            "limit": limit,
        }
        return [_audit(r) for r in self.api.request("GET", "/audit", query=query)["items"]]

    def verify_audit(self) -> ChainReport:
        data = self.api.request("GET", "/audit/verify")
        problems = tuple(ChainProblem(p["seq"], p["problem"]) for p in data["problems"])
        return ChainReport(data["records"], problems)

    def list_manufacturers(self) -> list[ManufacturerCA]:
        return [_manufacturer(m) for m in self.api.request("GET", "/manufacturers")["items"]]

    def trust_manufacturer(self, pem: bytes, name: str | None) -> list[TrustResult]:
        data = self.api.request(
            "POST",
            "/manufacturers",
            query={"name": name},
            raw=pem,
            content_type="application/x-pem-file",
        )
        return [TrustResult(_manufacturer(m), bool(m["added"])) for m in data["items"]]

    def distrust_manufacturer(self, fingerprint: str) -> str:
        path = "/manufacturers/" + urllib.parse.quote(fingerprint, safe="")
        return str(self.api.request("DELETE", path)["sha256"])

    def list_intermediates(self) -> list[ManufacturerCA]:
        return [_manufacturer(m) for m in self.api.request("GET", "/intermediates")["items"]]

    def trust_intermediate(self, pem: bytes, name: str | None) -> list[TrustResult]:
        data = self.api.request(
            "POST",
            "/intermediates",
            query={"name": name},
            raw=pem,
            content_type="application/x-pem-file",
        )
        return [TrustResult(_manufacturer(m), bool(m["added"])) for m in data["items"]]

    def distrust_intermediate(self, fingerprint: str) -> str:
        path = "/intermediates/" + urllib.parse.quote(fingerprint, safe="")
        return str(self.api.request("DELETE", path)["sha256"])

    def import_manifest(self, text: str, entries: Sequence[ManifestEntry]) -> ImportResult:
        data = self.api.request("POST", "/manifest", raw=text.encode(), content_type="text/csv")
        return ImportResult(created=data["created"], updated=data["updated"])
