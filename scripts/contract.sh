#!/usr/bin/env bash
# Releases the API contract: writes proto/contract.binpb, the image that
# `buf breaking` (scripts/test.sh) holds every later change to. Run it when a
# change to the protos is published on purpose, and commit the result.
set -euo pipefail
cd "$(dirname "$0")/.."
npx --yes "@bufbuild/buf@1.75.0" build --exclude-source-info -o proto/contract.binpb
echo "wrote proto/contract.binpb" >&2
