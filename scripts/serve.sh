#!/usr/bin/env bash
# Runs the server. Without DATABASE_URL it uses the embedded default: a
# private PostgreSQL cluster under ./.tenlyr/ (installed with apt-get first
# if the machine has no PostgreSQL binaries).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
if [ -z "${DATABASE_URL:-}" ]; then
    ensure_deps postgres
fi
exec cargo run --release --quiet -- serve "$@"
