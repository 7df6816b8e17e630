-- bench/mint-sessions.lua: wrk POSTs /session/guest and appends each new session's cookie
-- value (cookie "tg", as in bench/tokengate.toml.template) to the file $COOKIES, one per line,
-- until $SESSIONS are written; then the thread stops. Run with -t1 (one Lua state, one file).
local out = assert(io.open(os.getenv("COOKIES"), "a"))
local want = assert(tonumber(os.getenv("SESSIONS")), "SESSIONS is not a number")
local got = 0

wrk.method = "POST"
wrk.headers["X-CSRF"] = "1"

response = function(status, headers, body)
  local set = headers["set-cookie"] or headers["Set-Cookie"]
  local value = set and set:match("^tg=([^;]+)")
  if status == 200 and value and got < want then
    out:write(value, "\n")
    got = got + 1
    if got % 1000 == 0 then out:flush() end
  end
  if got >= want then
    out:flush()
    wrk.thread:stop()
  end
end
