"""HTTP for relying parties: the CRL distribution point and the OCSP responder.

Neither needs client authentication: CRLs and OCSP responses are signed by
the issuing CA, and relying parties (brokers, anything checking a device)
must be able to fetch them before they trust anyone.

``GET /crl``
    The current CRL: DER (``application/pkix-crl``), or PEM
    (``application/x-pem-file``) with ``?format=pem`` or an ``Accept`` header
    naming ``application/x-pem-file``. ``?format=der`` forces DER; another
    format is a 400. ``Cache-Control: max-age`` is a quarter of the remaining
    validity, capped at :data:`CRL_MAX_AGE_CAP` so caches do not delay a
    revocation for long; ``ETag`` is the CRL number (``If-None-Match`` → 304).
    503 only if no valid CRL can be built (store down at first use).

``GET /crl/<issuer_id>``
    The same for one trusted issuing CA (current, next or retiring during a
    rotation; ``issuer_id`` = 16 hex digits of its SHA-256, as `fleet ca
    status` shows). Certificates point here with ``crl_url = ".../crl/{issuer}"``.
    404 ``unknown_issuer`` for a retired or unknown CA.

``POST /ocsp`` (``Content-Type: application/ocsp-request``) and ``GET /ocsp/{base64}``
    RFC 6960 appendix A.1. Always ``application/ocsp-response`` with HTTP 200,
    including OCSP-level errors: malformedRequest (garbage, bad base64, an empty
    or oversized request), unauthorized (another issuer's certificate), tryLater
    (store down). The GET path is the URL-encoded base64 request; it may contain
    ``/`` (encoded or not) and ``+``. A POST with another content type is a 415;
    a body over :data:`fleet.pki.ocsp.MAX_OCSP_REQUEST_BYTES` is a 413.
    Responses are not cacheable by HTTP caches (``no-cache``): each is signed
    fresh and may echo a nonce.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import urllib.parse

from aiohttp import web

from fleet.authority.crl import SignedCrl
from fleet.authority.issuer_crls import IssuerCrls
from fleet.authority.ocsp import OcspAnswer, OcspResponder
from fleet.http.body import read_body
from fleet.kernel.clock import Clock
from fleet.kernel.errors import NotFound, UnsupportedMediaType
from fleet.kernel.reasons import Reason
from fleet.pki.ocsp import MAX_OCSP_REQUEST_BYTES, malformed_response

CRL_DER_TYPE = "application/pkix-crl"
PEM_TYPE = "application/x-pem-file"
OCSP_REQUEST_TYPE = "application/ocsp-request"
OCSP_RESPONSE_TYPE = "application/ocsp-response"
# A cached CRL hides newer revocations from whoever reads the cache.
CRL_MAX_AGE_CAP = 300
_OCSP_PREFIX = "/ocsp/"


class RevocationService:
    def __init__(self, crls: IssuerCrls, responder: OcspResponder, clock: Clock) -> None:
        self._crls = crls
        self._responder = responder
        self._clock = clock

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/crl", self.crl),
            web.get("/crl/{issuer}", self.crl),
            web.post("/ocsp", self.ocsp_post),
            # {request:.*} also matches '/', which base64 contains.
            web.get("/ocsp/{request:.*}", self.ocsp_get),
        ]

    async def crl(self, request: web.Request) -> web.Response:
        pem = _wants_pem(request)
        short_id = request.match_info.get("issuer")
        publisher = self._crls.publisher(short_id)
        if publisher is None:
            raise NotFound(
                f"no trusted issuing CA {short_id!r}: retired, or never this fleet's",
                reason=Reason.UNKNOWN_ISSUER,
                hint="/crl is the current issuer's CRL; fleet ca status lists the others.",
            )
        signed = await publisher.current()
        headers = self._crl_headers(signed)
        if request.headers.get("If-None-Match") == headers["ETag"]:
            return web.Response(status=304, headers=headers)
        body = signed.pem if pem else signed.der
        headers["Content-Type"] = PEM_TYPE if pem else CRL_DER_TYPE
        return web.Response(body=body, headers=headers)

    def _crl_headers(self, signed: SignedCrl) -> dict[str, str]:
        remaining = (signed.next_update - self._clock.now()).total_seconds()
        max_age = max(0, min(int(remaining / 4), CRL_MAX_AGE_CAP))
        return {
            "Cache-Control": f"public, max-age={max_age}",
            "ETag": f'"{signed.number}"',
            "Last-Modified": _http_date(signed.this_update),
        }

    async def ocsp_post(self, request: web.Request) -> web.Response:
        if request.content_type != OCSP_REQUEST_TYPE:
            raise UnsupportedMediaType(
                f"an OCSP request must be sent as {OCSP_REQUEST_TYPE}",
                hint=f"POST the DER OCSPRequest with Content-Type: {OCSP_REQUEST_TYPE}.",
            )
        body = await read_body(request, MAX_OCSP_REQUEST_BYTES)
        return self._ocsp_response(request, await self._responder.respond(body))

    async def ocsp_get(self, request: web.Request) -> web.Response:
        # The raw path, so %2F and a literal '/' both survive as '/'.
        raw = request.rel_url.raw_path
        encoded = urllib.parse.unquote(raw[raw.index(_OCSP_PREFIX) + len(_OCSP_PREFIX) :])
        der = _b64decode(encoded)
        if der is None:
            request["reason"] = "ocsp_malformed"
            return _ocsp(malformed_response())
        return self._ocsp_response(request, await self._responder.respond(der))

    @staticmethod
    def _ocsp_response(request: web.Request, answer: OcspAnswer) -> web.Response:
        request["reason"] = f"ocsp_{answer.outcome}"
        return _ocsp(answer.der)


def _ocsp(der: bytes) -> web.Response:
    return web.Response(
        body=der, headers={"Content-Type": OCSP_RESPONSE_TYPE, "Cache-Control": "no-cache"}
    )


def _b64decode(text: str) -> bytes | None:
    # Base64 of a MAX_OCSP_REQUEST_BYTES request, with room for padding.
    if not text or len(text) > (MAX_OCSP_REQUEST_BYTES * 4) // 3 + 4:
        return None
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


def _wants_pem(request: web.Request) -> bool:
    form = request.query.get("format")
    if form is not None:
        if form not in ("pem", "der"):
            raise web.HTTPBadRequest(text=f"format must be pem or der, got {form!r}")
        return form == "pem"
    accept = request.headers.get("Accept", "")
    return any(part.split(";", 1)[0].strip().lower() == PEM_TYPE for part in accept.split(","))


def _http_date(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")
