"""Console form bodies: the one reader, strict, for the only encoding the console's forms use.

Every console form is ``application/x-www-form-urlencoded`` in UTF-8 (the
browser default). aiohttp's general form parser also takes multipart bodies
and any declared charset, and raised from deep inside on a multipart body
without boundary, a truncated one, or a charset Python does not know: a 500
with a traceback, before the CSRF check ran. Anything else is refused here
with a 4xx before it is parsed.
"""

from __future__ import annotations

import urllib.parse

from aiohttp import web

from fleet.http.body import read_body
from fleet.kernel.errors import EncodingInvalid, RequestInvalid, UnsupportedMediaType

FORM = "application/x-www-form-urlencoded"
MAX_FORM_BYTES = 16 * 1024  # the bulk revocation form is the largest, well under 1 KiB
MAX_FORM_FIELDS = 64


async def read_form(request: web.Request) -> dict[str, str]:
    """The fields of a posted console form (the first value of each name)."""
    charset = request.charset
    if request.content_type != FORM or (charset is not None and charset.lower() != "utf-8"):
        sent = request.headers.get("Content-Type", "none")[:60]
        raise UnsupportedMediaType(
            f"expected Content-Type {FORM} in UTF-8, got {sent!r}",
            hint="Submit the form from the console page.",
        )
    return parse_form(await read_body(request, MAX_FORM_BYTES))


def parse_form(raw: bytes) -> dict[str, str]:
    try:
        pairs = urllib.parse.parse_qsl(
            raw.decode("ascii"), keep_blank_values=True, encoding="utf-8", errors="strict",
            max_num_fields=MAX_FORM_FIELDS,
        )  # fmt: skip
    except UnicodeDecodeError:
        raise EncodingInvalid("the form is not URL-encoded UTF-8") from None
    except ValueError:
        raise RequestInvalid(f"a form has at most {MAX_FORM_FIELDS} fields") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        form.setdefault(name, value)
    return form
