-- bench/rotate-sessions.lua: every request carries the next session's cookie, cycling over
-- the cookie values in $COOKIES_FILE (written by mint-sessions.lua). The requests are
-- formatted once at start, so the load generator does no per-request Lua work beyond a lookup.
local requests = {}

init = function(args)
  local headers = {}
  for name, value in pairs(wrk.headers) do headers[name] = value end
  for line in io.lines(os.getenv("COOKIES_FILE")) do
    headers["Cookie"] = "tg=" .. line
    requests[#requests + 1] = wrk.format(nil, nil, headers)
  end
  assert(#requests > 0, "no cookies in " .. os.getenv("COOKIES_FILE"))
end

local i = 0
request = function()
  i = i % #requests + 1
  return requests[i]
end
