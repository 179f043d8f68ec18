"""Numbered migrations of the hub's SQLite schema; each runs with its record in one transaction.

Never edit a released migration: append a new one. Times are ISO 8601 UTC text.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from hub.audit_chain import backfill as backfill_audit_chain
from hub.store.sqlite_secret_moves import queue_clear_passwords

# A step is SQL text, or a function of the connection for what SQL cannot say.
Step = str | Callable[[sqlite3.Connection], None]

MIGRATIONS: list[tuple[int, str, list[Step]]] = [
    (
        1,
        "devices, enrollment tokens, targets, events, audit",
        [
            """CREATE TABLE enrollment_tokens (
                id TEXT PRIMARY KEY,
                secret_hash TEXT NOT NULL,
                uses_total INTEGER NOT NULL,
                uses_left INTEGER NOT NULL CHECK (uses_left >= 0),
                expires_at TEXT NOT NULL,
                tags TEXT NOT NULL DEFAULT '{}',
                created_at TEXT NOT NULL,
                created_by TEXT NOT NULL
            )""",
            """CREATE TABLE devices (
                id TEXT PRIMARY KEY,
                hostname TEXT NOT NULL DEFAULT '',
                tags TEXT NOT NULL DEFAULT '{}',
                cert_serial TEXT NOT NULL,
                cert_fingerprint TEXT NOT NULL,
                cert_not_after TEXT NOT NULL,
                enrolled_at TEXT NOT NULL,
                enrollment_token TEXT NOT NULL,
                disabled INTEGER NOT NULL DEFAULT 0,
                last_contact TEXT,
                agent_version TEXT NOT NULL DEFAULT '',
                applied_revision INTEGER NOT NULL DEFAULT 0,
                target_revision INTEGER NOT NULL DEFAULT 0,
                acked_seq INTEGER NOT NULL DEFAULT 0,
                state TEXT,
                release TEXT,
                services TEXT,
                counters TEXT,
                last_error TEXT,
                status_at TEXT,
                has_full_status INTEGER NOT NULL DEFAULT 0
            )""",
            """CREATE TABLE targets (
                device_id TEXT NOT NULL REFERENCES devices(id),
                revision INTEGER NOT NULL,
                document TEXT NOT NULL,
                created_at TEXT NOT NULL,
                created_by TEXT NOT NULL,
                PRIMARY KEY (device_id, revision)
            ) WITHOUT ROWID""",
            """CREATE TABLE events (
                device_id TEXT NOT NULL,
                seq INTEGER NOT NULL,
                kind TEXT NOT NULL,
                created_at TEXT NOT NULL,
                received_at TEXT NOT NULL,
                payload TEXT NOT NULL,
                PRIMARY KEY (device_id, seq)
            ) WITHOUT ROWID""",
            """CREATE TABLE audit (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                at TEXT NOT NULL,
                actor TEXT NOT NULL,
                action TEXT NOT NULL,
                target TEXT NOT NULL,
                outcome TEXT NOT NULL,
                detail TEXT NOT NULL DEFAULT '{}'
            )""",
            "CREATE INDEX audit_by_target ON audit (target, id)",
        ],
    ),
    (
        2,
        "store epochs per device; device protocol and features",
        [
            # The device's current store generation and how its seqs map to the hub's:
            # hub seq = device seq + seq_offset, for device seqs above seq_floor.
            "ALTER TABLE devices ADD COLUMN store_epoch TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE devices ADD COLUMN seq_offset INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE devices ADD COLUMN seq_floor INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE devices ADD COLUMN seq_high INTEGER NOT NULL DEFAULT 0",
            "UPDATE devices SET seq_high = (SELECT COALESCE(MAX(seq), 0) FROM events "
            "WHERE events.device_id = devices.id)",
            """CREATE TABLE device_epochs (
                device_id TEXT NOT NULL,
                epoch TEXT NOT NULL,
                acked_seq INTEGER NOT NULL,
                PRIMARY KEY (device_id, epoch)
            ) WITHOUT ROWID""",
            "ALTER TABLE devices ADD COLUMN protocol INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE devices ADD COLUMN features TEXT",
        ],
    ),
    (
        3,
        "devices: running and applying revisions reported apart, rollout state",
        [
            "ALTER TABLE devices ADD COLUMN running_revision INTEGER",
            "ALTER TABLE devices ADD COLUMN running_local_seq INTEGER",
            "ALTER TABLE devices ADD COLUMN applying_revision INTEGER",
            "ALTER TABLE devices ADD COLUMN rollout_state TEXT",
        ],
    ),
    (
        4,
        "certificate lineage: the serial a renewal replaced, the newest certificate's key",
        [
            "ALTER TABLE devices ADD COLUMN prev_cert_serial TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE devices ADD COLUMN cert_key_sha256 TEXT NOT NULL DEFAULT ''",
        ],
    ),
    (
        5,
        "releases: immutable NAME@VERSION with images pinned to digests, retirement",
        [
            """CREATE TABLE releases (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                name TEXT NOT NULL,
                version TEXT NOT NULL,
                document TEXT NOT NULL,
                source TEXT NOT NULL,
                images TEXT NOT NULL DEFAULT '[]',
                created_at TEXT NOT NULL,
                created_by TEXT NOT NULL,
                retired_at TEXT,
                retired_by TEXT,
                retired_reason TEXT,
                UNIQUE (name, version)
            )""",
        ],
    ),
    (
        6,
        "groups (named tag selectors) and environment overrides per group and per device",
        [
            """CREATE TABLE groups (
                name TEXT PRIMARY KEY,
                selector TEXT NOT NULL,
                overrides TEXT NOT NULL DEFAULT '{}',
                created_at TEXT NOT NULL,
                created_by TEXT NOT NULL
            ) WITHOUT ROWID""",
            """CREATE TABLE device_overrides (
                device_id TEXT PRIMARY KEY REFERENCES devices(id),
                overrides TEXT NOT NULL DEFAULT '{}'
            ) WITHOUT ROWID""",
        ],
    ),
    (
        7,
        "rollouts: spec and state of each staged rollout (hub.rollouts plans them)",
        [
            """CREATE TABLE rollouts (
                id TEXT PRIMARY KEY,
                release TEXT NOT NULL,
                spec TEXT NOT NULL,
                state TEXT NOT NULL,
                status TEXT NOT NULL,
                created_at TEXT NOT NULL,
                created_by TEXT NOT NULL,
                updated_at TEXT NOT NULL
            ) WITHOUT ROWID""",
            "CREATE INDEX rollouts_status ON rollouts (status)",
        ],
    ),
    (
        8,
        "the latest host container report per device, and when each digest/release was first seen",
        [
            """CREATE TABLE host_reports (
                device_id TEXT PRIMARY KEY REFERENCES devices(id),
                containers TEXT NOT NULL,
                total INTEGER NOT NULL,
                reported_at TEXT NOT NULL
            ) WITHOUT ROWID""",
            # At most HOST_CONTAINERS_MAX digests + 1 release per device: keys no longer
            # reported are deleted with each report.
            """CREATE TABLE host_sightings (
                device_id TEXT NOT NULL REFERENCES devices(id),
                key TEXT NOT NULL,
                first_seen TEXT NOT NULL,
                PRIMARY KEY (device_id, key)
            ) WITHOUT ROWID""",
        ],
    ),
    (
        9,
        "devices: when the maintenance window of a waiting target opens (agent-reported)",
        ["ALTER TABLE devices ADD COLUMN window_opens_at TEXT"],
    ),
    (
        10,
        "audit: hash chain and source address; device audit records and chain state",
        [
            "ALTER TABLE audit ADD COLUMN source_addr TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE audit ADD COLUMN prev_hash TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE audit ADD COLUMN hash TEXT NOT NULL DEFAULT ''",
            backfill_audit_chain,
            # Device audit records as they arrive (hub.device_audit), for the audit query;
            # (device_id, seq) is the hub seq of the entry: a re-delivery is ignored.
            """CREATE TABLE device_audit (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                device_id TEXT NOT NULL,
                seq INTEGER NOT NULL,
                record_id INTEGER NOT NULL,
                at TEXT NOT NULL,
                received_at TEXT NOT NULL,
                actor TEXT NOT NULL,
                action TEXT NOT NULL,
                object TEXT NOT NULL,
                outcome TEXT NOT NULL,
                detail TEXT NOT NULL,
                hash TEXT NOT NULL,
                broken TEXT,
                feed_after INTEGER NOT NULL,
                UNIQUE (device_id, seq)
            )""",
            "CREATE INDEX device_audit_by_device ON device_audit (device_id, id)",
            # One listing of hub and device records: a device record is placed after the
            # hub record that was last when it arrived (append-only, so one cursor pages it).
            "CREATE INDEX device_audit_feed ON device_audit (feed_after, id)",
            """CREATE TABLE device_audit_chain (
                device_id TEXT PRIMARY KEY,
                last_id INTEGER NOT NULL,
                last_hash TEXT NOT NULL,
                verified INTEGER NOT NULL DEFAULT 0,
                unverifiable INTEGER NOT NULL DEFAULT 0,
                broken_id INTEGER,
                broken_at TEXT,
                broken_reason TEXT,
                breaks INTEGER NOT NULL DEFAULT 0
            ) WITHOUT ROWID""",
        ],
    ),
    (
        11,
        "technician tokens the hub issued (never the token itself), and their revocation",
        [
            """CREATE TABLE technician_tokens (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                role TEXT NOT NULL,
                scope TEXT NOT NULL,
                issued_at TEXT NOT NULL,
                expires_at TEXT NOT NULL,
                created_by TEXT NOT NULL,
                revoked_at TEXT,
                revoked_by TEXT
            ) WITHOUT ROWID""",
            "CREATE INDEX technician_tokens_expiry ON technician_tokens (expires_at)",
        ],
    ),
    (
        12,
        "queued device actions: signed per device, delivered by sync, result from the outbox",
        [
            """CREATE TABLE actions (
                id TEXT PRIMARY KEY,
                device_id TEXT NOT NULL,
                kind TEXT NOT NULL,
                args TEXT NOT NULL,
                created_by TEXT NOT NULL,
                created_at TEXT NOT NULL,
                expires_at TEXT NOT NULL,
                signed TEXT NOT NULL,
                state TEXT NOT NULL,
                state_at TEXT NOT NULL,
                delivered_at TEXT,
                received_at TEXT,
                reason TEXT,
                result TEXT,
                group_name TEXT
            ) WITHOUT ROWID""",
            "CREATE INDEX actions_device_state ON actions (device_id, state, created_at)",
            "CREATE INDEX actions_created ON actions (created_at)",
            "CREATE INDEX actions_state_at ON actions (state, state_at)",
        ],
    ),
    (
        13,
        "groups: the log shipping policy of their devices (hub.log_policy)",
        # JSON {"mode": none|errors|all, "pattern": RE or null}; NULL: the group sets none.
        ["ALTER TABLE groups ADD COLUMN log_policy TEXT"],
    ),
    (
        14,
        "device metrics: the latest samples per device (bounded) and what the bound cost",
        [
            # (device_id, seq) is the entry's hub seq: a re-delivered sample is ignored.
            """CREATE TABLE device_metrics (
                device_id TEXT NOT NULL,
                seq INTEGER NOT NULL,
                at TEXT NOT NULL,
                received_at TEXT NOT NULL,
                sample TEXT NOT NULL,
                PRIMARY KEY (device_id, seq)
            ) WITHOUT ROWID""",
            # high_seq: the newest sample's seq ever seen (older ones are not stored again);
            # held, trimmed (deleted over the bound), oversize (refused over max bytes).
            """CREATE TABLE device_metrics_state (
                device_id TEXT PRIMARY KEY,
                high_seq INTEGER NOT NULL DEFAULT 0,
                held INTEGER NOT NULL DEFAULT 0,
                trimmed INTEGER NOT NULL DEFAULT 0,
                oversize INTEGER NOT NULL DEFAULT 0
            ) WITHOUT ROWID""",
        ],
    ),
    (
        15,
        "result parts of queued actions answered in batches (logs on demand), bounded",
        [
            # (action_id, part_no): a part sent twice is stored once. lines: a JSON list.
            """CREATE TABLE action_parts (
                action_id TEXT NOT NULL,
                part_no INTEGER NOT NULL,
                received_at TEXT NOT NULL,
                lines TEXT NOT NULL,
                n_lines INTEGER NOT NULL,
                n_bytes INTEGER NOT NULL,
                PRIMARY KEY (action_id, part_no)
            ) WITHOUT ROWID""",
            # what an action's parts hold, and what the hub's bound cut from them
            """CREATE TABLE action_part_totals (
                action_id TEXT PRIMARY KEY,
                parts INTEGER NOT NULL DEFAULT 0,
                lines INTEGER NOT NULL DEFAULT 0,
                bytes INTEGER NOT NULL DEFAULT 0,
                cut_lines INTEGER NOT NULL DEFAULT 0
            ) WITHOUT ROWID""",
        ],
    ),
    (
        16,
        "operator access: users, teams, team members and grants, user API tokens (hashed)",
        [
            """CREATE TABLE users (
                name TEXT PRIMARY KEY,
                disabled INTEGER NOT NULL DEFAULT 0,
                created_at TEXT NOT NULL,
                created_by TEXT NOT NULL
            ) WITHOUT ROWID""",
            """CREATE TABLE teams (
                name TEXT PRIMARY KEY,
                created_at TEXT NOT NULL
            ) WITHOUT ROWID""",
            """CREATE TABLE team_members (
                team TEXT NOT NULL REFERENCES teams (name) ON DELETE CASCADE,
                user TEXT NOT NULL REFERENCES users (name),
                PRIMARY KEY (team, user)
            ) WITHOUT ROWID""",
            "CREATE INDEX team_members_user ON team_members (user)",
            # scope: "all" or a selector in canonical form (str(hub.selector.parse(text)))
            """CREATE TABLE team_grants (
                team TEXT NOT NULL REFERENCES teams (name) ON DELETE CASCADE,
                role TEXT NOT NULL,
                scope TEXT NOT NULL,
                PRIMARY KEY (team, role, scope)
            ) WITHOUT ROWID""",
            # secret_hash: sha256 of the token's secret; the token itself is never stored.
            """CREATE TABLE user_tokens (
                id TEXT PRIMARY KEY,
                user TEXT NOT NULL REFERENCES users (name),
                secret_hash TEXT NOT NULL,
                created_at TEXT NOT NULL,
                expires_at TEXT,
                last_used_at TEXT,
                revoked_at TEXT
            ) WITHOUT ROWID""",
            "CREATE INDEX user_tokens_user ON user_tokens (user, created_at)",
        ],
    ),
    (
        17,
        "groups: the device policy of their devices (hub.device_policy)",
        # JSON of edge_agent.device_policy.DevicePolicy; NULL: the group sets none.
        ["ALTER TABLE groups ADD COLUMN device_policy TEXT"],
    ),
    (
        18,
        "release signing: operator release roots and vouched-release manifests (no keys)",
        [
            # document: a SignedRoot (edge_agent/release_trust.py), verified on upload.
            """CREATE TABLE release_roots (
                version INTEGER PRIMARY KEY,
                document TEXT NOT NULL,
                added_at TEXT NOT NULL
            )""",
            # document: a SignedManifest; its signatures grow as operators add theirs.
            """CREATE TABLE release_manifests (
                version INTEGER PRIMARY KEY,
                document TEXT NOT NULL,
                updated_at TEXT NOT NULL
            )""",
        ],
    ),
    (
        19,
        "secrets: named values sealed with AES-GCM under a key id (hub.secrets)",
        [
            # sealed: "key_id:base64(nonce||ciphertext)"; never a value in clear.
            """CREATE TABLE secrets (
                name TEXT PRIMARY KEY,
                sealed TEXT NOT NULL,
                key_id TEXT NOT NULL,
                created_at TEXT NOT NULL,
                created_by TEXT NOT NULL,
                updated_at TEXT NOT NULL,
                updated_by TEXT NOT NULL
            ) WITHOUT ROWID""",
        ],
    ),
    (
        21,
        "dashboard sessions: only the hash of the session id is stored (hub.dashboard)",
        [
            # token_id: the user token signed in with ("admin": the data-dir admin token);
            # the principal is re-derived from it on every request (revocation applies).
            """CREATE TABLE ui_sessions (
                id_hash TEXT PRIMARY KEY,
                principal TEXT NOT NULL,
                token_id TEXT NOT NULL,
                csrf TEXT NOT NULL,
                created_at TEXT NOT NULL,
                last_seen_at TEXT NOT NULL
            ) WITHOUT ROWID""",
        ],
    ),
    (
        22,
        "secrets: list rows still holding a registry password in clear; devices: stale manifest",
        [
            # release signing: the device's pinned manifest expired (NULL: never reported)
            "ALTER TABLE devices ADD COLUMN release_trust_stale INTEGER",
            # moved into the secret store by the hub at start (hub.secret_moves), which has
            # the secret keys; kind: release (key: id) | target (key: "<device> <revision>")
            """CREATE TABLE secret_moves (
                kind TEXT NOT NULL,
                key TEXT NOT NULL,
                PRIMARY KEY (kind, key)
            ) WITHOUT ROWID""",
            queue_clear_passwords,
        ],
    ),
    (
        23,
        "fleet history: counts sampled every dashboard.history_interval_s (hub.fleet_history)",
        [
            # never: no contact at all; stale: silent past fleet.stale_after_s (hub.fleet)
            """CREATE TABLE fleet_history (
                at TEXT PRIMARY KEY,
                online INTEGER NOT NULL,
                offline INTEGER NOT NULL,
                stale INTEGER NOT NULL,
                never INTEGER NOT NULL,
                in_sync INTEGER NOT NULL,
                updating INTEGER NOT NULL,
                drifted INTEGER NOT NULL,
                no_target INTEGER NOT NULL,
                total INTEGER NOT NULL
            ) WITHOUT ROWID""",
        ],
    ),
    (
        24,
        "device contact spans: when a device was heard from, gaps over fleet.online_after_s",
        [
            # One row per run of syncs no further apart than fleet.online_after_s; bounded
            # per device (dashboard.contact_spans_per_device) and by age (history_days).
            """CREATE TABLE device_contacts (
                device_id TEXT NOT NULL,
                started_at TEXT NOT NULL,
                last_at TEXT NOT NULL,
                PRIMARY KEY (device_id, started_at)
            ) WITHOUT ROWID""",
        ],
    ),
    (
        25,
        "device audit records held ahead of a gap in their chain (hub.device_audit)",
        [
            # held: stored without a verdict until the records before it arrive or the gap
            # is declared (audit.device_gap_grace_s, audit.device_max_held)
            "ALTER TABLE device_audit ADD COLUMN held INTEGER NOT NULL DEFAULT 0",
            "CREATE INDEX device_audit_held ON device_audit (device_id, record_id) WHERE held = 1",
            # held_since: since when the oldest held record waits (NULL: none held)
            "ALTER TABLE device_audit_chain ADD COLUMN held_since TEXT",
            "CREATE INDEX device_audit_chain_held ON device_audit_chain (held_since) "
            "WHERE held_since IS NOT NULL",
            # gaps declared at once because the held records passed audit.device_max_held
            "ALTER TABLE device_audit_chain ADD COLUMN held_overflows INTEGER NOT NULL DEFAULT 0",
        ],
    ),
]
