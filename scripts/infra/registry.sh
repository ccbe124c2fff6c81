#!/usr/bin/env bash
# Start two real OCI registries (Debian's docker-registry, i.e. CNCF distribution 2.8) on loopback.
# Idempotent: a registry already answering on its port is left alone.
#
#   open: http://127.0.0.1:5001  no auth
#   auth: http://127.0.0.1:5002  htpasswd basic auth (user dockyard / password dockyard-secret)
#
# Data and config files live under /var/lib/dockyard-test/registry-{open,auth}/
# (config.yml, htpasswd, storage/, registry.pid, registry.log).
# Both serve plain HTTP; dockerd treats 127.0.0.0/8 as an insecure registry, so push/pull and
# `docker login 127.0.0.1:5002` need no further setup.
#
# Env: DOCKYARD_TEST_REGISTRY_USER / DOCKYARD_TEST_REGISTRY_PASSWORD   credentials of the auth one
#      DOCKYARD_TEST_REGISTRY_OPEN_PORT / DOCKYARD_TEST_REGISTRY_AUTH_PORT  (default 5001 / 5002)
#      DOCKYARD_TEST_REGISTRY_WAIT   seconds to wait for each registry (default 30)
set -euo pipefail

log() { printf '[registry.sh] %s\n' "$*"; }
die() { printf '[registry.sh] ERROR: %s\n' "$*" >&2; exit 1; }

USER_NAME=${DOCKYARD_TEST_REGISTRY_USER:-dockyard}
PASSWORD=${DOCKYARD_TEST_REGISTRY_PASSWORD:-dockyard-secret}
OPEN_PORT=${DOCKYARD_TEST_REGISTRY_OPEN_PORT:-5001}
AUTH_PORT=${DOCKYARD_TEST_REGISTRY_AUTH_PORT:-5002}
WAIT=${DOCKYARD_TEST_REGISTRY_WAIT:-30}
ROOT=/var/lib/dockyard-test
export DEBIAN_FRONTEND=noninteractive

[ "$(id -u)" = 0 ] || die "must run as root"
mkdir -p "$ROOT"
LOCK=/var/lock/dockyard-registry-sh.lock
exec 9>"$LOCK"
flock -w 300 9 || die "could not take $LOCK"

missing=()
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
command -v htpasswd >/dev/null 2>&1 || missing+=(apache2-utils)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]} (apt-get)"
  t0=$SECONDS
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  log "installed in $((SECONDS - t0)) s"
fi
# Debian's package would run its own registry on :5000 through an init script; we never use it.

# HTTP status of GET /v2/ (000 when nothing answers).
v2_status() { # port [user:pass]
  local args=(-s -o /dev/null -w '%{http_code}' --max-time 2)
  [ -n "${2:-}" ] && args+=(-u "$2")
  curl "${args[@]}" "http://127.0.0.1:$1/v2/" 2>/dev/null || true
}

start_registry() { # name port
  local name=$1 port=$2 dir="$ROOT/registry-$1"
  mkdir -p "$dir/storage"
  log "starting $name registry on 127.0.0.1:$port (log: $dir/registry.log)"
  # No descriptor but 0-2 may leak into the daemon (it would hold our lock forever).
  setsid nohup bash -c 'for f in /proc/$$/fd/*; do n=${f##*/}; [ "$n" -gt 2 ] && eval "exec $n>&-"; done; exec "$@"' \
    registry docker-registry serve "$dir/config.yml" >>"$dir/registry.log" 2>&1 </dev/null &
  echo $! >"$dir/registry.pid"
}

wait_up() { # name port ok-codes-regex
  local name=$1 port=$2 ok=$3 dir="$ROOT/registry-$1" code deadline=$((SECONDS + WAIT))
  while :; do
    code=$(v2_status "$port")
    [[ $code =~ ^($ok)$ ]] && return 0
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 20 "$dir/registry.log" >&2 || true
      die "$name registry on 127.0.0.1:$port did not answer /v2/ within ${WAIT}s (last status $code; see $dir/registry.log)"
    fi
    if [ -f "$dir/registry.pid" ] && ! kill -0 "$(cat "$dir/registry.pid")" 2>/dev/null; then
      tail -n 20 "$dir/registry.log" >&2 || true
      die "$name registry exited during start-up (see $dir/registry.log)"
    fi
    sleep 0.1
  done
}

# ---- open registry -------------------------------------------------------------------------
dir="$ROOT/registry-open"
mkdir -p "$dir"
cat >"$dir/config.yml" <<YML
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $dir/storage}
  delete: {enabled: true}
http: {addr: 127.0.0.1:$OPEN_PORT, secret: dockyard-test-open}
YML
if [ "$(v2_status "$OPEN_PORT")" = 200 ]; then
  log "open registry already answering on 127.0.0.1:$OPEN_PORT"
else
  start_registry open "$OPEN_PORT"
  wait_up open "$OPEN_PORT" 200
  log "open registry up on 127.0.0.1:$OPEN_PORT"
fi

# ---- auth registry -------------------------------------------------------------------------
dir="$ROOT/registry-auth"
mkdir -p "$dir"
cat >"$dir/config.yml" <<YML
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $dir/storage}
  delete: {enabled: true}
http: {addr: 127.0.0.1:$AUTH_PORT, secret: dockyard-test-auth}
auth:
  htpasswd: {realm: dockyard-test, path: $dir/htpasswd}
YML
# The registry reads htpasswd at start-up only: rewrite it (and restart our own registry) only
# when the credentials do not work any more.
code=$(v2_status "$AUTH_PORT")
if [ "$code" = 401 ] && [ "$(v2_status "$AUTH_PORT" "$USER_NAME:$PASSWORD")" = 200 ]; then
  log "auth registry already answering on 127.0.0.1:$AUTH_PORT (credentials accepted)"
else
  if [ "$code" != 000 ]; then
    pid=$(cat "$dir/registry.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q docker-registry "/proc/$pid/cmdline" 2>/dev/null; then
      log "auth registry (pid $pid) rejects $USER_NAME's credentials: restarting it"
      kill "$pid"
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    else
      die "something else answers on 127.0.0.1:$AUTH_PORT (GET /v2/ -> $code) and rejects $USER_NAME's credentials"
    fi
  fi
  htpasswd -Bbn "$USER_NAME" "$PASSWORD" >"$dir/htpasswd"
  chmod 600 "$dir/htpasswd"
  start_registry auth "$AUTH_PORT"
  wait_up auth "$AUTH_PORT" 401
  [ "$(v2_status "$AUTH_PORT" "$USER_NAME:$PASSWORD")" = 200 ] \
    || die "auth registry on 127.0.0.1:$AUTH_PORT is up but rejects $USER_NAME's credentials"
  log "auth registry up on 127.0.0.1:$AUTH_PORT (user $USER_NAME)"
fi
