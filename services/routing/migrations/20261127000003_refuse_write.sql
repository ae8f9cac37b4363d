-- A record write is one statement run on its own (autocommit): one round trip instead of
-- BEGIN, the statement and COMMIT. Its last step calls this function when a check failed
-- (a request_id already remembered, an incident version no longer current, an assignment no
-- longer ACTIVE, a stale fencing token): the error aborts the statement, so none of its parts
-- is kept, and DETAIL names the first failed check for the service to report.
CREATE FUNCTION refuse_write(check_name TEXT) RETURNS BOOLEAN
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION 'routing write refused: %', check_name
        USING ERRCODE = 'RL001', DETAIL = check_name;
END
$$;
