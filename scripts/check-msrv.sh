#!/usr/bin/env bash
# The minimum Rust version that Cargo.toml and the README state must be the
# highest `rust-version` any dependency declares. Run by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
need=$(cargo metadata --format-version 1 --locked 2>/dev/null \
    | grep -o '"rust_version":"[0-9.]*"' | cut -d'"' -f4 | sort -V | tail -n 1)
need=${need%.0}
declared=$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' Cargo.toml)
if [ "$need" != "$declared" ]; then
    echo "Cargo.toml says rust-version $declared; the dependencies need $need" >&2
    exit 1
fi
if ! grep -qF "Rust toolchain ($declared+)" README.md; then
    echo "README.md does not state the minimum Rust version $declared" >&2
    exit 1
fi
echo "minimum Rust version $declared, as the dependencies need" >&2
