-- base64 (standard and url-safe, padding optional), percent-decoding, a small JSON decoder and encoder.
local B64 = {}
do
  local chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
  for i = 1, 62 do B64[chars:sub(i, i)] = i - 1 end
end

-- nil when the text is not base64 (``url``: the url-safe alphabet, else the standard one)
local function b64_decode(s, url)
  if type(s) ~= "string" then return nil end
  local c62, c63 = "+", "/"
  if url then c62, c63 = "-", "_" end
  s = s:gsub("=+$", "")
  if #s % 4 == 1 then return nil end
  local out, acc, nbits = {}, 0, 0
  for i = 1, #s do
    local ch = s:sub(i, i)
    local v = B64[ch]
    if v == nil then
      if ch == c62 then v = 62 elseif ch == c63 then v = 63 else return nil end
    end
    acc = acc * 64 + v
    nbits = nbits + 6
    if nbits >= 8 then
      nbits = nbits - 8
      local byte = math.floor(acc / 2 ^ nbits)
      out[#out + 1] = string.char(byte)
      acc = acc - byte * 2 ^ nbits
    end
  end
  return table.concat(out)
end

local function url_decode(s)
  s = s:gsub("%+", " ")
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- query or form text -> {name = value | true | {values}} (as ngx's get_uri_args)
local function parse_args(text)
  local args = {}
  if not text or text == "" then return args end
  for pair in text:gmatch("[^&]+") do
    local eq = pair:find("=", 1, true)
    local name, value
    if eq then
      name, value = url_decode(pair:sub(1, eq - 1)), url_decode(pair:sub(eq + 1))
    else
      name, value = url_decode(pair), true
    end
    if name ~= "" then
      local prev = args[name]
      if prev == nil then
        args[name] = value
      elseif type(prev) == "table" then
        prev[#prev + 1] = value
      else
        args[name] = { prev, value }
      end
    end
  end
  return args
end

local json_decode
do
  local escapes = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }
  local function utf8(cp)
    if cp < 0x80 then return string.char(cp) end
    if cp < 0x800 then return string.char(0xC0 + math.floor(cp / 64), 0x80 + cp % 64) end
    if cp < 0x10000 then
      return string.char(0xE0 + math.floor(cp / 4096), 0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
    end
    return string.char(0xF0 + math.floor(cp / 262144), 0x80 + math.floor(cp / 4096) % 64,
      0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
  end
  local value
  local function ws(s, i) return (s:find("[^ \t\r\n]", i)) or #s + 1 end
  local function str(s, i)
    local out, j = {}, i + 1
    while true do
      local c = s:sub(j, j)
      if c == "" then error("unterminated string") end
      if c == '"' then return table.concat(out), j + 1 end
      if c == "\\" then
        local e = s:sub(j + 1, j + 1)
        if e == "u" then
          local cp = tonumber(s:sub(j + 2, j + 5), 16)
          if not cp then error("bad escape") end
          j = j + 6
          if cp >= 0xD800 and cp < 0xDC00 and s:sub(j, j + 1) == "\\u" then
            local lo = tonumber(s:sub(j + 2, j + 5), 16)
            if lo and lo >= 0xDC00 and lo < 0xE000 then
              cp = 0x10000 + (cp - 0xD800) * 1024 + (lo - 0xDC00)
              j = j + 6
            end
          end
          out[#out + 1] = utf8(cp)
        elseif escapes[e] then
          out[#out + 1] = escapes[e]
          j = j + 2
        else
          error("bad escape")
        end
      else
        local k = s:find('["\\]', j)
        if not k then error("unterminated string") end
        out[#out + 1] = s:sub(j, k - 1)
        j = k
      end
    end
  end
  value = function(s, i, depth)
    if depth > 64 then error("too deep") end
    i = ws(s, i)
    local c = s:sub(i, i)
    if c == "{" then
      local t = {}
      i = ws(s, i + 1)
      if s:sub(i, i) == "}" then return t, i + 1 end
      while true do
        if s:sub(i, i) ~= '"' then error("expected a key") end
        local k
        k, i = str(s, i)
        i = ws(s, i)
        if s:sub(i, i) ~= ":" then error("expected ':'") end
        local v
        v, i = value(s, i + 1, depth + 1)
        t[k] = v
        i = ws(s, i)
        c = s:sub(i, i)
        if c == "}" then return t, i + 1 end
        if c ~= "," then error("expected ','") end
        i = ws(s, i + 1)
      end
    elseif c == "[" then
      local t, n = {}, 0
      i = ws(s, i + 1)
      if s:sub(i, i) == "]" then return t, i + 1 end
      while true do
        local v
        v, i = value(s, i, depth + 1)
        n = n + 1
        t[n] = v
        i = ws(s, i)
        c = s:sub(i, i)
        if c == "]" then return t, i + 1 end
        if c ~= "," then error("expected ','") end
        i = i + 1
      end
    elseif c == '"' then
      return str(s, i)
    elseif s:sub(i, i + 3) == "true" then
      return true, i + 4
    elseif s:sub(i, i + 4) == "false" then
      return false, i + 5
    elseif s:sub(i, i + 3) == "null" then
      return nil, i + 4
    else
      local num = s:match("^-?%d+%.?%d*[eE]?[-+]?%d*", i)
      if not num or num == "" or not tonumber(num) then error("unexpected character") end
      return tonumber(num), i + #num
    end
  end
  -- the decoded value, or nil and an error when ``s`` is not one JSON value
  json_decode = function(s)
    if type(s) ~= "string" then return nil, "not a string" end
    local ok, v, i = pcall(value, s, 1, 0)
    if not ok then return nil, v end
    if ws(s, i) <= #s then return nil, "trailing data" end
    return v
  end
end

local function json_string(s)
  return '"' .. tostring(s):gsub('[%c"\\]', function(c)
    if c == '"' then return '\\"' elseif c == "\\" then return "\\\\" end
    return string.format("\\u%04x", c:byte())
  end) .. '"'
end

local function json_encode(v)
  local t = type(v)
  if t == "string" then return json_string(v) end
  if t == "number" then
    if v == math.floor(v) and math.abs(v) < 1e15 then return string.format("%d", v) end
    return string.format("%.17g", v)
  end
  if t == "boolean" then return tostring(v) end
  if t == "table" then
    if #v > 0 then -- an empty table is an object, as cjson encodes it
      local parts = {}
      for i = 1, #v do parts[i] = json_encode(v[i]) end
      return "[" .. table.concat(parts, ",") .. "]"
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = tostring(k) end
    table.sort(keys)
    local parts = {}
    for i, k in ipairs(keys) do parts[i] = json_string(k) .. ":" .. json_encode(v[k]) end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  return "null"
end
