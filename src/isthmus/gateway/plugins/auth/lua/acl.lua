-- kong.acl: Kong's acl (950) over the consumer kong.auth identified (its groups in dynamic metadata).
local function check(h)
  local conf = h:metadata():get("acl")
  if not conf then return end
  local state = h:streamInfo():dynamicMetadata():get("kong.auth")
  local consumer = state and state.consumer
  local credential = state and state.credential
  local deny = conf.deny and #conf.deny > 0
  if not consumer then
    if credential then return respond(h, 403, message_body("You cannot consume this service")) end
    return respond(h, 401, message_body("Unauthorized"))
  end
  local groups = state.groups
  if not groups or #groups == 0 then
    if not deny then
      if credential then return respond(h, 403, message_body("You cannot consume this service")) end
      return respond(h, 401, message_body("Unauthorized"))
    end
    groups = {}
  end
  local member = {}
  for _, g in ipairs(groups) do member[g] = true end
  local in_group = false
  for _, g in ipairs(deny and conf.deny or conf.allow or {}) do
    if member[g] then in_group = true; break end
  end
  local blocked
  if deny then blocked = in_group else blocked = not in_group end
  if blocked then return respond(h, 403, message_body("You cannot consume this service")) end
  if not conf.hide_groups_header then
    h:headers():replace("x-consumer-groups", table.concat(groups, ", "))
  end
end

function envoy_on_request(h)
  local ok, err = pcall(check, h)
  if not ok then
    h:logErr("kong.acl: " .. tostring(err))
    respond(h, 500, message_body("An unexpected error occurred"))
  end
end
