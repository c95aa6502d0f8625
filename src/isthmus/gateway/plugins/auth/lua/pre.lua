-- kong.auth.pre: on every gateway request, before Envoy's jwt_authn. Removes the headers only the gateway may
-- set (a client can never forge a consumer) and, on a route with the jwt plugin, hands Kong's one token to
-- jwt_authn in an internal header.
local FORGEABLE = {
  "x-consumer-id", "x-consumer-custom-id", "x-consumer-username", "x-credential-identifier",
  "x-anonymous-consumer", "x-consumer-groups", "x-authenticated-groups", "x-isthmus-jwt",
}

local function prepare(h)
  local headers = h:headers()
  local forged_consumer = headers:get("x-consumer-id") ~= nil
  for _, name in ipairs(FORGEABLE) do headers:remove(name) end
  if forged_consumer then
    h:clearRouteCache() -- the route was chosen with the forged header
  end
  local jwt = h:metadata():get("jwt")
  if jwt then
    local tokens = jwt_tokens(h, jwt)
    if #tokens == 1 and type(tokens[1]) == "string" then
      headers:replace("x-isthmus-jwt", tokens[1])
    end
  end
end

function envoy_on_request(h)
  local ok, err = pcall(prepare, h)
  if not ok then
    h:logErr("kong.auth.pre: " .. tostring(err))
    respond(h, 500, message_body("An unexpected error occurred"))
  end
end
