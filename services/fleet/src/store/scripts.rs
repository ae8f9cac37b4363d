//! Lua scripts of the Redis backend. Each runs atomically and touches keys of one region only
//! (one hash tag, one Cluster slot). Every script returns an array of strings whose first
//! element says what happened; `HGETALL` of the team follows when the caller needs the team.
//! Status numbers are relay.common.v1.TeamStatus values (1 OFF_DUTY, 2 AVAILABLE,
//! 3 DISPATCHED, ...). Times are microseconds since the epoch.

/// Helpers prepended to every script.
pub(super) const PRELUDE: &str = r"
local function emit(events, hash, kind, now, retention_ms)
  local t = redis.call('TIME')
  local minid = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(retention_ms)
  if minid < 0 then minid = 0 end
  local fields = redis.call('HGETALL', hash)
  redis.call('XADD', events, 'MINID', '~', string.format('%d', minid), '*', 'kind', kind, 'at', now, unpack(fields))
end
local function index(geo, unavailable, id, status, lat, lon)
  local placed = lat ~= '' and lat ~= false and math.abs(tonumber(lat)) <= 85.05112878
  if status == '2' and placed then
    redis.call('GEOADD', geo, lon, lat, id)
  else
    redis.call('ZREM', geo, id)
  end
  if status ~= '1' and status ~= '2' and placed then
    redis.call('GEOADD', unavailable, lon, lat, id)
  else
    redis.call('ZREM', unavailable, id)
  end
end
local function has(list, item)
  return string.find(list, ',' .. item .. ',', 1, true) ~= nil
end
local function result(tag, hash)
  local fields = redis.call('HGETALL', hash)
  table.insert(fields, 1, tag)
  return fields
end
local function recalled(req, fp)
  if fp == '' then return nil end
  local stored = redis.call('HGET', req, '~fp')
  if not stored then return nil end
  if stored ~= fp then return {'reused'} end
  local fields = redis.call('HGETALL', req)
  table.insert(fields, 1, 'replay')
  return fields
end
local function remember(req, fp, ttl_ms, tag, hash)
  if fp == '' then return end
  redis.call('DEL', req)
  redis.call('HSET', req, '~fp', fp, '~tag', tag, unpack(redis.call('HGETALL', hash)))
  redis.call('PEXPIRE', req, ttl_ms)
end
";

/// Creates a team or replaces its roster fields in its current region, and writes the
/// request's idempotency record in the same step (a retry of a recorded request replays it).
/// KEYS: hash, teams, events, request record. ARGV: id, name, region, caps, shift_end,
/// expected ('' = none), now, retention_ms, fingerprint ('' = no record), record ttl_ms.
pub(super) const UPSERT: &str = r"
local h = KEYS[1]
local again = recalled(KEYS[4], ARGV[9])
if again then return again end
if redis.call('EXISTS', h) == 0 then
  if ARGV[6] ~= '' then return {'rev', '0'} end
  redis.call('HSET', h, 'id', ARGV[1], 'name', ARGV[2], 'region', ARGV[3], 'caps', ARGV[4],
    'shift_end', ARGV[5], 'status', '1', 'lat', '', 'lon', '', 'loc_at', '', 'hdg', '', 'spd', '',
    'acc', '', 'incident', '', 'last_incident', '', 'rev', '1', 'fence', '0', 'created', ARGV[7],
    'updated', ARGV[7])
  redis.call('SADD', KEYS[2], ARGV[1])
  emit(KEYS[3], h, 'upserted', ARGV[7], ARGV[8])
  remember(KEYS[4], ARGV[9], ARGV[10], 'created', h)
  return result('created', h)
end
local cur = redis.call('HMGET', h, 'rev', 'name', 'caps', 'shift_end')
if ARGV[6] ~= '' and ARGV[6] ~= cur[1] then return {'rev', cur[1]} end
if cur[2] == ARGV[2] and cur[3] == ARGV[4] and cur[4] == ARGV[5] then
  remember(KEYS[4], ARGV[9], ARGV[10], 'same', h)
  return result('same', h)
end
redis.call('HSET', h, 'name', ARGV[2], 'caps', ARGV[4], 'shift_end', ARGV[5], 'updated', ARGV[7])
redis.call('HINCRBY', h, 'rev', 1)
emit(KEYS[3], h, 'upserted', ARGV[7], ARGV[8])
remember(KEYS[4], ARGV[9], ARGV[10], 'updated', h)
return result('updated', h)
";

/// Recreates a team from the roster when it is missing.
/// KEYS: hash, teams, events. ARGV: id, name, region, caps, shift_end, floor, now, retention_ms.
pub(super) const SEED: &str = r"
local h = KEYS[1]
if redis.call('EXISTS', h) == 1 then return {'kept'} end
redis.call('HSET', h, 'id', ARGV[1], 'name', ARGV[2], 'region', ARGV[3], 'caps', ARGV[4],
  'shift_end', ARGV[5], 'status', '1', 'lat', '', 'lon', '', 'loc_at', '', 'hdg', '', 'spd', '',
  'acc', '', 'incident', '', 'last_incident', '', 'rev', ARGV[6], 'fence', ARGV[6],
  'created', ARGV[7], 'updated', ARGV[7])
redis.call('SADD', KEYS[2], ARGV[1])
emit(KEYS[3], h, 'upserted', ARGV[7], ARGV[8])
return {'created'}
";

/// Undoes the creation of a team whose roster commit failed: removes it with its request
/// record, only while nothing changed it since (its revision is still the created one).
/// KEYS: hash, teams, events, geo, unavailable geo, request record. ARGV: revision, now,
/// retention_ms.
pub(super) const UNDO_CREATE: &str = r"
local h = KEYS[1]
if redis.call('EXISTS', h) == 0 then return {'missing'} end
local cur = redis.call('HMGET', h, 'rev', 'id')
if cur[1] ~= ARGV[1] then return {'changed', cur[1]} end
emit(KEYS[3], h, 'removed', ARGV[2], ARGV[3])
redis.call('DEL', h)
redis.call('SREM', KEYS[2], cur[2])
redis.call('ZREM', KEYS[4], cur[2])
redis.call('ZREM', KEYS[5], cur[2])
redis.call('DEL', KEYS[6])
return {'ok'}
";

/// Removes a team from its old region (region change, first step).
/// KEYS: hash, teams, events, geo, unavailable geo. ARGV: expected ('' = none), now, retention_ms,
/// allowed statuses (',1,7,').
pub(super) const MOVE_OUT: &str = r"
local h = KEYS[1]
if redis.call('EXISTS', h) == 0 then return {'missing'} end
local cur = redis.call('HMGET', h, 'rev', 'status', 'id')
if ARGV[1] ~= '' and ARGV[1] ~= cur[1] then return {'rev', cur[1]} end
if not has(ARGV[4], cur[2]) then return {'region', cur[2]} end
local fields = redis.call('HGETALL', h)
emit(KEYS[3], h, 'removed', ARGV[2], ARGV[3])
redis.call('DEL', h)
redis.call('SREM', KEYS[2], cur[3])
redis.call('ZREM', KEYS[4], cur[3])
redis.call('ZREM', KEYS[5], cur[3])
table.insert(fields, 1, 'ok')
return fields
";

/// Adds a moved team to its new region (region change, second step), and writes the
/// request's idempotency record in the same step.
/// KEYS: hash, teams, events, geo, unavailable geo, request record. ARGV: id, now,
/// retention_ms, fingerprint ('' = no record), record ttl_ms, then field, value, ...
pub(super) const MOVE_IN: &str = r"
local h = KEYS[1]
redis.call('DEL', h)
redis.call('HSET', h, unpack(ARGV, 6))
redis.call('SADD', KEYS[2], ARGV[1])
local cur = redis.call('HMGET', h, 'status', 'lat', 'lon')
index(KEYS[4], KEYS[5], ARGV[1], cur[1], cur[2], cur[3])
emit(KEYS[3], h, 'upserted', ARGV[2], ARGV[3])
remember(KEYS[6], ARGV[4], ARGV[5], 'updated', h)
return result('ok', h)
";

/// Changes a status following the state machine; a busy team clearing after its shift end
/// lands OFF_DUTY (`model::landing_status`). Writes the request's idempotency record in the
/// same step (a retry of a recorded request replays it).
/// KEYS: hash, geo, events, unavailable geo, request record. ARGV: target, incident, expected
/// ('' = none), allowed-from list, busy list, now, retention_ms, fingerprint ('' = no
/// record), record ttl_ms.
pub(super) const SET_STATUS: &str = r"
local h = KEYS[1]
local again = recalled(KEYS[5], ARGV[8])
if again then return again end
if redis.call('EXISTS', h) == 0 then return {'missing'} end
local cur = redis.call('HMGET', h, 'status', 'rev', 'incident', 'lat', 'lon', 'id', 'shift_end')
local target, incident = ARGV[1], ARGV[2]
if ARGV[3] ~= '' and ARGV[3] ~= cur[2] then return {'rev', cur[2]} end
local busy_target = has(ARGV[5], target)
local busy_now = has(ARGV[5], cur[1])
if cur[1] == target then
  if busy_target and incident ~= cur[3] then return {'incident', cur[3]} end
  remember(KEYS[5], ARGV[8], ARGV[9], 'same', h)
  return result('same', h)
end
if target == '3' and cur[1] == '2' then return {'dispatch'} end
if not has(ARGV[4], cur[1]) then return {'transition', cur[1]} end
if busy_target and incident ~= cur[3] then return {'incident', cur[3]} end
if busy_now and not busy_target and incident ~= '' and incident ~= cur[3] then
  return {'incident', cur[3]}
end
local next_incident = ''
if busy_target then next_incident = cur[3] end
if target == '2' and busy_now and cur[7] and cur[7] ~= '' and tonumber(cur[7]) <= tonumber(ARGV[6]) then
  target = '1'
end
redis.call('HSET', h, 'status', target, 'incident', next_incident, 'updated', ARGV[6])
if busy_now and not busy_target then redis.call('HSET', h, 'last_incident', cur[3]) end
redis.call('HINCRBY', h, 'rev', 1)
index(KEYS[2], KEYS[4], cur[6], target, cur[4], cur[5])
emit(KEYS[3], h, 'status', ARGV[6], ARGV[7])
remember(KEYS[5], ARGV[8], ARGV[9], 'ok', h)
return result('ok', h)
";

/// Applies position reports of one region in order, each unless the stored one is as new or
/// newer. The hot path of StreamLocations: one call carries a whole chunk of a region's
/// reports, so the cost of calling a script is paid once per chunk, not once per report; each
/// report reads the whole team in one HMGET and builds its event from it (no HGETALL), and the
/// stream's trim point comes from the caller (no TIME).
/// KEYS: geo, events, unavailable geo, then one team hash per report. ARGV: now, min event id, then six per
/// report: lat, lon, recorded_at, hdg, spd, acc. Returns two strings per report: 'ok' and the
/// new revision, 'stale' and the current revision, or 'missing' and ''.
pub(super) const REPORT_LOCATIONS: &str = r"
local F = {'id', 'name', 'region', 'caps', 'status', 'lat', 'lon', 'loc_at', 'hdg', 'spd',
  'acc', 'incident', 'last_incident', 'shift_end', 'rev', 'fence', 'created', 'updated'}
local now, minid = ARGV[1], ARGV[2]
local out = {}
for r = 1, #KEYS - 3 do
  local h = KEYS[r + 3]
  local a = (r - 1) * 6 + 2
  local lat, lon, at, hdg, spd, acc = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4],
    ARGV[a + 5], ARGV[a + 6]
  local v = redis.call('HMGET', h, unpack(F))
  if not v[1] then
    out[#out + 1] = 'missing'
    out[#out + 1] = ''
  elseif v[8] and v[8] ~= '' and tonumber(v[8]) >= tonumber(at) then
    out[#out + 1] = 'stale'
    out[#out + 1] = v[15]
  else
    local rev = string.format('%d', tonumber(v[15]) + 1)
    v[6], v[7], v[8], v[9], v[10], v[11] = lat, lon, at, hdg, spd, acc
    v[15], v[18] = rev, now
    redis.call('HSET', h, 'lat', lat, 'lon', lon, 'loc_at', at, 'hdg', hdg, 'spd', spd,
      'acc', acc, 'rev', rev, 'updated', now)
    if v[5] ~= '1' then index(KEYS[1], KEYS[3], v[1], v[5], lat, lon) end
    local args = {KEYS[2], 'MINID', '~', minid, '*', 'kind', 'location', 'at', now}
    for i = 1, #F do
      args[#args + 1] = F[i]
      args[#args + 1] = v[i] or ''
    end
    redis.call('XADD', unpack(args))
    out[#out + 1] = 'ok'
    out[#out + 1] = rev
  end
end
return out
";

/// Claims an available team for an incident (or, restoring a call, an off-duty one).
/// KEYS: hash, geo, events, unavailable geo. ARGV: incident, expected ('' = none), now,
/// max_age_us, retention_ms, allowed statuses (',2,'; ',1,2,' to restore).
pub(super) const CLAIM: &str = r"
local h = KEYS[1]
if redis.call('EXISTS', h) == 0 then return {'missing'} end
local cur = redis.call('HMGET', h, 'status', 'rev', 'loc_at', 'id', 'lat', 'lon')
if not has(ARGV[6], cur[1]) then return {'status', cur[1]} end
if ARGV[4] ~= '' and (cur[3] == '' or tonumber(ARGV[3]) - tonumber(cur[3]) > tonumber(ARGV[4])) then
  return {'stale'}
end
if ARGV[2] ~= '' and ARGV[2] ~= cur[2] then return {'rev', cur[2]} end
redis.call('HSET', h, 'status', '3', 'incident', ARGV[1], 'updated', ARGV[3])
redis.call('HINCRBY', h, 'rev', 1)
redis.call('HINCRBY', h, 'fence', 1)
index(KEYS[2], KEYS[4], cur[4], '3', cur[5], cur[6])
emit(KEYS[3], h, 'status', ARGV[3], ARGV[5])
return result('ok', h)
";

/// Releases a team busy on an incident.
/// KEYS: hash, geo, events, unavailable geo. ARGV: incident, now, retention_ms, busy list.
pub(super) const RELEASE: &str = r"
local h = KEYS[1]
if redis.call('EXISTS', h) == 0 then return {'missing'} end
local cur = redis.call('HMGET', h, 'status', 'incident', 'last_incident', 'lat', 'lon', 'id')
local busy = has(ARGV[4], cur[1])
if busy and cur[2] == ARGV[1] then
  redis.call('HSET', h, 'status', '2', 'incident', '', 'last_incident', ARGV[1], 'updated', ARGV[2])
  redis.call('HINCRBY', h, 'rev', 1)
  index(KEYS[2], KEYS[4], cur[6], '2', cur[4], cur[5])
  emit(KEYS[3], h, 'status', ARGV[2], ARGV[3])
  return result('ok', h)
end
if not busy and cur[3] == ARGV[1] then return result('already', h) end
return {'other', cur[1], cur[2]}
";

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key a script touches comes from its `KEYS` (directly, or through a local or a
    /// helper parameter bound to one): a script never builds a key name. Redis Cluster checks
    /// declared keys (CROSSSLOT) but lets a script reach an undeclared key of another slot the
    /// same node happens to serve, so a built key would pass tests and break after a reshard.
    #[test]
    fn scripts_touch_only_the_keys_they_are_given() {
        // Names bound to a KEYS entry: `local h = KEYS[1]` and the helpers' parameters, each
        // called with KEYS entries only; `unpack(args)` starts with KEYS[2].
        let bound = [
            "h",
            "hash",
            "events",
            "geo",
            "unavailable",
            "req",
            "unpack(args",
        ];
        let scripts = [
            ("PRELUDE", PRELUDE),
            ("UPSERT", UPSERT),
            ("SEED", SEED),
            ("MOVE_OUT", MOVE_OUT),
            ("UNDO_CREATE", UNDO_CREATE),
            ("MOVE_IN", MOVE_IN),
            ("SET_STATUS", SET_STATUS),
            ("REPORT_LOCATIONS", REPORT_LOCATIONS),
            ("CLAIM", CLAIM),
            ("RELEASE", RELEASE),
        ];
        for (name, body) in scripts {
            for call in body.split("redis.call(").skip(1) {
                let mut parts = call.splitn(3, [',', ')']);
                let command = parts.next().unwrap_or_default().trim();
                if command == "'TIME'" {
                    continue;
                }
                let key = parts.next().unwrap_or_default().trim();
                assert!(
                    key.starts_with("KEYS[") || bound.contains(&key),
                    "{name}: redis.call({command}, {key} ...) touches a key not given in KEYS"
                );
            }
            for line in body.lines().filter(|l| l.contains("local h =")) {
                assert!(line.contains("= KEYS["), "{name}: {line}");
            }
        }
        // The helpers are called with KEYS entries (or `h`) only.
        let bodies = [
            UPSERT,
            SEED,
            MOVE_OUT,
            MOVE_IN,
            SET_STATUS,
            REPORT_LOCATIONS,
            CLAIM,
            RELEASE,
        ];
        for body in bodies {
            for helper in ["emit(", "index(", "result(", "recalled(", "remember("] {
                for call in body.split(helper).skip(1) {
                    let args = call.split(')').next().unwrap_or_default();
                    let first = args.split(',').next().unwrap_or_default().trim();
                    assert!(
                        first.starts_with("KEYS[") || first == "h" || first.starts_with('\''),
                        "{helper}{args})"
                    );
                    assert!(!args.contains(".."), "{helper}{args}) builds a name");
                }
            }
        }
    }
}
