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

echo "--- private PostgreSQL" >&2
bindir=$(pg_bindir)
pgdir=$(mktemp -d /tmp/tenlyr-test-pg.XXXXXX)
chmod 755 "$pgdir"
as_pg=()
if [ "$(id -u)" = 0 ]; then
    pg_user=$(id -u postgres >/dev/null 2>&1 && echo postgres || echo nobody)
    chown "$pg_user" "$pgdir"
    as_pg=(runuser -u "$pg_user" --)
fi
port=$(free_port)
cleanup() {
    "${as_pg[@]}" "$bindir/pg_ctl" -D "$pgdir/data" -m immediate -w stop >/dev/null 2>&1 || true
    if [ -f "$pgdir/redis.pid" ]; then kill "$(cat "$pgdir/redis.pid")" 2>/dev/null || true; fi
    rm -rf "$pgdir"
}
trap cleanup EXIT
"${as_pg[@]}" "$bindir/initdb" -D "$pgdir/data" -U postgres -A trust -E UTF8 --no-instructions >/dev/null
"${as_pg[@]}" "$bindir/pg_ctl" -D "$pgdir/data" -l "$pgdir/server.log" -w -o \
    "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
    start >/dev/null
export TENLYR_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
echo "PostgreSQL on 127.0.0.1:$port" >&2

echo "--- private Redis" >&2
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize yes --pidfile "$pgdir/redis.pid" --dir "$pgdir" --logfile "$pgdir/redis.log"
export TENLYR_TEST_REDIS_URL="redis://127.0.0.1:$redis_port"
echo "Redis on 127.0.0.1:$redis_port" >&2

echo "--- cargo test" >&2
cargo test --all-targets
