-- The tamper-evident audit trail (relay_runtime::audit): one chain per service. Each record
-- carries the hash of the one before it; audit_head holds the last seq and hash (appends lock
-- it) and the anchor pruning left (the last pruned seq and hash). The same text on
-- PostgreSQL and SQLite.
CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY,
    record_time BIGINT NOT NULL,
    principal TEXT NOT NULL,
    credential TEXT NOT NULL,
    rpc TEXT NOT NULL,
    resources TEXT NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT NOT NULL,
    request_id TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    peer TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);

CREATE INDEX audit_log_record_time ON audit_log (record_time);

CREATE TABLE audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    anchor_seq BIGINT NOT NULL,
    anchor_hash TEXT NOT NULL
);

INSERT INTO audit_head (id, seq, hash, anchor_seq, anchor_hash) VALUES (
    1, 0, '0000000000000000000000000000000000000000000000000000000000000000',
    0, '0000000000000000000000000000000000000000000000000000000000000000'
);
