#!/usr/bin/env bash
# Build the example BYOC model artifact (the seed's Flask + LDA example):
#   build/lda-artifact/      unpacked: api.py, clf_lda.joblib, test.json, test.csv
#   build/lda-artifact.zip   the same four files at the top level of the zip
# Trains src/dockyard/examples/lda/train.py with the project venv's Python. The training
# packages (scikit-learn, pandas, numpy, joblib) are pip-installed into that venv at the
# versions pinned in src/dockyard/examples/lda/requirements.txt when they are missing or
# differ: the pickle must be loaded by the same scikit-learn as dockyard-test/lda-flask has.
# Deterministic: same inputs -> byte-identical zip.
#
# Usage: scripts/infra/lda-artifact.sh [OUT_DIR]      (default: <repo>/build)
# Env:   DOCKYARD_PYTHON   interpreter to train with (default <repo>/.venv/bin/python)
set -euo pipefail

log() { printf '[lda-artifact.sh] %s\n' "$*"; }
die() { printf '[lda-artifact.sh] ERROR: %s\n' "$*" >&2; exit 1; }
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
EX=$REPO/src/dockyard/examples/lda
PY=${DOCKYARD_PYTHON:-$REPO/.venv/bin/python}
OUT=${1:-$REPO/build}
[ -x "$PY" ] || die "no Python at $PY (set DOCKYARD_PYTHON)"
t0=$EPOCHREALTIME

mapfile -t pins < <(grep -E '^(scikit-learn|pandas|numpy|joblib)==' "$EX/requirements.txt")
[ "${#pins[@]}" = 4 ] || die "expected pins for scikit-learn, pandas, numpy, joblib in $EX/requirements.txt"
if ! "$PY" - "${pins[@]}" <<'PYEOF'
import sys
from importlib.metadata import version, PackageNotFoundError
bad = []
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        have = version(name)
    except PackageNotFoundError:
        have = None
    if have != want:
        bad.append("%s (have %s)" % (pin, have))
if bad:
    print("[lda-artifact.sh] training packages to install: " + ", ".join(bad))
    sys.exit(1)
PYEOF
then
  log "pip install ${pins[*]} into $("$PY" -c 'import sys; print(sys.prefix)')"
  "$PY" -m pip install -q --disable-pip-version-check "${pins[@]}"
fi

ART=$OUT/lda-artifact
ZIP=$OUT/lda-artifact.zip
rm -rf "$ART" && mkdir -p "$ART"
( cd "$ART" && "$PY" "$EX/train.py" . | sed 's/^/[lda-artifact.sh] /' )
cp "$EX/api.py" "$ART/api.py"

"$PY" - "$ART" "$ZIP" <<'PYEOF'
import os, sys, zipfile
src, dst = sys.argv[1], sys.argv[2]
tmp = dst + ".tmp"
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
    for name in sorted(os.listdir(src)):
        info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
        info.external_attr = 0o644 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        with open(os.path.join(src, name), "rb") as fh:
            zf.writestr(info, fh.read())
os.replace(tmp, dst)
PYEOF
log "wrote $ZIP ($(stat -c %s "$ZIP") bytes: $(cd "$ART" && ls | tr '\n' ' ')) and $ART/ in $(elapsed "$t0") s"
