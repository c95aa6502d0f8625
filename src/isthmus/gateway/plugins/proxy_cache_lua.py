"""The Lua source of proxy-cache's filter (see :mod:`isthmus.gateway.plugins.proxy_cache`): Kong's cache key,
rules, headers and in-memory store, per route from its ``filter_context``; after the gateway's Lua codec
(``auth/lua/codec.lua``: its query arguments)."""

from __future__ import annotations

from isthmus.gateway.plugins import auth

_SOURCE = r"""
-- Kong's proxy-cache (strategy memory) in this Envoy worker's Lua state: Kong's key, rules and headers.
local bit = require("bit")
local NS = "kong.proxy-cache"
local LIMIT = 128 * 1024 * 1024 -- bytes of cached bodies and headers (Kong's kong_db_cache is 128m)
local CACHE, ORDER, SIZE, COUNT = {}, {}, 0, 0 -- entries by key, keys by age, bytes, entries
local HOP = { connection = true, ["keep-alive"] = true, ["proxy-authenticate"] = true,
  ["proxy-authorization"] = true, te = true, trailers = true, ["transfer-encoding"] = true, upgrade = true,
  ["content-length"] = true }

-- SHA-256 (FIPS 180-4) with LuaJIT's bit operations, for Kong's X-Cache-Key
local band, bor, bxor, bnot, rshift, lshift, ror, tobit, tohex =
  bit.band, bit.bor, bit.bxor, bit.bnot, bit.rshift, bit.lshift, bit.ror, bit.tobit, bit.tohex
local K = {
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2 }

local function sha256_hex(text)
  local bits = #text * 8
  local tail = {}
  for i = 7, 0, -1 do tail[#tail + 1] = string.char(math.floor(bits / 2 ^ (8 * i)) % 256) end
  text = text .. "\128" .. string.rep("\0", (55 - #text) % 64) .. table.concat(tail)
  local H = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 }
  local w = {}
  for chunk = 1, #text, 64 do
    for i = 0, 15 do
      local a, b, c, d = string.byte(text, chunk + i * 4, chunk + i * 4 + 3)
      w[i] = bor(lshift(a, 24), lshift(b, 16), lshift(c, 8), d)
    end
    for i = 16, 63 do
      local x, y = w[i - 15], w[i - 2]
      local s0 = bxor(ror(x, 7), ror(x, 18), rshift(x, 3))
      local s1 = bxor(ror(y, 17), ror(y, 19), rshift(y, 10))
      w[i] = tobit(w[i - 16] + s0 + w[i - 7] + s1)
    end
    local a, b, c, d, e, f, g, h = H[1], H[2], H[3], H[4], H[5], H[6], H[7], H[8]
    for i = 0, 63 do
      local t1 = tobit(h + bxor(ror(e, 6), ror(e, 11), ror(e, 25)) + bxor(band(e, f), band(bnot(e), g)) + K[i + 1] + w[i])
      local t2 = tobit(bxor(ror(a, 2), ror(a, 13), ror(a, 22)) + bxor(band(a, b), band(a, c), band(b, c)))
      h, g, f, e, d, c, b, a = g, f, e, tobit(d + t1), c, b, a, tobit(t1 + t2)
    end
    H[1], H[2], H[3], H[4] = tobit(H[1] + a), tobit(H[2] + b), tobit(H[3] + c), tobit(H[4] + d)
    H[5], H[6], H[7], H[8] = tobit(H[5] + e), tobit(H[6] + f), tobit(H[7] + g), tobit(H[8] + h)
  end
  local out = {}
  for i = 1, 8 do out[i] = tohex(H[i]) end
  return table.concat(out)
end

local function directives(value)
  local out = {}
  for part in string.gmatch(string.lower(value or ""), "[^,]+") do
    local name, arg = string.match(part, '^%s*([^=%s]+)%s*=?%s*"?([^"]*)"?%s*$')
    if name then out[name] = arg end
  end
  return out
end

-- Kong's key part for a table of values (args or headers): fields in order, "name=v1,v2" (values sorted)
local function key_part(values, fields)
  local out = {}
  for _, field in ipairs(fields) do
    local v = values[field]
    if type(v) == "table" then
      table.sort(v)
      out[#out + 1] = field .. "=" .. table.concat(v, ",")
    elseif v == true then
      out[#out + 1] = field
    elseif v ~= nil then
      out[#out + 1] = field .. "=" .. v
    end
  end
  return table.concat(out, ":")
end

local function lines(text)
  local out = {}
  for line in string.gmatch(text or "", "[^\n]+") do out[#out + 1] = line end
  return out
end

local function cache_key(handle, context, headers)
  local path = headers:get(":path") or "/"
  local base, query = string.match(path, "^([^?]*)(.*)$")
  local args = parse_args(string.sub(query, 2))
  local fields = lines(context:get("vary_query"))
  if #fields == 0 then
    for name in pairs(args) do fields[#fields + 1] = name end
    table.sort(fields)
  end
  local vary = {}
  local vary_fields = lines(context:get("vary_headers"))
  for _, name in ipairs(vary_fields) do
    local lower = string.lower(name)
    local n = headers:getNumValues(lower)
    if n == 1 then vary[name] = headers:getAtIndex(lower, 0)
    elseif n > 1 then
      local all = {}
      for i = 0, n - 1 do all[#all + 1] = headers:getAtIndex(lower, i) end
      vary[name] = all
    end
  end
  -- nginx's $request without its query string (Kong cuts from "?" to the end of the request line)
  local protocol = handle:streamInfo():protocol() or "HTTP/1.1"
  if protocol == "HTTP/2" then protocol = "HTTP/2.0" elseif protocol == "HTTP/3" then protocol = "HTTP/3.0" end
  local uri = headers:get(":method") .. " " .. base
  if query == "" then uri = uri .. " " .. protocol end
  if context:get("ignore_uri_case") == "1" then uri = string.lower(uri) end
  local consumer = headers:get("x-consumer-id")
  local prefix = context:get("route")
  if consumer ~= nil then prefix = consumer .. ":" .. prefix end
  return table.concat({ prefix, headers:get(":method"), uri, key_part(args, fields), key_part(vary, vary_fields) }, "|")
end

local function evict()
  if #ORDER > 2 * COUNT + 1000 then -- keys of entries gone since (expired, replaced) are dropped from the eviction order
    local live, seen = {}, {}
    for _, key in ipairs(ORDER) do
      if CACHE[key] ~= nil and not seen[key] then live[#live + 1] = key; seen[key] = true end
    end
    ORDER = live
  end
  while SIZE > LIMIT and #ORDER > 0 do
    local key = table.remove(ORDER, 1)
    local entry = CACHE[key]
    if entry ~= nil then
      CACHE[key] = nil
      SIZE, COUNT = SIZE - entry.size, COUNT - 1
    end
  end
end

local function enabled(handle, context, name)
  return context:get(name) == "1" or (handle:streamInfo():dynamicMetadata():get(NS) or {})["debug"] == "1"
end

function envoy_on_request(handle)
  local context = handle:filterContext()
  local headers = handle:headers()
  local info = handle:streamInfo():dynamicMetadata()
  info:set(NS, "debug", headers:get("kong-debug") ~= nil and "1" or "0")
  local cc = directives(headers:get("cache-control"))
  local cache_control = context:get("cache_control") == "1"
  if not string.find(context:get("methods"), "," .. headers:get(":method") .. ",", 1, true)
    or (cache_control and (cc["no-store"] or cc["no-cache"] or headers:get("authorization"))) then
    info:set(NS, "status", "Bypass")
    return
  end
  local key = cache_key(handle, context, headers)
  local digest = sha256_hex(key)
  info:set(NS, "key", key)
  info:set(NS, "digest", digest)
  local now = os.time()
  local entry = CACHE[key]
  if entry ~= nil and now >= entry.expires then
    CACHE[key] = nil
    SIZE, COUNT = SIZE - entry.size, COUNT - 1
    entry = nil
  end
  if entry == nil then
    if cache_control and cc["only-if-cached"] then
      info:set(NS, "status", "Miss")
      handle:respond({ [":status"] = "504" }, "")
      return
    end
    info:set(NS, "status", "Miss")
    return
  end
  local age = now - entry.stored
  local refresh
  if cache_control then
    local max_age, max_stale, min_fresh = tonumber(cc["max-age"] or ""), tonumber(cc["max-stale"] or ""),
      tonumber(cc["min-fresh"] or "")
    refresh = (max_age and age > max_age) or (max_stale and age - entry.ttl > max_stale)
      or (min_fresh and entry.ttl - age < min_fresh)
  else
    refresh = age > tonumber(context:get("ttl"))
  end
  if refresh then
    info:set(NS, "status", "Refresh")
    return
  end
  local reply = { [":status"] = entry.status }
  for _, pair in ipairs(entry.headers) do
    local name, value = pair[1], pair[2]
    if not HOP[name] and not string.find(name, "ratelimit-remaining", 1, true)
      and name ~= "age" and name ~= "x-cache-status" and name ~= "x-cache-key" then
      local prev = reply[name]
      if prev == nil then reply[name] = value
      elseif type(prev) == "table" then prev[#prev + 1] = value
      else reply[name] = { prev, value } end
    end
  end
  if enabled(handle, context, "age") then reply["age"] = tostring(age) end
  if enabled(handle, context, "status_header") then reply["x-cache-status"] = "Hit" end
  if enabled(handle, context, "key_header") then reply["x-cache-key"] = digest end
  info:set(NS, "status", "Hit")
  handle:respond(reply, entry.body)
end

local function media(value)
  local main, rest = string.match(value, "^%s*([^;%s]+)%s*(.*)$")
  if main == nil then return nil end
  local params = {}
  for k, v in string.gmatch(rest, ';%s*([^=;%s]+)%s*=%s*"?([^";]*)"?') do
    params[#params + 1] = string.lower(k) .. "=" .. v
  end
  table.sort(params)
  return string.lower(main), table.concat(params, ";")
end

local function content_type_matches(value, expected)
  if value == nil or value == "" then return false end
  local main, params = media(value)
  if main == nil then return false end
  local kind, sub = string.match(main, "^([^/]*)/?(.*)$")
  for _, line in ipairs(lines(expected)) do
    local ekind, esub, eparams = string.match(line, "^([^/]*)/([^|]*)|(.*)$")
    if (ekind == "*" or ekind == kind) and (esub == "*" or esub == sub) and eparams == params then return true end
  end
  return false
end

local MONTHS = { jan = 1, feb = 2, mar = 3, apr = 4, may = 5, jun = 6, jul = 7, aug = 8, sep = 9, oct = 10,
  nov = 11, dec = 12 }

local function http_time(value)
  if value == nil then return nil end
  local d, mon, y, h, m, s = string.match(value, "(%d+) (%a+) (%d+) (%d+):(%d+):(%d+)")
  local month = mon and MONTHS[string.lower(mon)]
  if month == nil then return nil end
  return os.time({ year = tonumber(y), month = month, day = tonumber(d), hour = tonumber(h), min = tonumber(m),
    sec = tonumber(s) })
end

function envoy_on_response(handle)
  local context = handle:filterContext()
  local info = handle:streamInfo():dynamicMetadata()
  local meta = info:get(NS) or {}
  local status = meta["status"]
  local headers = handle:headers()
  if status == nil or status == "Hit" then return end
  local cacheable = status ~= "Bypass"
    and string.find(context:get("codes"), "," .. headers:get(":status") .. ",", 1, true) ~= nil
    and content_type_matches(headers:get("content-type"), context:get("types"))
  local ttl = tonumber(context:get("ttl"))
  local cache_control = context:get("cache_control") == "1"
  if cacheable and cache_control then
    local cc = directives(headers:get("cache-control"))
    if cc["private"] or cc["no-store"] or cc["no-cache"] then
      cacheable = false
    else
      ttl = tonumber(cc["s-maxage"] or cc["max-age"] or "")
      if ttl == nil then
        local expires = http_time(headers:get("expires"))
        ttl = expires and (expires - http_time(os.date("!%a, %d %b %Y %H:%M:%S GMT"))) or 0
      end
      cacheable = ttl > 0
    end
  end
  if status ~= "Bypass" and enabled(handle, context, "key_header") then headers:replace("x-cache-key", meta["digest"]) end
  if enabled(handle, context, "status_header") then headers:replace("x-cache-status", cacheable and status or "Bypass") end
  if not cacheable then return end
  local stored = {}
  local size = 0
  for name, value in pairs(headers) do
    if string.sub(name, 1, 1) ~= ":" then
      stored[#stored + 1] = { name, value }
      size = size + #name + #value
    end
  end
  local code = headers:get(":status")
  local storage = tonumber(context:get("storage_ttl") or "") or ttl
  local chunks = {}
  for chunk in handle:bodyChunks() do
    local n = chunk:length()
    if n > 0 and size <= LIMIT then chunks[#chunks + 1] = chunk:getBytes(0, n) end
    size = size + n
  end
  if size > LIMIT then return end
  local now = os.time()
  local key = meta["key"]
  local old = CACHE[key]
  if old ~= nil then SIZE = SIZE - old.size else ORDER[#ORDER + 1] = key; COUNT = COUNT + 1 end
  CACHE[key] = { status = code, headers = stored, body = table.concat(chunks), stored = now, ttl = ttl,
    expires = now + storage, size = size }
  SIZE = SIZE + size
  evict()
end
"""

SOURCE = auth.lua("codec") + _SOURCE
