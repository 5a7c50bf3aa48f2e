#!/usr/bin/env bash
# Checks that vendor/sqlx-core is sqlx-core 0.9.0 as released on crates.io
# plus exactly vendor/sqlx-core.patch (the TCP_NODELAY fix), and that it
# ships the crate's license files. Run by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.9.0
SHA256=05b44e85bf579a8eeb4ceaa77a3a523baf2bf0e9bac7e40f405d537b5d2d5ccb
cache=${CARGO_TARGET_DIR:-target}/vendor-check
mkdir -p "$cache"
crate="$cache/sqlx-core-$VERSION.crate"
if ! echo "$SHA256  $crate" | sha256sum -c --status 2>/dev/null; then
    curl -sSfL -o "$crate" "https://static.crates.io/crates/sqlx-core/sqlx-core-$VERSION.crate"
fi
echo "$SHA256  $crate" | sha256sum -c --status || {
    echo "sqlx-core-$VERSION.crate does not have the released checksum" >&2
    exit 1
}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xzf "$crate" -C "$work"
released="$work/sqlx-core-$VERSION"
(cd "$released" && git apply -p1 "$OLDPWD/vendor/sqlx-core.patch")
# Cargo's packaging metadata (.cargo_vcs_info.json, Cargo.lock) is left out
# of the vendored copy; everything else must be identical.
if ! diff -r -x .cargo_vcs_info.json -x Cargo.lock "$released" vendor/sqlx-core; then
    echo "vendor/sqlx-core differs from sqlx-core $VERSION plus vendor/sqlx-core.patch" >&2
    exit 1
fi
for license in LICENSE-APACHE LICENSE-MIT; do
    [ -s "vendor/sqlx-core/$license" ] || {
        echo "vendor/sqlx-core/$license is missing" >&2
        exit 1
    }
done
echo "vendor/sqlx-core is sqlx-core $VERSION plus vendor/sqlx-core.patch" >&2
