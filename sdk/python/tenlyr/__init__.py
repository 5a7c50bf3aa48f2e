"""Async Python client for the Tenlyr REST API, mirroring @tenlyr/sdk with
snake_case names: ``tenlyr.Tenlyr(api_key=..., base_url=..., timeout=10.0)``.
"""

from ._client import VERSION, Model, Tenlyr
from .webhooks import verify_signature, verify_standard_webhook
from .errors import (
    AuthenticationError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PermissionError,
    RateLimitError,
    TenlyrError,
    TenlyrNetworkError,
    TenlyrNotImplementedError,
    TenlyrTimeoutError,
    ValidationError,
)

__all__ = [
    "VERSION",
    "Model",
    "Tenlyr",
    "TenlyrError",
    "AuthenticationError",
    "PermissionError",
    "NotFoundError",
    "ConflictError",
    "InvalidRequestError",
    "ValidationError",
    "RateLimitError",
    "TenlyrTimeoutError",
    "TenlyrNetworkError",
    "TenlyrNotImplementedError",
    "verify_signature",
    "verify_standard_webhook",
]
