"""curl + openssl as a third-party EST client (../shared/notes/est-clients.md)."""

from __future__ import annotations

import base64
import dataclasses
import subprocess
from pathlib import Path

from tests.support.binaries import need_binary
from tests.support.openssl import openssl


@dataclasses.dataclass
class HttpResult:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    raw_headers: str

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


def curl(
    url: str,
    *,
    cacert: Path,
    cert: Path | None = None,
    key: Path | None = None,
    data_file: Path | None = None,
    data: bytes | None = None,
    content_type: str | None = None,
    user: str | None = None,
    headers: dict[str, str] | None = None,
    method: str | None = None,
    extra: tuple[str, ...] = (),
) -> HttpResult:
    """One request with the real curl; never raises on HTTP errors."""
    exe = need_binary("curl")
    args = [exe, "-sS", "-i", "--http1.1", "--cacert", str(cacert), "--max-time", "30"]
    if cert is not None:
        args += ["--cert", str(cert)]
    if key is not None:
        args += ["--key", str(key)]
    if content_type is not None:
        args += ["-H", f"Content-Type: {content_type}"]
    for name, value in (headers or {}).items():
        args += ["-H", f"{name}: {value}"]
    if user is not None:
        # -K - reads the credentials from stdin: never on the command line.
        args += ["-K", "-"]
    if data_file is not None:
        args += ["--data-binary", f"@{data_file}"]
    elif data is not None:
        args += ["--data-binary", "@-"]
    if method is not None:
        args += ["-X", method]
    args += [*extra, url]
    stdin = None
    if user is not None:
        stdin = f'user = "{user}"\n'.encode()
        if data is not None:
            raise ValueError("user and data both need stdin; use data_file")
    elif data is not None:
        stdin = data
    proc = subprocess.run(args, input=stdin, capture_output=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"curl failed ({proc.returncode}): {proc.stderr.decode()}")
    return _parse(proc.stdout)


def _parse(output: bytes) -> HttpResult:
    head, _, body = output.partition(b"\r\n\r\n")
    # Skip interim 100 Continue responses.
    while head.startswith(b"HTTP/1.1 100"):
        head, _, body = body.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return HttpResult(status, headers, body, lines[0])


def make_csr(
    directory: Path, name: str, *, subject: str = "/", key_spec: str = "ec"
) -> tuple[Path, Path]:
    """A new device key and a base64 DER CSR for it, made by openssl. Returns (key, csr.b64)."""
    key = directory / f"{name}.key"
    der = directory / f"{name}.csr.der"
    args: list[str | Path] = [
        "req",
        "-new",
        "-nodes",
        "-keyout",
        key,
        "-subj",
        subject,
        "-outform",
        "DER",
        "-out",
        der,
    ]
    if key_spec == "ec":
        args += ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    else:
        args += ["-newkey", key_spec]
    openssl(*args)
    b64 = directory / f"{name}.csr.b64"
    encoded = base64.encodebytes(der.read_bytes())  # 76-column lines, like many clients
    b64.write_bytes(encoded)
    return key, b64


def certs_from_response(body: bytes, directory: Path, name: str) -> Path:
    """Decode a base64 certs-only PKCS#7 with openssl; returns the PEM file of its certs."""
    der = directory / f"{name}.p7.der"
    der.write_bytes(base64.b64decode(b"".join(body.split())))
    pem = directory / f"{name}.pem"
    result = openssl("pkcs7", "-inform", "DER", "-in", der, "-print_certs")
    pem.write_bytes(result.stdout)
    return pem
