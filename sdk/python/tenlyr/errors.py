"""The error classes of the docs' error table, as in @tenlyr/sdk."""

from typing import Any, Optional


class TenlyrError(Exception):
    """Base class: every error the client raises. ``status_code`` and
    ``body`` (the parsed error body) when the server answered."""

    def __init__(self, message: str, status_code: Optional[int] = None, body: Any = None):
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.body = body


class AuthenticationError(TenlyrError):
    """401: the key is missing, malformed or revoked."""


class PermissionError(TenlyrError):  # noqa: A001 - the documented name
    """403: a valid key without the scope."""


class NotFoundError(TenlyrError):
    """404: no such tenant, migration, alert or resource."""


class ConflictError(TenlyrError):
    """409: a duplicate, most often ``owner_email``."""


class InvalidRequestError(TenlyrError):
    """400 / 422: validation failed; ``body["details"]`` names the fields."""


#: The docs' name for :class:`InvalidRequestError` (the same class).
ValidationError = InvalidRequestError


class RateLimitError(TenlyrError):
    """429: rate limited; ``retry_after`` in seconds. Retried automatically."""

    def __init__(self, message: str, status_code: int, body: Any, retry_after: Optional[float]):
        super().__init__(message, status_code, body)
        self.retry_after = retry_after


class TenlyrTimeoutError(TenlyrError):
    """The request took longer than ``timeout``; never retried."""


class TenlyrNetworkError(TenlyrError):
    """No response (refused, reset, DNS); retried."""


class TenlyrNotImplementedError(TenlyrError):
    """501: not implemented by this server yet."""
