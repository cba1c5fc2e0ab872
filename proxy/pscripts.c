#include "pscripts.h"

#include "keys.h"

/* The texts; each header entry documents its KEYS, ARGV and reply. */

/* Both scripts that act on a submission first check the deadline the proxy
 * passes in (rclient_deadline: microseconds of Redis's own clock): a script
 * that reaches Redis after the proxy has stopped waiting for it (a stalled
 * or slow server) does nothing, so the proxy can send the submission
 * elsewhere without it also running here.  (replicate_commands lets a
 * script write after TIME on Redis < 5; later versions always do.) */
#define DEADLINE_CHECK(argn)                                                                  \
    "if redis.replicate_commands then redis.replicate_commands() end\n"                      \
    "local t = redis.call('TIME')\n"                                                         \
    "if tonumber(t[1]) * 1000000 + tonumber(t[2]) > tonumber(ARGV[" argn "]) then return {2, 0} end\n"

/* KEYS: route key, queue list, in-flight zset, then every priority list of
 * the queue.  ARGV: record, TTL, message, eval id, submitted_at, deadline,
 * depth ceiling (0: none).  {1, depth} queued; {0, record} when the eval id
 * already had one; {2, 0} past the deadline; {3, depth} the queue is full. */
static const char text_submit_new[] =
    DEADLINE_CHECK("6")
    "local old = redis.call('GET', KEYS[1])\n"
    "if old then return {0, old} end\n"
    "local max = tonumber(ARGV[7])\n"
    "if max > 0 then\n"
    "  local n = 0\n"
    "  for i = 4, #KEYS do n = n + redis.call('LLEN', KEYS[i]) end\n"
    "  if n >= max then return {3, n} end\n"
    "end\n"
    "redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])\n"
    "local n = redis.call('LPUSH', KEYS[2], ARGV[3])\n"
    "redis.call('ZADD', KEYS[3], ARGV[5], ARGV[4])\n"
    "return {1, n}\n";

/* KEYS: route key.  ARGV: record, TTL, deadline.  {1, ''} claimed (also
 * when the record there is this very one: an earlier attempt whose reply
 * was lost), {0, record} taken, {2, 0} past the deadline. */
static const char text_claim[] =
    DEADLINE_CHECK("3")
    "local old = redis.call('GET', KEYS[1])\n"
    "if old == ARGV[1] then return {1, ''} end\n"
    "if old then return {0, old} end\n"
    "redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])\n"
    "return {1, ''}\n";

static const char text_release[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end\n"
    "return 1\n";

static const char text_replace[] =
    "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end\n"
    "redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')\n"
    "redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])\n"
    "return 1\n";

static const char text_flush[] =
    "redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2])\n"
    "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3]) end\n"
    "return 1\n";

static const char text_count[] =
    "if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return false end\n"
    "local r = redis.call('GET', KEYS[2])\n"
    "if not r then return '' end\n"
    "if ARGV[2] ~= '' and string.sub(r, -1) == '}' and not string.find(r, '\"outcome\"', 1, true) then\n"
    "  local err = ''\n"
    "  if ARGV[4] ~= '' then err = ',\"error\":' .. ARGV[4] end\n"
    "  redis.call('SET', KEYS[2], string.sub(r, 1, -2) .. ',\"outcome\":\"' .. ARGV[2] ..\n"
    "             '\",\"completed_at\":' .. ARGV[3] .. err .. '}', 'KEEPTTL')\n"
    "end\n"
    "return r\n";

static const char text_lease[] =
    "local v = redis.call('GET', KEYS[1])\n"
    "if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end\n"
    "if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end\n"
    "return 0\n";

static const char text_canary_cas[] =
    "local cur = redis.call('GET', KEYS[1])\n"
    "local v = 0\n"
    "if cur then v = cjson.decode(cur).version or 0 end\n"
    "if tostring(v) ~= ARGV[1] then return 0 end\n"
    "redis.call('SET', KEYS[1], ARGV[2])\n"
    "if ARGV[3] ~= '' then\n"
    "  redis.call('LPUSH', KEYS[2], ARGV[3])\n"
    "  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[4]) - 1)\n"
    "end\n"
    "return 1\n";

static const char text_rollout_update[] =
    "local raw = redis.call('GET', KEYS[1])\n"
    "local cur = cjson.decode(raw or ARGV[1])\n"
    "if ARGV[8] ~= '' and tostring(cur.version or 0) ~= ARGV[8] then return {0, raw or ARGV[1]} end\n"
    "local new = {}\n"
    "for k, v in pairs(cur) do new[k] = v end\n"
    "for k, v in pairs(cjson.decode(ARGV[2])) do new[k] = v end\n"
    "new.version = (cur.version or 0) + 1\n"
    "new.updated_at = tonumber(ARGV[3])\n"
    "new.updated_by = ARGV[4]\n"
    "new.reason = ARGV[5]\n"
    "local out = cjson.encode(new)\n"
    "redis.call('SET', KEYS[1], out)\n"
    "redis.call('LPUSH', KEYS[2], cjson.encode({at = new.updated_at, by = ARGV[4], reason = ARGV[5],\n"
    "  version = new.version, from = cur, to = new}))\n"
    "redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[7]) - 1)\n"
    "redis.call('PUBLISH', ARGV[6], out)\n"
    "return {1, out}\n";

static const char text_shadow_start[] =
    "if redis.call('HSETNX', KEYS[1], 'submitted_at', ARGV[3]) == 0 then return 0 end\n"
    "redis.call('EXPIRE', KEYS[1], ARGV[4])\n"
    "redis.call('LPUSH', KEYS[2], ARGV[1])\n"
    "redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])\n"
    "return 1\n";

static const char text_shadow_report[] =
    "if redis.call('EXISTS', KEYS[1]) == 0 then return false end\n"
    "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])\n"
    "local l = redis.call('HGET', KEYS[1], 'legacy')\n"
    "local n = redis.call('HGET', KEYS[1], 'new')\n"
    "if l and n then redis.call('DEL', KEYS[1]) return {l, n} end\n"
    "return 0\n";

static const char text_revoke[] =
    "local removed = 0\n"
    "local m = redis.call('HGET', KEYS[3], ARGV[1])\n"
    "if m then\n"
    "  removed = redis.call('ZREM', KEYS[2], m)\n"
    "  redis.call('HDEL', KEYS[3], ARGV[1])\n"
    "end\n"
    "redis.call('SET', KEYS[1], ARGV[2], 'EX', " KEY_REVOKED_TTL_S_TEXT ")\n"
    "if ARGV[3] ~= '' then redis.call('PUBLISH', '" KEY_REVOKE_CHANNEL "', ARGV[3]) end\n"
    "redis.call('PUBLISH', ARGV[4], ARGV[5])\n"
    "return removed\n";

static const char text_dlq_delete[] =
    "local cur = redis.call('GET', KEYS[1])\n"
    "local n = redis.call('ZREM', KEYS[2], ARGV[1])\n"
    "if not cur then return n end\n"
    "local ok, d = pcall(cjson.decode, cur)\n"
    "if ok and type(d) == 'table' and type(d.exception_class) == 'string' then\n"
    "  if redis.call('HINCRBY', KEYS[3], d.exception_class, -1) <= 0 then\n"
    "    redis.call('HDEL', KEYS[3], d.exception_class)\n"
    "  end\n"
    "end\n"
    "redis.call('DEL', KEYS[1])\n"
    "return 1\n";

static const char text_dlq_retry[] =
    "local cur = redis.call('GET', KEYS[1])\n"
    "if not cur then return 0 end\n"
    "if cur ~= ARGV[2] then return -1 end\n"
    "if KEYS[6] then redis.call('DEL', KEYS[6]) end\n"
    "redis.call('DEL', KEYS[5])\n"
    "redis.call('LPUSH', KEYS[4], ARGV[3])\n"
    "local ok, d = pcall(cjson.decode, cur)\n"
    "if ok and type(d) == 'table' and type(d.exception_class) == 'string' then\n"
    "  if redis.call('HINCRBY', KEYS[3], d.exception_class, -1) <= 0 then\n"
    "    redis.call('HDEL', KEYS[3], d.exception_class)\n"
    "  end\n"
    "end\n"
    "redis.call('DEL', KEYS[1])\n"
    "redis.call('ZREM', KEYS[2], ARGV[1])\n"
    "return 1\n";

rclient_script pscript_submit_new = RCLIENT_SCRIPT(text_submit_new);
rclient_script pscript_claim = RCLIENT_SCRIPT(text_claim);
rclient_script pscript_release = RCLIENT_SCRIPT(text_release);
rclient_script pscript_replace = RCLIENT_SCRIPT(text_replace);
rclient_script pscript_flush = RCLIENT_SCRIPT(text_flush);
rclient_script pscript_count = RCLIENT_SCRIPT(text_count);
rclient_script pscript_lease = RCLIENT_SCRIPT(text_lease);
rclient_script pscript_canary_cas = RCLIENT_SCRIPT(text_canary_cas);
rclient_script pscript_rollout_update = RCLIENT_SCRIPT(text_rollout_update);
rclient_script pscript_shadow_start = RCLIENT_SCRIPT(text_shadow_start);
rclient_script pscript_shadow_report = RCLIENT_SCRIPT(text_shadow_report);
rclient_script pscript_revoke = RCLIENT_SCRIPT(text_revoke);
rclient_script pscript_dlq_delete = RCLIENT_SCRIPT(text_dlq_delete);
rclient_script pscript_dlq_retry = RCLIENT_SCRIPT(text_dlq_retry);
