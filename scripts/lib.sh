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
# Arguments: the needs, among: postgres node
ensure_deps() {
    local packages=()
    for need in "$@"; do
        case "$need" in
            postgres) [ -n "$(pg_bindir)" ] || packages+=(postgresql) ;;
            node) command -v npx >/dev/null 2>&1 || packages+=(nodejs npm) ;;
            redis) command -v redis-server >/dev/null 2>&1 || packages+=(redis-server) ;;
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
