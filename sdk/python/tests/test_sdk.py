"""The Python SDK against a real Tenlyr server (scripts/test.sh starts one
and sets TENLYR_SDK_TEST_URL and TENLYR_SDK_TEST_ADMIN_KEY), plus the
failures a server cannot produce on cue (a hang, a refused connection, a
503) through an injected httpx transport."""

import asyncio
import os
import time
import uuid

import httpx
import pytest

import tenlyr
from tenlyr import (
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

BASE_URL = os.environ.get("TENLYR_SDK_TEST_URL")
ADMIN_KEY = os.environ.get("TENLYR_SDK_TEST_ADMIN_KEY")
if not BASE_URL or not ADMIN_KEY:
    raise RuntimeError("set TENLYR_SDK_TEST_URL and TENLYR_SDK_TEST_ADMIN_KEY (scripts/test.sh does)")


def run(coro):
    return asyncio.run(coro)


def email(tag):
    return f"py-{tag}-{uuid.uuid4().hex[:8]}@sdk.test"


def test_tenants_lifecycle():
    async def main():
        async with tenlyr.Tenlyr(api_key=ADMIN_KEY, base_url=BASE_URL) as client:
            result = await client.tenants.create(name="Py Corp", owner_email=email("life"), plan="growth")
            tenant, api_key = result.tenant, result.api_key
            assert api_key.startswith("tenlyr_live_")
            assert tenant.plan == "growth"
            assert (await client.tenants.get(tenant.id)).owner_email == tenant.owner_email
            page = await client.tenants.list(limit=100)
            assert isinstance(page.data, list) and "next_cursor" in page
            assert isinstance(await client.tenants.health(), list)
            assert (await client.tenants.update(tenant.id, name="Py Corp 2")).name == "Py Corp 2"
            assert (await client.tenants.change_plan(tenant.id, "scale")).plan == "scale"
            own = await client.tenants.set_limits(tenant.id, api_calls=5000, seats=7)
            assert (own.own_api_calls, own.api_call_limit, own.seats_limit) == ("5000", "5000", "7")
            assert (await client.tenants.limits(tenant.id)).own_seats == "7"
            assert (await client.tenants.set_limits(tenant.id)).api_call_limit == "1000000"
            assert (await client.tenants.suspend(tenant.id, "unpaid")).status == "suspended"
            assert (await client.tenants.reactivate(tenant.id)).status == "active"
            assert (await client.tenants.rotate_api_key(tenant.id)).api_key != api_key
            assert (await client.tenants.terminate(tenant.id)).status == "terminated"
            assert await client.tenants.delete(tenant.id) is None
            with pytest.raises(NotFoundError):
                await client.tenants.get(tenant.id)

    run(main())


def test_usage_health_alerts_billing():
    async def main():
        async with tenlyr.Tenlyr(api_key=ADMIN_KEY, base_url=BASE_URL) as client:
            result = await client.tenants.create(name="Py Usage", owner_email=email("usage"))
            key, tenant = result.api_key, result.tenant
            event = await client.usage.track(tenant_key=key, metric="api_call", value=2, endpoint="/v1/orders")
            assert event.metric == "api_call" and event.endpoint == "/v1/orders"
            assert (await client.usage.metrics(key)).api_calls == "2"
            assert (await client.usage.summary(key)).tenant_id == tenant.id
            assert len(await client.usage.events(key, 10)) == 1
            assert isinstance((await client.health.overview()).total, int)
            assert isinstance(await client.health.list(), list)
            assert (await client.health.get(tenant.id)).tenant_id == tenant.id
            assert (await client.health.throttle(tenant.id, 120)).rate_limit == 120
            assert (await client.health.remove_throttle(tenant.id)).rate_limit is None
            alert = await client.alerts.create(tenant_id=tenant.id, type="disk_usage", severity="warning",
                                               message="disk almost full")
            assert any(a.id == alert.id for a in await client.alerts.unresolved(tenant_id=tenant.id))
            assert (await client.alerts.resolve(alert.id)).resolved is True
            assert len(await client.alerts.list(tenant_id=tenant.id)) >= 1
            assert isinstance((await client.alerts.resolve_all(tenant_id=tenant.id)).resolved, int)
            # The documented signatures: list(key), unresolved(key), resolve_all(key)
            # with the tenant's own key see and resolve only that tenant's alerts.
            mine = await client.alerts.create(tenant_id=tenant.id, type="error_rate", severity="critical",
                                              message="5xx")
            other = (await client.tenants.create(name="Py Other", owner_email=email("other"))).tenant
            theirs = await client.alerts.create(tenant_id=other.id, type="error_rate", severity="warning",
                                                message="x")
            assert [a.id for a in await client.alerts.unresolved(key)] == [mine.id]
            assert all(a.tenant_id == tenant.id for a in await client.alerts.list(key))
            assert (await client.alerts.resolve_all(key)).resolved == 1
            assert await client.alerts.unresolved(key) == []
            assert any(a.id == theirs.id for a in await client.alerts.unresolved(tenant_id=other.id))
            assert (await client.billing.get(key)).tenant_id == tenant.id

    run(main())


def test_error_classes_from_the_server():
    async def main():
        async with tenlyr.Tenlyr(api_key="tenlyr_live_not_a_real_key", base_url=BASE_URL, retries=0) as bad:
            with pytest.raises(AuthenticationError) as err:
                await bad.tenants.list()
            assert err.value.status_code == 401
        async with tenlyr.Tenlyr(api_key=ADMIN_KEY, base_url=BASE_URL, retries=0) as client:
            result = await client.tenants.create(name="Py Errors", owner_email=email("errors"))
            async with tenlyr.Tenlyr(api_key=result.api_key, base_url=BASE_URL, retries=0) as as_tenant:
                with pytest.raises(PermissionError):
                    await as_tenant.tenants.list()
            with pytest.raises(ConflictError):
                await client.tenants.create(name="Py Errors", owner_email=result.tenant.owner_email)
            with pytest.raises(tenlyr.ValidationError) as err:
                await client.tenants.create(name="x", owner_email="not-an-email")
            assert isinstance(err.value, InvalidRequestError)
            assert isinstance(err.value.body["details"], list)
            await client.health.throttle(result.tenant.id, 1)
            await client.usage.track(tenant_key=result.api_key, metric="api_call", value=1)
            with pytest.raises(RateLimitError) as err:
                await client.usage.track(tenant_key=result.api_key, metric="api_call", value=1)
            assert err.value.retry_after >= 1
        for cls in (AuthenticationError, PermissionError, NotFoundError, ConflictError, InvalidRequestError,
                    TenlyrTimeoutError, TenlyrNetworkError, TenlyrNotImplementedError):
            assert issubclass(cls, TenlyrError)

    run(main())


def test_tenants_health_merges_every_page_as_the_docs_say():
    async def main():
        def row(i):
            return {"id": i, "name": i, "status": "active"}
        transport, seen = scripted([(200, {"data": [row("t1"), row("t2")], "nextCursor": "c2"}, {}),
                                    (200, {"data": [row("t3")], "nextCursor": None}, {})])
        async with tenlyr.Tenlyr(api_key="k", base_url="http://sdk.test", transport=transport) as client:
            assert [t.id for t in await client.tenants.health()] == ["t1", "t2", "t3"]
        assert len(seen) == 2 and seen[1][0].url.params["cursor"] == "c2"
        transport, seen = scripted([(200, {"data": [row("t1")], "nextCursor": "c2"}, {})])
        async with tenlyr.Tenlyr(api_key="k", base_url="http://sdk.test", transport=transport) as client:
            assert [t.id for t in await client.tenants.health(limit=1)] == ["t1"]
        assert len(seen) == 1

    run(main())


def scripted(steps):
    """An httpx transport answering from a script (or failing), recording calls."""
    seen = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request, time.monotonic()))
        step = steps[min(len(seen) - 1, len(steps) - 1)]
        if step == "network":
            raise httpx.ConnectError("connection refused", request=request)
        if step == "hang":
            raise httpx.ReadTimeout("timed out", request=request)
        status, body, headers = step
        return httpx.Response(status, json=body, headers=headers)

    return httpx.MockTransport(handler), seen


def test_retries_back_off_and_keep_one_idempotency_key():
    async def main():
        transport, seen = scripted([(503, {"message": "busy"}, {}), "network", (500, {"message": "oops"}, {}),
                                    (200, {"tenant": {"id": "t1"}, "apiKey": "tenlyr_live_x"}, {})])
        async with tenlyr.Tenlyr(api_key="tenlyr_live_tf_x", base_url="http://sdk.test", retry_delay=0.02,
                                 transport=transport) as client:
            result = await client.tenants.create(name="Retry", owner_email="r@sdk.test")
            assert result.tenant.id == "t1"
        assert len(seen) == 4
        assert len({r.headers["idempotency-key"] for r, _ in seen}) == 1
        assert seen[0][0].headers["user-agent"] == f"tenlyr-sdk/{tenlyr.VERSION}"
        gaps = [b[1] - a[1] for a, b in zip(seen, seen[1:])]
        assert gaps[0] >= 0.018 and gaps[1] >= 0.038 and gaps[2] >= 0.078, gaps

        transport, seen = scripted(["hang"])
        async with tenlyr.Tenlyr(api_key="k", base_url="http://sdk.test", transport=transport) as client:
            with pytest.raises(TenlyrTimeoutError):
                await client.tenants.list()
        assert len(seen) == 1, "a timeout is not retried"

        transport, seen = scripted(["network"])
        async with tenlyr.Tenlyr(api_key="k", base_url="http://sdk.test", retries=1, retry_delay=0.001,
                                 transport=transport) as client:
            with pytest.raises(TenlyrNetworkError):
                await client.tenants.list()
        assert len(seen) == 2, "a network failure is retried"

    run(main())


def test_a_real_move_to_dedicated_schema():
    async def main():
        async with tenlyr.Tenlyr(api_key=ADMIN_KEY, base_url=BASE_URL) as client:
            result = await client.tenants.create(name="Py Isolation", owner_email=email("iso"))
            await client.usage.track(tenant_key=result.api_key, metric="api_call", value=2)
            started = await client.isolation.migrate(result.tenant.id, target_level="dedicated_schema")
            assert started.status == "pending"
            done = await client.isolation.wait_for_migration(started.id, poll_interval=0.1, timeout=30)
            assert done.status == "completed" and done.to_level == "dedicated_schema"
            assert (await client.tenants.get(result.tenant.id)).isolation_level == "dedicated_schema"
            assert [m.id for m in await client.isolation.migrations(result.api_key)] == [started.id]
            assert int((await client.usage.metrics(result.api_key)).api_calls) == 2
            # On to its own database (the server's main PostgreSQL, the default).
            moving = await client.isolation.migrate(result.tenant.id, target_level="dedicated_database")
            moved = await client.isolation.wait_for_migration(moving.id, poll_interval=0.1, timeout=60)
            assert moved.status == "completed" and moved.to_level == "dedicated_database"
            await client.usage.track(tenant_key=result.api_key, metric="api_call", value=1)
            assert int((await client.usage.metrics(result.api_key)).api_calls) == 3
            await client.tenants.delete(result.tenant.id)

    run(main())


def test_501_is_its_own_class_and_not_retried():
    async def main():
        transport, seen = scripted([(501, {"message": "not implemented", "statusCode": 501}, {})])
        async with tenlyr.Tenlyr(api_key="k", base_url="http://sdk.test", transport=transport, retries=3) as client:
            with pytest.raises(TenlyrNotImplementedError):
                await client.tenants.list()
        assert len(seen) == 1

    run(main())


def test_wait_for_migration():
    def migration(status, error=None):
        return (200, {"id": "m1", "tenantId": "t1", "fromLevel": "shared_schema", "toLevel": "dedicated_schema",
                      "status": status, "error": error}, {})

    async def main():
        transport, seen = scripted([migration("pending"), migration("in_progress"), migration("completed")])
        async with tenlyr.Tenlyr(api_key="k", base_url="http://sdk.test", transport=transport) as client:
            done = await client.isolation.wait_for_migration("m1", poll_interval=0.005, timeout=1)
            assert done.status == "completed" and done.to_level == "dedicated_schema"
        assert len(seen) == 3
        transport, _ = scripted([migration("failed", "checksum mismatch")])
        async with tenlyr.Tenlyr(api_key="k", base_url="http://sdk.test", transport=transport) as client:
            with pytest.raises(TenlyrError, match="checksum mismatch"):
                await client.isolation.wait_for_migration("m1", poll_interval=0.005)
        transport, _ = scripted([migration("in_progress")])
        async with tenlyr.Tenlyr(api_key="k", base_url="http://sdk.test", transport=transport) as client:
            with pytest.raises(TenlyrTimeoutError):
                await client.isolation.wait_for_migration("m1", poll_interval=0.01, timeout=0.05)

    run(main())


def test_the_planned_api_preview_as_written():
    async def main():
        client = tenlyr.Tenlyr(api_key=ADMIN_KEY, base_url=BASE_URL, timeout=10.0)
        result = await client.tenants.create(name="Acme Corp", owner_email=email("preview"), plan="growth")
        tenant, api_key = result.tenant, result.api_key
        await client.usage.track(tenant_key=api_key, metric="api_call", value=1)
        dashboard = await client.tenants.health()
        assert isinstance(dashboard, list)
        assert (await client.usage.metrics(api_key)).api_calls == "1"
        assert tenant.id
        await client.aclose()

    run(main())


def test_the_webhook_helpers_verify_a_real_delivery():
    import http.server
    import threading

    received = {}
    arrived = threading.Event()

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            length = int(self.headers["content-length"])
            received["body"] = self.rfile.read(length)
            received["headers"] = {k.lower(): v for k, v in self.headers.items()}
            self.send_response(204)
            self.end_headers()
            arrived.set()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        auth = {"authorization": f"Bearer {ADMIN_KEY}"}
        url = f"http://127.0.0.1:{server.server_port}/hook"
        created = httpx.post(f"{BASE_URL}/api/v1/webhook-endpoints", headers=auth,
                             json={"url": url, "eventTypes": ["webhook.test"]}).json()
        secret = created["secret"]
        sent = httpx.post(f"{BASE_URL}/api/v1/webhook-endpoints/{created['endpoint']['id']}/test",
                          headers=auth, json={})
        assert sent.status_code == 200
        assert arrived.wait(10), "the test event arrived"
        body, headers = received["body"], received["headers"]
        assert tenlyr.verify_signature(body, headers["tenlyr-signature"], secret)
        assert tenlyr.verify_standard_webhook(body, headers, secret)
        assert not tenlyr.verify_signature(body + b" ", headers["tenlyr-signature"], secret)
        assert not tenlyr.verify_signature(body, headers["tenlyr-signature"], "whsec_other")
        later = int(headers["webhook-timestamp"]) + 301
        assert not tenlyr.verify_signature(body, headers["tenlyr-signature"], secret, now=later)
        assert not tenlyr.verify_standard_webhook(body + b" ", headers, secret)
        assert not tenlyr.verify_standard_webhook(body, headers, secret, now=later)
        httpx.delete(f"{BASE_URL}/api/v1/webhook-endpoints/{created['endpoint']['id']}", headers=auth)
    finally:
        server.shutdown()
