#!/usr/bin/env bash
# Make sure a Docker engine answers on /var/run/docker.sock. Idempotent: safe to call many times.
#
#  - installs Debian's docker.io when dockerd is missing (apt-get, noninteractive, no recommends);
#  - starts dockerd in the background when `docker info` fails (log: /var/log/dockerd.log);
#  - waits, bounded, until the engine answers.
#
# Never uses `service docker start` (its init script's `ulimit -n 1048576` fails on these
# machines) and never starts a dockerd with `--bridge none` (that deletes docker0).
#
# Env: DOCKYARD_DOCKERD_WAIT   seconds to wait for the engine (default 60)
#      DOCKYARD_DOCKERD_LOG    dockerd's log file (default /var/log/dockerd.log)
set -euo pipefail

log() { printf '[docker.sh] %s\n' "$*"; }
die() { printf '[docker.sh] ERROR: %s\n' "$*" >&2; exit 1; }

WAIT=${DOCKYARD_DOCKERD_WAIT:-60}
DOCKERD_LOG=${DOCKYARD_DOCKERD_LOG:-/var/log/dockerd.log}
SOCK=/var/run/docker.sock
export DEBIAN_FRONTEND=noninteractive

[ "$(id -u)" = 0 ] || die "must run as root"

# Serialise concurrent callers (tests, CI and scripts may call this at the same time).
LOCK=/var/lock/dockyard-docker-sh.lock
exec 9>"$LOCK"
flock -w "$((WAIT + 600))" 9 || die "could not take $LOCK"

engine_up() { docker info >/dev/null 2>&1; }

if command -v docker >/dev/null 2>&1 && engine_up; then
  log "engine already answering ($(docker version -f '{{.Server.Version}}' 2>/dev/null || echo '?'))"
  exit 0
fi

if [ ! -x /usr/sbin/dockerd ] && ! command -v dockerd >/dev/null 2>&1; then
  log "dockerd missing: installing docker.io (apt-get)"
  t0=$SECONDS
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends docker.io >/dev/null
  log "docker.io installed in $((SECONDS - t0)) s"
fi
DOCKERD=$(command -v dockerd || echo /usr/sbin/dockerd)
[ -x "$DOCKERD" ] || die "dockerd still missing after installing docker.io"
command -v docker >/dev/null 2>&1 || die "docker CLI missing"

if engine_up; then   # the package's postinst may have started one
  log "engine answering"
  exit 0
fi

if pgrep -x dockerd >/dev/null 2>&1; then
  log "a dockerd is already running (pid $(pgrep -x dockerd | tr '\n' ' ')) but not answering yet: waiting for it"
else
  log "starting dockerd (log: $DOCKERD_LOG)"
  mkdir -p "$(dirname "$DOCKERD_LOG")"
  # The daemon must inherit no descriptor but 0-2: it would otherwise hold our lock, or a
  # caller's, forever. setsid + nohup: it outlives this script and its caller's process group.
  setsid nohup bash -c 'for f in /proc/$$/fd/*; do n=${f##*/}; [ "$n" -gt 2 ] && eval "exec $n>&-"; done; exec "$@"' \
    dockerd "$DOCKERD" --host "unix://$SOCK" >>"$DOCKERD_LOG" 2>&1 </dev/null &
fi

t_start=$SECONDS
deadline=$((SECONDS + WAIT))
until engine_up; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    log "last lines of $DOCKERD_LOG:" >&2
    tail -n 20 "$DOCKERD_LOG" >&2 || true
    die "Docker engine did not answer within ${WAIT}s (see $DOCKERD_LOG)"
  fi
  if ! pgrep -x dockerd >/dev/null 2>&1; then
    tail -n 20 "$DOCKERD_LOG" >&2 || true
    die "dockerd exited during start-up (see $DOCKERD_LOG)"
  fi
  sleep 0.2
done
log "engine up ($(docker version -f '{{.Server.Version}}' 2>/dev/null || echo '?')) after $((SECONDS - t_start)) s"
