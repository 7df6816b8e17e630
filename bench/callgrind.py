import http.client, subprocess, sys, time, os, signal, re, tempfile
tg, mock, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
m = subprocess.Popen([mock, "--listen", "127.0.0.1:0", "--client-id", "k", "--client-secret", "s"], stdout=subprocess.PIPE, text=True)
url = [w for w in m.stdout.readline().split() if w.startswith("http://")][0]
d = tempfile.mkdtemp()
cfg = os.path.join(d, "p.toml")
open(cfg, "w").write(f'''
[server]
listen = "127.0.0.1:18517"
admin_listen = "off"
public_origin = "http://127.0.0.1:18517"
[upstream]
base_url = "{url}"
[oauth]
client_id = "k"
[session]
cookie_name = "tg"
cookie_secure = false
[log]
level = "info"
[[route]]
prefix = "/api/"
upstream_prefix = "/v1/"
''')
out = os.path.join(d, "cg.out")
env = dict(os.environ, TOKENGATE_CLIENT_SECRET="s")
p = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", tg, "--config", cfg], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
p.stdout.readline()
c = http.client.HTTPConnection("127.0.0.1", 18517, timeout=60)
c.request("POST", "/session/guest", headers={"X-CSRF": "1"}); r = c.getresponse(); r.read()
cookie = r.getheader("set-cookie").split(";")[0]
for _ in range(n):
    c.request("GET", "/api/shoppers/me", headers={"Cookie": cookie}); r = c.getresponse(); r.read()
    assert r.status == 200, r.status
c.close()
p.send_signal(signal.SIGTERM); p.wait(timeout=120)
m.kill(); print("OUT", out)
for line in open(out):
    if line.startswith("summary:") or line.startswith("totals:"):
        print(n, line.split()[1]); break
