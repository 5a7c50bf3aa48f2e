"""Verifying the webhooks Tenlyr sends, both schemes on every request:

- ``Tenlyr-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]``: HMAC-SHA256 keyed
  with the whole ``whsec_...`` secret string over ``"<t>.<raw body>"`` (one
  ``v1`` per secret during a rotation: any may match);
- Standard Webhooks: ``webhook-id``, ``webhook-timestamp``,
  ``webhook-signature: v1,<base64> ...``, HMAC-SHA256 keyed with the base64
  bytes after ``whsec_`` over ``"<id>.<timestamp>.<raw body>"``.

Pass the raw body exactly as received (bytes or str).
"""

import base64
import binascii
import hashlib
import hmac
import time
from typing import Mapping, Optional, Union

Body = Union[bytes, str]


def _bytes(payload: Body) -> bytes:
    return payload.encode() if isinstance(payload, str) else payload


def _fresh(timestamp: str, tolerance: int, now: Optional[float]) -> bool:
    try:
        at = int(timestamp)
    except (TypeError, ValueError):
        return False
    return abs((time.time() if now is None else now) - at) <= tolerance


def verify_signature(payload: Body, header: str, secret: str, *, tolerance: int = 300,
                     now: Optional[float] = None) -> bool:
    """Verifies a ``Tenlyr-Signature`` header."""
    t = None
    signatures = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            t = value
        elif key == "v1" and value:
            signatures.append(value)
    if t is None or not _fresh(t, tolerance, now):
        return False
    expected = hmac.new(secret.encode(), t.encode() + b"." + _bytes(payload), hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(s, expected) for s in signatures)


def verify_standard_webhook(payload: Body, headers: Mapping[str, str], secret: str, *, tolerance: int = 300,
                            now: Optional[float] = None) -> bool:
    """Verifies the Standard Webhooks headers (names in lower case)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id")
    timestamp = lowered.get("webhook-timestamp")
    signature = lowered.get("webhook-signature")
    if not msg_id or not timestamp or not signature or not _fresh(timestamp, tolerance, now):
        return False
    try:
        key = base64.b64decode(secret[len("whsec_"):] if secret.startswith("whsec_") else secret, validate=True)
    except (binascii.Error, ValueError):
        return False
    signed = f"{msg_id}.{timestamp}.".encode() + _bytes(payload)
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for entry in signature.split(" "):
        version, _, sig = entry.partition(",")
        if version == "v1" and hmac.compare_digest(sig, expected):
            return True
    return False
