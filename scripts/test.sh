#!/usr/bin/env bash
# Set up everything the tests need (idempotent) and run the whole suite; then (when no
# pytest args are given, as in CI) the hub tests again with every test hub on PostgreSQL
# (EDGEFLEET_TEST_STORE=postgres, docs/scaling.md). Usage: scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import edge_agent, hub, pytest, pytest_asyncio, hypothesis, aiodocker, aiosqlite, uvloop, asyncpg, playwright, yaml, schemathesis' 2>/dev/null \
   || [ pyproject.toml -nt .testenv/installed ]; then
    "$PY" -m pip install -q -e '.[dev,hub]'
    mkdir -p .testenv && touch .testenv/installed
fi
bash scripts/testenv.sh
if [ "$#" -gt 0 ]; then
    exec "$PY" -m pytest -q -p no:cacheprovider --durations=30 "$@"
fi
rc=0
"$PY" -m pytest -q -p no:cacheprovider --durations=30 || rc=$?
echo "== tests/hub again, every test hub on PostgreSQL (EDGEFLEET_TEST_STORE=postgres) =="
start=$(date +%s)
EDGEFLEET_TEST_STORE=postgres "$PY" -m pytest -q -p no:cacheprovider --durations=10 tests/hub \
    || rc=$?
echo "== PostgreSQL pass: $(( $(date +%s) - start )) s =="
exit "$rc"
