#!/usr/bin/env bash
# A real PostgreSQL server on loopback (Debian's postgresql package) for the tests that run
# dockyard's store on it. Idempotent: a cluster already online is left alone.
#
# Role dockyard / password dockyard, allowed to create databases: each test makes a database of
# its own and drops it after. Prints the server's URL (database `postgres`) on its last line.
#
# Env: DOCKYARD_TEST_POSTGRES_WAIT  seconds to wait for the server (default 30)
set -euo pipefail

log() { printf '[postgres.sh] %s\n' "$*" >&2; }
die() { printf '[postgres.sh] ERROR: %s\n' "$*" >&2; exit 1; }

WAIT=${DOCKYARD_TEST_POSTGRES_WAIT:-30}
export DEBIAN_FRONTEND=noninteractive
[ "$(id -u)" = 0 ] || die "must run as root"
exec 9>/var/lock/dockyard-postgres-sh.lock
flock -w 300 9 || die "could not take /var/lock/dockyard-postgres-sh.lock"

if ! command -v pg_lsclusters >/dev/null 2>&1; then
  start=$(date +%s)
  log "installing postgresql (apt-get)"
  # (9>&-: a server started on the way must not hold this script's lock)
  # (Lock::Timeout: wait for another apt-get, as the other infra scripts do, rather than fail)
  apt_get() { apt-get -o DPkg::Lock::Timeout=300 "$@"; }
  { apt_get install -y -qq postgresql >/dev/null 2>&1 || { apt_get update -qq && apt_get install -y -qq postgresql >/dev/null; }; } 9>&-
  log "installed in $(( $(date +%s) - start )) s"
fi
version=$(ls /usr/lib/postgresql | sort -V | tail -1)
[ -n "$version" ] || die "no PostgreSQL server under /usr/lib/postgresql"
if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main"' | grep -q .; then
  log "creating cluster $version/main"
  pg_createcluster "$version" main >/dev/null 9>&-
fi
if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" && $4 == "online"' | grep -q .; then
  pg_ctlcluster "$version" main start 9>&-  # the server must not inherit (and hold) the lock
fi
port=$(pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $3}')
for _ in $(seq "$WAIT"); do
  su postgres -c "pg_isready -q -h 127.0.0.1 -p $port" && break
  sleep 1
done
su postgres -c "pg_isready -q -h 127.0.0.1 -p $port" || die "PostgreSQL $version did not start on port $port within $WAIT s (see /var/log/postgresql/)"
if ! su postgres -c "psql -p $port -tAc \"select 1 from pg_roles where rolname = 'dockyard'\"" | grep -q 1; then
  su postgres -c "psql -p $port -qc \"create role dockyard login createdb password 'dockyard'\""
fi
log "PostgreSQL $version online on 127.0.0.1:$port"
echo "postgresql+psycopg://dockyard:dockyard@127.0.0.1:$port/postgres"
