#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: proto lint and breaking-change
# check, formatting, clippy, then every unit and integration test against a
# private PostgreSQL cluster on a free port (whatever else runs on the
# machine). Installs missing PostgreSQL / Node.js with apt-get when root.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_deps postgres node redis curl python openssl chromium

BUF_VERSION=1.75.0
buf() { npx --yes "@bufbuild/buf@$BUF_VERSION" "$@"; }

echo "--- buf lint" >&2
buf lint
# The published contract is proto/contract.binpb (scripts/contract.sh
# writes it when a change is released on purpose); the protos may grow but
# must not break it. The check is shown to bite first: a copy of the
# protos without one field must be refused.
echo "--- buf breaking (WIRE_JSON, against proto/contract.binpb)" >&2
broken=$(mktemp -d)
cp -r proto buf.yaml "$broken"/
sed -i '/^  string owner_email = 3;/d' "$broken/proto/tenlyr/v1/tenant.proto"
if (cd "$broken" && buf breaking --against "$OLDPWD/proto/contract.binpb" >/dev/null 2>&1); then
    echo "buf breaking accepted a removed field; the check is not working" >&2
    exit 1
fi
rm -rf "$broken"
buf breaking --against proto/contract.binpb

echo "--- minimum Rust version and the vendored sqlx-core" >&2
scripts/check-msrv.sh
scripts/check-vendor.sh

echo "--- cargo fmt --check" >&2
cargo fmt --check
echo "--- cargo clippy" >&2
cargo clippy --all-targets --quiet -- -D warnings

# Third-party verifiers the webhook tests run (tests/peers, pinned by its
# package-lock.json).
echo "--- test peers (npm ci)" >&2
npm ci --prefix tests/peers --silent --no-audit --no-fund

echo "--- private PostgreSQL and Redis" >&2
start_private_services
export TENLYR_TEST_DATABASE_URL="$PRIVATE_PG_URL"
export TENLYR_TEST_REDIS_URL="$PRIVATE_REDIS_URL"

# A real Stripe-compatible server for the billing tests: localstripe
# (PyPI, pinned), in a venv beside the other test peers, on a free port.
echo "--- localstripe" >&2
start_localstripe
trap 'kill "$LOCALSTRIPE_PID" 2>/dev/null; stop_private_services' EXIT
export TENLYR_TEST_STRIPE_URL="$LOCALSTRIPE_URL"

echo "--- cargo test" >&2
cargo test --all-targets

# A server built from this tree for the clients' tests: the JavaScript and
# Python SDKs', then schemathesis with the server's own OpenAPI document.
echo "--- API server for the SDK and schemathesis" >&2
start_api_server
trap 'stop_api_server; kill "$LOCALSTRIPE_PID" 2>/dev/null; stop_private_services' EXIT
echo "--- JavaScript SDK (sdk/js)" >&2
run_sdk_js_tests
echo "--- Python SDK (sdk/python)" >&2
run_sdk_python_tests
echo "--- Backoffice in Chromium (tests/browser)" >&2
run_browser_tests
echo "--- schemathesis against /openapi.json" >&2
run_schemathesis
