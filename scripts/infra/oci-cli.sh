#!/usr/bin/env bash
# The official `oci` CLI in a virtual environment of its own (it pins its own version of the oci
# SDK, which must not replace the one dockyard's tests use), cached between runs under
# /var/cache/dockyard-test when that is writable, else under build/. Idempotent. Prints the path
# of the `oci` executable on its last line.
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION=${OCI_CLI_VERSION:-3.95.1}
CACHE=/var/cache/dockyard-test
if mkdir -p "$CACHE" 2>/dev/null && [ -w "$CACHE" ]; then VENV="$CACHE/oci-cli-$VERSION"; else VENV="$PWD/build/oci-cli-$VERSION"; fi
if ! { [ -x "$VENV/bin/oci" ] && [ -f "$VENV/.complete" ]; }; then
  start=$(date +%s)
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q "oci-cli==$VERSION" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  touch "$VENV/.complete"
  echo "[oci-cli.sh] installed oci-cli $VERSION into $VENV in $(( $(date +%s) - start )) s" >&2
fi
echo "$VENV/bin/oci"
