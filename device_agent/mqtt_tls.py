"""The device's TLS identity towards the broker, and the client context that presents it.

The context is built once and handed to the MQTT client, which wraps every new
socket with it; loading a renewed certificate into it between disconnect and
reconnect makes the next handshake present that one. OpenSSL checks the
broker's chain in the handshake; the broker certificate's dates are judged
afterwards by the kernel, on the device's clock (``broker_dates_problem``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ssl
from pathlib import Path

import paho.mqtt.client as paho
from cryptography import x509

from device_agent.keystore import KeyHandle
from device_agent.trust import CLOCK_SKEW
from fleet.kernel.certs import Problem, server_certificate_problem
from fleet.kernel.tls_policy import X509_V_FLAG_NO_CHECK_TIME


@dataclasses.dataclass(frozen=True)
class TlsIdentity:
    """The operational certificate (PEM, leaf first, chain may follow) and its key.

    The key is a key-store handle, so a hardware key loads itself into the
    TLS context without the session ever reading it.
    """

    cert: Path
    key: KeyHandle


def tls_context(identity: TlsIdentity, trust: bytes) -> ssl.SSLContext:
    """A client context presenting ``identity`` and verifying the broker against ``trust``.

    The chain is verified in the handshake; the broker certificate's dates are not (they
    are the kernel's, by the device's clock): call ``broker_dates_problem`` once connected,
    as ``MqttSession`` does before anything is published.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the peer and its hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cadata=trust.decode("ascii"))
    # The session judges the dates, with its clock.
    context.verify_flags |= X509_V_FLAG_NO_CHECK_TIME
    identity.key.load_into(context, identity.cert)
    return context


def broker_dates_problem(client: paho.Client, now: dt.datetime) -> Problem | None:
    """The broker's certificate on ``client``'s TLS socket, judged for time by the kernel."""
    sock = client.socket()
    der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
    return server_certificate_problem(der, now, CLOCK_SKEW)


def certificate_serial(cert: Path) -> str:
    """The serial of the first certificate in ``cert``, as lower-case hex."""
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    return f"{leaf.serial_number:x}"
