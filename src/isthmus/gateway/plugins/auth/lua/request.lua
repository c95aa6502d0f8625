-- Reading a request as Kong's PDK does: headers, query arguments, cookies; Kong's JSON error answers.
local function first_header(h, name)
  local headers = h:headers()
  local n = headers:getNumValues(name)
  if n == 0 then return nil end
  return headers:getAtIndex(name, 0), n
end

local function split_path(path)
  local q = path:find("?", 1, true)
  if not q then return path, nil end
  return path:sub(1, q - 1), path:sub(q + 1)
end

local function query_args(h)
  local _, query = split_path(h:headers():get(":path") or "")
  return parse_args(query)
end

-- the first cookie of that name (as nginx's $cookie_NAME)
local function cookie(h, name)
  local headers = h:headers()
  for i = 0, headers:getNumValues("cookie") - 1 do
    local value = headers:getAtIndex("cookie", i)
    for pair in value:gmatch("[^;]+") do
      local k, v = pair:match("^%s*([^=]-)%s*=%s*(.-)%s*$")
      if k == name then return v end
    end
  end
  return nil
end

local JSON_TYPE = "application/json; charset=utf-8"

local function respond(h, status, body, extra)
  local headers = { [":status"] = tostring(status), ["content-type"] = JSON_TYPE }
  if extra then for k, v in pairs(extra) do headers[k] = v end end
  h:respond(headers, body)
end

-- Kong's ``{"message": ...}`` error body
local function message_body(message)
  return '{\n  "message": ' .. json_string(message) .. "\n}\n"
end

-- Kong's JWT token lookup: query arguments, then cookies, then ``Bearer`` headers; the distinct non-empty tokens
local function jwt_tokens(h, conf)
  local set, list = {}, {}
  local function add(t)
    if t ~= "" and not set[t] then set[t] = true; list[#list + 1] = t end
  end
  local names = conf.uri_param_names or {}
  if #names > 0 then
    local args = query_args(h)
    for _, name in ipairs(names) do
      local v = args[name]
      if type(v) == "table" then
        for _, t in ipairs(v) do add(t) end
      elseif v ~= nil then
        add(v)
      end
    end
  end
  for _, name in ipairs(conf.cookie_names or {}) do
    local v = cookie(h, name)
    if v then add(v) end
  end
  for _, name in ipairs(conf.header_names or {}) do
    local v = first_header(h, name)
    if v then
      local m = v:match("[Bb]earer%s+(.+)")
      if m then add(m) end
    end
  end
  return list
end
