#!/usr/bin/env bash
# Benchmarks, against a private PostgreSQL and Redis on free ports.
#   scripts/bench.sh tenants     # provisioning p50/p99, auth on a cache hit
#   scripts/bench.sh metering    # tracks/s, batched events/s, raw COPY anchor,
#                                # usage.metrics against /healthz
#   scripts/bench.sh jobs        # job queue: jobs/s, enqueue-to-start latency
#   scripts/bench.sh records     # /v1/record lock -> save -> get cycles/s, p99 per call
#                                # (REST and gRPC)
#   scripts/bench.sh webhooks    # deliveries/s, event commit -> receipt p50/p99
#   scripts/bench.sh inbound     # signed provider webhooks/s (64 connections) and the
#                                # 200's p50/p99; forwarding backlog at 1,000/s
#   scripts/bench.sh billing     # Stripe sync of 1,000 tenants against localstripe
#   scripts/bench.sh health      # health scan of 10,000 tenants, throttle decision
#                                # latency, tracks/s throttled vs not
#   scripts/bench.sh isolation   # a tenant with 1,000,000 events moved to its own schema, then database
#                                # under 500 tracks/s: time, refused, lost, barrier p99
# BENCH_TENANTS (default 2000) sets how many tenants are provisioned.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_deps postgres redis
which=${1:-tenants}
cargo build --release --quiet --example "bench_$which"
# Durable settings: commits wait for fsync, as in production. max_wal_size
# is sized for the write rate, as on a server taking this load: with the
# default 1 GB the batch and COPY phases forced a checkpoint every ~12 s
# (PostgreSQL logs "checkpoints are occurring too frequently") and each one's
# sync stalled commits for up to ~0.8 s. backend_flush_after has backends
# start the kernel's writeback as they write (COPY writes its own pages):
# without it ~500 MB of dirty data piled up and was flushed in one burst
# when the file's oldest page expired (30 s), and WAL flushes waited behind
# it (batch calls of 0.6-1.0 s in 4 of 6 runs; with it, at most 0.37 s).
# min_wal_size keeps 1 GB of used WAL segments for reuse, and
# warm_up_wal fills them before the run: a fresh cluster has none, so each
# 16 MB of WAL made a committing backend create and zero-fill a new segment
# while holding WALWriteLock, and every commit waited behind it for ~55 ms
# (seen as WALInitWrite in pg_stat_activity; in the records benchmark all
# 64 connections stalled every ~5 s). A server that has run for a while
# reuses its segments. BENCH_PG_OPTIONS replaces these.
PRIVATE_PG_OPTIONS="${BENCH_PG_OPTIONS--c max_wal_size=4GB -c min_wal_size=1GB -c backend_flush_after=512kB}" start_private_services
warm_up_wal
if [ "$which" = billing ]; then
    ensure_deps python
    start_localstripe
    trap 'kill "$LOCALSTRIPE_PID" 2>/dev/null; stop_private_services' EXIT
    export BENCH_STRIPE_URL="$LOCALSTRIPE_URL"
fi
BENCH_DATABASE_URL="$PRIVATE_PG_URL" BENCH_REDIS_URL="$PRIVATE_REDIS_URL" \
    "target/release/examples/bench_$which"
