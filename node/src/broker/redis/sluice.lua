#!lua name=sluice
-- sluice-library-version: 1
--
-- Sluice's Redis Function library (Redis >= 7.0).
--
-- The node replaces the two placeholders on the HISTORY_* lines below with
-- integers (entries kept per topic, seconds of TTL) and loads the result with
-- FUNCTION LOAD REPLACE on every master. Both values must be >= 1, or the
-- load fails.
--
-- Version: the line above (read with FUNCTION LIST LIBRARYNAME sluice
-- WITHCODE; a library without it, from before versions, is version 0) equals
-- LIBRARY_VERSION in common/src/function_library.rs. A node or an engine's
-- Publisher loads its library on a master only when none is loaded there or an
-- older version is; a newer one stays, whatever its history settings. Raise
-- the version by one with every change nodes should get.
--
-- Compatibility, the rule every version keeps: a newer library serves older
-- callers (nodes, Publishers, engines in any language) unchanged, since in a
-- rolling upgrade they run against it until they are replaced:
--   * sluice_publish 1 <topic> <payload> [<type> [<snapshot> [<meta>]]]
--     -> {seq, epoch}
--   * sluice_state 1 <topic> -> {seq, epoch, snap_seq, snap, snap_ts}
--   * sluice_history 1 <topic> <from-seq> <count> -> XRANGE-shaped entries
--     with the fields e, t, p, ts and, only when given, m
-- keep their names, their arguments and the number, order and types of their
-- reply elements (callers decode replies by position: an extra element breaks
-- them). New arguments are optional and come last; new information comes from
-- a new function or a new optional argument. The keys, their fields and the
-- channel messages below keep their meaning: new fields may be added, since
-- readers ignore fields they do not know, but none is renamed, dropped or
-- given another meaning. The epoch and seq rules are never weakened.
--
-- Key layout for a topic T (T is also the one declared key, so every key of
-- a topic hashes to the same cluster slot as T: topics cannot contain '{'):
--   sluice:{T}:meta    hash   seq       last seq handed out (integer)
--                             epoch     the topic's epoch (see below)
--                             ems       ms part of every stream id of this epoch
--                             snap      latest snapshot (JSON text), optional
--                             snap_seq  seq the snapshot reflects, optional
--                             snap_ts   when the snapshot was stored, unix ms, optional
--                             exp       when the TTLs were last refreshed, unix ms
--                             rid       replication id of the server that wrote
--                                       the last entry (see "Continuation epochs")
--                             par       a continuation epoch's parent, optional
--                             fork      a continuation epoch's first own seq, optional
--   sluice:{T}:stream  stream entry id "<ems>-<seq>", fields
--                             e   epoch    t  type ("delta" or "alert")
--                             p   payload  ts publish time, unix ms
--                             m   the engine's meta (JSON object), only when
--                                 given; entries without it have no meta
--   sluice:{T}:live    sharded pub/sub channel (not a key): every publish ends
--                      with SPUBLISH of the entry to it, as five fields split by
--                      "\n": <seq> <epoch> <type> <ts> <payload> (the payload last,
--                      as it may hold newlines). With meta, the type field is
--                      "<type>:<meta length in bytes>" and the meta text comes
--                      right before the payload in the last field:
--                      <seq> <epoch> delta:17 <ts> {"source":"feed"}{"bid":1}
--                      (a node that does not know this form ignores the message
--                      and reads the entry from the stream). Only nodes that follow T are
--                      subscribed (SSUBSCRIBE), so a publish costs Redis nothing
--                      per node that does not follow its topic; the channel's
--                      hash tag puts it in T's slot on Cluster, on T's master.
--                      The stream stays the source of truth: a node that sees a
--                      seq jump or another epoch on the channel reads the stream.
--   sluice:topics      classic pub/sub channel (not a key): when a topic starts a
--                      new epoch (new topic, or its state was lost) the function
--                      PUBLISHes "<topic>\n<epoch>" to it before the first entry's
--                      SPUBLISH. Nodes holding wildcard subscriptions subscribe to
--                      it and follow matching topics from the epoch's seq 1
--                      (reading the stream for what came before their SSUBSCRIBE).
--                      Classic PUBLISH reaches every node of a Cluster; it costs
--                      one message per topic life, not per publish.
--
-- Both keys expire about HISTORY_TTL seconds after the topic's last publish:
-- the TTLs are refreshed when they were last refreshed TTL_REFRESH_MS ago or
-- more (a tenth of the TTL, at most a minute), not on every publish, because
-- two EXPIREs cost a third of the function's time in Redis. So a topic expires
-- between HISTORY_TTL - TTL_REFRESH_MS and HISTORY_TTL after its last publish.
--
-- Epoch: created when meta has no epoch (new topic, or its state was lost).
-- It is the base-36 (0-9a-z) form of the creation time in microseconds
-- (TIME: sec * 1000000 + usec), e.g. "hodyhjseay" (10 chars until 2085).
-- ems is the ms part of the creation time of the lineage's first epoch (a
-- continuation epoch keeps its parent's ems, see below), so the stream id of
-- any seq is "<ems>-<seq>" and ids keep growing across a continuation.
-- Because the ms part of every id is the epoch's creation time, the ids of a
-- later epoch are greater than those of an older one: a reader blocked in
-- XREAD on the old last id still wakes for the new epoch's entries. When a
-- new epoch is created while the old stream still exists (meta deleted or
-- evicted alone), ems is raised above the old stream's last id if the clock
-- is behind it; the old stream is then deleted (histories of two epochs are
-- never mixed).
--
-- Continuation epochs: the function records in meta the replication id
-- (INFO replication's master_replid) of the server that wrote the topic's last
-- entry. A replica promoted to master gets a new replication id, and so does a
-- server that restarts; either may lack the last entries the old master wrote
-- and the nodes delivered live before replication. So when a publish runs under
-- another replication id than meta's, the topic's epoch becomes a new one (the
-- time now in base 36, and later than the old epoch) that continues the old one:
-- par = the old epoch, fork = the next seq (seq + 1, this master's head + 1), and
-- seqs go on from there. Every seq below fork is the same message in both epochs;
-- a client or node positioned at seq s of the parent continues seamlessly when
-- s < fork, and saw a message this master lacks when s >= fork (it is told:
-- recovered false). The history function answers the entries of a continuation's
-- lineage (written under the parent, or under its parent...) with the current
-- epoch in "e", since the stream only holds the current lineage. Only the
-- latest fork is kept (one level of parent). A topic written before rid was
-- recorded adopts the current id without a new epoch. Continuation epochs are
-- not announced on sluice:topics (the topic is not new).
-- The replication id is read at most every REPLID_CACHE_MS (a value kept by
-- the library between calls). It can only be stale if this server stopped being
-- a master and became one again within that time without reloading the library
-- (a replica never runs sluice_publish, and a restart or a full resync loads the
-- library afresh); a stale id can then only miss a fork when meta's rid is this
-- server's own old id, i.e. no entry of the interim master reached it.
--
-- Meta: the optional 4th argument is the engine's meta, a JSON object of at
-- most MAX_META_BYTES bytes (a source, a trace id) without the key "node",
-- which every node fills in with its own id when it delivers the entry (a
-- "node" from the engine is refused, not overwritten, so an engine learns at
-- once). It is stored verbatim in the entry's "m" field and carried on the live
-- channel; snapshots carry no engine meta. An empty 3rd argument means "no
-- snapshot", so meta can be given without one. Without meta the entry, the
-- live message and the commands are exactly those of a publish without it.
--
-- Trimming: with the default stream-node-max-entries (100), "MAXLEN ~ N"
-- only drops whole radix-tree nodes, so on 7.0 a stream trimmed with
-- "MAXLEN ~ 5" keeps up to ~105 entries. Sluice uses exact trimming
-- ("MAXLEN = N") when N < 1000, so a small history holds exactly N entries,
-- and approximate trimming ("MAXLEN ~ N") from 1000 up, where it keeps at
-- least N and at most about N + 100 entries at a lower cost. Readers must
-- still treat "first entry's seq > wanted seq" as a gap.

local HISTORY_SIZE = __HISTORY_SIZE__
local HISTORY_TTL = __HISTORY_TTL__

-- Checked at load time, where Redis 7.0 exposes no standard library (no
-- error(), type(), string, math): reading an undefined global is what makes
-- FUNCTION LOAD fail, and its name is the message.
if not (HISTORY_SIZE >= 1 and HISTORY_SIZE % 1 == 0) then
    local _ = SLUICE_HISTORY_SIZE_must_be_an_integer_of_at_least_1
end
if not (HISTORY_TTL >= 1 and HISTORY_TTL % 1 == 0) then
    local _ = SLUICE_HISTORY_TTL_must_be_an_integer_of_at_least_1
end

local TRIM_OP = '~'
if HISTORY_SIZE < 1000 then
    TRIM_OP = '='
end

local MAX_TOPIC_BYTES = 200
-- The largest meta accepted (common/src/protocol/meta.rs has the same number).
local MAX_META_BYTES = 4096
-- (The math library is not available while the library loads.)
local TTL_REFRESH_MS = HISTORY_TTL * 100
if TTL_REFRESH_MS > 60000 then
    TTL_REFRESH_MS = 60000
end

local function meta_key(topic)
    return 'sluice:{' .. topic .. '}:meta'
end

local function stream_key(topic)
    return 'sluice:{' .. topic .. '}:stream'
end

-- nil when the topic is valid, else the reason.
local function topic_problem(topic)
    local n = #topic
    if n == 0 then
        return 'topic is empty'
    end
    if n > MAX_TOPIC_BYTES then
        return 'topic is longer than ' .. MAX_TOPIC_BYTES .. ' bytes'
    end
    if string.find(topic, '[^A-Za-z0-9_.:%-]') then
        return 'topic may only contain A-Z a-z 0-9 _ . : -'
    end
    if string.sub(topic, 1, 1) == '.' or string.sub(topic, n, n) == '.' or string.find(topic, '..', 1, true) then
        return 'topic has an empty segment (leading, trailing or double dot)'
    end
    return nil
end

-- nil when s is well-formed UTF-8 (no overlongs, no surrogates, at most
-- U+10FFFF) without raw control characters other than tab, LF and CR; else
-- the reason. One anchored greedy match skips each run of plain ASCII (much
-- faster in Lua 5.1 than an unanchored find of the bad bytes); only the
-- bytes that stop it are looked at one by one.
local function text_problem(s)
    local find, byte = string.find, string.byte
    local n = #s
    local _, e = find(s, '^[ -\127\t\n\r]*', 1)
    local i = e + 1
    while i <= n do
        local c = byte(s, i)
        if c < 0x80 then
            return 'raw control character'
        end
        local len, lo, hi = 0, 0x80, 0xBF
        if c >= 0xC2 and c <= 0xDF then
            len = 1
        elseif c == 0xE0 then
            len, lo = 2, 0xA0
        elseif c == 0xED then
            len, hi = 2, 0x9F
        elseif c >= 0xE1 and c <= 0xEF then
            len = 2
        elseif c == 0xF0 then
            len, lo = 3, 0x90
        elseif c >= 0xF1 and c <= 0xF3 then
            len = 3
        elseif c == 0xF4 then
            len, hi = 3, 0x8F
        else
            return 'invalid UTF-8'
        end
        if i + len > n then
            return 'invalid UTF-8'
        end
        local c1 = byte(s, i + 1)
        if c1 < lo or c1 > hi then
            return 'invalid UTF-8'
        end
        for k = 2, len do
            local ck = byte(s, i + k)
            if ck < 0x80 or ck > 0xBF then
                return 'invalid UTF-8'
            end
        end
        _, e = find(s, '^[ -\127\t\n\r]*', i + len + 1)
        i = e + 1
    end
    return nil
end

-- nil when text is acceptable JSON, else the reason. cjson checks the
-- structure; numbers like 0x10, 01, nan, inf are refused, and so are invalid
-- UTF-8 and raw control characters other than tab/LF/CR. cjson still lets
-- "1." and a raw tab/LF/CR inside a string through: readers must not trust
-- stream entries blindly anyway (anyone can XADD).
local function json_problem(what, text)
    if text == nil or text == '' then
        return what .. ' is missing'
    end
    local problem = text_problem(text)
    if problem then
        return what .. ' is not valid JSON (' .. problem .. ')'
    end
    cjson.decode_invalid_numbers(false)
    local ok, err = pcall(cjson.decode, text)
    if not ok then
        -- drop a "chunk:line: " prefix if Lua added one
        err = string.gsub(tostring(err), '^[^:]*:%d+: ', '')
        return what .. ' is not valid JSON (' .. err .. ')'
    end
    return nil
end

-- nil when text is acceptable engine meta (see "Meta" above), else the reason.
-- The same checks as json_problem, with one decode that also looks for "node".
local function meta_problem(text)
    if #text > MAX_META_BYTES then
        return 'meta is ' .. #text .. ' bytes, more than the ' .. MAX_META_BYTES .. ' allowed'
    end
    if text == '' then
        return 'meta is missing'
    end
    -- cjson decodes objects and arrays alike into tables: look at the text.
    if not string.find(text, '^[ \t\n\r]*{') then
        return 'meta must be a JSON object'
    end
    local problem = text_problem(text)
    if problem then
        return 'meta is not valid JSON (' .. problem .. ')'
    end
    cjson.decode_invalid_numbers(false)
    local ok, doc = pcall(cjson.decode, text)
    if not ok then
        doc = string.gsub(tostring(doc), '^[^:]*:%d+: ', '')
        return 'meta is not valid JSON (' .. doc .. ')'
    end
    if doc['node'] ~= nil then
        return 'meta key "node" is reserved: the delivering node fills it in'
    end
    return nil
end

local function fail(reason)
    return redis.error_reply('ERR sluice: ' .. reason)
end

local BASE36 = '0123456789abcdefghijklmnopqrstuvwxyz'

-- n: a non-negative integer below 2^53 (exact in a Lua double).
local function to_base36(n)
    if n == 0 then
        return '0'
    end
    local digits = {}
    while n > 0 do
        local d = n % 36
        table.insert(digits, 1, string.sub(BASE36, d + 1, d + 1))
        n = (n - d) / 36
    end
    return table.concat(digits)
end

-- The inverse of to_base36 (an epoch made by to_base36 decodes exactly).
local function from_base36(s)
    local n = 0
    for i = 1, #s do
        local c = string.byte(s, i)
        local d
        if c >= 48 and c <= 57 then
            d = c - 48
        elseif c >= 97 and c <= 122 then
            d = c - 87
        else
            return nil
        end
        n = n * 36 + d
    end
    return n
end

-- This server's replication id (INFO replication's master_replid), kept for
-- REPLID_CACHE_MS between reads: INFO costs about as much as a tenth of the
-- publish. See "Continuation epochs" above for why a cached value is safe.
local REPLID_CACHE_MS = 100
local replid_cache = { id = nil, at = 0 }

local function current_replid(now_ms)
    if replid_cache.id and now_ms >= replid_cache.at and now_ms - replid_cache.at < REPLID_CACHE_MS then
        return replid_cache.id
    end
    local info = redis.call('INFO', 'replication')
    local id = string.match(info, 'master_replid:(%w+)')
    replid_cache.id = id
    replid_cache.at = now_ms
    return id
end

-- FCALL sluice_publish 1 <topic> <payload-json> [<type> [<snapshot-json> [<meta-json>]]]
-- -> {seq, epoch}. An empty <snapshot-json> means no snapshot.
local function publish(keys, args)
    if #keys ~= 1 then
        return fail('expected exactly 1 key (the topic), got ' .. #keys)
    end
    local topic = keys[1]
    local problem = topic_problem(topic)
    if problem then
        return fail(problem)
    end
    if #args < 1 then
        return fail('payload is missing')
    end
    if #args > 4 then
        return fail('too many arguments: expected <payload> [<type> [<snapshot> [<meta>]]]')
    end
    local payload = args[1]
    problem = json_problem('payload', payload)
    if problem then
        return fail(problem)
    end
    local msg_type = 'delta'
    if #args >= 2 then
        msg_type = args[2]
        if msg_type ~= 'delta' and msg_type ~= 'alert' then
            return fail('type must be "delta" or "alert"')
        end
    end
    local snapshot = nil
    if #args >= 3 and args[3] ~= '' then
        snapshot = args[3]
        problem = json_problem('snapshot', snapshot)
        if problem then
            return fail(problem)
        end
    end
    local engine_meta = nil
    if #args >= 4 then
        engine_meta = args[4]
        problem = meta_problem(engine_meta)
        if problem then
            return fail(problem)
        end
    end

    local meta = meta_key(topic)
    local stream = stream_key(topic)

    local now = redis.call('TIME')
    local sec, usec = tonumber(now[1]), tonumber(now[2])
    local now_ms = sec * 1000 + math.floor(usec / 1000)

    local replid = current_replid(now_ms)
    local cur = redis.call('HMGET', meta, 'epoch', 'ems', 'exp', 'rid', 'seq')
    local epoch, ems, exp = cur[1], cur[2], tonumber(cur[3])
    if epoch and ems and replid and cur[4] ~= replid then
        if cur[4] then
            -- Written last under another replication id: this server took over
            -- (a promoted replica, a restart) and may lack entries that were
            -- delivered. Continue under a new epoch whose lineage forks at the
            -- next seq (see "Continuation epochs" above).
            local fork = (tonumber(cur[5]) or 0) + 1
            local micros = sec * 1000000 + usec
            local parent_micros = from_base36(epoch)
            if parent_micros and micros <= parent_micros then
                micros = parent_micros + 1
            end
            local parent = epoch
            epoch = to_base36(micros)
            redis.call('HSET', meta, 'epoch', epoch, 'par', parent, 'fork', string.format('%d', fork), 'rid', replid)
        else
            -- Written before replication ids were recorded: adopt this one.
            redis.call('HSET', meta, 'rid', replid)
        end
    end
    if not epoch or not ems then
        exp = nil
        -- New topic, or its state was lost: start a new epoch.
        local micros = sec * 1000000 + usec
        local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
        if last then
            local last_ms = tonumber(string.match(last[1], '^(%d+)-'))
            if last_ms and math.floor(micros / 1000) <= last_ms then
                micros = (last_ms + 1) * 1000
            end
        end
        epoch = to_base36(micros)
        ems = string.format('%d', math.floor(micros / 1000))
        redis.call('DEL', stream)
        redis.call('HSET', meta, 'epoch', epoch, 'ems', ems, 'seq', 0)
        redis.call('HDEL', meta, 'snap', 'snap_seq', 'snap_ts', 'par', 'fork')
        if replid then
            redis.call('HSET', meta, 'rid', replid)
        end
        -- Announce the new epoch to nodes holding wildcards (sluice:topics above).
        redis.call('PUBLISH', 'sluice:topics', topic .. '\n' .. epoch)
    end

    local seq = redis.call('HINCRBY', meta, 'seq', 1)
    local seq_str = string.format('%d', seq)
    local ts_str = string.format('%d', now_ms)
    local live_type, live_body = msg_type, payload
    if engine_meta then
        redis.call('XADD', stream, 'MAXLEN', TRIM_OP, string.format('%d', HISTORY_SIZE), ems .. '-' .. seq_str,
            'e', epoch, 't', msg_type, 'p', payload, 'ts', ts_str, 'm', engine_meta)
        live_type = msg_type .. ':' .. string.format('%d', #engine_meta)
        live_body = engine_meta .. payload
    else
        redis.call('XADD', stream, 'MAXLEN', TRIM_OP, string.format('%d', HISTORY_SIZE), ems .. '-' .. seq_str,
            'e', epoch, 't', msg_type, 'p', payload, 'ts', ts_str)
    end
    if snapshot then
        redis.call('HSET', meta, 'snap', snapshot, 'snap_seq', seq_str, 'snap_ts', ts_str)
    end
    -- Hand the entry to the nodes following the topic (see sluice:{T}:live above).
    redis.call('SPUBLISH', 'sluice:{' .. topic .. '}:live',
        seq_str .. '\n' .. epoch .. '\n' .. live_type .. '\n' .. ts_str .. '\n' .. live_body)
    if not exp or now_ms - exp >= TTL_REFRESH_MS then
        local ttl = string.format('%d', HISTORY_TTL)
        redis.call('HSET', meta, 'exp', string.format('%d', now_ms))
        redis.call('EXPIRE', meta, ttl)
        redis.call('EXPIRE', stream, ttl)
    end
    return { seq, epoch }
end

-- FCALL_RO sluice_state 1 <topic> -> {seq, epoch, snap_seq, snap, snap_ts}
-- One atomic read of a topic's position and snapshot:
--   seq       integer, last seq published (0 if the topic is unknown)
--   epoch     string ("" if the topic is unknown)
--   snap_seq  integer, seq the snapshot reflects (0 if there is no snapshot)
--   snap      the snapshot JSON text, or nil (RESP null) if there is none
--   snap_ts   integer, unix ms the snapshot was stored (0 if none)
-- An unknown (or expired, or invalid) topic gives {0, "", 0, nil, 0}: the
-- topic name is checked only for the key count, not validated.
local function state(keys, args)
    if #keys ~= 1 then
        return fail('expected exactly 1 key (the topic), got ' .. #keys)
    end
    if #args ~= 0 then
        return fail('sluice_state takes no arguments')
    end
    local cur = redis.call('HMGET', meta_key(keys[1]), 'seq', 'epoch', 'snap_seq', 'snap', 'snap_ts')
    if not cur[2] then
        return { 0, '', 0, false, 0 }
    end
    local snap_seq, snap_ts = 0, 0
    if cur[4] then
        snap_seq = tonumber(cur[3]) or 0
        snap_ts = tonumber(cur[5]) or 0
    end
    local seq, epoch, snap = tonumber(cur[1]) or 0, cur[2], cur[4]
    return { seq, epoch, snap_seq, snap, snap_ts }
end

-- FCALL_RO sluice_history 1 <topic> <from-seq> <count>
-- -> up to <count> entries of the CURRENT epoch with seq >= <from-seq>, in order,
-- as XRANGE returns them ({id, {field, value, ...}}); {} for an unknown topic.
-- Entries of a continuation epoch's lineage carry the current epoch in "e".
-- Reading the epoch's ms part and the range in one call keeps them consistent.
local function history(keys, args)
    if #keys ~= 1 then
        return fail('expected exactly 1 key (the topic), got ' .. #keys)
    end
    local from, count = tonumber(args[1]), tonumber(args[2])
    if #args ~= 2 or not from or from < 1 or from % 1 ~= 0 or not count or count < 1 or count % 1 ~= 0 then
        return fail('expected <from-seq> <count>, both whole numbers of at least 1')
    end
    local cur = redis.call('HMGET', meta_key(keys[1]), 'ems', 'epoch', 'par')
    local ems, epoch = cur[1], cur[2]
    if not ems then
        return {}
    end
    local entries = redis.call('XRANGE', stream_key(keys[1]), ems .. '-' .. string.format('%d', from), '+',
        'COUNT', string.format('%d', count))
    if cur[3] and epoch then
        -- A continuation epoch: the stream holds its whole lineage (a new root
        -- epoch deletes the stream), so entries written under an ancestor are
        -- this epoch's history too, and are answered as such.
        for _, entry in ipairs(entries) do
            local fields = entry[2]
            if fields[1] == 'e' and fields[2] ~= epoch then
                fields[2] = epoch
            end
        end
    end
    return entries
end

redis.register_function('sluice_publish', publish)
redis.register_function {
    function_name = 'sluice_history',
    callback = history,
    flags = { 'no-writes' },
}
redis.register_function {
    function_name = 'sluice_state',
    callback = state,
    flags = { 'no-writes' },
}
