-- Budget lanes (docs/fleet.md, "Whose budget"). A sidecar asks for a permit under its lane:
-- 'user:<ref>' once it knows the credential's Rally user, 'credential:<digest>' before. Pods
-- learn a credential's user at different moments; without this table a pod that knows it and
-- one that does not would count against two budgets for the same user. So the first pod to
-- learn it records the mapping here, and from then on every grant for the credential's lane is
-- counted and stored under the user's lane, whatever the asking pod knows. A pod switches its
-- own requests to the user's lane only after the mapping is committed.
CREATE TABLE fleet_lanes (
    lane       text PRIMARY KEY,
    rally_user text NOT NULL,
    learnt_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX fleet_lanes_by_user ON fleet_lanes (rally_user);

-- Records that credential lane p_lane belongs to user lane p_user. Takes the credential's lock
-- and then the user's, the order fleet_budget_try takes them, so no grant under either races
-- the change. The first mapping stays (an API key belongs to one user).
CREATE FUNCTION fleet_learn_lane(p_lane text, p_user text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('rally-sidecar/budget/' || p_lane, 0));
    PERFORM pg_advisory_xact_lock(hashtextextended('rally-sidecar/budget/' || p_user, 0));
    INSERT INTO fleet_lanes (lane, rally_user) VALUES (p_lane, p_user)
        ON CONFLICT (lane) DO NOTHING;
END;
$$;

-- fleet_budget_try (0001) with lanes: the asked lane is resolved to its user's lane when one
-- is recorded; permits still held under a credential lane of that user (granted before the
-- mapping) count against the user. Locks: the asked lane's, then the resolved one's.
CREATE OR REPLACE FUNCTION fleet_budget_try(p_user text, p_pod text, p_ticket uuid,
                                            p_priority smallint, p_budget integer,
                                            p_lease double precision,
                                            p_ticket_lease double precision)
RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
    v_key   text := p_user;
    v_held  integer;
    v_ahead integer;
    v_seq   bigint;
    v_token uuid;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('rally-sidecar/budget/' || p_user, 0));
    SELECT rally_user INTO v_key FROM fleet_lanes WHERE lane = p_user;
    IF v_key IS NULL THEN
        v_key := p_user;
    ELSE
        PERFORM pg_advisory_xact_lock(hashtextextended('rally-sidecar/budget/' || v_key, 0));
    END IF;
    DELETE FROM fleet_permits WHERE rally_user = v_key AND lease_until < now();
    DELETE FROM fleet_budget_waiters WHERE rally_user = v_key AND lease_until < now();
    INSERT INTO fleet_budget_waiters (ticket, rally_user, pod_id, priority, lease_until)
        VALUES (p_ticket, v_key, p_pod, p_priority, now() + p_ticket_lease * interval '1 second')
        ON CONFLICT (ticket) DO UPDATE
        SET priority = EXCLUDED.priority, lease_until = EXCLUDED.lease_until,
            rally_user = EXCLUDED.rally_user
        RETURNING seq INTO v_seq;
    SELECT count(*) INTO v_held FROM fleet_permits
        WHERE lease_until >= now()
          AND (rally_user = v_key
               OR rally_user IN (SELECT lane FROM fleet_lanes WHERE rally_user = v_key));
    SELECT count(*) INTO v_ahead FROM fleet_budget_waiters
        WHERE rally_user = v_key AND ticket <> p_ticket
          AND (priority > p_priority OR (priority = p_priority AND seq < v_seq));
    IF v_held + v_ahead >= p_budget THEN
        RETURN NULL;
    END IF;
    v_token := gen_random_uuid();
    INSERT INTO fleet_permits (token, rally_user, pod_id, priority, lease_until)
        VALUES (v_token, v_key, p_pod, p_priority, now() + p_lease * interval '1 second');
    DELETE FROM fleet_budget_waiters WHERE ticket = p_ticket;
    RETURN v_token;
END;
$$;
