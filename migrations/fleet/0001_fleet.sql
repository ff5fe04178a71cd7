-- Fleet mode's schema (docs/fleet.md). Applied by rally_sidecar::fleet::db::migrate under an
-- advisory lock, in one transaction, so pods starting together apply it once.
-- Every lease is compared with the database's clock (now()), never a pod's.

-- The secret that keys writer digests, shared by every pod so that one credential has one
-- digest fleet-wide (issue 12 item 8). Created once by the first pod.
CREATE TABLE fleet_secrets (
    name  text PRIMARY KEY,
    value bytea NOT NULL
);

-- Pods alive: a lease renewed by each pod's heartbeat. A pending write whose owner is missing
-- here or whose lease lapsed belongs to a dead pod and may be claimed by a replayer.
CREATE TABLE fleet_pods (
    pod_id      text PRIMARY KEY,
    hostname    text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    lease_until timestamptz NOT NULL
);

-- One row per permit held: a Rally request in flight for that Rally user. The budget is the
-- number of live rows (lease not lapsed) per user; fleet_budget_try keeps it.
CREATE TABLE fleet_permits (
    token       uuid PRIMARY KEY,
    rally_user  text NOT NULL,
    pod_id      text NOT NULL,
    priority    smallint NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    lease_until timestamptz NOT NULL
);
CREATE INDEX fleet_permits_by_user ON fleet_permits (rally_user, lease_until);

-- The queue: at most one ticket per pod and user (the pod's head-of-line waiter). Tickets are
-- served by priority, then in order of arrival; a pod re-queues at the back after each grant.
CREATE TABLE fleet_budget_waiters (
    ticket      uuid PRIMARY KEY,
    seq         bigserial NOT NULL,
    rally_user  text NOT NULL,
    pod_id      text NOT NULL,
    priority    smallint NOT NULL,
    lease_until timestamptz NOT NULL
);
CREATE INDEX fleet_budget_waiters_by_user ON fleet_budget_waiters (rally_user, priority DESC, seq);

-- Tries to take one permit for p_user. Serialised per user by a transaction-scoped advisory
-- lock, so counting and inserting cannot race: live permits never exceed p_budget. Grants
-- only when the caller's ticket is within the free slots (fair), else leaves the ticket queued.
-- A ticket's lease is short (it is refreshed by every try), so a dead pod's ticket stops
-- holding others back within seconds. Returns the permit's token, or NULL.
CREATE FUNCTION fleet_budget_try(p_user text, p_pod text, p_ticket uuid, p_priority smallint,
                                 p_budget integer, p_lease double precision,
                                 p_ticket_lease double precision)
RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
    v_held  integer;
    v_ahead integer;
    v_seq   bigint;
    v_token uuid;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('rally-sidecar/budget/' || p_user, 0));
    DELETE FROM fleet_permits WHERE rally_user = p_user AND lease_until < now();
    DELETE FROM fleet_budget_waiters WHERE rally_user = p_user AND lease_until < now();
    INSERT INTO fleet_budget_waiters (ticket, rally_user, pod_id, priority, lease_until)
        VALUES (p_ticket, p_user, p_pod, p_priority, now() + p_ticket_lease * interval '1 second')
        ON CONFLICT (ticket) DO UPDATE
        SET priority = EXCLUDED.priority, lease_until = EXCLUDED.lease_until
        RETURNING seq INTO v_seq;
    SELECT count(*) INTO v_held FROM fleet_permits WHERE rally_user = p_user;
    SELECT count(*) INTO v_ahead FROM fleet_budget_waiters
        WHERE rally_user = p_user AND ticket <> p_ticket
          AND (priority > p_priority OR (priority = p_priority AND seq < v_seq));
    IF v_held + v_ahead >= p_budget THEN
        RETURN NULL;
    END IF;
    v_token := gen_random_uuid();
    INSERT INTO fleet_permits (token, rally_user, pod_id, priority, lease_until)
        VALUES (v_token, p_user, p_pod, p_priority, now() + p_lease * interval '1 second');
    DELETE FROM fleet_budget_waiters WHERE ticket = p_ticket;
    RETURN v_token;
END;
$$;

-- The shared ledger: every intercepted write, with the journal's states and its writer.
-- write_key is unique among rows not superseded: a client's retry of the same write finds the
-- first row instead of adding a second. A settled row recorded longer ago than the retry
-- window is superseded by a new write with the same key (the same result sent again on
-- purpose). received_at is the pod's clock, for people; recorded_at is the database's.
CREATE TABLE fleet_writes (
    id             bigserial PRIMARY KEY,
    write_key      text NOT NULL,
    superseded     boolean NOT NULL DEFAULT false,
    request_id     text NOT NULL,
    received_at    timestamptz NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    credential     text NOT NULL,
    rally_user     text,
    owner_pod      text NOT NULL,
    operation      text NOT NULL,
    target         text,
    path           text NOT NULL,
    body           text NOT NULL,
    state          text NOT NULL CHECK (state IN ('pending', 'confirmed', 'rejected', 'unconfirmed')),
    attempts       integer NOT NULL DEFAULT 0,
    last_error     text,
    object_id      bigint,
    test_case      text,
    build          text,
    verdict        text,
    filled         text,
    decision       text,
    latency_ms     double precision,
    source_journal text,
    source_row     bigint,
    claim_token    uuid,
    claimed_by     text,
    claim_until    timestamptz
);
CREATE UNIQUE INDEX fleet_writes_key ON fleet_writes (write_key) WHERE NOT superseded;
CREATE UNIQUE INDEX fleet_writes_source ON fleet_writes (source_journal, source_row);
CREATE INDEX fleet_writes_backlog ON fleet_writes (state, id) WHERE state IN ('pending', 'unconfirmed');

-- The shared build context (PUT /context): scope '' is global, else 'workspace' or 'project'.
CREATE TABLE fleet_context (
    scope      text NOT NULL,
    scope_id   text NOT NULL,
    build      text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, scope_id)
);
-- One row: bumped by every change, so a pod polls one integer to know whether to reload.
CREATE TABLE fleet_context_version (
    one     boolean PRIMARY KEY DEFAULT true CHECK (one),
    version bigint NOT NULL
);
INSERT INTO fleet_context_version VALUES (true, 0);
