"""Numbered migrations of the hub's PostgreSQL schema; each runs with its record in one
transaction. A list of its own (SQLite's numbers do not apply here).

Never edit a released migration: append a new one. Times are stored as the same ISO 8601
UTC text the SQLite store writes, and JSON as the same compact text: the audit chain's
hashes are over those stored texts, so a row moved from SQLite verifies unchanged, and
``hub.store.sqlite_rows`` converts rows of either backend.
"""

from __future__ import annotations

MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (
        1,
        "devices, enrollment tokens, certificate lineage, targets, events, store epochs, audit",
        [
            """CREATE TABLE enrollment_tokens (
                id TEXT PRIMARY KEY,
                secret_hash TEXT NOT NULL,
                uses_total BIGINT NOT NULL,
                uses_left BIGINT NOT NULL CHECK (uses_left >= 0),
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
                applied_revision BIGINT NOT NULL DEFAULT 0,
                target_revision BIGINT NOT NULL DEFAULT 0,
                acked_seq BIGINT NOT NULL DEFAULT 0,
                state TEXT,
                release TEXT,
                services TEXT,
                counters TEXT,
                last_error TEXT,
                status_at TEXT,
                has_full_status INTEGER NOT NULL DEFAULT 0,
                store_epoch TEXT NOT NULL DEFAULT '',
                seq_offset BIGINT NOT NULL DEFAULT 0,
                seq_floor BIGINT NOT NULL DEFAULT 0,
                seq_high BIGINT NOT NULL DEFAULT 0,
                protocol BIGINT NOT NULL DEFAULT 0,
                features TEXT,
                running_revision BIGINT,
                running_local_seq BIGINT,
                applying_revision BIGINT,
                rollout_state TEXT,
                prev_cert_serial TEXT NOT NULL DEFAULT '',
                cert_key_sha256 TEXT NOT NULL DEFAULT '',
                window_opens_at TEXT
            )""",
            """CREATE TABLE targets (
                device_id TEXT NOT NULL REFERENCES devices(id),
                revision BIGINT NOT NULL,
                document TEXT NOT NULL,
                created_at TEXT NOT NULL,
                created_by TEXT NOT NULL,
                PRIMARY KEY (device_id, revision)
            )""",
            """CREATE TABLE events (
                device_id TEXT NOT NULL,
                seq BIGINT NOT NULL,
                kind TEXT NOT NULL,
                created_at TEXT NOT NULL,
                received_at TEXT NOT NULL,
                payload TEXT NOT NULL,
                PRIMARY KEY (device_id, seq)
            )""",
            """CREATE TABLE device_epochs (
                device_id TEXT NOT NULL,
                epoch TEXT NOT NULL,
                acked_seq BIGINT NOT NULL,
                PRIMARY KEY (device_id, epoch)
            )""",
            # Ids are taken explicitly (max + 1) under the audit lock, not from a sequence:
            # a sequence leaves gaps on rollback, and a gap means a deleted record.
            """CREATE TABLE audit (
                id BIGINT PRIMARY KEY,
                at TEXT NOT NULL,
                actor TEXT NOT NULL,
                action TEXT NOT NULL,
                target TEXT NOT NULL,
                outcome TEXT NOT NULL,
                detail TEXT NOT NULL DEFAULT '{}',
                source_addr TEXT NOT NULL DEFAULT '',
                prev_hash TEXT NOT NULL DEFAULT '',
                hash TEXT NOT NULL DEFAULT ''
            )""",
            "CREATE INDEX audit_by_target ON audit (target, id)",
        ],
    ),
    (
        2,
        "groups (named tag selectors) and environment overrides per group and per device",
        [
            """CREATE TABLE groups (
                name TEXT PRIMARY KEY,
                selector TEXT NOT NULL,
                overrides TEXT NOT NULL DEFAULT '{}',
                created_at TEXT NOT NULL,
                created_by TEXT NOT NULL
            )""",
            """CREATE TABLE device_overrides (
                device_id TEXT PRIMARY KEY REFERENCES devices(id),
                overrides TEXT NOT NULL DEFAULT '{}'
            )""",
        ],
    ),
    (
        3,
        "devices: the release-signing stale-manifest flag a device reports (SQLite 22)",
        ["ALTER TABLE devices ADD COLUMN release_trust_stale INTEGER"],
    ),
    (
        4,
        "releases, rollouts, release signing, secrets, group log and device policies "
        "(SQLite 5, 7, 13, 17, 18, 19)",
        [
            # Ids from an identity; creation takes an advisory lock (pg_releases), so ids
            # commit in id order and paging by id (list_releases) never skips one.
            """CREATE TABLE releases (
                id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
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
            # COLLATE "C": ordered by bytes as SQLite orders text, whatever the cluster's locale.
            """CREATE TABLE rollouts (
                id TEXT COLLATE "C" PRIMARY KEY,
                release TEXT NOT NULL,
                spec TEXT NOT NULL,
                state TEXT NOT NULL,
                status TEXT NOT NULL,
                created_at TEXT COLLATE "C" NOT NULL,
                created_by TEXT NOT NULL,
                updated_at TEXT NOT NULL
            )""",
            "CREATE INDEX rollouts_status ON rollouts (status)",
            # JSON of hub.log_policy / edge_agent.device_policy; NULL: the group sets none.
            "ALTER TABLE groups ADD COLUMN log_policy TEXT",
            "ALTER TABLE groups ADD COLUMN device_policy TEXT",
            # document: a SignedRoot / SignedManifest (edge_agent/release_trust.py).
            """CREATE TABLE release_roots (
                version BIGINT PRIMARY KEY,
                document TEXT NOT NULL,
                added_at TEXT NOT NULL
            )""",
            """CREATE TABLE release_manifests (
                version BIGINT PRIMARY KEY,
                document TEXT NOT NULL,
                updated_at TEXT NOT NULL
            )""",
            # Registry passwords a release gives in clear are sealed into it when the
            # release is created; sealed: "key_id:base64(nonce||ciphertext)", never clear.
            """CREATE TABLE secrets (
                name TEXT COLLATE "C" PRIMARY KEY,
                sealed TEXT NOT NULL,
                key_id TEXT NOT NULL,
                created_at TEXT NOT NULL,
                created_by TEXT NOT NULL,
                updated_at TEXT NOT NULL,
                updated_by TEXT NOT NULL
            )""",
        ],
    ),
    (
        5,
        "side records of sync (device audit chain, metrics, action results and parts, host "
        "reports), technician tokens, queued actions (SQLite 8, 10, 11, 12, 14, 15)",
        [
            """CREATE TABLE host_reports (
                device_id TEXT PRIMARY KEY REFERENCES devices(id),
                containers TEXT NOT NULL,
                total BIGINT NOT NULL,
                reported_at TEXT NOT NULL
            )""",
            # At most HOST_CONTAINERS_MAX digests + 1 release per device: keys no longer
            # reported are deleted with each report.
            """CREATE TABLE host_sightings (
                device_id TEXT NOT NULL REFERENCES devices(id),
                key TEXT NOT NULL,
                first_seen TEXT NOT NULL,
                PRIMARY KEY (device_id, key)
            )""",
            # Device audit records as they arrive (hub.device_audit); (device_id, seq) is the
            # entry's hub seq: a re-delivery is ignored. feed_after: the hub audit id that was
            # last when it arrived (taken under the audit lock, see pg_ingest_side).
            """CREATE TABLE device_audit (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                device_id TEXT NOT NULL,
                seq BIGINT NOT NULL,
                record_id BIGINT NOT NULL,
                at TEXT NOT NULL,
                received_at TEXT NOT NULL,
                actor TEXT NOT NULL,
                action TEXT NOT NULL,
                object TEXT NOT NULL,
                outcome TEXT NOT NULL,
                detail TEXT NOT NULL,
                hash TEXT NOT NULL,
                broken TEXT,
                feed_after BIGINT NOT NULL,
                UNIQUE (device_id, seq)
            )""",
            "CREATE INDEX device_audit_by_device ON device_audit (device_id, id)",
            "CREATE INDEX device_audit_feed ON device_audit (feed_after, id)",
            """CREATE TABLE device_audit_chain (
                device_id TEXT PRIMARY KEY,
                last_id BIGINT NOT NULL,
                last_hash TEXT NOT NULL,
                verified BIGINT NOT NULL DEFAULT 0,
                unverifiable BIGINT NOT NULL DEFAULT 0,
                broken_id BIGINT,
                broken_at TEXT,
                broken_reason TEXT,
                breaks BIGINT NOT NULL DEFAULT 0
            )""",
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
            )""",
            "CREATE INDEX technician_tokens_expiry ON technician_tokens (expires_at)",
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
            )""",
            "CREATE INDEX actions_device_state ON actions (device_id, state, created_at)",
            "CREATE INDEX actions_created ON actions (created_at)",
            "CREATE INDEX actions_state_at ON actions (state, state_at)",
            # (device_id, seq) is the entry's hub seq: a re-delivered sample is ignored.
            """CREATE TABLE device_metrics (
                device_id TEXT NOT NULL,
                seq BIGINT NOT NULL,
                at TEXT NOT NULL,
                received_at TEXT NOT NULL,
                sample TEXT NOT NULL,
                PRIMARY KEY (device_id, seq)
            )""",
            """CREATE TABLE device_metrics_state (
                device_id TEXT PRIMARY KEY,
                high_seq BIGINT NOT NULL DEFAULT 0,
                held BIGINT NOT NULL DEFAULT 0,
                trimmed BIGINT NOT NULL DEFAULT 0,
                oversize BIGINT NOT NULL DEFAULT 0
            )""",
            """CREATE TABLE action_parts (
                action_id TEXT NOT NULL,
                part_no BIGINT NOT NULL,
                received_at TEXT NOT NULL,
                lines TEXT NOT NULL,
                n_lines BIGINT NOT NULL,
                n_bytes BIGINT NOT NULL,
                PRIMARY KEY (action_id, part_no)
            )""",
            """CREATE TABLE action_part_totals (
                action_id TEXT PRIMARY KEY,
                parts BIGINT NOT NULL DEFAULT 0,
                lines BIGINT NOT NULL DEFAULT 0,
                bytes BIGINT NOT NULL DEFAULT 0,
                cut_lines BIGINT NOT NULL DEFAULT 0
            )""",
        ],
    ),
    (
        6,
        "operator access (SQLite 16), secrets (19), dashboard sessions (21), secret moves (22)",
        [
            # COLLATE "C": names sort bytewise, as SQLite's BINARY does, whatever the
            # database's default collation (lists ordered by name come out the same).
            """CREATE TABLE users (
                name TEXT COLLATE "C" PRIMARY KEY,
                disabled INTEGER NOT NULL DEFAULT 0,
                created_at TEXT NOT NULL,
                created_by TEXT NOT NULL
            )""",
            """CREATE TABLE teams (
                name TEXT COLLATE "C" PRIMARY KEY,
                created_at TEXT NOT NULL
            )""",
            # "user" is a reserved word in PostgreSQL (unquoted it means current_user).
            """CREATE TABLE team_members (
                team TEXT COLLATE "C" NOT NULL REFERENCES teams (name) ON DELETE CASCADE,
                "user" TEXT COLLATE "C" NOT NULL REFERENCES users (name),
                PRIMARY KEY (team, "user")
            )""",
            'CREATE INDEX team_members_user ON team_members ("user")',
            # scope: "all" or a selector in canonical form (str(hub.selector.parse(text)))
            """CREATE TABLE team_grants (
                team TEXT COLLATE "C" NOT NULL REFERENCES teams (name) ON DELETE CASCADE,
                role TEXT COLLATE "C" NOT NULL,
                scope TEXT COLLATE "C" NOT NULL,
                PRIMARY KEY (team, role, scope)
            )""",
            # secret_hash: sha256 of the token's secret; the token itself is never stored.
            """CREATE TABLE user_tokens (
                id TEXT COLLATE "C" PRIMARY KEY,
                "user" TEXT COLLATE "C" NOT NULL REFERENCES users (name),
                secret_hash TEXT NOT NULL,
                created_at TEXT COLLATE "C" NOT NULL,
                expires_at TEXT,
                last_used_at TEXT,
                revoked_at TEXT
            )""",
            'CREATE INDEX user_tokens_user ON user_tokens ("user", created_at)',
            # token_id: the user token signed in with ("admin": the data-dir admin token).
            """CREATE TABLE ui_sessions (
                id_hash TEXT PRIMARY KEY,
                principal TEXT NOT NULL,
                token_id TEXT NOT NULL,
                csrf TEXT NOT NULL,
                created_at TEXT NOT NULL,
                last_seen_at TEXT NOT NULL
            )""",
            # Rows holding a registry password in clear (kind: release, key: its id | target,
            # key: "<device> <revision>"). A PostgreSQL database never held one (it starts
            # after the secret store existed), so nothing is listed here; the table keeps the
            # store methods the same on both backends (and room for rows copied from SQLite).
            """CREATE TABLE secret_moves (
                kind TEXT COLLATE "C" NOT NULL,
                key TEXT COLLATE "C" NOT NULL,
                PRIMARY KEY (kind, key)
            )""",
        ],
    ),
    (
        7,
        "fleet history and device contact spans (SQLite 23, 24)",
        [
            """CREATE TABLE fleet_history (
                at TEXT COLLATE "C" PRIMARY KEY,
                online BIGINT NOT NULL,
                offline BIGINT NOT NULL,
                stale BIGINT NOT NULL,
                never BIGINT NOT NULL,
                in_sync BIGINT NOT NULL,
                updating BIGINT NOT NULL,
                drifted BIGINT NOT NULL,
                no_target BIGINT NOT NULL,
                total BIGINT NOT NULL
            )""",
            """CREATE TABLE device_contacts (
                device_id TEXT NOT NULL,
                started_at TEXT COLLATE "C" NOT NULL,
                last_at TEXT COLLATE "C" NOT NULL,
                PRIMARY KEY (device_id, started_at)
            )""",
        ],
    ),
    (
        8,
        "device audit records held ahead of a gap in their chain (SQLite 25)",
        [
            "ALTER TABLE device_audit ADD COLUMN held INTEGER NOT NULL DEFAULT 0",
            "CREATE INDEX device_audit_held ON device_audit (device_id, record_id) WHERE held = 1",
            # COLLATE "C": compared with a cutoff as text (ISO UTC), as SQLite compares it
            'ALTER TABLE device_audit_chain ADD COLUMN held_since TEXT COLLATE "C"',
            "CREATE INDEX device_audit_chain_held ON device_audit_chain (held_since) "
            "WHERE held_since IS NOT NULL",
            "ALTER TABLE device_audit_chain ADD COLUMN held_overflows BIGINT NOT NULL DEFAULT 0",
        ],
    ),
]
