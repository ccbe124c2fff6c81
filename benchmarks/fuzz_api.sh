#!/usr/bin/env bash
# Fuzz every control-plane operation with schemathesis: EXAMPLES per operation (default 100)
# against a live server on the fake runtime, signed requests; prints each operation's status
# counts and the number of server errors. Exit status non-zero when any check failed.
#
#   benchmarks/fuzz_api.sh            # 100 examples per operation
#   benchmarks/fuzz_api.sh 300
set -euo pipefail
cd "$(dirname "$0")/.."
examples="${1:-100}"
summary="$(mktemp)"
trap 'rm -f "$summary"' EXIT
status=0
DOCKYARD_FUZZ_EXAMPLES="$examples" DOCKYARD_FUZZ_SUMMARY="$summary" \
  .venv/bin/python -m pytest tests/api/test_fuzz.py -q -p no:cacheprovider || status=$?
cat "$summary"
exit "$status"
