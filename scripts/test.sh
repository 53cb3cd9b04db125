#!/usr/bin/env bash
# Runs every test of the project, from a clean clone:
#   1. makes sure Redis (127.0.0.1:6379) and Postgres (127.0.0.1:5432, trust auth
#      for user postgres) are running: starts them, or installs them with apt-get
#      and then starts them;
#   2. cargo fmt --check, clippy -D warnings, builds the binaries the end-to-end
#      tests start, the operator's offline checks, doctests, and every unit,
#      property and end-to-end test with nextest.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

apt_updated=0
apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "need root to apt-get install $*; install them or start the services yourself" >&2
    exit 1
  fi
  if [ "$apt_updated" = 0 ]; then
    apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 100); do
    port_open "$1" && return 0
    sleep 0.2
  done
  echo "nothing listens on 127.0.0.1:$1" >&2
  return 1
}

ensure_redis() {
  if port_open 6379; then echo "redis: running"; return; fi
  command -v redis-server >/dev/null || apt_install redis-server
  mkdir -p /tmp/im-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp/im-redis --logfile /tmp/im-redis/redis.log
  wait_port 6379
  echo "redis: started"
}

pg_ok() { psql -w -h 127.0.0.1 -U postgres -d postgres -Atc 'select 1' >/dev/null 2>&1; }

ensure_postgres() {
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1 && ! port_open 5432; then
    apt_install postgresql
  fi
  command -v psql >/dev/null || apt_install postgresql-client
  if ! port_open 5432; then
    ver=$(ls /etc/postgresql | sort -V | tail -n1)
    pg_ctlcluster --skip-systemctl-redirect "$ver" main start
    wait_port 5432
    echo "postgres: started"
  fi
  if ! pg_ok; then
    # A fresh Debian cluster asks for passwords on TCP; the tests use trust.
    ver=$(ls /etc/postgresql | sort -V | tail -n1)
    hba=/etc/postgresql/$ver/main/pg_hba.conf
    sed -i '1i host all all 127.0.0.1/32 trust # im-tests\nhost all all ::1/128 trust # im-tests' "$hba"
    pg_ctlcluster --skip-systemctl-redirect "$ver" main reload
    sleep 1
  fi
  pg_ok || { echo "cannot connect to Postgres as postgres@127.0.0.1" >&2; exit 1; }
  echo "postgres: ready"
}

# The tests make a database per test, named im_<kind>_<pid>_<hex> (the
# harness in tests/src and logic/tests/common); they are dropped here, before
# the run (what an interrupted run left) and after it, so that they do not pile
# up on the server and keep autovacuum busy. Any prefix: a list of them fell
# behind the tests (im_body, im_rto, im_mig7 were left), and a kind may hold
# underscores (im_retx_race, im_inline_on were left by a pattern without).
# Benchmark databases (im_bench_, im_cbench_) are the bench's own business (it
# drops its database when a run ends).
drop_test_databases() {
  psql -w -h 127.0.0.1 -U postgres -d postgres -Atc \
    "select datname from pg_database where datname ~ '^im_[a-z0-9_]+_[0-9]+_[0-9a-f]+$' and datname !~ '^im_c?bench_'" |
    while read -r db; do
      psql -w -h 127.0.0.1 -U postgres -d postgres -qc "drop database if exists \"$db\" with (force)" >/dev/null 2>&1 || true
    done || true
}

# Likewise the tests' Redis keys (prefixes imtest_<pid>_<hex>:, imclean_…,
# test-route-…, test-gates-…): the routes of the connections still open when
# a test's gateways are killed stay otherwise, ~400 keys a run.
drop_test_redis_keys() {
  command -v redis-cli >/dev/null || return 0
  for pattern in 'imtest_*' 'imclean_*' 'test-route-*' 'test-gates-*'; do
    redis-cli -h 127.0.0.1 -p 6379 --scan --pattern "$pattern" |
      xargs -r -d '\n' -n 500 redis-cli -h 127.0.0.1 -p 6379 unlink >/dev/null 2>&1 || true
  done
}

log "services"
ensure_redis
ensure_postgres
drop_test_databases
drop_test_redis_keys

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "build binaries for the end-to-end tests"
cargo build --workspace --bins --locked

log "operator offline checks (CRD, manifests, alert rules, dashboard)"
bash scripts/operator-checks.sh

log "doctests"
cargo test --workspace --doc --locked

log "unit, property and end-to-end tests"
status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast || status=$?
else
  cargo test --workspace --locked --no-fail-fast || status=$?
fi
drop_test_databases
drop_test_redis_keys
exit "$status"
