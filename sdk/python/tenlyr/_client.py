"""The client: one httpx.AsyncClient, retries with exponential back-off on
5xx (not 501), 429 (after its Retry-After) and network failures, timeouts
never retried, one Idempotency-Key across the retries of a POST/PATCH.

Responses are the server's JSON (the protos' shapes, as the OpenAPI
document describes them) wrapped in :class:`Model`, which reads fields by
their snake_case names (``result.api_key``, ``tenant.owner_email``): no
type is written here a second time.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from typing import Any, Dict, List, Optional

import httpx

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
)

VERSION = "0.1.0"


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _wrap(value: Any) -> Any:
    if isinstance(value, dict):
        return Model(value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


class Model:
    """A JSON object read by snake_case attribute (``model.owner_email``) or
    by its JSON key (``model["ownerEmail"]``); ``to_dict()`` gives the JSON."""

    __slots__ = ("_data",)

    def __init__(self, data: Dict[str, Any]):
        object.__setattr__(self, "_data", data)

    def __getattr__(self, name: str) -> Any:
        data = object.__getattribute__(self, "_data")
        for key in (_camel(name), name):
            if key in data:
                return _wrap(data[key])
        raise AttributeError(name)

    def __getitem__(self, key: str) -> Any:
        return _wrap(self._data[key])

    def __contains__(self, key: str) -> bool:
        return key in self._data or _camel(key) in self._data

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Model) and other._data == self._data

    def __repr__(self) -> str:
        fields = ", ".join(f"{_snake(k)}={v!r}" for k, v in self._data.items())
        return f"Model({fields})"

    def to_dict(self) -> Dict[str, Any]:
        return self._data


def _camel_body(fields: Dict[str, Any]) -> Dict[str, Any]:
    return {_camel(k): v for k, v in fields.items() if v is not None}


def _error(status: int, body: Any, headers: httpx.Headers) -> TenlyrError:
    message = None
    if isinstance(body, dict):
        message = body.get("message") or body.get("error")
    message = message or f"HTTP {status}"
    if status in (400, 422):
        return InvalidRequestError(message, status, body)
    if status == 401:
        return AuthenticationError(message, status, body)
    if status == 403:
        return PermissionError(message, status, body)
    if status == 404:
        return NotFoundError(message, status, body)
    if status == 409:
        return ConflictError(message, status, body)
    if status == 429:
        raw = headers.get("retry-after")
        try:
            retry_after = float(raw) if raw is not None else None
        except ValueError:
            retry_after = None
        return RateLimitError(message, status, body, retry_after)
    if status == 501:
        return TenlyrNotImplementedError(message, status, body)
    return TenlyrError(message, status, body)


def _retryable(status: int) -> bool:
    return status == 429 or (status >= 500 and status != 501)


class _Transport:
    def __init__(
        self,
        api_key: str,
        base_url: Optional[str],
        timeout: float,
        retries: int,
        retry_delay: float,
        transport: Optional[httpx.AsyncBaseTransport],
    ):
        if not api_key:
            raise TenlyrError("api_key is required")
        self.api_key = api_key
        self.base_url = (base_url or os.environ.get("TENLYR_BASE_URL") or "https://api.tenlyr.app").rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.retry_delay = retry_delay
        self.http = httpx.AsyncClient(timeout=timeout, transport=transport)

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Optional[Dict[str, Any]] = None,
        body: Any = None,
        key: Optional[str] = None,
    ) -> Any:
        headers = {
            "authorization": f"Bearer {key or self.api_key}",
            "user-agent": f"tenlyr-sdk/{VERSION}",
            "accept": "application/json",
        }
        if method in ("POST", "PATCH"):
            headers["idempotency-key"] = str(uuid.uuid4())
        params = {k: v for k, v in (query or {}).items() if v is not None}
        attempt = 0
        while True:
            wait = self.retry_delay * 2**attempt
            try:
                response = await self.http.request(
                    method, self.base_url + path, params=params, json=body, headers=headers
                )
            except httpx.TimeoutException as err:
                raise TenlyrTimeoutError(f"request timed out after {self.timeout} s") from err
            except httpx.TransportError as err:
                failure: TenlyrError = TenlyrNetworkError(f"network error: {err}")
            else:
                try:
                    parsed = response.json() if response.content else None
                except ValueError:
                    parsed = response.text
                if response.is_success:
                    return parsed
                failure = _error(response.status_code, parsed, response.headers)
                if not _retryable(response.status_code):
                    raise failure
                if isinstance(failure, RateLimitError) and failure.retry_after is not None:
                    wait = max(wait, failure.retry_after)
            if attempt >= self.retries:
                raise failure
            attempt += 1
            await asyncio.sleep(wait)


class _Resource:
    def __init__(self, transport: _Transport):
        self._t = transport


class Tenants(_Resource):
    async def create(self, *, name: str, owner_email: str, plan: Optional[str] = None,
                     region: Optional[str] = None, time_zone: Optional[str] = None) -> Model:
        body = _camel_body({"name": name, "owner_email": owner_email, "plan": plan,
                            "region": region, "time_zone": time_zone})
        return _wrap(await self._t.request("POST", "/api/v1/tenants", body=body))

    async def list(self, *, limit: Optional[int] = None, cursor: Optional[str] = None) -> Model:
        return _wrap(await self._t.request("GET", "/api/v1/tenants", query={"limit": limit, "cursor": cursor}))

    async def get(self, tenant_id: str) -> Model:
        return _wrap(await self._t.request("GET", f"/api/v1/tenants/{tenant_id}"))

    async def health(self, *, limit: Optional[int] = None, cursor: Optional[str] = None) -> List[Model]:
        """All tenants' dashboard rows, every page merged, as the docs say;
        with ``limit`` or ``cursor``, just that page's rows."""
        path = "/api/v1/tenants/dashboard"
        if limit is not None or cursor is not None:
            page = await self._t.request("GET", path, query={"limit": limit, "cursor": cursor})
            return _wrap(page["data"])
        rows: List[Any] = []
        while True:
            page = await self._t.request("GET", path, query={"limit": 100, "cursor": cursor})
            rows.extend(page["data"])
            cursor = page.get("nextCursor")
            if not cursor:
                return _wrap(rows)

    async def update(self, tenant_id: str, *, name: Optional[str] = None, region: Optional[str] = None,
                     time_zone: Optional[str] = None) -> Model:
        body = _camel_body({"name": name, "region": region, "time_zone": time_zone})
        return _wrap(await self._t.request("PATCH", f"/api/v1/tenants/{tenant_id}", body=body))

    async def suspend(self, tenant_id: str, reason: Optional[str] = None) -> Model:
        body = _camel_body({"reason": reason})
        return _wrap(await self._t.request("POST", f"/api/v1/tenants/{tenant_id}/suspend", body=body))

    async def reactivate(self, tenant_id: str) -> Model:
        return _wrap(await self._t.request("POST", f"/api/v1/tenants/{tenant_id}/reactivate", body={}))

    async def terminate(self, tenant_id: str) -> Model:
        return _wrap(await self._t.request("POST", f"/api/v1/tenants/{tenant_id}/terminate", body={}))

    async def rotate_api_key(self, tenant_id: str) -> Model:
        return _wrap(await self._t.request("POST", f"/api/v1/tenants/{tenant_id}/rotate-key", body={}))

    async def change_plan(self, tenant_id: str, plan: str) -> Model:
        return _wrap(await self._t.request("PATCH", f"/api/v1/tenants/{tenant_id}/plan", body={"plan": plan}))

    async def limits(self, tenant_id: str) -> Model:
        """The tenant's own limits and those in force."""
        return _wrap(await self._t.request("GET", f"/api/v1/tenants/{tenant_id}/limits"))

    async def set_limits(self, tenant_id: str, *, api_calls: Optional[int] = None,
                         storage_gb: Optional[int] = None, seats: Optional[int] = None) -> Model:
        """Sets the tenant's own limits (enterprise's custom ones); one left out is cleared."""
        body = _camel_body({"api_calls": api_calls, "storage_gb": storage_gb, "seats": seats})
        return _wrap(await self._t.request("PUT", f"/api/v1/tenants/{tenant_id}/limits", body=body))

    async def delete(self, tenant_id: str) -> None:
        await self._t.request("DELETE", f"/api/v1/tenants/{tenant_id}")


class Usage(_Resource):
    async def track(self, *, tenant_key: str, metric: str, value: float, endpoint: Optional[str] = None,
                    idempotency_key: Optional[str] = None, status_code: Optional[int] = None) -> Model:
        body = _camel_body({"metric": metric, "value": value, "endpoint": endpoint,
                            "idempotency_key": idempotency_key, "status_code": status_code})
        return _wrap(await self._t.request("POST", "/api/v1/usage/track", body=body, key=tenant_key))

    async def metrics(self, tenant_key: str) -> Model:
        return _wrap(await self._t.request("GET", "/api/v1/usage/metrics", key=tenant_key))

    async def summary(self, tenant_key: str, *, start: Optional[str] = None, end: Optional[str] = None) -> Model:
        return _wrap(await self._t.request("GET", "/api/v1/usage/summary", query={"start": start, "end": end},
                                           key=tenant_key))

    async def events(self, tenant_key: str, limit: Optional[int] = None) -> List[Model]:
        return _wrap(await self._t.request("GET", "/api/v1/usage/events", query={"limit": limit}, key=tenant_key))


class Health(_Resource):
    async def overview(self) -> Model:
        return _wrap(await self._t.request("GET", "/api/v1/health/overview"))

    async def list(self) -> List[Model]:
        return _wrap(await self._t.request("GET", "/api/v1/health"))

    async def get(self, tenant_id: str) -> Model:
        return _wrap(await self._t.request("GET", f"/api/v1/health/{tenant_id}"))

    async def throttle(self, tenant_id: str, limit_rpm: int) -> Model:
        return _wrap(await self._t.request("POST", f"/api/v1/health/{tenant_id}/throttle",
                                           body={"limitRpm": limit_rpm}))

    async def remove_throttle(self, tenant_id: str) -> Model:
        return _wrap(await self._t.request("DELETE", f"/api/v1/health/{tenant_id}/throttle"))


class Isolation(_Resource):
    async def migrate(self, tenant_id: str, *, target_level: str) -> Model:
        return _wrap(await self._t.request("POST", "/api/v1/isolation/migrate",
                                           body={"tenantId": tenant_id, "targetLevel": target_level}))

    async def get_migration(self, migration_id: str) -> Model:
        return _wrap(await self._t.request("GET", f"/api/v1/isolation/migrations/{migration_id}"))

    async def migrations(self, tenant_key: Optional[str] = None, *, tenant_id: Optional[str] = None) -> List[Model]:
        return _wrap(await self._t.request("GET", "/api/v1/isolation/migrations",
                                           query={"tenantId": tenant_id}, key=tenant_key))

    async def wait_for_migration(self, migration_id: str, *, poll_interval: float = 1.0,
                                 timeout: float = 300.0) -> Model:
        """Polls until ``completed`` (returned) or ``failed`` (raised); raises
        TenlyrTimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            migration = await self.get_migration(migration_id)
            if migration.status == "completed":
                return migration
            if migration.status == "failed":
                raise TenlyrError(f"migration {migration_id} failed: {migration.error or 'unknown error'}",
                                  None, migration.to_dict())
            if time.monotonic() + poll_interval > deadline:
                raise TenlyrTimeoutError(
                    f"migration {migration_id} still {migration.status} after {timeout} s", None, migration.to_dict())
            await asyncio.sleep(poll_interval)


class Billing(_Resource):
    async def get(self, tenant_key: str) -> Model:
        return _wrap(await self._t.request("GET", "/api/v1/billing", key=tenant_key))

    async def portal_url(self, tenant_key: str, *, return_url: Optional[str] = None) -> Model:
        return _wrap(await self._t.request("POST", "/api/v1/billing/portal",
                                           body=_camel_body({"return_url": return_url}), key=tenant_key))


class Alerts(_Resource):
    """As documented, ``key`` is a tenant's key (that tenant's alerts); an
    admin may pass ``tenant_id=`` instead, or nothing for all."""

    async def list(self, key: Optional[str] = None, *, tenant_id: Optional[str] = None) -> List[Model]:
        return _wrap(await self._t.request("GET", "/api/v1/alerts", query={"tenantId": tenant_id}, key=key))

    async def unresolved(self, key: Optional[str] = None, *, tenant_id: Optional[str] = None) -> List[Model]:
        return _wrap(await self._t.request("GET", "/api/v1/alerts/unresolved", query={"tenantId": tenant_id},
                                           key=key))

    async def create(self, *, type: str, severity: str, message: str,  # noqa: A002 - the API's field
                     tenant_id: Optional[str] = None) -> Model:
        body = _camel_body({"tenant_id": tenant_id, "type": type, "severity": severity, "message": message})
        return _wrap(await self._t.request("POST", "/api/v1/alerts", body=body))

    async def resolve(self, alert_id: str) -> Model:
        return _wrap(await self._t.request("POST", f"/api/v1/alerts/{alert_id}/resolve", body={}))

    async def resolve_all(self, key: Optional[str] = None, *, tenant_id: Optional[str] = None) -> Model:
        return _wrap(await self._t.request("POST", "/api/v1/alerts/resolve-all",
                                           body=_camel_body({"tenant_id": tenant_id}), key=key))


class Tenlyr:
    """``Tenlyr(api_key=..., base_url=None, timeout=10.0, retries=3,
    retry_delay=0.2, transport=None)``; ``transport`` is an httpx transport
    (tests, proxies). Use as ``async with`` or call ``aclose()``."""

    def __init__(self, api_key: str, base_url: Optional[str] = None, timeout: float = 10.0, retries: int = 3,
                 retry_delay: float = 0.2, transport: Optional[httpx.AsyncBaseTransport] = None):
        self._transport = _Transport(api_key, base_url, timeout, retries, retry_delay, transport)
        self.tenants = Tenants(self._transport)
        self.usage = Usage(self._transport)
        self.health = Health(self._transport)
        self.isolation = Isolation(self._transport)
        self.billing = Billing(self._transport)
        self.alerts = Alerts(self._transport)

    async def aclose(self) -> None:
        await self._transport.http.aclose()

    async def __aenter__(self) -> "Tenlyr":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
