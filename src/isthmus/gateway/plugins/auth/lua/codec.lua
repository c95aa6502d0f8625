-- The codec every gateway Lua filter starts with: base64 (standard and url-safe, padding optional),
-- percent-decoding, query or form arguments, a small JSON decoder and encoder.

-- JSON null where a caller keeps it (``json_decode(text, NULL)``): a present, truthy value, as cjson.null is.
-- Arrays carry the ARRAY metatable, so that an empty one is encoded "[]" again.
local NULL = setmetatable({}, { __tojson = "null" })
local ARRAY = {}

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
  s = string.gsub(s, "%+", " ")
  return (string.gsub(s, "%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- query or form text -> {name = value | true | ARRAY of values} (as ngx's get_uri_args)
local function parse_args(text)
  local args = {}
  for pair in string.gmatch(text or "", "[^&]+") do
    local eq = string.find(pair, "=", 1, true)
    local name = url_decode(eq and string.sub(pair, 1, eq - 1) or pair)
    local value = eq and url_decode(string.sub(pair, eq + 1)) or true
    if name ~= "" then
      local prev = args[name]
      if prev == nil then args[name] = value
      elseif type(prev) == "table" then prev[#prev + 1] = value
      else args[name] = setmetatable({ prev, value }, ARRAY) end
    end
  end
  return args
end

-- json_decode(text[, null]) -> value | nil, error; JSON null decodes to ``null`` (nil when not given)
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
  local function skip(s, i) return string.find(s, "[^ \t\r\n]", i) or #s + 1 end
  local function text(s, i)
    local parts, j = {}, i + 1
    while true do
      local k = string.find(s, '["\\]', j)
      if k == nil then error("unterminated string") end
      parts[#parts + 1] = string.sub(s, j, k - 1)
      if string.sub(s, k, k) == '"' then return table.concat(parts), k + 1 end
      local e = string.sub(s, k + 1, k + 1)
      if e == "u" then
        local cp = tonumber(string.sub(s, k + 2, k + 5), 16)
        if cp == nil then error("bad unicode escape") end
        j = k + 6
        if cp >= 0xD800 and cp < 0xDC00 and string.sub(s, j, j + 1) == "\\u" then
          local low = tonumber(string.sub(s, j + 2, j + 5), 16)
          if low and low >= 0xDC00 and low < 0xE000 then
            cp, j = 0x10000 + (cp - 0xD800) * 1024 + (low - 0xDC00), j + 6
          end
        end
        parts[#parts + 1] = utf8(cp)
      elseif escapes[e] then
        parts[#parts + 1] = escapes[e]
        j = k + 2
      else
        error("bad escape")
      end
    end
  end
  local function value(s, i, depth, null)
    if depth > 128 then error("too deep") end
    i = skip(s, i)
    local c = string.sub(s, i, i)
    if c == "{" then
      local out = {}
      i = skip(s, i + 1)
      if string.sub(s, i, i) == "}" then return out, i + 1 end
      while true do
        if string.sub(s, i, i) ~= '"' then error("expected a name") end
        local name, v
        name, i = text(s, i)
        i = skip(s, i)
        if string.sub(s, i, i) ~= ":" then error("expected ':'") end
        v, i = value(s, i + 1, depth + 1, null)
        out[name] = v
        i = skip(s, i)
        c = string.sub(s, i, i)
        if c == "}" then return out, i + 1 end
        if c ~= "," then error("expected ','") end
        i = skip(s, i + 1)
      end
    elseif c == "[" then
      local out, n = setmetatable({}, ARRAY), 0
      i = skip(s, i + 1)
      if string.sub(s, i, i) == "]" then return out, i + 1 end
      while true do
        local v
        v, i = value(s, i, depth + 1, null)
        n = n + 1
        out[n] = v
        i = skip(s, i)
        c = string.sub(s, i, i)
        if c == "]" then return out, i + 1 end
        if c ~= "," then error("expected ','") end
        i = i + 1
      end
    elseif c == '"' then
      return text(s, i)
    elseif string.sub(s, i, i + 3) == "true" then
      return true, i + 4
    elseif string.sub(s, i, i + 4) == "false" then
      return false, i + 5
    elseif string.sub(s, i, i + 3) == "null" then
      return null, i + 4
    end
    local number = string.match(s, "^-?%d+%.?%d*[eE]?[-+]?%d*", i)
    if number == nil or tonumber(number) == nil then error("unexpected character") end
    return tonumber(number), i + #number
  end
  json_decode = function(s, null)
    if type(s) ~= "string" then return nil, "not text" end
    local ok, result, i = pcall(value, s, 1, 0, null)
    if not ok then return nil, result end
    if skip(s, i) <= #s then return nil, "trailing characters" end
    return result
  end
end

local SHORT = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t",
  ["\b"] = "\\b", ["\f"] = "\\f" }
local function json_string(s)
  return '"' .. string.gsub(tostring(s), '[%c"\\]', function(c)
    return SHORT[c] or string.format("\\u%04x", string.byte(c))
  end) .. '"'
end

-- a number as cjson writes it (14 significant digits) unless that would change its value
local function json_number(v)
  if v ~= v or v == math.huge or v == -math.huge then return "null" end
  local short = string.format("%.14g", v)
  if tonumber(short) == v then return short end
  return string.format("%.17g", v)
end

-- an ARRAY, or a table with items 1..n, is a JSON array; any other table (an empty one too) an object
local function json_encode(v)
  local t = type(v)
  if v == NULL then return "null" end
  if t == "string" then return json_string(v) end
  if t == "number" then return json_number(v) end
  if t == "boolean" then return tostring(v) end
  if t ~= "table" then return "null" end
  if getmetatable(v) == ARRAY or (next(v) ~= nil and #v > 0) then
    local parts = {}
    for i = 1, #v do parts[i] = json_encode(v[i]) end
    return "[" .. table.concat(parts, ",") .. "]"
  end
  local names = {}
  for name in pairs(v) do names[#names + 1] = tostring(name) end
  table.sort(names)
  local parts = {}
  for i, name in ipairs(names) do parts[i] = json_string(name) .. ":" .. json_encode(v[name]) end
  return "{" .. table.concat(parts, ",") .. "}"
end
