#!/usr/bin/env bash
# Set up everything the tests need (idempotent) and run the whole suite.
# Usage: scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import edge_agent, hub, pytest, pytest_asyncio, hypothesis, aiodocker, aiosqlite, uvloop, asyncpg, playwright, yaml, schemathesis' 2>/dev/null \
   || [ pyproject.toml -nt .testenv/installed ]; then
    "$PY" -m pip install -q -e '.[dev,hub]'
    mkdir -p .testenv && touch .testenv/installed
fi
bash scripts/testenv.sh
exec "$PY" -m pytest -q -p no:cacheprovider --durations=30 "$@"
