-- kong.auth.pre: on a route with the jwt plugin (the filter is disabled elsewhere), before Envoy's jwt_authn,
-- hands Kong's one token to jwt_authn in an internal header. The headers only the gateway may set (and that
-- internal header) were removed from the request before its route was chosen (the listener's early header
-- mutation), so a client can never forge a consumer.
local function prepare(h)
  local jwt = h:metadata():get("jwt")
  if jwt then
    local tokens = jwt_tokens(h, jwt)
    if #tokens == 1 and type(tokens[1]) == "string" then
      h:headers():replace("x-isthmus-jwt", tokens[1])
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
