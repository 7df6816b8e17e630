// Real-browser test of `server.cors = true`: a storefront page served from one origin
// (https://www.shop.example:PORT_A, the small static page in cors-storefront/) runs the
// shopper journey against tokengate on another (https://api.shop.example:PORT_B) with
// credentialed fetch from its own script: a JSON 401 before any session, a guest, add to the
// cart (POST with X-CSRF, so the browser sends a preflight), read the cart, log in, log out,
// and a JSON 401 after logout, every answer read by the page (status, error.code, the exposed
// x-request-id) and no CORS error in the console. A second page on a third origin that is
// not allowed (https://evil.shop.example:PORT_A) gets an opaque failure and a CORS console
// error: the control that shows this test can see one. Finally no token the mock issued may
// be in anything the browser saw or holds (lib.mjs's leak scanner).
//
// Both names resolve to 127.0.0.1 (Chromium's --host-resolver-rules), and both servers use
// one self-signed certificate made here with openssl (the browser context ignores HTTPS
// errors). tokengate and commerce-mock are started here, on port 0, and stopped by PID.
//
// Usage: TOKENGATE_BIN=target/debug/tokengate MOCK_BIN=target/debug/commerce-mock node cors.test.mjs
// Optional: CHROMIUM=/usr/bin/chromium, E2E_TIMEOUT_MS (whole run, default 120000),
//   E2E_ARTIFACTS (logs and a screenshot, default ./artifacts next to this file).
// Exit code 0 when every step passed, 1 otherwise. scripts/e2e.sh runs it after the demo test.

import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import {
  WAIT_MS, check, createRecorder, createSteps, fail, findLeaks, header, launchBrowser, mockClient, startWatchdog,
} from './lib.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const TOKENGATE_BIN = path.resolve(process.env.TOKENGATE_BIN || fail('TOKENGATE_BIN is not set'));
const MOCK_BIN = path.resolve(process.env.MOCK_BIN || fail('MOCK_BIN is not set'));
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const TOTAL_MS = Number(process.env.E2E_TIMEOUT_MS || 120_000);
const ARTIFACTS = path.resolve(process.env.E2E_ARTIFACTS || path.join(HERE, 'artifacts'));
const PAGE_FILES = { '/': ['index.html', 'text/html; charset=utf-8'], '/shop.js': ['shop.js', 'text/javascript; charset=utf-8'] };
const USERNAME = 'jdoe@example.com'; // commerce-mock's default shopper
const PASSWORD = 'p4ssw0rd!';
const PRODUCT = 5104501700; // "Widget Pro" in the mock's catalog
const CORS_ERROR = /CORS|Access-Control/i;

const watchdog = startWatchdog(TOTAL_MS);
const children = []; // what this test started, stopped by PID at the end
let pageServer;
let workDir;

// ---------------------------------------------------------------------------------------
// The parts: a certificate, commerce-mock, the storefront's page server, tokengate.

function makeCertificate(dir) {
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=shop.example',
    '-addext', 'subjectAltName=DNS:www.shop.example,DNS:api.shop.example,DNS:evil.shop.example',
  ], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 30_000 });
  return { cert, key };
}

/** Starts `bin` and waits (at most 30 s) for its one announcement line on stdout. */
async function startChild(name, bin, args, env) {
  const log = fs.openSync(path.join(ARTIFACTS, `cors-${name}.log`), 'w');
  const child = spawn(bin, args, { env: { PATH: process.env.PATH, ...env }, stdio: ['ignore', 'pipe', log] });
  children.push({ name, child });
  const lines = readline.createInterface({ input: child.stdout });
  const line = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} did not announce its address within 30 s`)), 30_000);
    lines.once('line', (text) => { clearTimeout(timer); resolve(text); });
    child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`${name} exited (${code}) before announcing its address`)); });
  });
  lines.on('line', () => {}); // keep draining stdout
  const address = /:\/\/(127\.0\.0\.1:\d+)/.exec(line);
  check(address, `${name} announced no 127.0.0.1 address: ${line}`);
  return address[1];
}

/** Stops every child this test started, by PID: SIGTERM, then SIGKILL after 15 s. */
async function stopChildren() {
  for (const { name, child } of children.reverse()) {
    if (child.exitCode !== null || child.signalCode !== null) continue;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    const timer = new Promise((resolve) => setTimeout(() => resolve('timeout'), 15_000));
    if ((await Promise.race([exited, timer])) === 'timeout') {
      console.error(`e2e: ${name} (pid ${child.pid}) ignored SIGTERM for 15 s; killing it`);
      child.kill('SIGKILL');
    }
  }
}

/** The storefront's static page on 127.0.0.1:0 over HTTPS, whatever the Host it is asked as. */
async function startPageServer({ cert, key }) {
  const server = https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, (request, response) => {
    const file = PAGE_FILES[new URL(request.url, 'https://x').pathname];
    if (!file) {
      response.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
      return;
    }
    response.writeHead(200, { 'content-type': file[1], 'cache-control': 'no-store' });
    response.end(fs.readFileSync(path.join(HERE, 'cors-storefront', file[0])));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return server;
}

function proxyToml({ cert, key }, storefront, mock) {
  return `# tokengate for e2e/cors.test.mjs
[server]
listen = "127.0.0.1:0"
admin_listen = "off"
allowed_origins = ["${storefront}"]
cors = true

[server.tls]
cert_file = "${cert}"
key_file = "${key}"

[upstream]
base_url = "${mock}"

[oauth]
client_id = "demo-api-key"
client_secret_env = "TOKENGATE_CLIENT_SECRET"

# [session] keeps its defaults: __Host-tokengate, Secure, HttpOnly, SameSite=Lax.

[log]
level = "info"
access = true

[[route]]
prefix = "/api/"
upstream_prefix = "/v1/"
session = "required"
`;
}

// ---------------------------------------------------------------------------------------
// The scenario.

const { step, results, facts, summary } = createSteps();
let context;
let userDataDir;

async function main() {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tokengate-cors-e2e-'));
  const tls = makeCertificate(workDir);
  const mockAddress = await startChild('commerce-mock', MOCK_BIN, ['--listen', '127.0.0.1:0']);
  const MOCK = `http://${mockAddress}`;
  pageServer = await startPageServer(tls);
  const pagePort = pageServer.address().port;
  const STOREFRONT = `https://www.shop.example:${pagePort}`;
  const ELSEWHERE = `https://evil.shop.example:${pagePort}`; // the same page, on an origin not allowed
  const configFile = path.join(workDir, 'proxy.toml');
  fs.writeFileSync(configFile, proxyToml(tls, STOREFRONT, MOCK));
  const proxyAddress = await startChild('tokengate', TOKENGATE_BIN, ['--config', configFile], {
    TOKENGATE_CLIENT_SECRET: 'demo-secret',
    NO_COLOR: '1', // plain log lines: step 3 reads the access log
  });
  const API = `https://api.shop.example:${proxyAddress.split(':')[1]}`;
  const proxyLog = path.join(ARTIFACTS, 'cors-tokengate.log');
  console.log(`e2e: storefront ${STOREFRONT}, tokengate ${API} (${proxyAddress}), commerce-mock ${MOCK}, browser ${CHROMIUM}`);

  const mockJson = mockClient(MOCK);
  const recorder = createRecorder(API);
  ({ context, userDataDir } = await launchBrowser(CHROMIUM, { mapToLoopback: ['*.shop.example'], ignoreHTTPSErrors: true }));
  facts.browser = context.browser()?.version() ?? '(unknown)';
  recorder.attach(context);
  const page = context.pages()[0] ?? (await context.newPage());
  recorder.watch(page);
  const shop = (method, ...args) => page.evaluate(([m, a]) => window.shop[m](...a), [method, args]);
  const corsErrors = () => recorder.consoleErrors.filter((message) => CORS_ERROR.test(message));
  /** The page read the answer: a status, and the exposed request id. */
  const readable = (result, what) => {
    check(result.status > 0, `${what}: the page could not read the answer (${result.failure})`);
    check(result.requestId, `${what}: x-request-id is not exposed to the page`);
  };
  let cookie;

  await step('1. the storefront page loads from its own origin and reads a JSON 401 from tokengate', async () => {
    const main = await page.goto(`${STOREFRONT}/?api=${encodeURIComponent(API)}`, { waitUntil: 'load', timeout: WAIT_MS });
    check(main && main.status() === 200, `GET ${STOREFRONT}/ answered ${main && main.status()}`);
    const answer = await shop('session');
    readable(answer, 'GET /session');
    check(answer.status === 401 && answer.json?.error?.code === 'no_session', `GET /session before any session: ${JSON.stringify(answer)}`);
  });

  await step('2. a guest session: the cookie is tokengate\'s, HttpOnly, Secure, SameSite=Lax, sent same-site', async () => {
    const answer = await shop('guest');
    readable(answer, 'POST /session/guest');
    check(answer.status === 200 && answer.json?.authenticated === false, `POST /session/guest: ${JSON.stringify(answer)}`);
    const cookies = await recorder.sessionCookies(context);
    check(cookies.length === 1, `cookies for ${API}: ${JSON.stringify(cookies.map((c) => c.name))}`);
    [cookie] = cookies;
    check(cookie.name === '__Host-tokengate' && cookie.httpOnly && cookie.secure && cookie.sameSite === 'Lax',
      `the session cookie: ${JSON.stringify({ ...cookie, value: '…' })}`);
    check((await page.evaluate(() => document.cookie)) === '', 'the storefront page sees a cookie');
    await recorder.settle();
    const sent = recorder.requests.filter((r) => r.method === 'POST' && new URL(r.url).pathname === '/session/guest');
    check(sent.length === 1 && header(sent[0], 'origin')[0] === STOREFRONT, `the guest call's Origin: ${sent.map((r) => header(r, 'origin'))}`);
    check(header(sent[0], 'sec-fetch-site')[0] === 'same-site', `www. and api. should be the same site: Sec-Fetch-Site ${header(sent[0], 'sec-fetch-site')}`);
  });

  await step('3. add to the cart (POST with X-CSRF, after a preflight tokengate answered) and read it back', async () => {
    const added = await shop('addToCart', PRODUCT, 2);
    readable(added, 'POST to the cart');
    check(added.status === 200, `POST to the cart: ${JSON.stringify(added)}`);
    const cart = await shop('cart');
    readable(cart, 'GET the cart');
    check(cart.status === 200 && cart.json?.cart?.totalItemsInCart === '2', `GET the cart: ${JSON.stringify(cart.json)}`);
    facts.cart = `${cart.json.cart.totalItemsInCart} items, ${cart.json.cart.pricing?.formattedOrderTotal}`;
    // The preflights never reach the page's fetch: tokengate's access log shows them.
    const deadline = Date.now() + WAIT_MS;
    let preflights = 0;
    while (Date.now() < deadline) {
      preflights = fs.readFileSync(proxyLog, 'utf8').split('\n').filter((l) => l.includes('method=OPTIONS') && l.includes('status=204')).length;
      if (preflights >= 2) break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    check(preflights >= 2, `tokengate logged ${preflights} preflights answered with 204; expected one for the guest and one for the cart`);
    facts.preflights = preflights;
  });

  await step('4. log in: the guest\'s cart carries over to the shopper', async () => {
    const login = await shop('login', USERNAME, PASSWORD);
    readable(login, 'POST /session/login');
    check(login.status === 200 && login.json?.authenticated === true, `POST /session/login: ${JSON.stringify(login)}`);
    const me = await shop('me');
    check(me.status === 200 && me.json?.shopper?.username === USERNAME, `GET /api/shoppers/me: ${JSON.stringify(me.json)}`);
    const cart = await shop('cart');
    check(cart.status === 200 && cart.json?.cart?.totalItemsInCart === '2', `the shopper's cart: ${JSON.stringify(cart.json)}`);
    const [rotated] = await recorder.sessionCookies(context);
    check(rotated && rotated.value !== cookie.value, 'the login did not rotate the session cookie');
  });

  await step('5. log out, then the page reads tokengate\'s JSON 401 (status and error.code)', async () => {
    const logout = await shop('logout');
    readable(logout, 'POST /session/logout');
    check(logout.status === 204, `POST /session/logout: ${JSON.stringify(logout)}`);
    check((await recorder.sessionCookies(context)).length === 0, 'the cookie is still in the jar after logout');
    const after = await shop('session');
    readable(after, 'GET /session after logout');
    check(after.status === 401 && after.json?.error?.code === 'no_session', `GET /session after logout: ${JSON.stringify(after)}`);
    check(corsErrors().length === 0, `CORS errors in the console: ${corsErrors().join(' | ')}`);
    check(recorder.pageErrors.length === 0, `the page threw: ${recorder.pageErrors.join('; ')}`);
    await page.screenshot({ path: path.join(ARTIFACTS, 'cors-storefront.png'), fullPage: true });
  });

  await step('6. control: the same page on an origin not allowed gets no grant (an opaque failure and a CORS error)', async () => {
    const other = await context.newPage();
    recorder.watch(other);
    await other.goto(`${ELSEWHERE}/?api=${encodeURIComponent(API)}`, { waitUntil: 'load', timeout: WAIT_MS });
    const refused = await other.evaluate(() => window.shop.guest());
    check(refused.status === 0 && /failed to fetch/i.test(refused.failure ?? ''), `POST /session/guest from ${ELSEWHERE}: ${JSON.stringify(refused)}`);
    const deadline = Date.now() + WAIT_MS;
    while (corsErrors().length === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
    check(corsErrors().length > 0, `no CORS error in the console for ${ELSEWHERE}; the check in step 5 would see none either`);
    facts.control = corsErrors()[0].slice(0, 120);
    await other.close();
  });

  await step('7. leak check: no issued token reached the browser', async () => {
    await recorder.settle();
    const issued = await mockJson('GET', '/__mock/tokens');
    const access = issued.access_tokens ?? [];
    const refresh = issued.refresh_tokens ?? [];
    check(access.length >= 2, `the mock issued ${access.length} access tokens; expected at least 2 (guest, shopper)`);
    const needles = [
      ...access.map((value, i) => ({ label: `access token #${i + 1}`, value })),
      ...refresh.map((value, i) => ({ label: `refresh token #${i + 1}`, value })),
    ];
    await recorder.snapshot(context, page, 'after the journey');
    const stacks = recorder.haystacks();
    const control = findLeaks([{ label: 'guest cookie', value: cookie.value }], stacks);
    check(control.some((f) => f.includes(' in response')), 'control: the guest cookie value was not found in any recorded response header');
    const leaks = findLeaks(needles, stacks);
    facts.tokens = `${access.length} access + ${refresh.length} refresh tokens`;
    facts.scanned = `${recorder.responses.length} responses, ${recorder.requests.length} requests (${stacks.length} haystacks)`;
    check(leaks.length === 0, `${leaks.length} token leak(s):\n          ${leaks.slice(0, 20).join('\n          ')}`);
  });
}

let exitCode = 0;
try {
  await main();
} catch (error) {
  exitCode = 1;
  // A failed step has reported itself; anything else (a part that did not start) is told here.
  if (!results.some((r) => !r.ok)) console.error(`e2e: ${error?.stack || error}`);
} finally {
  try { await context?.close(); } catch { /* the browser is gone already */ }
  if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
  pageServer?.close();
  await stopChildren();
  if (workDir) fs.rmSync(workDir, { recursive: true, force: true });
  clearTimeout(watchdog);
}
summary(7, exitCode);
process.exit(exitCode);
