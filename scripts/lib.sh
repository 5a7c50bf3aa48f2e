# Shared by scripts/serve.sh and scripts/test.sh. Sourced, not run.

# Directory holding initdb and pg_ctl, or nothing.
pg_bindir() {
    local dir
    if [ -n "${TENLYR_PG_BIN:-}" ]; then echo "$TENLYR_PG_BIN"; return; fi
    if command -v pg_config >/dev/null 2>&1; then
        dir=$(pg_config --bindir 2>/dev/null || true)
        if [ -x "$dir/initdb" ]; then echo "$dir"; return; fi
    fi
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$dir/initdb" ]; then echo "$dir"; return; fi
    done
    dir=$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")
    if [ -x "$dir/initdb" ]; then echo "$dir"; fi
}

# Installs what is missing with apt-get (as root), else says what to install.
# Arguments: the needs, among: postgres node redis curl python openssl
ensure_deps() {
    local packages=()
    for need in "$@"; do
        case "$need" in
            postgres) [ -n "$(pg_bindir)" ] || packages+=(postgresql) ;;
            node) command -v npx >/dev/null 2>&1 || packages+=(nodejs npm) ;;
            redis) command -v redis-server >/dev/null 2>&1 || packages+=(redis-server) ;;
            curl) command -v curl >/dev/null 2>&1 || packages+=(curl ca-certificates) ;;
            python) python3 -m venv --help >/dev/null 2>&1 || packages+=(python3 python3-venv) ;;
            openssl) command -v openssl >/dev/null 2>&1 || packages+=(openssl) ;;
            chromium) command -v chromium >/dev/null 2>&1 || packages+=(chromium) ;;
        esac
    done
    [ ${#packages[@]} -eq 0 ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing: ${packages[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
    else
        echo "missing: ${packages[*]}; install them (apt-get install ${packages[*]}) and retry" >&2
        exit 1
    fi
}

# A TCP port on 127.0.0.1 that nothing listens on.
free_port() {
    local port
    for _ in $(seq 1 200); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    echo "no free port found" >&2
    return 1
}

# Starts a throwaway PostgreSQL and Redis on free ports (PostgreSQL as an
# unprivileged user when root); both stop and vanish when the script exits.
# Durability is off (fsync) for speed unless PRIVATE_PG_OPTIONS says otherwise.
# Sets PRIVATE_PG_URL and PRIVATE_REDIS_URL.
start_private_services() {
    PRIVATE_BINDIR=$(pg_bindir)
    PRIVATE_DIR=$(mktemp -d /tmp/tenlyr-private.XXXXXX)
    chmod 755 "$PRIVATE_DIR"
    PRIVATE_AS_PG=()
    if [ "$(id -u)" = 0 ]; then
        local pg_user
        pg_user=$(id -u postgres >/dev/null 2>&1 && echo postgres || echo nobody)
        chown "$pg_user" "$PRIVATE_DIR"
        PRIVATE_AS_PG=(runuser -u "$pg_user" --)
    fi
    trap stop_private_services EXIT
    local port redis_port
    port=$(free_port)
    "${PRIVATE_AS_PG[@]}" "$PRIVATE_BINDIR/initdb" -D "$PRIVATE_DIR/data" -U postgres -A trust -E UTF8 --no-instructions >/dev/null
    # The application role must prove its (pepper-derived) password, as it
    # would on a real server; everyone else is trusted on loopback.
    printf 'host all tenlyr_app 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 trust\n' \
        | "${PRIVATE_AS_PG[@]}" tee "$PRIVATE_DIR/data/pg_hba.conf" >/dev/null
    "${PRIVATE_AS_PG[@]}" "$PRIVATE_BINDIR/pg_ctl" -D "$PRIVATE_DIR/data" -l "$PRIVATE_DIR/server.log" -w -o \
        "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c max_connections=300 ${PRIVATE_PG_OPTIONS-"-c fsync=off -c synchronous_commit=off -c full_page_writes=off"}" \
        start >/dev/null
    PRIVATE_PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
    echo "PostgreSQL on 127.0.0.1:$port" >&2
    redis_port=$(free_port)
    redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize yes --pidfile "$PRIVATE_DIR/redis.pid" --dir "$PRIVATE_DIR" --logfile "$PRIVATE_DIR/redis.log"
    PRIVATE_REDIS_URL="redis://127.0.0.1:$redis_port"
    echo "Redis on 127.0.0.1:$redis_port" >&2
}

# Has the private cluster write and recycle 72 WAL segments (1.1 GB), as a
# server that has run a while has: with min_wal_size they are kept for
# reuse, so commits do not wait while a new segment is zero-filled.
warm_up_wal() {
    {
        echo "CREATE TABLE tenlyr_wal_warm_up (n int);"
        for i in $(seq 1 72); do
            echo "INSERT INTO tenlyr_wal_warm_up VALUES ($i); SELECT pg_switch_wal();"
        done
        echo "DROP TABLE tenlyr_wal_warm_up; CHECKPOINT; CHECKPOINT;"
    } | "$PRIVATE_BINDIR/psql" "$PRIVATE_PG_URL" -q >/dev/null
}

stop_private_services() {
    "${PRIVATE_AS_PG[@]}" "$PRIVATE_BINDIR/pg_ctl" -D "$PRIVATE_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
    if [ -f "$PRIVATE_DIR/redis.pid" ]; then kill "$(cat "$PRIVATE_DIR/redis.pid")" 2>/dev/null || true; fi
    rm -rf "$PRIVATE_DIR"
}

# Starts localstripe (PyPI, pinned; a Stripe-compatible server) from a venv
# under tests/peers on a free port; sets LOCALSTRIPE_URL and LOCALSTRIPE_PID.
# The caller stops it (kill "$LOCALSTRIPE_PID").
start_localstripe() {
    # The venv holds every Python peer (tests/peers/requirements.txt);
    # reinstalled when that file changes.
    if ! cmp -s tests/peers/requirements.txt tests/peers/.venv/requirements.txt 2>/dev/null; then
        python3 -m venv tests/peers/.venv
        tests/peers/.venv/bin/pip install --quiet --disable-pip-version-check -r tests/peers/requirements.txt
        cp tests/peers/requirements.txt tests/peers/.venv/requirements.txt
    fi
    local port
    port=$(free_port)
    tests/peers/.venv/bin/localstripe --port "$port" --from-scratch >"${PRIVATE_DIR:-/tmp}/localstripe.log" 2>&1 &
    LOCALSTRIPE_PID=$!
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    LOCALSTRIPE_URL="http://127.0.0.1:$port"
}

# Starts target/debug/tenlyr on a fresh database of the private cluster
# (webhooks may reach loopback, for the SDKs' receivers) and provisions
# one tenant; sets API_URL, API_ADMIN_KEY, API_TENANT_KEY,
# API_PID and API_DATA (stop_api_server stops it).
start_api_server() {
    local port attempt ready
    API_DATA=$(mktemp -d)
    # free_port's port is free when asked, not when the server binds it:
    # another process may take it in between ("Address already in use"),
    # so a server that exits before it is ready is started again on another
    # port, on a new database (the first admin key is printed only once).
    for attempt in 1 2 3; do
        "$PRIVATE_BINDIR/psql" "$PRIVATE_PG_URL" -q -c "SET client_min_messages = warning" \
            -c "DROP DATABASE IF EXISTS tenlyr_api_tests" \
            -c "CREATE DATABASE tenlyr_api_tests" >/dev/null
        port=$(free_port)
        DATABASE_URL="${PRIVATE_PG_URL%/*}/tenlyr_api_tests" TENLYR_LISTEN="127.0.0.1:$port" \
            TENLYR_DATA_DIR="$API_DATA" TENLYR_KEY_PEPPER=api-tests-pepper-0123456789 \
            TENLYR_SECRETS_KEY=api-tests-secrets-key-0123456789abcdef RUST_LOG=warn \
            TENLYR_WEBHOOK_ALLOWED_CIDRS=127.0.0.0/8 TENLYR_BCRYPT_COST=4 \
            "${CARGO_TARGET_DIR:-target}/debug/tenlyr" serve >"$API_DATA/stdout" 2>"$API_DATA/stderr" &
        API_PID=$!
        API_URL="http://127.0.0.1:$port"
        ready=
        for _ in $(seq 1 100); do
            if curl -fs "$API_URL/readyz" >/dev/null 2>&1; then
                ready=1
                break
            fi
            kill -0 "$API_PID" 2>/dev/null || break
            sleep 0.2
        done
        [ -n "$ready" ] && break
        kill "$API_PID" 2>/dev/null || true
        wait "$API_PID" 2>/dev/null || true
        grep -q "Address already in use" "$API_DATA/stderr" || break
        echo "port $port was taken before the API server bound it; trying another ($attempt)" >&2
    done
    API_ADMIN_KEY=$(head -1 "$API_DATA/stdout")
    if [ -z "$ready" ] || [ -z "$API_ADMIN_KEY" ]; then
        echo "the API server did not start:" >&2
        grep -m3 -A3 -i "panicked\|error" "$API_DATA/stderr" >&2 || tail -20 "$API_DATA/stderr" >&2
        kill "$API_PID" 2>/dev/null || true
        return 1
    fi
    API_TENANT_KEY=$(curl -fs -H "Authorization: Bearer $API_ADMIN_KEY" -H 'content-type: application/json' \
        -d '{"name":"API tests","ownerEmail":"api-tests@tenlyr.test","plan":"growth"}' \
        "$API_URL/api/v1/tenants" | python3 -c 'import json,sys; print(json.load(sys.stdin)["apiKey"])')
}

# Moves the tenant of API_TENANT_KEY to its own schema (isolation) and
# waits for the move, so what runs next exercises the tenant-data router's
# dedicated_schema path.
move_api_tenant() {
    local id status
    id=$(curl -fs -H "Authorization: Bearer $API_TENANT_KEY" -H 'content-type: application/json' \
        -d '{"targetLevel":"dedicated_schema"}' "$API_URL/api/v1/isolation/migrate" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    for _ in $(seq 1 300); do
        status=$(curl -fs -H "Authorization: Bearer $API_TENANT_KEY" "$API_URL/api/v1/isolation/migrations/$id" |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')
        case "$status" in
            completed) return 0 ;;
            failed) echo "moving the API tenant failed" >&2; return 1 ;;
        esac
        sleep 0.1
    done
    echo "moving the API tenant did not finish" >&2
    return 1
}

stop_api_server() {
    kill "$API_PID" 2>/dev/null || true
    wait "$API_PID" 2>/dev/null || true
    rm -rf "$API_DATA"
}

# The JavaScript SDK (sdk/js): its types must be what openapi-typescript
# generates from the server's /openapi.json today (they are never edited
# by hand), it must build, and its tests (node --test) run against the
# server of start_api_server.
run_sdk_js_tests() {
    npm ci --prefix sdk/js --silent --no-audit --no-fund
    curl -fs "$API_URL/openapi.json" >"$API_DATA/openapi.json"
    (cd sdk/js && npx openapi-typescript "$API_DATA/openapi.json" -o "$API_DATA/schema.d.ts" >/dev/null 2>&1)
    if ! cmp -s sdk/js/src/schema.d.ts "$API_DATA/schema.d.ts"; then
        echo "sdk/js/src/schema.d.ts is stale: run (cd sdk/js && TENLYR_OPENAPI=<tenlyr openapi output> npm run generate)" >&2
        diff "$API_DATA/schema.d.ts" sdk/js/src/schema.d.ts | head -20 >&2
        return 1
    fi
    npm run --prefix sdk/js build --silent
    TENLYR_SDK_TEST_URL="$API_URL" TENLYR_SDK_TEST_ADMIN_KEY="$API_ADMIN_KEY" npm test --prefix sdk/js --silent
}

# The Python SDK (sdk/python): its pytest suite, in the peers' venv (httpx
# and pytest come from tests/peers/requirements.txt), against the server
# of start_api_server.
run_sdk_python_tests() {
    TENLYR_SDK_TEST_URL="$API_URL" TENLYR_SDK_TEST_ADMIN_KEY="$API_ADMIN_KEY" PYTHONPATH=sdk/python \
        tests/peers/.venv/bin/python -m pytest -q -p no:cacheprovider sdk/python/tests
}

# The Backoffice in a real browser (tests/browser): Debian's Chromium,
# driven by playwright-core from tests/peers, walks the onboarding guide
# against the server of start_api_server, signed in as a super admin made
# with `tenlyr admin create-user`. Screenshots of every page go to
# target/test-artifacts/backoffice/.
run_browser_tests() {
    local email=backoffice-admin@tenlyr.test password
    password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
    printf '%s\n' "$password" | DATABASE_URL="${PRIVATE_PG_URL%/*}/tenlyr_api_tests" \
        TENLYR_KEY_PEPPER=api-tests-pepper-0123456789 TENLYR_BCRYPT_COST=4 RUST_LOG=warn \
        "${CARGO_TARGET_DIR:-target}/debug/tenlyr" admin create-user --email "$email" \
        --role super_admin --password-stdin
    TENLYR_BASE="$API_URL" TENLYR_ADMIN_EMAIL="$email" TENLYR_ADMIN_PASSWORD="$password" \
        TENLYR_ARTIFACTS="${CARGO_TARGET_DIR:-target}/test-artifacts/backoffice" \
        node --test --test-concurrency=1 tests/browser/
    # Passwords appear in no log line.
    if grep -qF "$password" "$API_DATA/stderr"; then
        echo "the admin's password was logged" >&2
        return 1
    fi
}

# Runs schemathesis (tests/peers/.venv) against the server of
# start_api_server with its own /openapi.json: every operation, no 5xx,
# every response valid against its schema. Three passes: tenant-key
# operations (and those either key may call) with a tenant key (whose
# tenant was moved to its own schema first: move_api_tenant), then
# admin ones with the admin key, then public ones without a key. The
# operations that would spoil the rest of a pass — revoking a key, and
# StartMigration, which moves the caller's own tenant to its own database —
# run last, each with a spare key made for it (a second admin key; a second
# tenant's key), so every operation runs with each key that may call it.
run_schemathesis() {
    local status=0
    move_api_tenant || return 1
    local st=(tests/peers/.venv/bin/schemathesis run "$API_URL/openapi.json"
        --url "$API_URL" --checks not_a_server_error,response_schema_conformance
        --max-examples "${SCHEMATHESIS_EXAMPLES:-20}")
    local spoilers=(--exclude-operation-id RevokeApiKey --exclude-operation-id RevokeAdminKey
        --exclude-operation-id StartMigration)
    "${st[@]}" -H "Authorization: Bearer $API_TENANT_KEY" --include-tag tenant --include-tag admin-or-tenant \
        "${spoilers[@]}" || status=1
    "${st[@]}" -H "Authorization: Bearer $API_ADMIN_KEY" --include-tag admin --include-tag admin-or-tenant \
        "${spoilers[@]}" || status=1
    "${st[@]}" --include-tag public || status=1
    local spare_admin spare_tenant
    spare_admin=$(curl -fs -H "Authorization: Bearer $API_ADMIN_KEY" -H 'content-type: application/json' \
        -d '{"label":"schemathesis spare"}' "$API_URL/api/v1/admin-keys" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["apiKey"])') || return 1
    spare_tenant=$(curl -fs -H "Authorization: Bearer $API_ADMIN_KEY" -H 'content-type: application/json' \
        -d '{"name":"API tests spare","ownerEmail":"api-tests-spare@tenlyr.test","plan":"growth"}' \
        "$API_URL/api/v1/tenants" | python3 -c 'import json,sys; print(json.load(sys.stdin)["apiKey"])') || return 1
    "${st[@]}" -H "Authorization: Bearer $spare_tenant" --include-operation-id RevokeApiKey \
        --include-operation-id StartMigration || status=1
    "${st[@]}" -H "Authorization: Bearer $spare_admin" --include-operation-id RevokeAdminKey \
        --include-operation-id RevokeApiKey --include-operation-id StartMigration || status=1
    return $status
}
