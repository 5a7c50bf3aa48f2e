#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: proto lint and breaking-change
# check, formatting, clippy, then every unit and integration test against a
# private PostgreSQL cluster on a free port (whatever else runs on the
# machine). Installs missing PostgreSQL / Node.js with apt-get when root.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_deps postgres node redis

BUF_VERSION=1.75.0
buf() { npx --yes "@bufbuild/buf@$BUF_VERSION" "$@"; }

echo "--- buf lint" >&2
buf lint
if git rev-parse --verify -q HEAD >/dev/null 2>&1; then
    echo "--- buf breaking (WIRE_JSON, against the last commit)" >&2
    buf breaking --against '.git#ref=HEAD'
fi

echo "--- cargo fmt --check" >&2
cargo fmt --check
echo "--- cargo clippy" >&2
cargo clippy --all-targets --quiet -- -D warnings

echo "--- private PostgreSQL and Redis" >&2
start_private_services
export TENLYR_TEST_DATABASE_URL="$PRIVATE_PG_URL"
export TENLYR_TEST_REDIS_URL="$PRIVATE_REDIS_URL"

echo "--- cargo test" >&2
cargo test --all-targets
