// Real-browser journey through several tokengate replicas behind a load balancer.
//
// Against `docker compose --profile replicas up` (two replicas on one Redis session store,
// haproxy alternating between them and naming the one that answered in X-Served-By,
// commerce-mock issuing short-lived access tokens): the demo storefront in headless Debian
// Chromium browses as a guest, adds to the cart, logs in, waits until the shopper's access
// token has expired, shops again (the replica that gets the call refreshes the token; the
// other one reads the new tokens from Redis) and logs out. Every answer the browser gets is
// recorded with its status and X-Served-By. It passes when:
//   - no call failed with 401, except the two reads of GET /session with no session by design
//     (before the first cookie, after logout), and the mock never refused a token (resource_401);
//   - both replicas answered, both of them calls of the logged-in session, and both forwarded
//     API calls with the refreshed tokens;
//   - the mock served a refresh grant after the token expired, exactly one;
//   - no token the mock issued is in anything the browser received, sent or holds (responses,
//     requests, HTML, document.cookie, web storage, cookie jar), as demo.test.mjs checks.
//
// Usage: TOKENGATE_URL=http://127.0.0.1:18090 MOCK_URL=http://127.0.0.1:18089 node replicas.test.mjs
// Optional: CHROMIUM=/usr/bin/chromium, E2E_TIMEOUT_MS (whole run, default 150000),
//   E2E_EXPIRY_WAIT_MS (longest wait for the access token to expire, default 90000),
//   E2E_REPLICAS (the X-Served-By names to expect, default "tokengate-a,tokengate-b"),
//   E2E_ARTIFACTS (screenshot folder, default ./artifacts next to this file).
// Exit code 0 when every step passed, 1 otherwise. scripts/replicas-e2e.sh starts the stack and runs this.

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  AssertionError, SHOPPER, check, createRecorder, clearLog, createSteps, findLeaks, header, lastAnswerJson, launchBrowser,
  logStartsWith, loopbackOrigin, mockClient, startWatchdog, text, waitUntil,
} from './lib.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const BASE = loopbackOrigin(process.env.TOKENGATE_URL || process.argv[2], 'TOKENGATE_URL'); // the load balancer
const MOCK = loopbackOrigin(process.env.MOCK_URL || process.argv[3], 'MOCK_URL');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const TOTAL_MS = Number(process.env.E2E_TIMEOUT_MS || 150_000);
const EXPIRY_WAIT_MS = Number(process.env.E2E_EXPIRY_WAIT_MS || 90_000);
const REPLICAS = (process.env.E2E_REPLICAS || 'tokengate-a,tokengate-b').split(',').map((s) => s.trim()).filter(Boolean);
const SERVED_BY = 'x-served-by';
const ARTIFACTS = path.resolve(process.env.E2E_ARTIFACTS || path.join(HERE, 'artifacts'));

const watchdog = startWatchdog(TOTAL_MS);
const recorder = createRecorder(BASE);
const { responses, requests, snapshots, pageErrors } = recorder;
const mockJson = mockClient(MOCK);
const { step, results, facts, summary } = createSteps();
let browserContext;
let page;
let userDataDir;

/** The storefront's own answers (the page and its API calls), in order. */
const storefront = () => responses.filter((r) => new URL(r.url).origin === BASE);
const servedBy = (r) => header(r, SERVED_BY)[0] ?? '(none)';
const describe = (r) => `${r.method} ${new URL(r.url).pathname}${new URL(r.url).search} → ${r.status} [${servedBy(r)}]`;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** One line per answer, runs of one call with one status folded into "× N [replica: n, …]". */
function folded(list) {
  const lines = [];
  for (let i = 0; i < list.length;) {
    const call = (r) => `${r.method} ${new URL(r.url).pathname}${new URL(r.url).search} → ${r.status}`;
    let j = i;
    while (j < list.length && call(list[j]) === call(list[i])) j += 1;
    if (j - i === 1) lines.push(describe(list[i]));
    else {
      const by = {};
      for (const r of list.slice(i, j)) by[servedBy(r)] = (by[servedBy(r)] ?? 0) + 1;
      lines.push(`${call(list[i])} × ${j - i} [${Object.entries(by).map(([name, n]) => `${name}: ${n}`).join(', ')}]`);
    }
    i = j;
  }
  return lines;
}

/** GET /session from the page itself (so the browser makes and records the call). */
function readSession() {
  return page.evaluate(async () => {
    const response = await fetch('/session', { headers: { Accept: 'application/json' }, credentials: 'same-origin' });
    return { status: response.status, body: await response.json().catch(() => null) };
  });
}

async function main() {
  console.log(`e2e: storefront (load balancer) ${BASE}, commerce-mock ${MOCK}, replicas ${REPLICAS.join(' and ')}, browser ${CHROMIUM}`);
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const startStats = await mockJson('GET', '/__mock/stats');

  ({ context: browserContext, userDataDir } = await launchBrowser(CHROMIUM));
  facts.browser = browserContext.browser()?.version() ?? '(unknown)';
  recorder.attach(browserContext);
  page = browserContext.pages()[0] ?? (await browserContext.newPage());
  recorder.watch(page);

  let cookieName;
  let loginIndex; // responses before this index came before the login
  let logoutIndex;
  let expiredAt;
  let refreshesBefore;

  await step('1. open the storefront through the load balancer; products load as a guest', async () => {
    const main = await page.goto(BASE + '/', { waitUntil: 'domcontentloaded' });
    check(main && main.status() === 200, `GET / answered ${main && main.status()}`);
    check((main.headers()['content-type'] || '').startsWith('text/html'), `GET / is not HTML: ${main.headers()['content-type']}`);
    await page.locator('#products button').first().waitFor({ state: 'visible' });
    await waitUntil(page, 'the initial cart "(0 items)" and state "guest"',
      () => document.getElementById('cart-count').textContent === '(0 items)' && document.getElementById('state').textContent === 'guest');
    await recorder.settle();
    const cookies = await recorder.sessionCookies(browserContext);
    check(cookies.length === 1 && cookies[0].httpOnly === true, `expected one HttpOnly session cookie, got ${JSON.stringify(cookies.map((c) => [c.name, c.httpOnly]))}`);
    cookieName = cookies[0].name;
    const shot = await recorder.snapshot(browserContext, page, 'guest');
    check(shot.documentCookie === '', `document.cookie should be empty, is ${JSON.stringify(shot.documentCookie)}`);
  });

  await step('2. add a product to the cart as a guest', async () => {
    await clearLog(page);
    await page.locator('#products tr').first().locator('button', { hasText: 'Add to cart' }).click();
    await waitUntil(page, 'the cart to answer', () => /^\((1 item|\d{3})\)$/.test(document.getElementById('cart-count').textContent));
    check((await text(page, '#cart-count')) === '(1 item)', `adding to the cart failed: ${recorder.lastAnswer('POST', '/api/shoppers/me/carts/active')}`);
    await waitUntil(page, 'the session re-read after adding', logStartsWith, 'GET /session → ');
    await recorder.snapshot(browserContext, page, 'guest with cart');
  });

  await step(`3. log in as ${SHOPPER}; the cart carries over`, async () => {
    await recorder.settle();
    loginIndex = responses.length;
    await clearLog(page);
    await page.locator('#login button[type=submit]').click();
    await waitUntil(page, 'state "logged-in shopper" (or a refused login)', () =>
      document.getElementById('state').textContent === 'logged-in shopper' || /^POST \/session\/login → [^2]/.test(document.getElementById('log').textContent));
    check((await text(page, '#state')) === 'logged-in shopper', `the login failed: ${recorder.lastAnswer('POST', '/session/login')}`);
    await waitUntil(page, 'the cart reloaded after login', logStartsWith, 'GET /api/shoppers/me/carts/active → 200');
    check((await text(page, '#cart-count')) === '(1 item)', `cart count after login: ${await text(page, '#cart-count')}`);
    const shot = await recorder.snapshot(browserContext, page, 'logged in');
    check(shot.documentCookie === '', `document.cookie should be empty, is ${JSON.stringify(shot.documentCookie)}`);
    await page.screenshot({ path: path.join(ARTIFACTS, 'replicas-logged-in.png'), fullPage: true });
  });

  await step('4. wait until the access token has expired (GET /session, polled through both replicas)', async () => {
    refreshesBefore = (await mockJson('GET', '/__mock/stats')).token_calls.refresh;
    const first = await readSession();
    check(first.status === 200 && first.body?.authenticated === true, `GET /session after login: ${first.status} ${JSON.stringify(first.body)}`);
    expiredAt = Date.parse(first.body.access_expires_at);
    check(Number.isFinite(expiredAt), `access_expires_at is not a time: ${first.body.access_expires_at}`);
    const lifetime = expiredAt - Date.now();
    check(lifetime < EXPIRY_WAIT_MS, `the access token lives ${Math.round(lifetime / 1000)} s more; start commerce-mock with a short --access-ttl (this test waits at most ${EXPIRY_WAIT_MS / 1000} s)`);
    const deadline = Date.now() + Math.min(EXPIRY_WAIT_MS, Math.max(lifetime, 0) + 15_000);
    let polls = 1;
    for (;;) {
      const { status, body } = await readSession();
      polls += 1;
      check(status === 200 && body?.authenticated === true, `GET /session while waiting answered ${status} ${JSON.stringify(body)}`);
      check(Date.parse(body.access_expires_at) === expiredAt, `the token changed while nothing but GET /session was called: ${body.access_expires_at}`);
      if (expiredAt <= Date.now() - 1000) break; // a second past it: the token is dead, not "due"
      check(Date.now() < deadline, `the access token (until ${first.body.access_expires_at}) did not expire before the deadline`);
      await sleep(1000);
    }
    facts.waited = `${Math.round(lifetime / 1000)} s for the token to expire (${polls} GET /session polls)`;
  });

  await step('5. shop again after the expiry: one replica refreshes, both forward with the new tokens', async () => {
    await recorder.settle();
    const from = responses.length;
    const rows = page.locator('#products tr');
    const second = (await rows.count()) > 1 ? rows.nth(1) : rows.first();
    await clearLog(page);
    await second.locator('button', { hasText: 'Add to cart' }).click();
    await waitUntil(page, 'the cart to answer', () => /^\((2 items|\d{3})\)$/.test(document.getElementById('cart-count').textContent));
    check((await text(page, '#cart-count')) === '(2 items)', `shopping after the expiry failed: ${recorder.lastAnswer('POST', '/api/shoppers/me/carts/active')}`);
    await waitUntil(page, 'the session re-read after adding', logStartsWith, 'GET /session → ');
    const session = await lastAnswerJson(page);
    check(session.authenticated === true, `GET /session after the refresh: ${JSON.stringify(session)}`);
    check(Date.parse(session.access_expires_at) > Date.now(), `the access token was not renewed: ${session.access_expires_at}`);
    // The page's cart reloads one after the other: the load balancer alternates, so within a
    // few of them each replica has forwarded a call with the refreshed tokens (the mock
    // refuses the expired one: step 7 checks it refused nothing).
    const apiAfter = () => responses.slice(from).filter((r) => new URL(r.url).origin === BASE && new URL(r.url).pathname.startsWith('/api/'));
    for (let reads = 0; reads < 4 && !REPLICAS.every((name) => apiAfter().some((r) => servedBy(r) === name)); reads += 1) {
      await page.evaluate(() => loadCart()); // the page's own function (assets/demo.html)
      check((await text(page, '#cart-count')) === '(2 items)', `reloading the cart failed: ${recorder.lastAnswer('GET', '/api/shoppers/me/carts/active')}`);
      await recorder.settle();
    }
    await recorder.settle();
    const bad = apiAfter().filter((r) => r.status !== 200);
    check(bad.length === 0, `API calls after the expiry failed: ${bad.map(describe).join(', ')}`);
    const forwardedBy = new Set(apiAfter().map(servedBy));
    check(REPLICAS.every((name) => forwardedBy.has(name)), `after the refresh only ${[...forwardedBy].join(', ')} forwarded API calls: ${apiAfter().map(describe).join(', ')}`);
    const stats = await mockJson('GET', '/__mock/stats');
    const grants = stats.token_calls.refresh - refreshesBefore;
    check(grants >= 1, `no refresh grant after the expiry (refresh calls: ${refreshesBefore} before, ${stats.token_calls.refresh} after)`);
    check(grants === 1, `${grants} refresh grants for one expiry: a replica refreshed tokens the other had already renewed`);
    await recorder.settle();
    facts.refresh = `1 refresh grant, then ${folded(responses.slice(from).filter((r) => new URL(r.url).origin === BASE)).join(', ')}`;
    await recorder.snapshot(browserContext, page, 'after the refresh');
  });

  await step('6. log out; the session and the cookie are gone', async () => {
    await recorder.settle();
    logoutIndex = responses.length;
    await clearLog(page);
    await page.locator('#logout').click();
    await waitUntil(page, 'the session re-read after logout', logStartsWith, 'GET /session → ');
    check((await text(page, '#log')).startsWith('GET /session → 401'), `the session still answers after logout (${recorder.lastAnswer('POST', '/session/logout')})`);
    await recorder.settle();
    const logouts = recorder.answersTo('POST', '/session/logout');
    check(logouts.length === 1 && logouts[0].status === 204, `POST /session/logout answered ${logouts.map((r) => r.status)}`);
    const cookies = await browserContext.cookies(BASE);
    check(cookies.length === 0, `cookies left after logout: ${JSON.stringify(cookies.map((c) => c.name))}`);
    await recorder.snapshot(browserContext, page, 'logged out');
    await page.screenshot({ path: path.join(ARTIFACTS, 'replicas-final.png'), fullPage: true });
  });

  await step('7. every answer came through the load balancer; both replicas served the session; no 401', async () => {
    await recorder.settle();
    const all = storefront();
    const unmarked = all.filter((r) => header(r, SERVED_BY).length !== 1);
    check(unmarked.length === 0, `answers without one ${SERVED_BY} header: ${unmarked.map(describe).join(', ')}`);
    const unknown = all.filter((r) => !REPLICAS.includes(servedBy(r)));
    check(unknown.length === 0, `answers from no expected replica: ${unknown.map(describe).join(', ')}`);
    // The only 401s by design: GET /session with no session, before the first cookie and after logout.
    const firstCookie = all.findIndex((r) => header(r, 'set-cookie').some((v) => v.startsWith(`${cookieName}=`)));
    const unexpected = all.filter((r, i) => r.status === 401 && !(
      r.method === 'GET' && new URL(r.url).pathname === '/session' && /"no_session"/.test(r.body ?? '')
      && (i < firstCookie || responses.indexOf(r) >= logoutIndex)));
    check(unexpected.length === 0, `401 answers in the journey: ${unexpected.map((r) => `${describe(r)} ${(r.body ?? '').slice(0, 120)}`).join('; ')}`);
    const failed = all.filter((r) => r.status >= 400 && r.status !== 401);
    check(failed.length === 0, `failed answers: ${failed.map(describe).join(', ')}`);
    const byReplica = Object.fromEntries(REPLICAS.map((name) => [name, all.filter((r) => servedBy(r) === name).length]));
    facts.answers = `${all.length} (${REPLICAS.map((name) => `${name}: ${byReplica[name]}`).join(', ')})`;
    for (const name of REPLICAS) check(byReplica[name] > 0, `${name} answered nothing: ${JSON.stringify(byReplica)}`);
    // Both replicas served the logged-in session (so it lives in the shared store, not in one of them).
    const shopper = responses.slice(loginIndex, logoutIndex).filter((r) => new URL(r.url).origin === BASE);
    const shopperBy = new Set(shopper.map(servedBy));
    check(REPLICAS.every((name) => shopperBy.has(name)), `the logged-in session was served only by ${[...shopperBy].join(', ')}`);
    const stats = await mockJson('GET', '/__mock/stats');
    const refused = stats.resource_401 - startStats.resource_401;
    check(refused === 0, `the mock refused ${refused} API call(s) with 401 (an expired or dead token was sent)`);
    facts.mock = `token calls ${JSON.stringify(stats.token_calls)}; API calls ${stats.resource_calls}, refused ${stats.resource_401}`;
    console.log('        the answers the page got (repeats folded):');
    for (const line of folded(all)) console.log(`          ${line}`);
  });

  await step('8. leak check: no issued token reached the browser', async () => {
    await recorder.settle();
    const issued = await mockJson('GET', '/__mock/tokens');
    const access = issued.access_tokens ?? [];
    const refresh = issued.refresh_tokens ?? [];
    // Guest, shopper at login, the refresh's new one: at least three, else the check means little.
    check(access.length >= 3, `the mock issued ${access.length} access tokens; expected at least 3 (guest, shopper, refreshed)`);
    check(refresh.length >= 1, `the mock issued ${refresh.length} refresh tokens; expected at least 1`);
    check([...access, ...refresh].every((t) => typeof t === 'string' && t.length >= 64), 'the mock returned an implausible token');
    const needles = [
      ...access.map((value, i) => ({ label: `access token #${i + 1}`, value })),
      ...refresh.map((value, i) => ({ label: `refresh token #${i + 1}`, value })),
    ];
    const stacks = recorder.haystacks();
    check(pageErrors.length === 0, `the page threw: ${pageErrors.join('; ')}`);
    const unread = responses.filter((r) => r.body === null);
    check(unread.length === 0, `response bodies that could not be read: ${unread.map((r) => `${r.url} (${r.bodyError})`).join(', ')}`);
    const offsite = requests.filter((r) => new URL(r.url).origin !== BASE);
    check(offsite.length === 0, `the browser called something besides ${BASE}: ${offsite.map((r) => r.url).join(', ')}`);
    // Positive control: the scanner finds the HttpOnly cookie's value where it is known to be.
    const jarCookie = snapshots.find((s) => s.label === 'logged in').cookies.find((c) => c.name === cookieName);
    check(jarCookie, 'control: no session cookie in the recorded jar after login');
    const control = findLeaks([{ label: 'session cookie', value: jarCookie.value }], stacks);
    check(control.some((f) => f.includes(' in response')) && control.some((f) => f.includes(' in cookie jar')),
      `control: the session cookie value was not found in a recorded response and the jar: ${control.join('; ')}`);
    const leaks = findLeaks(needles, stacks);
    facts.tokens = `${access.length} access + ${refresh.length} refresh tokens`;
    facts.scanned = `${responses.length} responses, ${requests.length} requests, ${snapshots.length} page snapshots (${stacks.length} haystacks)`;
    check(leaks.length === 0, `${leaks.length} token leak(s):\n          ${leaks.slice(0, 20).join('\n          ')}`);
  });
}

let exitCode = 1;
try {
  await main();
  exitCode = 0;
} catch (error) {
  if (!results.some((r) => !r.ok)) console.error(`e2e: ${error instanceof AssertionError ? error.message : error.stack || error}`);
  await recorder.settle().catch(() => {});
  const api = storefront().filter((r) => new URL(r.url).pathname !== '/');
  if (api.length > 0) {
    console.log('e2e: the last answers the page received:');
    for (const r of api.slice(-10)) console.log(`        ${describe(r)} ${(r.body ?? '').slice(0, 120)}`);
  }
  if (page) {
    try {
      await page.screenshot({ path: path.join(ARTIFACTS, 'replicas-failure.png'), fullPage: true, timeout: 5_000 });
      console.log(`e2e: failure screenshot: ${path.join(ARTIFACTS, 'replicas-failure.png')}`);
    } catch { /* the browser may be gone */ }
  }
} finally {
  if (browserContext) await browserContext.close().catch(() => {});
  if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
}

summary(8, exitCode);
clearTimeout(watchdog);
process.exit(exitCode);
