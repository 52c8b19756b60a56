"""The webhook HMAC key: from ``[webhooks] secret_file`` or ``FLEET_WEBHOOK_SECRET``.

Never from the command line or fleet.toml itself, and never logged. The file
must not be readable by group or others (like the CA key passphrase file).
"""

from __future__ import annotations

from collections.abc import Mapping

from fleet.config import WebhookConfig
from fleet.kernel.errors import ConfigError

SECRET_ENV = "FLEET_WEBHOOK_SECRET"  # noqa: S105 - the variable's name, not a secret
MIN_SECRET_BYTES = 16
_HINT = (
    "Create one with `openssl rand -hex 32 > DIR/webhook.secret && chmod 600 "
    'DIR/webhook.secret`, set [webhooks] secret_file = "webhook.secret" in fleet.toml '
    f"(or export {SECRET_ENV}), and share it with every receiver."
)


def webhook_secret(config: WebhookConfig, environ: Mapping[str, str]) -> bytes:
    """The HMAC key; ConfigError if webhooks are configured without a usable one."""
    if config.secret_file is not None:
        path = config.secret_file
        try:
            mode = path.stat().st_mode
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot read webhook secret file {path}: {exc.strerror}", hint=_HINT
            ) from exc
        if mode & 0o077:
            raise ConfigError(
                f"webhook secret file {path} is readable by other users", hint=f"chmod 600 {path}"
            )
        secret, where = data.strip(), f"webhook secret file {path}"
    else:
        secret, where = environ.get(SECRET_ENV, "").strip().encode(), SECRET_ENV
        if not secret:
            raise ConfigError(
                f"[webhooks] urls are set but there is no webhook secret to sign with "
                f"([webhooks] secret_file or {SECRET_ENV})",
                hint=_HINT,
            )
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"{where} holds a secret shorter than {MIN_SECRET_BYTES} bytes", hint=_HINT
        )
    return secret
