-- kong.auth: Kong's jwt (1450), key-auth (1250) and basic-auth (1100) in that order, with Kong's anonymous
-- (logical OR) composition, then Kong's consumer headers. ``D`` (the workspace's consumers and credentials) is
-- defined before this code. jwt signatures are verified by Envoy's jwt_authn just before this filter: one
-- provider per credential, the payload in dynamic metadata under the credential's id.
local JWT_ALGS = {
  HS256 = true, HS384 = true, HS512 = true, RS256 = true, RS384 = true, RS512 = true, ES256 = true,
  ES384 = true, ES512 = true, PS256 = true, PS384 = true, PS512 = true, EdDSA = true,
}

local function unauthorized(message, www)
  return { status = 401, body = message_body(message), headers = { ["www-authenticate"] = www } }
end

-- a request body as Kong's kong.request.get_body (form and JSON bodies; {} for others)
local function read_body(h)
  local ctype = (h:headers():get("content-type") or ""):lower()
  local b = h:body()
  if not b then return {}, nil end
  local raw = b:getBytes(0, b:length())
  if ctype:find("application/x-www-form-urlencoded", 1, true) then
    return parse_args(raw), "form", b, raw
  elseif ctype:find("application/json", 1, true) then
    local v = json_decode(raw)
    if type(v) == "table" then return v, "json", b, raw end
  end
  return {}, nil
end

local function without_arg(text, name)
  local kept = {}
  for pair in text:gmatch("[^&]+") do
    local eq = pair:find("=", 1, true)
    local k = url_decode(eq and pair:sub(1, eq - 1) or pair)
    if k ~= name then kept[#kept + 1] = pair end
  end
  return table.concat(kept, "&")
end

local function remove_query_arg(h, name)
  local headers = h:headers()
  local path, query = split_path(headers:get(":path") or "")
  if not query then return end
  local rest = without_arg(query, name)
  if rest ~= query then
    headers:replace(":path", rest == "" and path or (path .. "?" .. rest))
  end
end

local function key_auth(h, conf)
  local www = conf.realm and ('Key realm="' .. conf.realm .. '"') or "Key"
  local query, body, kind, buffer, raw
  local key
  for _, name in ipairs(conf.key_names) do
    local v
    if conf.key_in_header then
      local first, n = first_header(h, name:lower())
      if n and n > 1 then v = {} else v = first end
    end
    if v == nil and conf.key_in_query then
      query = query or query_args(h)
      v = query[name]
    end
    if v == nil and conf.key_in_body then
      if not body then body, kind, buffer, raw = read_body(h) end
      v = body[name]
    end
    if type(v) == "string" then
      key = v
      if conf.hide_credentials then
        remove_query_arg(h, name)
        h:headers():remove(name:lower())
        if conf.key_in_body and kind then
          local text
          if kind == "form" then
            text = without_arg(raw, name)
          else
            body[name] = nil
            text = json_encode(body)
          end
          buffer:setBytes(text)
          local fresh = h:headers() -- objects taken before the body was read are no longer valid
          if fresh:get("content-length") then fresh:replace("content-length", tostring(#text)) end
        end
      end
      break
    elseif type(v) == "table" then
      return nil, unauthorized("Duplicate API key found", www)
    end
  end
  if not key or key == "" then
    return nil, unauthorized("No API key found in request", www)
  end
  local consumer = D.keys[key]
  if not consumer then return nil, unauthorized("Unauthorized", www) end
  local exp = D.key_exp[key]
  if exp and exp <= os.time() then return nil, unauthorized("Unauthorized", www) end
  return D.consumers[consumer] and consumer, D.key_ids[key]
end

local function basic_credentials(h, name, conf, value)
  local user, pass
  if value then
    local m = value:match("[Bb]asic%s*(.+)")
    if m then
      local decoded = b64_decode(m, false)
      if decoded then user, pass = decoded:match("([^:]+):(.*)") end
    end
  end
  if conf.hide_credentials then h:headers():remove(name) end
  return user, pass
end

local function basic_auth(h, conf)
  local www = 'Basic realm="' .. conf.realm .. '"'
  local authorization = first_header(h, "authorization")
  local proxy = first_header(h, "proxy-authorization")
  if not (authorization or proxy) then return nil, unauthorized("Unauthorized", www) end
  local cred
  local user, pass = basic_credentials(h, "proxy-authorization", conf, proxy)
  if user and pass then cred = D.basics[user] end
  if not cred then
    user, pass = basic_credentials(h, "authorization", conf, authorization)
    if user and pass then
      cred = D.basics[user]
    else
      return nil, unauthorized("Unauthorized", www)
    end
  end
  if not cred or sha1_hex(pass .. cred.c) ~= cred.h then
    return nil, unauthorized("Unauthorized", www)
  end
  return D.consumers[cred.c] and cred.c, cred.u
end

local function jwt_auth(h, conf, verified_token)
  local www, www_error = "Bearer", 'Bearer error="invalid_token"'
  if conf.realm then
    www = 'Bearer realm="' .. conf.realm .. '"'
    www_error = www .. ', error="invalid_token"'
  end
  local tokens = jwt_tokens(h, conf)
  if #tokens == 0 then return nil, unauthorized("Unauthorized", www) end
  if #tokens > 1 then return nil, unauthorized("Multiple tokens provided", www_error) end
  local token = tokens[1]
  if type(token) ~= "string" then return nil, unauthorized("Unrecognizable token", www_error) end
  local d1 = token:find(".", 1, true)
  local d2 = d1 and token:find(".", d1 + 1, true)
  if not d2 then return nil, unauthorized("Bad token; invalid JSON", www_error) end
  local header = json_decode(b64_decode(token:sub(1, d1 - 1), true))
  local claims_text = b64_decode(token:sub(d1 + 1, d2 - 1), true)
  local claims = json_decode(claims_text)
  local signature = b64_decode(token:sub(d2 + 1), true)
  if type(header) ~= "table" or (claims ~= nil and type(claims) ~= "table") or (claims == nil and claims_text ~= "null") then
    return nil, unauthorized("Bad token; invalid JSON", www_error)
  end
  if type(header.alg) ~= "string" or not JWT_ALGS[header.alg] then
    return nil, unauthorized("Bad token; invalid alg", www_error)
  end
  if claims == nil then return nil, unauthorized("Bad token; invalid claims", www_error) end
  if signature == nil then return nil, unauthorized("Bad token; invalid signature", www_error) end
  local claim = conf.key_claim_name
  local key = claims[claim]
  if not key then key = header[claim] end
  if not key then return nil, unauthorized("No mandatory '" .. claim .. "' in claims", www_error) end
  if key == "" then return nil, unauthorized("Invalid '" .. claim .. "' in claims", www_error) end
  local cred = type(key) == "string" and D.jwts[key] or nil
  if not cred then return nil, unauthorized("No credentials found for given '" .. claim .. "'", www_error) end
  if header.alg ~= cred.alg then return nil, unauthorized("Invalid algorithm", www_error) end
  if cred.alg:sub(1, 2) == "HS" and conf.secret_is_base64 and not cred.b64 then
    return nil, unauthorized("Invalid key/secret", www_error)
  end
  local results = h:streamInfo():dynamicMetadata():get("envoy.filters.http.jwt_authn")
  if verified_token ~= token or not results or not results[cred.id] then
    return nil, unauthorized("Invalid signature", www_error)
  end
  local now = os.time()
  local errors, failed = {}, false
  for _, name in ipairs(conf.claims_to_verify or {}) do
    local v = claims[name]
    if type(v) ~= "number" then
      errors[name], failed = "must be a number", true
    elseif name == "exp" and v <= now then
      errors[name], failed = "token expired", true
    elseif name == "nbf" and v > now then
      errors[name], failed = "token not valid yet", true
    end
  end
  if not failed and (conf.maximum_expiration or 0) > 0 then
    local exp = claims.exp
    if exp == nil or exp - now > conf.maximum_expiration then
      errors.exp, failed = "exceeds maximum allowed expiration", true
    end
  end
  if failed then
    return nil, { status = 401, body = json_encode(errors), headers = { ["www-authenticate"] = www_error } }
  end
  return D.consumers[cred.c] and cred.c, cred.key
end

-- the consumer's id (``anonymous`` names a consumer by id or username)
local function anonymous_consumer(name)
  if D.consumers[name] then return name end
  local id = D.usernames[name]
  return id and D.consumers[id] and id or nil
end

local NO_GROUPS = {}

local PLUGINS = { { "jwt", jwt_auth }, { "key-auth", key_auth }, { "basic-auth", basic_auth } }

local function authenticate(h)
  local headers = h:headers()
  local verified_token = headers:get("x-isthmus-jwt")
  if verified_token then headers:remove("x-isthmus-jwt") end
  local consumer, credential, anonymous = nil, nil, false
  local method = nil
  local md = h:metadata() -- the route's plugin configurations (taken again after a plugin ran: reading a body
  -- invalidates objects taken before)
  for i = 1, #PLUGINS do
    local plugin = PLUGINS[i]
    local conf = md:get(plugin[1])
    if conf then
      if conf.run_on_preflight == false and method == nil then method = headers:get(":method") end
      if not (conf.run_on_preflight == false and method == "OPTIONS") then
        if conf.anonymous ~= nil then
          if not credential then -- logical OR: done once an earlier plugin authenticated
            local c, id = plugin[2](h, conf, verified_token)
            md = h:metadata()
            if c then
              consumer, credential, anonymous = c, id, false
            else
              local anon = anonymous_consumer(conf.anonymous)
              if not anon then
                respond(h, 500, message_body("anonymous consumer " .. conf.anonymous .. " is configured but doesn't exist"))
                return
              end
              consumer, credential, anonymous = anon, nil, true
            end
          end
        else -- logical AND: this plugin must authenticate
          local c, id = plugin[2](h, conf, verified_token)
          md = h:metadata()
          if not c then
            respond(h, id.status, id.body, id.headers)
            return
          end
          consumer, credential, anonymous = c, id, false
        end
      end
    end
  end
  if not consumer then return end
  headers = h:headers() -- reading a body invalidates objects taken before
  headers:replace("x-consumer-id", consumer)
  local custom_id, username = D.custom[consumer], D.names[consumer]
  if custom_id then headers:replace("x-consumer-custom-id", custom_id) end
  if username then headers:replace("x-consumer-username", username) end
  if credential then headers:replace("x-credential-identifier", credential) end
  if anonymous then headers:replace("x-anonymous-consumer", "true") end
  if md:get("acl") then -- the route's acl reads the consumer from here (set only where a route has acl)
    local dm = h:streamInfo():dynamicMetadata()
    dm:set("kong.auth", "consumer", consumer)
    dm:set("kong.auth", "credential", credential ~= nil)
    dm:set("kong.auth", "groups", D.groups[consumer] or NO_GROUPS)
  end
  if D.consumer_routes then
    h:clearRouteCache() -- the consumer's own copy of this route (consumer-scoped plugin configurations)
  end
end

-- fail closed: an error in a script must never let a request through unauthenticated
function envoy_on_request(h)
  local ok, err = pcall(authenticate, h)
  if not ok then
    h:logErr("kong.auth: " .. tostring(err))
    respond(h, 500, message_body("An unexpected error occurred"))
  end
end
