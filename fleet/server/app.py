"""Wiring: build the aiohttp application from the config, and serve it.

This is one of the few places that pick concrete implementations (the store
backend via the factory, the system clock, the CA key from disk).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import secrets
import signal
from pathlib import Path

from aiohttp import web
from cryptography import x509

from fleet.admin.auth import AdminAuthenticator
from fleet.admin.routes import AdminApi
from fleet.authorities import PublishedCas, load_fleet_authorities
from fleet.authority.credentials import Credentials
from fleet.authority.enrollment import Authority
from fleet.authority.issuer_crls import IssuerCrls
from fleet.authority.issuers import LiveIssuers
from fleet.authority.ocsp import OcspResponder, ServerCertificates
from fleet.authority.refusals import RefusalAudit
from fleet.config import FleetConfig
from fleet.est.routes import EstService
from fleet.http.body import BODY_TIMEOUT
from fleet.http.peer import PeerCertificates
from fleet.kernel.certs import issued_by
from fleet.kernel.clock import Clock, SimulatedClock, SystemClock
from fleet.kernel.errors import ConfigError, FleetError
from fleet.notify.webhooks import attach_notifier
from fleet.pki.ca import CertifiedKey, load_certificates_pem
from fleet.pki.keys import load_private_key_pem
from fleet.pki.keystore import CaKeySecrets, KeyRole, key_uri, load_ca_key
from fleet.policy.enrollment import BootstrapReuse, EnrollmentPolicy, UnknownDevices
from fleet.policy.renewal import RenewalOverlap
from fleet.revocation.routes import RevocationService
from fleet.server.answers import name_the_server
from fleet.server.issuer_watch import IssuerWatch, load_issuing_set
from fleet.server.metrics import Metrics
from fleet.server.middleware import build_middlewares
from fleet.server.protocol import FleetRequestHandler
from fleet.server.tls import AckAfterHandshake, server_context
from fleet.store.factory import open_store
from fleet.store.protocol import Store
from fleet.ui.core import Console, ca_status
from fleet.ui.routes import console_routes
from fleet.ui.session import SessionSigner

log = logging.getLogger("fleet.server")

# RFC 7030 requests are a CSR of a few hundred bytes; nothing legitimate is
# near this, and everything larger is refused before it is buffered.
MAX_BODY_BYTES = 64 * 1024
# How soon the server's own revocation-feed follower learns of another process's
# revocation on SQLite (as PostgreSQL's catch-up read): it only pre-signs CRLs.
SERVER_FEED_POLL_SECONDS = 1.0


def load_issuer(
    config: FleetConfig, passphrase: bytes | None, *, pkcs11_pin: bytes | None = None
) -> CertifiedKey:
    """The issuing CA with its key (a file or a PKCS#11 token), checked to belong together."""
    certificate = load_certificates_pem(_read(config.ca.issuing_cert))[0]
    secrets = CaKeySecrets(passphrase=passphrase, pkcs11_pin=pkcs11_pin)
    return load_ca_key(config, KeyRole.ISSUING, certificate, secrets)


def load_token_root(config: FleetConfig, pkcs11_pin: bytes | None) -> CertifiedKey | None:
    """The root with its key when [ca] root_key_store puts it in a token; None otherwise."""
    if key_uri(config, KeyRole.ROOT) is None:
        return None
    certificate = load_certificates_pem(_read(config.ca.root_cert))[0]
    return load_ca_key(config, KeyRole.ROOT, certificate, CaKeySecrets(pkcs11_pin=pkcs11_pin))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc


def build_app(
    config: FleetConfig,
    *,
    store: Store,
    issuer: CertifiedKey | LiveIssuers,
    clock: Clock,
    webhook_secret: bytes | None = None,
    console_key: bytes | None = None,
    metrics: Metrics | None = None,
    token_root: CertifiedKey | None = None,
) -> web.Application:
    """``issuer``: the issuing CA, or the live set a rotation swaps (``serve`` passes that);
    ``token_root``: the root and its token key, for /ocsp (see below)."""
    roots = tuple(load_certificates_pem(_read(config.ca.root_cert)))
    root = roots[0]  # the signing root
    issuers = issuer if isinstance(issuer, LiveIssuers) else LiveIssuers.of(issuer)
    metrics = metrics or Metrics()
    policy = EnrollmentPolicy(
        unknown_devices=UnknownDevices(config.policy.unknown_devices),
        bootstrap_reuse=BootstrapReuse(config.policy.bootstrap_reuse),
    )
    refusals = RefusalAudit(store)  # one budget for EST and console refusals
    authority = Authority(
        store=store,
        issuer=issuers,
        policy=policy,
        clock=clock,
        retry_after=config.policy.retry_after_seconds,
        renewal_overlap=RenewalOverlap(config.policy.renewal_overlap),
        refusals=refusals,
    )
    credentials = Credentials(
        store=store,
        fleet_issuing_ca=issuers,
        clock=clock,
        device_id_source=config.policy.device_id_source,
        max_chain_depth=config.policy.max_chain_depth,
    )
    peers = PeerCertificates(
        proxy_mode=config.server.mode == "proxy",
        trusted_proxies=config.server.trusted_proxies,
        header=config.server.client_cert_header,
    )
    est = EstService(
        config=config,
        authority=authority,
        credentials=credentials,
        peers=peers,
        issuers=issuers,
        roots_and_links=PublishedCas(config).chain,
    )
    app = web.Application(
        middlewares=build_middlewares(metrics, max_in_flight=config.server.max_in_flight),
        client_max_size=MAX_BODY_BYTES,
    )
    app[BODY_TIMEOUT] = float(config.server.body_timeout_seconds)
    app.on_response_prepare.append(name_the_server)
    app.add_routes(est.routes())
    servers = _server_certificates(config, token_root)
    _add_revocation(app, config, store=store, issuers=issuers, clock=clock, servers=servers)
    admin_ca = _optional_cert(config.admin.ca_cert)
    admin_auth = AdminAuthenticator(store=store, peers=peers, admin_ca=admin_ca, clock=clock)
    admin_api = AdminApi(
        store=store,
        auth=admin_auth,
        clock=clock,
        bulk_threshold=config.admin.bulk_confirm_threshold,
        fleet=load_fleet_authorities(config),
    )
    app.add_routes(admin_api.routes())

    def follow_rotation(_: object) -> None:
        # A next issuing CA is a fleet CA from the moment it is trusted: never a manufacturer.
        with contextlib.suppress(FleetError):
            admin_api.fleet = load_fleet_authorities(config)

    issuers.subscribe(follow_rotation)
    if config.ui.enabled:
        if console_key is None:
            log.warning("no console session key given: sessions last until this process ends")
            console_key = secrets.token_bytes(32)
        cas = [("root", root), ("issuing", issuers.now.current.certificate)]
        cas += [("admin", admin_ca)] if admin_ca is not None else []
        console = Console(
            store=store,
            auth=admin_auth,
            clock=clock,
            signer=SessionSigner(
                console_key, lifetime=dt.timedelta(minutes=config.ui.session_minutes)
            ),
            cas=[ca_status(name, cert) for name, cert in cas],
            bulk_threshold=config.admin.bulk_confirm_threshold,
            refusals=refusals,
        )
        app.add_routes(console_routes(console))

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        await store.feed_head()  # StoreUnavailable → 503
        return web.Response(text="ready\n")

    async def metrics_endpoint(_: web.Request) -> web.Response:
        body, content_type = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": content_type})

    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/metrics", metrics_endpoint),
        ]
    )
    if config.webhooks.urls:
        if webhook_secret is None:
            raise ConfigError(
                "[webhooks] urls are set but no webhook secret was given to sign with",
                hint="Set [webhooks] secret_file or FLEET_WEBHOOK_SECRET.",
            )
        attach_notifier(app, config, store=store, secret=webhook_secret)
    return app


def _optional_cert(path: Path) -> x509.Certificate | None:
    """The admin CA, if this data directory has one (older ones may not)."""
    if not path.exists():
        log.warning("no admin CA at %s: admin client certificates are disabled", path)
        return None
    return load_certificates_pem(_read(path))[0]


def _add_revocation(
    app: web.Application,
    config: FleetConfig,
    *,
    store: Store,
    issuers: LiveIssuers,
    clock: Clock,
    servers: ServerCertificates | None,
) -> None:
    """GET /crl, /crl/<issuer_id>, /ocsp; CRLs are re-signed in the background."""
    publisher = IssuerCrls(
        store,
        issuers,
        clock,
        next_update=dt.timedelta(hours=config.revocation.crl_next_update_hours),
        refresh=dt.timedelta(minutes=config.revocation.crl_refresh_minutes),
    )
    responder = OcspResponder(
        store,
        issuers,
        clock,
        next_update=dt.timedelta(minutes=config.revocation.ocsp_next_update_minutes),
        servers=servers,
    )
    app.add_routes(RevocationService(publisher, responder, clock).routes())
    task_key = web.AppKey("crl_publisher_task", asyncio.Task[None])

    async def start(app: web.Application) -> None:
        app[task_key] = asyncio.create_task(publisher.run(), name="crl-publishers")

    async def stop(app: web.Application) -> None:
        task = app[task_key]
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.on_startup.append(start)
    app.on_cleanup.append(stop)


def _server_certificates(
    config: FleetConfig, token_root: CertifiedKey | None
) -> ServerCertificates | None:
    """The root and the server certificate, for /ocsp, when the root key is online.

    A front end (nginx, Apache) staples fleet's OCSP answer for its own
    certificate, which the fleet root issued. With the root kept offline (its
    key not beside root.pem, or encrypted), /ocsp does not answer for it.
    """
    root_key_path = config.ca.root_cert.with_suffix(".key")
    try:
        if token_root is not None:
            root_cert, root_key = token_root.certificate, token_root.private_key
        else:
            root_cert = load_certificates_pem(config.ca.root_cert.read_bytes())[0]
            root_key = load_private_key_pem(root_key_path.read_bytes(), None)
        server = load_certificates_pem(config.server.tls_cert.read_bytes())[0]
    except (OSError, FleetError, ValueError, TypeError) as exc:
        log.info("/ocsp answers for the issuing CA only (root key not usable: %s)", exc)
        return None
    # By signature, not by name: after a root rollover both roots have the same
    # subject, and the server certificate may still be the old root's.
    if issued_by(server, [root_cert]) is None:
        return ServerCertificates(CertifiedKey(root_cert, root_key), frozenset())
    return ServerCertificates(CertifiedKey(root_cert, root_key), frozenset({server.serial_number}))


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port_text = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"listen address {listen!r} must be HOST:PORT, e.g. 127.0.0.1:8443")
    return host, int(port_text)


async def serve(
    config: FleetConfig,
    *,
    listen: str,
    passphrase: bytes | None,
    pkcs11_pin: bytes | None = None,
    webhook_secret: bytes | None = None,
    reuse_port: bool = False,
    console_key: bytes | None = None,
    clock: Clock | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT (on ``clock``, the system clock by default)."""
    if clock is None:
        clock = SystemClock()
    elif isinstance(clock, SimulatedClock):
        log.warning(
            "SIMULATED CLOCK from %s: now is %s (%+.0f s from the wall clock); "
            "for the simulator only, never in production",
            clock.path, clock.now().isoformat(timespec="seconds"), clock.offset.total_seconds(),
        )  # fmt: skip
    host, port = parse_listen(listen)
    ssl_context = None
    if config.server.mode == "tls":
        ssl_context = server_context(
            config.server.tls_cert, config.server.tls_key, request_client_certificate=True
        )
    elif config.est.require_pop:
        raise ConfigError(
            "[est] require_pop cannot work in proxy mode: the TLS session (tls-unique) "
            "ends at the proxy"
        )
    issuers = LiveIssuers(load_issuing_set(config, passphrase, pkcs11_pin=pkcs11_pin))
    token_root = load_token_root(config, pkcs11_pin)
    # The server's feed follower only signs CRLs ahead of time (each /crl request
    # checks the feed itself): it need not look for other processes' revocations
    # 50 times a second, which cost ~13 ms of CPU per second even when idle.
    store = await open_store(
        config.store_url, redis=config.store_redis, feed_poll_seconds=SERVER_FEED_POLL_SECONDS
    )
    runner: web.AppRunner | None = None
    watch: asyncio.Task[None] | None = None
    try:
        metrics = Metrics()
        app = build_app(
            config, store=store, issuer=issuers, clock=clock,
            webhook_secret=webhook_secret, console_key=console_key, metrics=metrics,
            token_root=token_root,
        )  # fmt: skip
        watcher = IssuerWatch(
            config, issuers, passphrase=passphrase, pkcs11_pin=pkcs11_pin,
            store=store, clock=clock, metrics=metrics,
        )  # fmt: skip
        watch = asyncio.create_task(watcher.run(), name="issuer-watch")
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        assert runner.server is not None
        loop = asyncio.get_running_loop()
        manager = runner.server

        def http() -> FleetRequestHandler:
            return FleetRequestHandler(
                manager,
                loop=loop,
                access_log=None,  # type: ignore[arg-type]  # None turns aiohttp's off
                keepalive_timeout=config.server.header_timeout_seconds,
                # No SO_KEEPALIVE: idle connections end at keepalive_timeout long
                # before TCP's first probe (2 h), and it is a syscall per connection.
                tcp_keepalive=False,
                # Bodies are never inflated: the middleware refuses any Content-Encoding.
                auto_decompress=False,
            )

        server = await loop.create_server(
            (lambda: AckAfterHandshake(http())) if ssl_context else http,
            host,
            port,
            ssl=ssl_context,
            reuse_port=reuse_port,
            backlog=1024,
            ssl_handshake_timeout=config.server.handshake_timeout_seconds if ssl_context else None,
        )
        scheme = "https" if ssl_context else "http"
        log.info("listening on %s://%s:%d (%s mode)", scheme, host, port, config.server.mode)
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("shutting down")
        server.close()
        await server.wait_closed()
    except OSError as exc:
        raise FleetError(
            f"cannot listen on {listen}: {exc.strerror}",
            reason="listen_failed",
            hint="Pick a free port with --listen, or stop what is using it.",
        ) from exc
    finally:
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        if runner is not None:
            await runner.cleanup()
        await store.close()
