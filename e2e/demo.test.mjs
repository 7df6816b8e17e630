// Real-browser end-to-end test of the tokengate demo storefront.
//
// Drives assets/demo.html in headless Debian Chromium exactly as a shopper would (browse as
// a guest, add to the cart, log in, keep shopping until tokengate has refreshed the access
// token, log out) and proves that no token the Commerce API mock issued ever reached the
// browser: not in a response header or body, a request, the DOM, document.cookie, web
// storage or the cookie jar. It also checks what the page shows: no failed call or console
// error on the first load and no favicon request, the panel of what the browser holds, the
// shopper's name, prices and the cart total, and the refresh count rising. Screenshots of
// the guest and of the signed-in shopper after a refresh go to the artifacts folder
// (docs/demo*.png are copies of them).
//
// Usage: TOKENGATE_URL=http://127.0.0.1:PORT MOCK_URL=http://127.0.0.1:PORT node demo.test.mjs
//    or: node demo.test.mjs http://127.0.0.1:PORT http://127.0.0.1:PORT
// The demo's access tokens must be short-lived (`tokengate demo`: 45 s, refreshed in their last
// 15 s): step 4b waits for a refresh, at most the token's lifetime plus 15 s, and fails at once
// when the token lives more than a minute.
// Optional: CHROMIUM=/usr/bin/chromium, E2E_TIMEOUT_MS (whole run, default 150000),
//   E2E_ARTIFACTS (screenshot folder, default ./artifacts next to this file),
//   E2E_MOCK_FAULTS='{"echo_token":true}' sets mock faults first (the leak check must then fail).
// Exit code 0 when every step passed, 1 otherwise. scripts/e2e.sh starts the demo and runs this.
// The browser launch, the recorder, the leak scanner and the page helpers are in lib.mjs.

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  SHOPPER, WAIT_MS, check, createRecorder, clearLog, createSteps, findLeaks, header, lastAnswerJson,
  launchBrowser, logStartsWith, loopbackOrigin, mockClient, startWatchdog, text, waitUntil,
} from './lib.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const BASE = loopbackOrigin(process.env.TOKENGATE_URL || process.argv[2], 'TOKENGATE_URL');
const MOCK = loopbackOrigin(process.env.MOCK_URL || process.argv[3], 'MOCK_URL');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const TOTAL_MS = Number(process.env.E2E_TIMEOUT_MS || 150_000);
const LONGEST_TOKEN_MS = 60_000; // step 4b waits for a refresh of a token at most this long-lived
const ARTIFACTS = path.resolve(process.env.E2E_ARTIFACTS || path.join(HERE, 'artifacts'));

const watchdog = startWatchdog(TOTAL_MS);

// What the browser saw and sent (lib.mjs records it from outside the page, over CDP).
const recorder = createRecorder(BASE);
const { responses, requests, snapshots, pageErrors, consoleErrors } = recorder;
const settleRecords = () => recorder.settle();
const snapshot = (context, page, label) => recorder.snapshot(context, page, label);
const sessionCookies = (context) => recorder.sessionCookies(context);
const answersTo = (method, pathname) => recorder.answersTo(method, pathname);
const lastAnswer = (method, pathname) => recorder.lastAnswer(method, pathname);
const haystacks = () => recorder.haystacks();
const mockJson = mockClient(MOCK);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------------------
// The scenario.

const { step, results, facts, summary } = createSteps();
let browserContext;
let page;
let userDataDir;

async function main() {
  console.log(`e2e: storefront ${BASE}, commerce-mock ${MOCK}, browser ${CHROMIUM}`);
  fs.mkdirSync(ARTIFACTS, { recursive: true });

  if (process.env.E2E_MOCK_FAULTS) {
    const faults = JSON.parse(process.env.E2E_MOCK_FAULTS);
    await mockJson('PUT', '/__mock/faults', faults);
    console.log(`e2e: mock faults set: ${JSON.stringify(faults)} (negative run: a leak must be found)`);
  }

  ({ context: browserContext, userDataDir } = await launchBrowser(CHROMIUM));
  facts.browser = browserContext.browser()?.version() ?? '(unknown)';
  recorder.attach(browserContext);
  page = browserContext.pages()[0] ?? (await browserContext.newPage());
  recorder.watch(page);

  let cookieName;
  let guestCookie;
  let product;
  let price;

  await step('1. open the storefront: a guest session, products, no failed call, no console error, no favicon', async () => {
    const main = await page.goto(BASE + '/', { waitUntil: 'domcontentloaded', timeout: WAIT_MS });
    check(main && main.status() === 200, `GET / answered ${main && main.status()}`);
    check((main.headers()['content-type'] || '').startsWith('text/html'), `GET / is not HTML: ${main.headers()['content-type']}`);
    await page.locator('#products button').first().waitFor({ state: 'visible' });
    const rows = await page.locator('#products tr').evaluateAll((trs) => trs.map((tr) => [...tr.cells].map((td) => td.innerText.trim())));
    check(rows.length >= 1 && rows.every((cells) => cells[0] && /^\$\d+\.\d\d$/.test(cells[1]) && cells[2] === 'Add to cart'), `unexpected products table (name, price, button): ${JSON.stringify(rows)}`);
    facts.products = rows.map((cells) => `${cells[0]} ${cells[1]}`);
    // The page's start-up sequence is POST /session/guest, GET /api/shoppers/me, products,
    // cart, GET /session. Let it finish before clicking, or its cart answer could land after ours.
    await waitUntil(page, 'the initial cart "(0 items)", state "guest" and the start-up session read',
      () => document.getElementById('cart-count').textContent === '(0 items)' && document.getElementById('state').textContent === 'guest'
        && document.getElementById('log').textContent.startsWith('GET /session → 200'));
    await settleRecords();
    const guests = answersTo('POST', '/session/guest');
    check(guests.length === 1 && guests[0].status === 200, `the page should start with one POST /session/guest, saw ${guests.map((r) => r.status)}`);
    check(header(guests[0], 'set-cookie').length === 1, 'POST /session/guest should set the new guest session cookie');
    const productCalls = answersTo('GET', '/api/shoppers/me/products');
    check(productCalls.length === 1 && productCalls[0].status === 200, `GET products: ${productCalls.map((r) => r.status)}`);
    check(header(productCalls[0], 'set-cookie').length === 0, 'the products call should use the guest session started first, not mint another');
    const failed = responses.filter((r) => r.status >= 400);
    check(failed.length === 0, `calls that failed on the first load: ${failed.map((r) => `${r.method} ${new URL(r.url).pathname} → ${r.status}`).join(', ')}`);
    check(consoleErrors.length === 0, `console errors on the first load: ${consoleErrors.join(' | ')}`);
    check(!requests.some((r) => new URL(r.url).pathname === '/favicon.ico'), 'the page asked for /favicon.ico');
    check((await text(page, '#shopper')) === 'anonymous (a guest)', `the shopper shown for a guest: ${await text(page, '#shopper')}`);
    check((await text(page, '#refreshes')) === '0', `a new session shows ${await text(page, '#refreshes')} refreshes`);
    check(/^expires in \d+ s$/.test(await text(page, '#countdown')), `the token countdown shows ${await text(page, '#countdown')}`);
  });

  await step('2. the session cookie is in the jar, HttpOnly, and invisible to document.cookie', async () => {
    const cookies = await sessionCookies(browserContext);
    check(cookies.length === 1, `expected exactly one cookie for ${BASE}, got ${JSON.stringify(cookies.map((c) => c.name))}`);
    const [cookie] = cookies;
    cookieName = cookie.name;
    guestCookie = cookie.value;
    check(cookie.httpOnly === true, `cookie ${cookie.name} is not HttpOnly`);
    check(cookie.sameSite === 'Lax', `cookie ${cookie.name} has SameSite=${cookie.sameSite}, expected Lax`);
    check(cookie.value.length >= 40, `cookie value is too short to hold 256 random bits: ${cookie.value.length} characters`);
    const shot = await snapshot(browserContext, page, 'guest');
    check(shot.documentCookie === '', `document.cookie should be empty, is ${JSON.stringify(shot.documentCookie)}`);
    check(!shot.documentCookie.includes(cookie.value), 'the cookie value is readable by the page');
    facts.cookie = `${cookie.name} (HttpOnly, SameSite=${cookie.sameSite}, path ${cookie.path})`;
    // The "what this browser holds" panel says what the jar holds, and that the page reads nothing.
    await waitUntil(page, 'the panel to show an empty document.cookie', () => document.getElementById('document-cookie').textContent.startsWith('""'));
    check((await text(page, '#local-storage')) === 'empty' && (await text(page, '#session-storage')) === 'empty',
      `web storage shown as ${await text(page, '#local-storage')} / ${await text(page, '#session-storage')}`);
    check((await text(page, '#cookie-name')).startsWith(`${cookie.name} `), `the panel names the cookie ${await text(page, '#cookie-name')}`);
    const attributes = (await text(page, '#cookie-attributes')).split(' · ');
    const expected = ['HttpOnly', `SameSite=${cookie.sameSite}`, `Path=${cookie.path}`, cookie.secure ? 'Secure' : 'not Secure (plain-HTTP demo)'];
    check(expected.every((a, i) => attributes[i] === a), `the panel shows the attributes ${JSON.stringify(attributes)}, the jar holds ${JSON.stringify(expected)}`);
    const until = Date.parse((await text(page, '#cookie-attributes')).split(' · until ')[1] ?? '');
    check(Math.abs(until - cookie.expires * 1000) < 2 * 86_400_000, `the panel's expiry ${attributes.at(-1)} is not the jar's (${new Date(cookie.expires * 1000).toISOString()})`);
  });

  await step('3. add a product to the cart as a guest', async () => {
    const button = page.locator('#products tr').first().locator('button', { hasText: 'Add to cart' });
    product = (await page.locator('#products tr').first().locator('td').first().innerText()).trim();
    price = (await page.locator('#products tr').first().locator('td').nth(1).innerText()).trim();
    await clearLog(page);
    await button.click();
    // addToCart shows the cart, then re-reads the session (the panel's last call).
    // An error shows as "(STATUS)" in the cart count: stop waiting then too.
    await waitUntil(page, 'the cart to answer', () => /^\((1 item|\d{3})\)$/.test(document.getElementById('cart-count').textContent));
    check((await text(page, '#cart-count')) === '(1 item)', `adding to the cart failed: the cart shows ${await text(page, '#cart-count')} (${lastAnswer('POST', '/api/shoppers/me/carts/active')})`);
    await waitUntil(page, 'the session re-read after adding', logStartsWith, 'GET /session → ');
    const rows = await page.locator('#cart tr').allInnerTexts();
    check(rows.length === 1, `the cart should have one row, has ${JSON.stringify(rows)}`);
    check(rows[0].includes(product) && rows[0].includes('× 1'), `cart row ${JSON.stringify(rows[0])} should be "${product} × 1"`);
    check(rows[0].includes(price), `cart row ${JSON.stringify(rows[0])} should show the price ${price}`);
    check((await text(page, '#cart-total')) === price, `the cart total is ${await text(page, '#cart-total')}, expected ${price}`);
    check((await text(page, '#state')) === 'guest', `state should be "guest", is "${await text(page, '#state')}"`);
    const session = await lastAnswerJson(page);
    check(session.kind === 'guest' && session.authenticated === false, `GET /session should say a guest: ${JSON.stringify(session)}`);
    await snapshot(browserContext, page, 'guest with cart');
    await page.screenshot({ path: path.join(ARTIFACTS, 'guest.png'), fullPage: true });
  });

  await step('4. log in through the form; the cart carries over and the session id rotates', async () => {
    check((await page.locator('#login input[name=username]').inputValue()) === SHOPPER, 'the login form is not pre-filled with the demo shopper');
    check((await page.locator('#login input[name=password]').inputValue()) !== '', 'the login form has no pre-filled password');
    await clearLog(page);
    await page.locator('#login button[type=submit]').click();
    // submit → POST /session/login → GET /session → GET cart (the panel shows the last one).
    // A refused login stays on the panel as "POST /session/login → STATUS": stop waiting then too.
    await waitUntil(page, 'state "logged-in shopper" (or a refused login)', () =>
      document.getElementById('state').textContent === 'logged-in shopper' || /^POST \/session\/login → [^2]/.test(document.getElementById('log').textContent));
    check((await text(page, '#state')) === 'logged-in shopper', `the login failed: ${lastAnswer('POST', '/session/login')}`);
    await waitUntil(page, 'the cart reloaded after login', logStartsWith, 'GET /api/shoppers/me/carts/active → 200');
    await settleRecords();
    const logins = answersTo('POST', '/session/login');
    check(logins.length === 1 && logins[0].status === 200, `POST /session/login answered ${logins.map((r) => r.status)}`);
    check(/"kind"\s*:\s*"shopper"/.test(logins[0].body), `the login answer should report a shopper session: ${logins[0].body}`);
    check((await text(page, '#cart-count')) === '(1 item)', `cart count after login: ${await text(page, '#cart-count')}`);
    const rows = await page.locator('#cart tr').allInnerTexts();
    check(rows.length === 1 && rows[0].includes(product) && rows[0].includes('× 1'), `the guest's cart did not carry over: ${JSON.stringify(rows)}`);
    check((await text(page, '#cart-total')) === price, `the cart total after login is ${await text(page, '#cart-total')}, expected ${price}`);
    check((await text(page, '#shopper')) === `Jane Doe (${SHOPPER})`, `the shopper's name shown: ${await text(page, '#shopper')}`);
    check((await text(page, '#refreshes')) === '0', `the new shopper session shows ${await text(page, '#refreshes')} refreshes`);
    const cookies = await sessionCookies(browserContext);
    check(cookies.length === 1 && cookies[0].name === cookieName, `expected the one ${cookieName} cookie, got ${JSON.stringify(cookies.map((c) => c.name))}`);
    check(cookies[0].httpOnly === true, 'the rotated cookie is not HttpOnly');
    check(cookies[0].value !== guestCookie, 'the session cookie value did not change at login (no id rotation)');
    const shot = await snapshot(browserContext, page, 'logged in');
    check(shot.documentCookie === '', `document.cookie should be empty, is ${JSON.stringify(shot.documentCookie)}`);
    // The guest id must be dead at once (asked outside the browser, with the old cookie).
    const stale = await fetch(BASE + '/session', { headers: { cookie: `${cookieName}=${guestCookie}` }, signal: AbortSignal.timeout(10_000) });
    check(stale.status === 401, `the pre-login cookie still works: GET /session answered ${stale.status}`);
    await page.screenshot({ path: path.join(ARTIFACTS, 'logged-in.png'), fullPage: true });
  });

  await step('4b. keep shopping: tokengate refreshes the access token and the page counts it', async () => {
    await settleRecords();
    const reads = answersTo('GET', '/session');
    const session = JSON.parse(reads.at(-1).body);
    check(session.authenticated === true && session.refreshes === 0, `GET /session after login: ${reads.at(-1).body}`);
    const expiresAt = Date.parse(session.access_expires_at);
    const lifetime = expiresAt - Date.now();
    check(lifetime < LONGEST_TOKEN_MS, `the access token lives ${Math.round(lifetime / 1000)} s more: run the demo with short-lived tokens (tokengate demo: 45 s); this step waits at most ${LONGEST_TOKEN_MS / 1000} s`);
    const refreshesBefore = (await mockJson('GET', '/__mock/stats')).token_calls.refresh;
    const from = responses.length;
    // Reload the cart now and then, as a shopper would, until a call finds the token due for
    // refresh (in its last refresh_ahead, or expired) and tokengate refreshes it first.
    const deadline = expiresAt + 15_000;
    let reloads = 0;
    let shown;
    for (;;) {
      const [answer] = await Promise.all([
        page.waitForResponse((r) => r.request().method() === 'GET' && new URL(r.url()).pathname === '/session', { timeout: WAIT_MS }),
        page.locator('#reload').click(),
      ]);
      reloads += 1;
      shown = await answer.json();
      check(answer.status() === 200 && shown.authenticated === true, `GET /session while shopping answered ${answer.status()} ${JSON.stringify(shown)}`);
      await waitUntil(page, `the refresh count ${shown.refreshes} on the page`, (n) => document.getElementById('refreshes').textContent === String(n), shown.refreshes);
      if (shown.refreshes >= 1) break;
      check(Date.now() < deadline, `no refresh by ${new Date(deadline).toISOString()} (the token expired at ${session.access_expires_at}; ${reloads} reloads)`);
      await sleep(2_000);
    }
    check(shown.refreshes === 1, `one due token, ${shown.refreshes} refreshes`);
    check(Date.parse(shown.access_expires_at) > expiresAt, `the access token's expiry did not move: ${shown.access_expires_at}`);
    const grants = (await mockJson('GET', '/__mock/stats')).token_calls.refresh - refreshesBefore;
    check(grants === 1, `the page shows 1 refresh, the mock served ${grants} refresh grants`);
    check(/^expires in \d+ s$/.test(await text(page, '#countdown')), `the countdown after the refresh shows ${await text(page, '#countdown')}`);
    await settleRecords();
    const failed = responses.slice(from).filter((r) => r.status !== 200);
    check(failed.length === 0, `calls that failed while the token was refreshed: ${failed.map((r) => `${r.method} ${new URL(r.url).pathname} → ${r.status}`).join(', ')}`);
    check((await text(page, '#cart-count')) === '(1 item)' && (await text(page, '#cart-total')) === price, `the cart after the refresh: ${await text(page, '#cart-count')} ${await text(page, '#cart-total')}`);
    check((await text(page, '#shopper')) === `Jane Doe (${SHOPPER})`, `the shopper after the refresh: ${await text(page, '#shopper')}`);
    facts.refresh = `after ${reloads} cart reloads over ${Math.round((Date.now() - (expiresAt - lifetime)) / 1000)} s: 1 refresh grant, the page shows ${shown.refreshes}`;
    await snapshot(browserContext, page, 'after the refresh');
    await page.screenshot({ path: path.join(ARTIFACTS, 'signed-in-refreshed.png'), fullPage: true });
  });

  await step('5. log out; the state goes back to none and the cookie is gone', async () => {
    await clearLog(page);
    await page.locator('#logout').click();
    await waitUntil(page, 'the session re-read after logout', logStartsWith, 'GET /session → ');
    check((await text(page, '#log')).startsWith('GET /session → 401'), `the session still answers after logout (${lastAnswer('POST', '/session/logout')})`);
    await waitUntil(page, 'state "none…" and an emptied cart', () =>
      document.getElementById('state').textContent.startsWith('none') && document.getElementById('cart-count').textContent === '');
    await settleRecords();
    const logouts = answersTo('POST', '/session/logout');
    check(logouts.length === 1 && logouts[0].status === 204, `POST /session/logout answered ${logouts.map((r) => r.status)}`);
    check(header(logouts[0], 'set-cookie').some((v) => v.startsWith(`${cookieName}=`)), 'logout did not clear the cookie');
    const cookies = await browserContext.cookies(BASE);
    check(cookies.length === 0, `cookies left after logout: ${JSON.stringify(cookies.map((c) => c.name))}`);
    check((await page.locator('#cart tr').count()) === 0 && (await text(page, '#cart-count')) === '', 'the cart is still shown after logout');
    check((await text(page, '#cookie-name')).startsWith('none'), `the panel still shows a cookie after logout: ${await text(page, '#cookie-name')}`);
    await snapshot(browserContext, page, 'logged out');
  });

  await step('6. leak check: no issued token reached the browser', async () => {
    await settleRecords();
    const issued = await mockJson('GET', '/__mock/tokens');
    const access = issued.access_tokens ?? [];
    const refresh = issued.refresh_tokens ?? [];
    // A guest token, the shopper's at login, the refreshed one: at least three, else the check means little.
    check(access.length >= 3, `the mock issued ${access.length} access tokens; expected at least 3 (guest, shopper, refreshed)`);
    check(refresh.length >= 1, `the mock issued ${refresh.length} refresh tokens; expected at least 1`);
    check([...access, ...refresh].every((t) => typeof t === 'string' && t.length >= 64), 'the mock returned an implausible token');
    const needles = [
      ...access.map((value, i) => ({ label: `access token #${i + 1}`, value })),
      ...refresh.map((value, i) => ({ label: `refresh token #${i + 1}`, value })),
    ];
    const stacks = haystacks();
    // The recording itself must be complete, or a clean result means nothing.
    check(pageErrors.length === 0, `the page threw: ${pageErrors.join('; ')}`);
    const unread = responses.filter((r) => r.body === null);
    check(unread.length === 0, `response bodies that could not be read: ${unread.map((r) => `${r.url} (${r.bodyError})`).join(', ')}`);
    const offsite = requests.filter((r) => new URL(r.url).origin !== BASE);
    check(offsite.length === 0, `the browser called something besides ${BASE}: ${offsite.map((r) => r.url).join(', ')}`);
    check(!requests.some((r) => new URL(r.url).pathname === '/favicon.ico'), 'the page asked for /favicon.ico');
    // Positive controls: the scanner does find what is known to be there (the HttpOnly
    // cookie value is in a recorded Set-Cookie header and jar; a product name in a body).
    const control = findLeaks([{ label: 'guest cookie', value: guestCookie }], stacks);
    check(control.some((f) => f.includes(' in response')), 'control: the guest cookie value was not found in any recorded response header');
    check(control.some((f) => f.includes(' in cookie jar')), 'control: the guest cookie value was not found in the recorded cookie jar');
    check(stacks.some((s) => s.where.startsWith('response') && s.text.includes(product.toLowerCase())), 'control: the product name was not found in any recorded response body');
    const leaks = findLeaks(needles, stacks);
    facts.tokens = `${access.length} access + ${refresh.length} refresh tokens`;
    facts.scanned = `${responses.length} responses, ${requests.length} requests, ${snapshots.length} page snapshots (${stacks.length} haystacks)`;
    check(leaks.length === 0, `${leaks.length} token leak(s):\n          ${leaks.slice(0, 20).join('\n          ')}`);
  });

  await step('7. screenshot', async () => {
    const file = path.join(ARTIFACTS, 'final.png');
    await page.screenshot({ path: file, fullPage: true });
    check(fs.statSync(file).size > 1000, `the screenshot ${file} is empty`);
    facts.screenshots = `${path.relative(process.cwd(), ARTIFACTS) || '.'}/{guest,logged-in,signed-in-refreshed,final}.png`;
  });

  // Last, because by Digital River's design this flow shows tokens to the browser: the guest
  // token rides in the authorize URL and the shopper token in the callback's fragment.
  await step("8. sign in on the API's own login page (hosted login)", async () => {
    await page.goto(BASE + '/');
    await waitUntil(page, 'the page to settle', () => document.getElementById('state').textContent !== '…');
    await page.click('a[href^="/session/authorize"]');
    await page.waitForURL((url) => url.origin === MOCK && url.pathname === '/oauth20/authorize', { timeout: WAIT_MS });
    await page.fill('input[name=username]', SHOPPER);
    await page.fill('input[name=password]', 'p4ssw0rd!');
    await page.click('button[type=submit]');
    await page.waitForURL((url) => url.origin === BASE && url.pathname === '/', { timeout: WAIT_MS });
    await waitUntil(page, 'the shopper state', () => document.getElementById('state').textContent === 'logged-in shopper');
    check(new URL(page.url()).hash === '', `the token fragment is still in the address bar: ${page.url()}`);
    await settleRecords();
    const posted = responses.find((r) => r.method === 'POST' && new URL(r.url).pathname === '/session/callback');
    check(posted && posted.status === 303, `the callback page's POST answered ${posted ? posted.status : 'nothing'}`);
    const authorize = responses.find((r) => new URL(r.url).pathname === '/session/authorize');
    const location = authorize && authorize.headers.find((h) => h.name.toLowerCase() === 'location');
    const guest = location && new URL(location.value).searchParams.get('dr_limited_token');
    check(guest, 'the authorize redirect carried no guest token to check');
    const info = await fetch(`${MOCK}/oauth20/access-tokens?token=${encodeURIComponent(guest)}`, { signal: AbortSignal.timeout(10_000) });
    check(info.status === 401, `the carried guest token still works after the login (status ${info.status})`);
    const shot = await snapshot(browserContext, page, 'after hosted login');
    const tokens = await mockJson('GET', '/__mock/tokens');
    const all = [...tokens.access_tokens, ...tokens.refresh_tokens];
    const haystack = [await page.content(), shot.documentCookie, JSON.stringify(shot.localStorage), JSON.stringify(shot.sessionStorage),
      JSON.stringify(await browserContext.cookies())].join('\n');
    const held = all.filter((token) => haystack.includes(token));
    check(held.length === 0, `${held.length} token(s) still held by the page, storage or cookie jar after the hosted login`);
  });
}

let exitCode = 1;
try {
  await main();
  exitCode = 0;
} catch (error) {
  if (!results.some((r) => !r.ok)) console.error(`e2e: ${error.stack || error}`);
  await settleRecords().catch(() => {});
  const api = responses.filter((r) => new URL(r.url).origin === BASE && new URL(r.url).pathname !== '/');
  if (api.length > 0) {
    console.log('e2e: the last answers the page received:');
    for (const r of api.slice(-8)) console.log(`        ${r.method} ${new URL(r.url).pathname}${new URL(r.url).search} → ${r.status} ${(r.body ?? '').slice(0, 120)}`);
  }
  if (page) {
    try {
      await page.screenshot({ path: path.join(ARTIFACTS, 'failure.png'), fullPage: true, timeout: 5_000 });
      console.log(`e2e: failure screenshot: ${path.join(ARTIFACTS, 'failure.png')}`);
    } catch { /* the browser may be gone */ }
  }
} finally {
  if (browserContext) await browserContext.close().catch(() => {});
  if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
}

summary(9, exitCode);
clearTimeout(watchdog);
process.exit(exitCode);
