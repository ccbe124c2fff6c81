#!/usr/bin/env bash
# A real NVIDIA Triton Inference Server (CPU, Python backend) for the Triton-mode tests, twice:
#
#   dockyard-test/tritonserver:24.10-py3-cpu   an image laid out like NVIDIA's
#       nvcr.io/nvidia/tritonserver:24.10-py3: /opt/tritonserver/{bin,lib,backends,caches},
#       tritonserver on PATH, ENTRYPOINT /opt/nvidia/nvidia_entrypoint.sh (runs its arguments,
#       starts no server by itself: the deployment's command does), python3 + numpy for
#       Python-backend models, curl for the health check.
#   $CACHE/pytriton-venv                       the same server on this host, for the process
#       runtime's local-development mode: a venv with nvidia-pytriton, and bin/tritonserver
#       there (PATH it first: the Python backend's stub finds numpy through it).
#
# Where tritonserver comes from: the PyPI wheel nvidia-pytriton bundles tritonserver 2.51.0
# (= NGC 24.10) with the Python backend and the libraries it links (nvidia_pytriton.libs). The
# image takes only those files from the wheel (the pytriton Python package is not needed to
# run the server, just as NVIDIA's image has none); numpy comes from Debian. Nothing comes from
# a container registry: the rootfs is made with mmdebstrap, the files copied in by a
# customize hook, and the result `docker import`ed (no `docker build`, no network in a
# container).
#
# Cache (like images.sh): the image carries org.dockyard.test.recipe=<hash of this recipe and
# the wheel>; an image with the right label is kept, else the `docker save` output in
# $CACHE/images/ is loaded, else it is built and saved there. The venv is rebuilt only when its
# stamp (the same wheel) is missing.
#
# Env: DOCKYARD_TEST_IMAGE_CACHE, DOCKYARD_TEST_REGISTRY, DOCKYARD_TEST_PUSH=0, DOCKYARD_TEST_REBUILD=1
#      as in images.sh.
set -euo pipefail

log() { printf '[triton-image.sh] %s\n' "$*"; }
die() { printf '[triton-image.sh] ERROR: %s\n' "$*" >&2; exit 1; }
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${DOCKYARD_TEST_IMAGE_CACHE:-/var/cache/dockyard-test}
REGISTRY=${DOCKYARD_TEST_REGISTRY:-127.0.0.1:5001}
PUSH=${DOCKYARD_TEST_PUSH:-1}
REBUILD=${DOCKYARD_TEST_REBUILD:-0}
LABEL=org.dockyard.test.recipe
SUITE=bookworm
PYTRITON_VERSION=0.7.0            # bundles tritonserver 2.51.0 (NGC 24.10)
WHEEL=nvidia_pytriton-$PYTRITON_VERSION-py3-none-manylinux_2_35_x86_64.whl
IMAGE=dockyard-test/tritonserver:24.10-py3-cpu
VENV=$CACHE/pytriton-venv
INCLUDE=python3,libpython3.11,python3-numpy,curl,ca-certificates
export DEBIAN_FRONTEND=noninteractive

[ "$(id -u)" = 0 ] || die "must run as root"
T_ALL=$EPOCHREALTIME
bash "$HERE/docker.sh"
mkdir -p "$CACHE/images" "$CACHE/tmp" "$CACHE/logs" "$CACHE/wheels" "$CACHE/debs"
exec 8>"$CACHE/triton.lock"
flock -w 1800 8 || die "could not take $CACHE/triton.lock (another triton-image.sh still running?)"
WORK=$(mktemp -d "$CACHE/tmp/triton.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

apt_install() { # package... (only those missing)
  local missing=() p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} = 0 ] && return
  log "installing ${missing[*]} (apt-get)"
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# ---- the wheel (55 MB), downloaded once ------------------------------------------------------
if [ ! -s "$CACHE/wheels/$WHEEL" ]; then
  t0=$EPOCHREALTIME
  python3 -m pip download --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.11 --platform manylinux_2_35_x86_64 "nvidia-pytriton==$PYTRITON_VERSION" \
    -d "$WORK/wheel" >"$CACHE/logs/pip-download-pytriton.log" 2>&1 \
    || { tail -n 20 "$CACHE/logs/pip-download-pytriton.log" >&2; die "pip download nvidia-pytriton failed"; }
  mv "$WORK/wheel/$WHEEL" "$CACHE/wheels/$WHEEL"
  log "downloaded $WHEEL in $(elapsed "$t0") s"
fi
WHEEL_SHA=$(sha256sum "$CACHE/wheels/$WHEEL" | cut -c1-16)

# ---- the image -----------------------------------------------------------------------------
SOURCES=()
[ -f /etc/apt/sources.list.d/debian.sources ] && SOURCES=(/etc/apt/sources.list.d/debian.sources)
[ ${#SOURCES[@]} = 0 ] && [ -s /etc/apt/sources.list ] && SOURCES=(/etc/apt/sources.list)

# NVIDIA's entrypoint runs its arguments (a bare `docker run` gets a shell): the platform, not
# the image, starts `tritonserver --model-repository=...`.
ENTRYPOINT_SCRIPT='#!/bin/bash
echo "== Triton Inference Server (dockyard test image: tritonserver 2.51.0, CPU, Python backend) =="
if [ $# -eq 0 ]; then exec /bin/bash; else exec "$@"; fi'

mmdebstrap_args() {
  printf '%s\n' --variant=minbase "--include=$INCLUDE" \
    '--aptopt=Acquire::Languages "none"' \
    '--dpkgopt=path-exclude=/usr/share/man/*' '--dpkgopt=path-exclude=/usr/share/doc/*' \
    '--dpkgopt=path-exclude=/usr/share/locale/*' '--dpkgopt=path-exclude=/usr/share/info/*' \
    "$SUITE"
}
import_changes() {
  printf '%s\n' \
    'ENV PATH=/opt/tritonserver/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    'ENV LD_LIBRARY_PATH=/opt/tritonserver/lib' 'ENV LANG=C.UTF-8' 'ENV PYTHONUNBUFFERED=1' \
    'ENV TRITON_SERVER_VERSION=2.51.0' 'ENV NVIDIA_TRITON_SERVER_VERSION=24.10' \
    'WORKDIR /opt/tritonserver' 'ENTRYPOINT ["/opt/nvidia/nvidia_entrypoint.sh"]'
}
# The files of the wheel that make the server, laid out as in NVIDIA's image (in $1 = staging).
stage_tritonserver() {
  local x="$WORK/wheel-x" ts="$1/opt/tritonserver"
  rm -rf "$x" && mkdir -p "$x" "$ts/lib" "$1/opt/nvidia"
  python3 -m zipfile -e "$CACHE/wheels/$WHEEL" "$x"
  cp -a "$x/pytriton/tritonserver/bin" "$x/pytriton/tritonserver/backends" "$x/pytriton/tritonserver/caches" "$ts/"
  cp -a "$x/nvidia_pytriton.libs/." "$ts/lib/"
  cp "$x/pytriton/tritonserver/python_backend_stubs/3.11/triton_python_backend_stub" "$ts/backends/python/"
  chmod 0755 "$ts/bin/tritonserver" "$ts/backends/python/triton_python_backend_stub"
  printf '%s\n' "$ENTRYPOINT_SCRIPT" >"$1/opt/nvidia/nvidia_entrypoint.sh"
  chmod 0755 "$1/opt/nvidia/nvidia_entrypoint.sh"
  rm -rf "$x"
}
IMAGE_KEY=$({ echo "dockyard-test tritonserver recipe v1 wheel=$WHEEL_SHA"; mmdebstrap_args; import_changes
  echo "$ENTRYPOINT_SCRIPT"; declare -f stage_tritonserver; } | sha256sum | cut -c1-16)

label_of() { docker image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$1" 2>/dev/null || true; }
CACHE_FILE="$CACHE/images/$(echo "$IMAGE" | tr '/:' '__')-$IMAGE_KEY.tar"

build_image() {
  local tar="$WORK/rootfs.tar" stage="$WORK/stage" mlog="$CACHE/logs/mmdebstrap-tritonserver.log" t0 changes=()
  command -v mmdebstrap >/dev/null 2>&1 || apt_install mmdebstrap
  local args; mapfile -t args < <(mmdebstrap_args)
  t0=$EPOCHREALTIME
  stage_tritonserver "$stage"
  log "staged tritonserver from the wheel ($(du -sm "$stage" | cut -f1) MB) in $(elapsed "$t0") s"
  t0=$EPOCHREALTIME
  # .debs shared with images.sh and between runs (mmdebstrap still empties the image's apt cache)
  if ! mmdebstrap "${args[@]}" --skip=download/empty --skip=essential/unlink \
      --setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
      --setup-hook="sync-in $CACHE/debs /var/cache/apt/archives/" \
      --customize-hook="sync-out /var/cache/apt/archives $CACHE/debs" \
      --customize-hook="copy-in $stage/opt/tritonserver $stage/opt/nvidia /opt/" \
      "$tar" "${SOURCES[@]}" >"$mlog" 2>&1; then
    tail -n 30 "$mlog" >&2
    die "$IMAGE: mmdebstrap failed (full log: $mlog)"
  fi
  log "$IMAGE: mmdebstrap $(du -m "$tar" | cut -f1) MB in $(elapsed "$t0") s"
  while IFS= read -r c; do changes+=(--change "$c"); done < <(import_changes)
  t0=$EPOCHREALTIME
  docker import "${changes[@]}" --change "LABEL $LABEL=$IMAGE_KEY" "$tar" "$IMAGE" >/dev/null
  rm -rf "$tar" "$stage"
  log "$IMAGE: docker import in $(elapsed "$t0") s"
}

# A Python-backend model answers inside the image: the whole chain (server, stub, libpython, numpy).
check_image() {
  local repo="$WORK/check-repo" out t0=$EPOCHREALTIME
  mkdir -p "$repo/double/1"
  printf '%s\n' 'backend: "python"' 'max_batch_size: 0' \
    'input [{ name: "INPUT0", data_type: TYPE_FP32, dims: [ -1 ] }]' \
    'output [{ name: "OUTPUT0", data_type: TYPE_FP32, dims: [ -1 ] }]' >"$repo/double/config.pbtxt"
  cat >"$repo/double/1/model.py" <<'PY'
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", (pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy() * 2).astype(np.float32))]) for r in requests]
PY
  chmod -R a+rX "$repo"
  out=$(docker run --rm --network none -v "$repo:/models:ro" "$IMAGE" bash -c '
    tritonserver --model-repository=/models --allow-grpc=false --allow-metrics=false >/tmp/ts.log 2>&1 &
    for i in $(seq 1 120); do curl -sf localhost:8000/v2/health/ready >/dev/null && break; sleep 0.5; done
    curl -sf -X POST localhost:8000/v2/models/double/infer \
      -d "{\"inputs\":[{\"name\":\"INPUT0\",\"shape\":[2],\"datatype\":\"FP32\",\"data\":[1.5,2]}]}" || { tail -n 30 /tmp/ts.log; exit 1; }' 2>&1) \
    || die "$IMAGE: the check model did not answer: $out"
  [[ "$out" == *'"data":[3.0,4.0]'* ]] || die "$IMAGE: wrong answer from the check model: $out"
  log "$IMAGE: check: double([1.5, 2]) -> $(echo "$out" | grep -o '"data":\[[^]]*\]') in $(elapsed "$t0") s"
}

t0=$EPOCHREALTIME
[ "$REBUILD" = 1 ] && rm -f "$CACHE_FILE"
if [ "$REBUILD" != 1 ] && [ "$(label_of "$IMAGE")" = "$IMAGE_KEY" ]; then
  [ -s "$CACHE_FILE" ] || docker save -o "$CACHE_FILE" "$IMAGE"
  log "$IMAGE: present (recipe $IMAGE_KEY) in $(elapsed "$t0") s"
else
  if [ -s "$CACHE_FILE" ] && docker load -q -i "$CACHE_FILE" >/dev/null && [ "$(label_of "$IMAGE")" = "$IMAGE_KEY" ]; then
    log "$IMAGE: loaded from $(basename "$CACHE_FILE") in $(elapsed "$t0") s"
  else
    rm -f "$CACHE_FILE"
    log "$IMAGE: building (recipe $IMAGE_KEY)"
    build_image
    [ "$(label_of "$IMAGE")" = "$IMAGE_KEY" ] || die "$IMAGE: built image lacks label $LABEL=$IMAGE_KEY"
    docker save -o "$CACHE_FILE.tmp" "$IMAGE" && mv "$CACHE_FILE.tmp" "$CACHE_FILE"
    log "$IMAGE: built and saved in $(elapsed "$t0") s"
  fi
  find "$CACHE/images" -maxdepth 1 -name "$(echo "$IMAGE" | tr '/:' '__')-*.tar" ! -name "$(basename "$CACHE_FILE")" -delete
  check_image
fi

if [ "$PUSH" = 0 ]; then
  log "push skipped (DOCKYARD_TEST_PUSH=0)"
elif [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$REGISTRY/v2/" || true)" != 200 ]; then
  log "push skipped: no open registry answering on http://$REGISTRY/v2/ (run scripts/infra/registry.sh)"
else
  t0=$EPOCHREALTIME
  docker tag "$IMAGE" "$REGISTRY/$IMAGE"
  docker push "$REGISTRY/$IMAGE" >"$WORK/push.log" 2>&1 || { cat "$WORK/push.log" >&2; die "push of $REGISTRY/$IMAGE failed"; }
  log "pushed $REGISTRY/$IMAGE $(grep -o 'sha256:[0-9a-f]\{12\}' "$WORK/push.log" | tail -n 1) in $(elapsed "$t0") s"
fi

# ---- the host venv (process runtime) -------------------------------------------------------
# Debian's python3: the Python backend's stub links the system libpython3.11, so the venv's
# interpreter must be the same Python.
STAMP="$VENV/.dockyard-recipe"
VENV_KEY="pytriton $WHEEL_SHA python $(/usr/bin/python3 -c 'import sys; print(sys.version.split()[0])') v1"
if [ "$REBUILD" != 1 ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$VENV_KEY" ]; then
  log "$VENV: present"
else
  t0=$EPOCHREALTIME
  apt_install python3-venv libpython3.11
  rm -rf "$VENV"
  /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install --disable-pip-version-check -q "$CACHE/wheels/$WHEEL" >"$CACHE/logs/pip-pytriton-venv.log" 2>&1 \
    || { tail -n 20 "$CACHE/logs/pip-pytriton-venv.log" >&2; die "pip install into $VENV failed"; }
  SP=$("$VENV/bin/python" -c 'import pytriton, os; print(os.path.dirname(os.path.dirname(pytriton.__file__)))')
  TS=$SP/pytriton/tritonserver
  # The stub next to the backend, in the wheel's own tree: its RPATH then finds nvidia_pytriton.libs.
  cp "$TS/python_backend_stubs/3.11/triton_python_backend_stub" "$TS/backends/python/"
  # `tritonserver` on PATH, with the backends of this tree unless the command names others.
  cat >"$VENV/bin/tritonserver" <<SH
#!/bin/sh
# tritonserver 2.51.0 from nvidia-pytriton, with this venv's Python backend by default.
case " \$* " in *" --backend-directory"*) exec "$TS/bin/tritonserver" "\$@" ;; esac
exec "$TS/bin/tritonserver" --backend-directory="$TS/backends" "\$@"
SH
  chmod 0755 "$VENV/bin/tritonserver"
  chmod -R a+rX "$VENV"
  echo "$VENV_KEY" >"$STAMP"
  log "$VENV: built ($(du -sm "$VENV" | cut -f1) MB) in $(elapsed "$t0") s"
fi

log "total $(elapsed "$T_ALL") s"
