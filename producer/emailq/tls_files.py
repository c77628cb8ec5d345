"""The TLS files of the Redis settings, loaded at start as the first connection would load
them, so that a bad one stops a command with one line naming its setting instead of
failing every connection later."""

from __future__ import annotations

import ssl
from pathlib import Path


def check_tls_files(ca_file: Path | None, cert_file: Path | None, key_file: Path | None) -> None:
    """Raises ValueError, naming the setting, unless the files load as TLS would load them
    at the first connection: a CA bundle in PEM, a certificate with its (unencrypted) key."""
    context = ssl.create_default_context()
    for name, path in (("CA", ca_file), ("CERT", cert_file), ("KEY", key_file)):
        if path is not None and not path.is_file():
            raise ValueError(f"EMAILQ_REDIS_TLS_{name}_FILE: {path}: no such file")
    if key_file is not None and cert_file is None:
        raise ValueError("EMAILQ_REDIS_TLS_KEY_FILE: set without EMAILQ_REDIS_TLS_CERT_FILE")
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (ssl.SSLError, OSError) as error:
            raise ValueError(f"EMAILQ_REDIS_TLS_CA_FILE: {ca_file}: not a PEM CA bundle ({_reason(error)})") from None
    if cert_file is not None:

        def no_passphrase() -> str:
            # The default would prompt on the terminal; a worker has nobody to answer.
            raise ValueError("EMAILQ_REDIS_TLS_KEY_FILE: the key is encrypted; give it without a passphrase")

        try:
            context.load_cert_chain(cert_file, key_file, password=no_passphrase)
        except (ssl.SSLError, OSError) as error:
            where = f"{cert_file} and {key_file}" if key_file else f"{cert_file} (which must hold the key too, or set EMAILQ_REDIS_TLS_KEY_FILE)"
            raise ValueError(f"EMAILQ_REDIS_TLS_CERT_FILE: {where}: not a PEM certificate and its key ({_reason(error)})") from None


def _reason(error: Exception) -> str:
    return getattr(error, "reason", None) or getattr(error, "strerror", None) or type(error).__name__
