"""The Lua sources of the transformer plugins' body edits (see :mod:`isthmus.gateway.plugins.request_transformer`
and :mod:`isthmus.gateway.plugins.response_transformer`): the gateway's Lua codec (JSON with null and empty arrays
kept, form arguments as ngx reads them; ``auth/lua/codec.lua``), form arguments as ngx writes them, and Kong's
edits in Kong's order. Each route's edits come as a JSON string in the filter's ``filter_context`` (``edits``),
decoded once per worker."""

from __future__ import annotations

from isthmus.gateway.plugins import auth

# after the codec, in both sources: the route's edits and Kong's append_value
COMMON = r"""
-- the route's edits, decoded once per distinct text
local EDITS = {}
local function edits_of(context)
  local raw = context:get("edits")
  local found = EDITS[raw]
  if found == nil then
    found = json_decode(raw, NULL)
    EDITS[raw] = found
  end
  return found
end

-- Kong's append_value: a text becomes a list with the new value, a list gets it, anything else is replaced
local function append_value(current, value)
  if type(current) == "string" then return setmetatable({ current, value }, ARRAY) end
  if type(current) == "table" and current ~= NULL and getmetatable(current) == ARRAY then
    current[#current + 1] = value
    return current
  end
  return setmetatable({ value }, ARRAY)
end
"""

# request-transformer: http_method (with a form body's arguments moved to the query string for GET, HEAD and
# TRACE) and the body edits of a JSON or form-urlencoded body (Kong's transform_json_body /
# transform_url_encoded_body, transform_multipart_body).
_REQUEST = r"""
local function url_encode(s)
  return (string.gsub(s, "[^%w%-%._~]", function(c) return string.format("%%%02X", string.byte(c)) end))
end

local function encode_args(args)
  local names, parts = {}, {}
  for name in pairs(args) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do
    local value = args[name]
    local values = type(value) == "table" and value or { value }
    for _, v in ipairs(values) do
      if v == true then parts[#parts + 1] = url_encode(name)
      elseif v ~= false then parts[#parts + 1] = url_encode(name) .. "=" .. url_encode(tostring(v)) end
    end
  end
  return table.concat(parts, "&")
end

-- Kong's edits of a decoded body; "form" bodies add only absent names (== nil), JSON ones also falsy ones
local function edit(parameters, edits, has_body, form)
  local changed = false
  if has_body then
    for _, name in ipairs(edits.remove) do parameters[name] = nil; changed = true end
    for _, pair in ipairs(edits.rename) do
      local old, new = pair[1], pair[2]
      if old ~= new and parameters[old] then
        parameters[new], parameters[old] = parameters[old], nil
        changed = true
      end
    end
    for _, pair in ipairs(edits.replace) do
      if parameters[pair[1]] then parameters[pair[1]] = pair[2]; changed = true end
    end
  end
  for _, pair in ipairs(edits.add) do
    local current = parameters[pair[1]]
    if (form and current == nil) or (not form and not current) then
      parameters[pair[1]] = pair[2]
      changed = true
    end
  end
  for _, pair in ipairs(edits.append) do
    parameters[pair[1]] = append_value(parameters[pair[1]], pair[2])
    changed = true
  end
  return changed
end

-- multipart/form-data: parts in order ({name = ..., head = raw part headers, value = ...})
local function parse_multipart(body, boundary)
  local parts = {}
  local delimiter = "--" .. boundary
  local position = string.find(body, delimiter, 1, true)
  if position == nil then return nil end
  position = position + #delimiter
  while true do
    if string.sub(body, position, position + 1) == "--" then return parts end
    position = position + 2 -- CRLF after the delimiter
    local next_at = string.find(body, "\r\n" .. delimiter, position, true)
    if next_at == nil then return nil end
    local raw = string.sub(body, position, next_at - 1)
    local split = string.find(raw, "\r\n\r\n", 1, true)
    if split == nil then return nil end
    local head = string.sub(raw, 1, split - 1)
    local name = string.match(head, '[Nn][Aa][Mm][Ee]="([^"]*)"') or string.match(head, "[Nn][Aa][Mm][Ee]=([^;%s]+)")
    parts[#parts + 1] = { name = name, head = head, value = string.sub(raw, split + 4) }
    position = next_at + 2 + #delimiter
  end
end

local function multipart_find(parts, name)
  for i, part in ipairs(parts) do
    if part.name == name then return i end
  end
  return nil
end

local function multipart_delete(parts, name)
  for i = #parts, 1, -1 do
    if parts[i].name == name then table.remove(parts, i) end
  end
end

local function multipart_set(parts, name, value)
  local simple = { name = name, head = 'Content-Disposition: form-data; name="' .. name .. '"', value = value }
  local i = multipart_find(parts, name)
  if i ~= nil then parts[i] = simple else parts[#parts + 1] = simple end
end

-- Kong's transform_multipart_body: rename, remove, replace (non-empty body only), add; no append
local function edit_multipart(parts, edits, has_body)
  local changed = false
  if has_body then
    for _, pair in ipairs(edits.rename) do
      local i = multipart_find(parts, pair[1])
      if i ~= nil and pair[1] ~= pair[2] then
        multipart_set(parts, pair[2], parts[i].value)
        multipart_delete(parts, pair[1])
        changed = true
      end
    end
    for _, name in ipairs(edits.remove) do multipart_delete(parts, name); changed = true end
    for _, pair in ipairs(edits.replace) do
      if multipart_find(parts, pair[1]) ~= nil then
        multipart_delete(parts, pair[1])
        multipart_set(parts, pair[1], pair[2])
        changed = true
      end
    end
  end
  for _, pair in ipairs(edits.add) do
    if multipart_find(parts, pair[1]) == nil then multipart_set(parts, pair[1], pair[2]); changed = true end
  end
  return changed
end

local function encode_multipart(parts, boundary)
  local out = {}
  for _, part in ipairs(parts) do
    out[#out + 1] = "--" .. boundary .. "\r\n" .. part.head .. "\r\n\r\n" .. part.value .. "\r\n"
  end
  out[#out + 1] = "--" .. boundary .. "--\r\n"
  return table.concat(out)
end

-- a value: its text, or its template parts rendered with the request as the client sent it
local function render(value, headers, args)
  if type(value) ~= "table" then return value end
  local out = {}
  for _, part in ipairs(value) do
    local kind, text = part[1], part[2]
    if kind == "lit" then
      out[#out + 1] = text
    elseif kind == "header" then
      out[#out + 1] = headers:get(text) or ""
    elseif kind == "query" then
      local v = args[text]
      if type(v) == "table" then v = v[1] end
      if v == true then v = "true" end
      out[#out + 1] = v or ""
    end
  end
  return table.concat(out)
end

local function rendered(list, headers, args)
  local out = {}
  for i, pair in ipairs(list) do out[i] = { pair[1], render(pair[2], headers, args) } end
  return out
end

function envoy_on_request(handle)
  local raw = edits_of(handle:filterContext())
  local headers = handle:headers()
  local path = headers:get(":path") or "/"
  local q = string.find(path, "?", 1, true)
  local args = parse_args(q and string.sub(path, q + 1) or "")
  local edits = { body = raw.body, method = raw.method, remove = raw.remove, rename = raw.rename,
    replace = rendered(raw.replace, headers, args), add = rendered(raw.add, headers, args),
    append = rendered(raw.append, headers, args) }
  if raw.uri ~= nil then
    headers:replace(":path", render(raw.uri, headers, args) .. (q and string.sub(path, q) or ""))
  end
  local content_type = string.lower(headers:get("content-type") or "")
  local json = string.find(content_type, "application/json", 1, true) ~= nil
  local multi = not json and string.find(content_type, "multipart/form-data", 1, true) ~= nil
  local form = not json and not multi and string.find(content_type, "application/x-www-form-urlencoded", 1, true) ~= nil
  local boundary = multi and (string.match(headers:get("content-type"), '[Bb]oundary="([^"]+)"')
    or string.match(headers:get("content-type"), "[Bb]oundary=([^;%s]+)"))
  local method = edits.method
  local to_query = method ~= nil and form and (method == "GET" or method == "HEAD" or method == "TRACE")
  if method ~= nil then headers:replace(":method", method) end
  if not to_query and not (edits.body and (json or form or boundary)) then return end
  local buffered = handle:body()
  local body = buffered and buffered:getBytes(0, buffered:length()) or ""
  headers = handle:headers() -- the header map object does not outlive the wait for the body
  if to_query and body ~= "" then
    local path = headers:get(":path")
    headers:replace(":path", path .. (string.find(path, "?", 1, true) and "&" or "?") .. body)
  end
  if not edits.body or not (json or form or boundary) then return end
  local out
  if boundary then
    local parts = parse_multipart(body, boundary) or {}
    if not edit_multipart(parts, edits, body ~= "") then return end
    out = encode_multipart(parts, boundary)
    if buffered then buffered:setBytes(out) else handle:body(true):setBytes(out) end
    headers:replace("content-length", tostring(#out))
    return
  end
  local parameters
  if json then
    if body == "" then parameters = {} else parameters = json_decode(body, NULL) end
    if type(parameters) ~= "table" or parameters == NULL then return end -- not JSON (Kong leaves it as is)
  else
    parameters = parse_args(body)
  end
  if not edit(parameters, edits, body ~= "", form) then return end
  out = json and json_encode(parameters) or encode_args(parameters)
  if buffered then buffered:setBytes(out) else handle:body(true):setBytes(out) end
  headers:replace("content-length", tostring(#out))
end
"""

# response-transformer: the JSON body edits of an application/json response (Kong's transform_json_body), the
# values cast by json_types; a body that is not a JSON object is passed unchanged, as Kong does.
_RESPONSE = r"""
local function cast(value, kind)
  if kind == "number" then return tonumber(value) end
  if kind == "boolean" then return value == "true" end
  return value
end

local function is_json(content_type)
  for part in string.gmatch(content_type or "", "[^,]+") do
    local main = string.lower(string.match(part, "^%s*([^;%s]*)") or "")
    if main == "application/json" or main == "*/*" or main == "application/*" or main == "*/json" then
      return true
    end
  end
  return false
end

function envoy_on_response(handle)
  local edits = edits_of(handle:filterContext())
  local headers = handle:headers()
  if not is_json(headers:get("content-type")) then return end
  headers:remove("content-length")
  local buffered = handle:body()
  if buffered == nil then return end
  local body = json_decode(buffered:getBytes(0, buffered:length()), NULL)
  if type(body) ~= "table" or body == NULL then return end
  for _, name in ipairs(edits.remove) do body[name] = nil end
  for _, pair in ipairs(edits.rename) do
    if body[pair[1]] ~= nil then body[pair[2]], body[pair[1]] = body[pair[1]], nil end
  end
  for _, edit in ipairs(edits.replace) do
    local v = cast(edit[2], edit[3])
    if body[edit[1]] and v ~= nil then body[edit[1]] = v end
  end
  for _, edit in ipairs(edits.add) do
    local v = cast(edit[2], edit[3])
    if not body[edit[1]] and v ~= nil then body[edit[1]] = v end
  end
  for _, edit in ipairs(edits.append) do
    local v = cast(edit[2], edit[3])
    if v ~= nil then body[edit[1]] = append_value(body[edit[1]], v) end
  end
  buffered:setBytes(json_encode(body))
end
"""


# the sources of the two filters (read once, when a transformer plugin is first loaded)
REQUEST = auth.lua("codec") + COMMON + _REQUEST
RESPONSE = auth.lua("codec") + COMMON + _RESPONSE
