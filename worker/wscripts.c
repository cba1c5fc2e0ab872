#include "wscripts.h"

#include "results.h"
#include "keys.h"

/* Shared Lua helpers: the kombu list name for a queue and priority (steps
 * 0,3,6,9; separator 0x06 0x16), and the restore of one unacked entry the
 * way kombu restores it (RPUSH to the bare queue, so it is taken next). */
#define LUA_HELPERS                                                                         \
    "local function restore(tag)\n"                                                         \
    "  local p = redis.call('HGET', '" KEY_UNACKED "', tag)\n"                                       \
    "  redis.call('ZREM', '" KEY_UNACKED_INDEX "', tag)\n"                                           \
    "  redis.call('HDEL', '" KEY_UNACKED "', tag)\n"                                                 \
    "  if not p then return 0 end\n"                                                         \
    "  local ok, e = pcall(cjson.decode, p)\n"                                               \
    "  if not ok or type(e) ~= 'table' then return 0 end\n"                                  \
    "  local msg, rk = e[1], e[3]\n"                                                         \
    "  if type(rk) ~= 'string' or rk == '' then return 0 end\n"                              \
    "  if type(msg) == 'table' then\n"                                                       \
    "    if type(msg.headers) == 'table' then msg.headers.redelivered = true end\n"          \
    "    if type(msg.properties) == 'table' and type(msg.properties.delivery_info) == 'table' then\n" \
    "      msg.properties.delivery_info.redelivered = true end\n"                            \
    "    msg = cjson.encode(msg)\n"                                                          \
    "  end\n"                                                                                \
    "  if type(msg) ~= 'string' then return 0 end\n"                                         \
    "  redis.call('RPUSH', rk, msg)\n"                                                       \
    "  return 1\n"                                                                           \
    "end\n"

/* Takes one message for a free executor slot; also reads, for the task id
 * in its headers, the result record (when ARGV[7 + nexec + #KEYS] names
 * the result key prefix: same Redis) and the revoke marker, which the
 * worker checks before running it — one round trip instead of three.
 * A message over ARGV[8 + nexec + #KEYS] bytes is never decoded nor sent
 * whole: it is recorded in unacked as it is, and only its head, its size
 * and the id a plain search finds in it go back, to be dead-lettered. */
const char wscript_take[] =
    "local now = tonumber(ARGV[1])\n"
    "local nexec = tonumber(ARGV[5])\n"
    "local start = tonumber(ARGV[6])\n"
    "local chosen = -1\n"
    "for i = 0, nexec - 1 do\n"
    "  local e = (start + i) % nexec\n"
    "  local cap = tonumber(ARGV[7 + e])\n"
    "  if cap > 0 then\n"
    "    local k = '" KEY_POOL_SLOTS_PREFIX "' .. e\n"
    "    redis.call('ZREMRANGEBYSCORE', k, '-inf', now)\n"
    "    if redis.call('ZCARD', k) < cap then chosen = e break end\n"
    "  end\n"
    "end\n"
    "if chosen < 0 then return {-1} end\n"
    "local max = tonumber(ARGV[8 + nexec + #KEYS])\n"
    "for i, key in ipairs(KEYS) do\n"
    "  local m = redis.call('RPOP', key)\n"
    "  if m and max and #m > max then\n"
    "    local tag = 'turnout-oversize-' .. ARGV[4]\n"
    "    local stored = m\n"
    /* unacked holds JSON: a message that does not even look like an object
     * is kept as a JSON string, as a malformed one is below */
    "    if string.sub(m, 1, 1) ~= '{' or string.sub(m, -1) ~= '}' then stored = cjson.encode(m) end\n"
    "    redis.call('ZADD', '" KEY_UNACKED_INDEX "', now, tag)\n"
    "    redis.call('HSET', '" KEY_UNACKED "', tag, '[' .. stored .. ',\"\",' .. cjson.encode(ARGV[6 + nexec + i]) .. ']')\n"
    "    redis.call('SADD', ARGV[3], tag)\n"
    "    redis.call('ZADD', '" KEY_POOL_SLOTS_PREFIX "' .. chosen, ARGV[2], tag)\n"
    "    local tid = string.match(m, '[{,]%s*\"id\"%s*:%s*\"([^\"\\\\]*)\"')\n"
    "    return {i, string.sub(m, 1, 4096), tag, chosen, tid or false, false, false, #m}\n"
    "  end\n"
    "  if m then\n"
    "    local tag, ex, rk = nil, '', ARGV[6 + nexec + i]\n"
    "    local ok, env = pcall(cjson.decode, m)\n"
    "    local stored = m\n"
    "    if ok and type(env) == 'table' and type(env.properties) == 'table' then\n"
    "      if type(env.properties.delivery_tag) == 'string' then tag = env.properties.delivery_tag end\n"
    "      local di = env.properties.delivery_info\n"
    "      if type(di) == 'table' then\n"
    "        if type(di.exchange) == 'string' then ex = di.exchange end\n"
    "        if type(di.routing_key) == 'string' and di.routing_key ~= '' then rk = di.routing_key end\n"
    "      end\n"
    "    else\n"
    /* not JSON: keep it as a JSON string so the unacked entry stays valid */
    "      stored = cjson.encode(m)\n"
    "    end\n"
    "    if not tag then tag = 'turnout-malformed-' .. ARGV[4] end\n"
    "    redis.call('ZADD', '" KEY_UNACKED_INDEX "', now, tag)\n"
    "    redis.call('HSET', '" KEY_UNACKED "', tag, '[' .. stored .. ',' .. cjson.encode(ex) .. ',' .. cjson.encode(rk) .. ']')\n"
    "    redis.call('SADD', ARGV[3], tag)\n"
    "    redis.call('ZADD', '" KEY_POOL_SLOTS_PREFIX "' .. chosen, ARGV[2], tag)\n"
    "    local tid, res, rev = false, false, false\n"
    "    if ok and type(env) == 'table' and type(env.headers) == 'table' and type(env.headers.id) == 'string' then\n"
    "      tid = env.headers.id\n"
    "      local rprefix = ARGV[7 + nexec + #KEYS]\n"
    "      if rprefix and rprefix ~= '' then res = redis.call('GET', rprefix .. tid) end\n"
    "      rev = redis.call('GET', '" KEY_REVOKED_PREFIX "' .. tid)\n"
    "    end\n"
    "    return {i, m, tag, chosen, tid, res, rev, 0}\n"
    "  end\n"
    "end\n"
    "return {0}\n";

const char wscript_finish[] =
    RESULTS_LUA_WRITE_FN
    "local written = write_result(KEYS[1], ARGV[1], ARGV[2])\n"
    "redis.call('ZREM', '" KEY_UNACKED_INDEX "', ARGV[3])\n"
    "redis.call('HDEL', '" KEY_UNACKED "', ARGV[3])\n"
    "redis.call('SREM', ARGV[4], ARGV[3])\n"
    "redis.call('ZREM', ARGV[5], ARGV[3])\n"
    "redis.call('DEL', ARGV[6])\n"
    "return written\n";

const char wscript_restore_tags[] =
    LUA_HELPERS
    "local n = 0\n"
    "local nexec = tonumber(ARGV[1])\n"
    "for _, tag in ipairs(redis.call('SMEMBERS', KEYS[1])) do\n"
    "  n = n + restore(tag)\n"
    "  for e = 0, nexec - 1 do redis.call('ZREM', '" KEY_POOL_SLOTS_PREFIX "' .. e, tag) end\n"
    "end\n"
    "redis.call('DEL', KEYS[1])\n"
    "return n\n";

const char wscript_give_back[] =
    LUA_HELPERS
    "local n = restore(ARGV[1])\n"
    "redis.call('SREM', KEYS[1], ARGV[1])\n"
    "for e = 0, tonumber(ARGV[2]) - 1 do redis.call('ZREM', '" KEY_POOL_SLOTS_PREFIX "' .. e, ARGV[1]) end\n"
    "return n\n";

const char wscript_restore_expired[] =
    LUA_HELPERS
    "if not redis.call('SET', 'unacked_mutex', ARGV[1], 'PX', ARGV[2], 'NX') then return -1 end\n"
    "local n = 0\n"
    "for _, tag in ipairs(redis.call('ZRANGEBYSCORE', '" KEY_UNACKED_INDEX "', '-inf', ARGV[3], 'LIMIT', 0, 1000)) do\n"
    "  n = n + restore(tag)\n"
    "end\n"
    "if redis.call('GET', 'unacked_mutex') == ARGV[1] then redis.call('DEL', 'unacked_mutex') end\n"
    "return n\n";

const char wscript_move_due[] =
    "local moved, dropped, revoked = 0, 0, {}\n"
    "local due = redis.call('ZRANGEBYSCORE', '" KEY_SCHEDULE "', '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))\n"
    "for _, m in ipairs(due) do\n"
    "  redis.call('ZREM', '" KEY_SCHEDULE "', m)\n"
    "  local ok, env = pcall(cjson.decode, m)\n"
    "  if ok and type(env) == 'table' and type(env.headers) == 'table' and type(env.properties) == 'table' then\n"
    "    local tid = env.headers.id\n"
    "    if type(tid) == 'string' then\n"
    "      if redis.call('HGET', '" KEY_SCHEDULE_IDS "', tid) == m then redis.call('HDEL', '" KEY_SCHEDULE_IDS "', tid) end\n"
    "    end\n"
    "    if type(tid) == 'string' and redis.call('EXISTS', '" KEY_REVOKED_PREFIX "' .. tid) == 1 then\n"
    "      dropped = dropped + 1\n"
    "      revoked[#revoked + 1] = tid\n"
    "    else\n"
    "      local di = env.properties.delivery_info\n"
    "      local q = type(di) == 'table' and di.routing_key or nil\n"
    "      local p = tonumber(env.properties.priority) or 0\n"
    "      if type(q) == 'string' and q ~= '' then\n"
    "        local key = q\n"
    "        if p >= 9 then key = q .. '\\6\\22' .. '9' elseif p >= 6 then key = q .. '\\6\\22' .. '6'\n"
    "        elseif p >= 3 then key = q .. '\\6\\22' .. '3' end\n"
    "        redis.call('LPUSH', key, m)\n"
    "        moved = moved + 1\n"
    "      else\n"
    "        dropped = dropped + 1\n"
    "      end\n"
    "    end\n"
    "  else\n"
    "    dropped = dropped + 1\n"
    "  end\n"
    "end\n"
    "local out = {moved, dropped}\n"
    "for _, tid in ipairs(revoked) do out[#out + 1] = tid end\n"
    "return out\n";

const char wscript_dlq_prune[] =
    "local n = 0\n"
    "for _, tid in ipairs(redis.call('ZRANGEBYSCORE', '" KEY_DLQ_INDEX "', '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))) do\n"
    "  local e = redis.call('GET', '" KEY_DLQ_ENTRY_PREFIX "' .. tid)\n"
    "  if e then\n"
    "    local ok, d = pcall(cjson.decode, e)\n"
    "    if ok and type(d) == 'table' and type(d.exception_class) == 'string' then\n"
    "      if redis.call('HINCRBY', '" KEY_DLQ_CLASSES "', d.exception_class, -1) <= 0 then\n"
    "        redis.call('HDEL', '" KEY_DLQ_CLASSES "', d.exception_class)\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  redis.call('DEL', '" KEY_DLQ_ENTRY_PREFIX "' .. tid)\n"
    "  redis.call('ZREM', '" KEY_DLQ_INDEX "', tid)\n"
    "  n = n + 1\n"
    "end\n"
    "return n\n";
