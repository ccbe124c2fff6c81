#!/usr/bin/env bash
# Build (or load from cache) the test images, then push them to the open test registry.
#
#   dockyard-test/base:bookworm          Debian bookworm minbase + python3, curl, ca-certificates
#   dockyard-test/base-nocurl:bookworm   Debian bookworm minbase + python3 only (no curl: C9 tests)
#   dockyard-test/lda-flask:1.0.0        base + flask, scikit-learn, joblib, pandas (the seed's
#                                        LDA example image; the artifact is mounted at run time)
#
# Nothing comes from a container registry: the bases are made with mmdebstrap and
# `docker import`; Python packages are installed with the HOST's pip into a folder that is
# COPY'd into the image (HTTPS from inside containers fails on these machines).
#
# Cache: each image carries the label org.dockyard.test.recipe=<hash of its recipe>. An image
# already present with the right hash is kept; otherwise `docker save` output cached under
# /var/cache/dockyard-test/images/ (file name keyed by the same hash) is `docker load`ed;
# otherwise the image is built and saved there. Change a recipe and its hash changes.
#
# Push: to 127.0.0.1:5001/dockyard-test/... when that registry answers (scripts/infra/registry.sh).
#
# Env: DOCKYARD_TEST_IMAGE_CACHE   cache folder (default /var/cache/dockyard-test)
#      DOCKYARD_TEST_REGISTRY      registry to push to (default 127.0.0.1:5001)
#      DOCKYARD_TEST_PUSH=0        do not push
#      DOCKYARD_TEST_REBUILD=1     ignore the cache: build all three again (and re-cache them)
set -euo pipefail

log() { printf '[images.sh] %s\n' "$*"; }
die() { printf '[images.sh] ERROR: %s\n' "$*" >&2; exit 1; }
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${DOCKYARD_TEST_IMAGE_CACHE:-/var/cache/dockyard-test}
REGISTRY=${DOCKYARD_TEST_REGISTRY:-127.0.0.1:5001}
PUSH=${DOCKYARD_TEST_PUSH:-1}
REBUILD=${DOCKYARD_TEST_REBUILD:-0}
LDA_REQS=$REPO/src/dockyard/examples/lda/requirements.txt
LABEL=org.dockyard.test.recipe
SUITE=bookworm
export DEBIAN_FRONTEND=noninteractive DOCKER_BUILDKIT=0   # no buildx here: the classic builder

BASE=dockyard-test/base:bookworm
NOCURL=dockyard-test/base-nocurl:bookworm
LDA=dockyard-test/lda-flask:1.0.0

[ "$(id -u)" = 0 ] || die "must run as root"
T_ALL=$EPOCHREALTIME
bash "$HERE/docker.sh"

mkdir -p "$CACHE/images" "$CACHE/tmp" "$CACHE/logs"
LOCK=$CACHE/images.lock
exec 8>"$LOCK"
flock -w 1800 8 || die "could not take $LOCK (another images.sh still running?)"
WORK=$(mktemp -d "$CACHE/tmp/run.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

SUMMARY=()
CHANGED=()   # images built or loaded in this run: only these are checked
note() { SUMMARY+=("$(printf '%-36s %-8s %6s s' "$1" "$2" "$3")"); log "$1: $2 in $3 s"; }

# ---- recipes -----------------------------------------------------------------------------
# A base recipe is the exact mmdebstrap and `docker import` arguments; its hash is the cache key.
SOURCES=()
[ -f /etc/apt/sources.list.d/debian.sources ] && SOURCES=(/etc/apt/sources.list.d/debian.sources)
[ ${#SOURCES[@]} = 0 ] && [ -s /etc/apt/sources.list ] && SOURCES=(/etc/apt/sources.list)

base_mmdebstrap_args() { # include-list
  printf '%s\n' --variant=minbase "--include=$1" \
    '--aptopt=Acquire::Languages "none"' \
    '--dpkgopt=path-exclude=/usr/share/man/*' '--dpkgopt=path-exclude=/usr/share/doc/*' \
    '--dpkgopt=path-exclude=/usr/share/locale/*' '--dpkgopt=path-exclude=/usr/share/info/*' \
    "$SUITE"
}
base_import_changes() {
  printf '%s\n' 'CMD ["python3"]' 'ENV LANG=C.UTF-8' 'ENV PYTHONUNBUFFERED=1'
}
base_key() { # include-list
  { echo "dockyard-test base recipe v1"; base_mmdebstrap_args "$1"; base_import_changes; } \
    | sha256sum | cut -c1-16
}

lda_dockerfile() { # base-image key
  cat <<DOCKERFILE
FROM $1
# flask, scikit-learn, joblib, pandas: installed with the host's pip into ./site
COPY site /usr/local/lib/python3.11/dist-packages
# the seed runs \`python /opt/ds/model/deployed_model/api.py\`; Debian has only python3
RUN ln -s /usr/bin/python3 /usr/local/bin/python
ENV WORK_DIRECTORY=/opt/ds/model/deployed_model
ENV MODEL_DIR=/opt/ds/model/deployed_model
ENV MODEL_FILE_LDA=clf_lda.joblib
CMD ["python3", "/opt/ds/model/deployed_model/api.py"]
LABEL $LABEL=$2
DOCKERFILE
}
PIP_TARGET_ARGS=(--only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64)
lda_key() { # base-key
  { echo "dockyard-test lda-flask recipe v1 base=$1"; lda_dockerfile "$BASE" KEY
    printf '%s\n' "${PIP_TARGET_ARGS[@]}"; grep -vE '^\s*(#|$)' "$LDA_REQS"; } | sha256sum | cut -c1-16
}

# ---- cache machinery -----------------------------------------------------------------------
label_of() { docker image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$1" 2>/dev/null || true; }
cache_file() { echo "$CACHE/images/$(echo "$1" | tr '/:' '__')-$2.tar"; }

save_to_cache() { # image key
  local file; file=$(cache_file "$1" "$2")
  docker save -o "$file.tmp" "$1"
  mv "$file.tmp" "$file"
  # drop this image's cache files for other recipe hashes
  find "$CACHE/images" -maxdepth 1 -name "$(echo "$1" | tr '/:' '__')-*.tar" ! -name "$(basename "$file")" -delete
}

ensure_image() { # image key build-function [build args...]
  local image=$1 key=$2 builder=$3 file t0=$EPOCHREALTIME
  shift 3
  file=$(cache_file "$image" "$key")
  if [ "$REBUILD" = 1 ]; then
    rm -f "$file"
  elif [ "$(label_of "$image")" = "$key" ]; then
    if [ -s "$file" ]; then
      note "$image" present "$(elapsed "$t0")"
    else
      save_to_cache "$image" "$key"
      note "$image" "present, saved" "$(elapsed "$t0")"
    fi
    return
  fi
  CHANGED+=("$image")
  if [ -s "$file" ]; then
    log "$image: loading $(basename "$file")"
    if docker load -q -i "$file" >/dev/null && [ "$(label_of "$image")" = "$key" ]; then
      note "$image" loaded "$(elapsed "$t0")"
      return
    fi
    log "$image: cached file unusable, rebuilding"
    rm -f "$file"
  fi
  log "$image: building (recipe $key)"
  "$builder" "$image" "$key" "$@"
  [ "$(label_of "$image")" = "$key" ] || die "$image: built image lacks label $LABEL=$key"
  save_to_cache "$image" "$key"
  note "$image" built "$(elapsed "$t0")"
}

# ---- builders ------------------------------------------------------------------------------
build_base() { # image key include-list
  local image=$1 key=$2 include=$3 tar="$WORK/rootfs-$2.tar" mlog t0 changes=()
  mlog="$CACHE/logs/mmdebstrap-$(echo "$image" | tr '/:' '__').log"
  if ! command -v mmdebstrap >/dev/null 2>&1; then
    log "installing mmdebstrap (apt-get)"
    apt-get -o DPkg::Lock::Timeout=300 update -qq
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends mmdebstrap >/dev/null
  fi
  local args; mapfile -t args < <(base_mmdebstrap_args "$include")
  t0=$EPOCHREALTIME
  # To a file first: a failed mmdebstrap piped into `docker import` leaves an empty image.
  # Share downloaded .debs between the two bases and between runs (does not change the image:
  # mmdebstrap still empties /var/cache/apt/archives in the result).
  mkdir -p "$CACHE/debs"
  local hooks=(--skip=download/empty --skip=essential/unlink
    --setup-hook='mkdir -p "$1"/var/cache/apt/archives/'
    --setup-hook="sync-in $CACHE/debs /var/cache/apt/archives/"
    --customize-hook="sync-out /var/cache/apt/archives $CACHE/debs")
  if ! mmdebstrap "${args[@]}" "${hooks[@]}" "$tar" "${SOURCES[@]}" >"$mlog" 2>&1; then
    tail -n 30 "$mlog" >&2
    die "$image: mmdebstrap failed (full log: $mlog)"
  fi
  log "$image: mmdebstrap $(du -m "$tar" | cut -f1) MB in $(elapsed "$t0") s"
  while IFS= read -r c; do changes+=(--change "$c"); done < <(base_import_changes)
  t0=$EPOCHREALTIME
  docker import "${changes[@]}" --change "LABEL $LABEL=$key" "$tar" "$image" >/dev/null
  rm -f "$tar"
  log "$image: docker import in $(elapsed "$t0") s"
}

build_lda() { # image key base-image
  local image=$1 key=$2 base=$3 ctx="$WORK/lda-context" t0
  mkdir -p "$ctx"
  t0=$EPOCHREALTIME
  local plog="$CACHE/logs/pip-lda-flask.log"
  # (pip may warn about the host's own packages: --target installs into ./site only)
  if ! python3 -m pip install --disable-pip-version-check "${PIP_TARGET_ARGS[@]}" \
      --target "$ctx/site" -r "$LDA_REQS" >"$plog" 2>&1; then
    tail -n 30 "$plog" >&2
    die "$image: host pip install failed (full log: $plog)"
  fi
  rm -rf "$ctx/site/bin"   # console scripts, meaningless inside dist-packages
  log "$image: host pip --target site ($(du -sm "$ctx/site" | cut -f1) MB) in $(elapsed "$t0") s"
  lda_dockerfile "$base" "$key" >"$ctx/Dockerfile"
  t0=$EPOCHREALTIME
  docker build -q -t "$image" "$ctx" >/dev/null 2>"$WORK/build.err" || { cat "$WORK/build.err" >&2; die "$image: docker build failed"; }
  rm -rf "$ctx"
  log "$image: docker build in $(elapsed "$t0") s"
}

# ---- checks --------------------------------------------------------------------------------
check() { # what image command...
  local what=$1 image=$2 out; shift 2
  out=$(docker run --rm --network none "$image" "$@" 2>&1) || die "$image: check '$what' failed: $out"
  log "$image: $what: $(echo "$out" | tail -n 1)"
}

# ---- main ----------------------------------------------------------------------------------
BASE_KEY=$(base_key python3,curl,ca-certificates)
NOCURL_KEY=$(base_key python3)
LDA_KEY=$(lda_key "$BASE_KEY")

ensure_image "$BASE" "$BASE_KEY" build_base python3,curl,ca-certificates
ensure_image "$NOCURL" "$NOCURL_KEY" build_base python3
ensure_image "$LDA" "$LDA_KEY" build_lda "$BASE"

changed() { [[ " ${CHANGED[*]} " == *" $1 "* ]]; }
t0=$EPOCHREALTIME
PYV='import sys; v = sys.version_info[:2]; print("python %d.%d" % v); sys.exit(v != (3, 11))'
if changed "$BASE"; then
  check "python3 is 3.11" "$BASE" python3 -c "$PYV"
  check "curl present" "$BASE" curl --version
fi
if changed "$NOCURL"; then
  check "python3 is 3.11" "$NOCURL" python3 -c "$PYV"
  check "curl absent" "$NOCURL" sh -c '! command -v curl && echo "no curl"'
fi
if changed "$LDA"; then
  check "imports" "$LDA" python3 -W ignore -c 'import sys, sklearn, flask, pandas, joblib; print("python", sys.version.split()[0], "sklearn", sklearn.__version__, "flask", flask.__version__, "pandas", pandas.__version__)'
  check "python -> python3" "$LDA" python -c 'print("python ok")'
fi
if [ ${#CHANGED[@]} -gt 0 ]; then
  note "checks (docker run)" done "$(elapsed "$t0")"
else
  log "all images present with their recipe labels (checked when built): no checks run"
fi

if [ "$PUSH" = 0 ]; then
  log "push skipped (DOCKYARD_TEST_PUSH=0)"
elif [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$REGISTRY/v2/" || true)" != 200 ]; then
  log "push skipped: no open registry answering on http://$REGISTRY/v2/ (run scripts/infra/registry.sh)"
else
  for image in "$BASE" "$NOCURL" "$LDA"; do
    t0=$EPOCHREALTIME
    docker tag "$image" "$REGISTRY/$image"
    docker push "$REGISTRY/$image" >"$WORK/push.log" 2>&1 || { cat "$WORK/push.log" >&2; die "push of $REGISTRY/$image failed"; }
    note "push $REGISTRY/$image" "$(grep -o 'sha256:[0-9a-f]\{12\}' "$WORK/push.log" | tail -n 1)" "$(elapsed "$t0")"
  done
fi

log "summary:"
printf '  %s\n' "${SUMMARY[@]}"
log "total $(elapsed "$T_ALL") s"
