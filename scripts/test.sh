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
# Left out (docs/scaling.md says why): the store_backends files (the first pass ran them on
# both backends already), the API contract fuzz (10 minutes alone), scale and SQLite-file
# costs, and unit tests that open no store.
skip=(test_store_backends.py test_store_backends_access.py test_store_backends_parity.py
      test_store_backends_releases.py test_store_backends_secrets.py test_store_backends_side.py
      test_store_backends_writer.py test_api_contract.py test_rollouts_scale.py
      test_long_poll_scale.py test_catchup_costs.py test_dashboard_speed.py test_selector.py
      test_image_ref.py test_secrets_units.py test_drift_table.py test_fleet_drift.py
      test_registry.py test_registry_token.py test_hub_units.py)
ignore=()
for f in "${skip[@]}"; do ignore+=(--ignore "tests/hub/$f"); done
# SQLite-only (it rewrites a hub.db as a hub before migration 19 wrote it; the test says so
# in its skipif): deselected rather than reported as skipped.
ignore+=(--deselect "tests/hub/test_secret_moves.py::test_clear_registry_passwords_stored_before_the_secret_store_are_moved_at_start")
start=$(date +%s)
EDGEFLEET_TEST_STORE=postgres "$PY" -m pytest -q -p no:cacheprovider --durations=10 \
    "${ignore[@]}" tests/hub || rc=$?
echo "== PostgreSQL pass: $(( $(date +%s) - start )) s =="
exit "$rc"
