// What the browser tests share (demo.test.mjs, replicas.test.mjs): the headless Chromium
// launch, the recorder of everything the browser saw and sent (from outside the page, over
// CDP), the token-leak scanner, helpers that read the demo storefront page as a shopper sees
// it, and the step runner with its summary.

import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export const WAIT_MS = 15_000; // any single wait for the page
export const SHOPPER = 'jdoe@example.com'; // the demo page's pre-filled shopper

export function fail(message) {
  console.error(`e2e: ${message}`);
  process.exit(1);
}

export class AssertionError extends Error {}
export function check(condition, message) {
  if (!condition) throw new AssertionError(message);
}

/** Accepts only an http URL on the loopback interface: these tests talk to nothing else. */
export function loopbackOrigin(value, name) {
  if (!value) fail(`${name} is not set (pass it in the environment or as an argument)`);
  let url;
  try { url = new URL(value); } catch { fail(`${name} is not a URL: ${value}`); }
  if (url.protocol !== 'http:' || url.hostname !== '127.0.0.1') fail(`${name} must be http://127.0.0.1:PORT, got ${value}`);
  return url.origin;
}

/** A hard upper bound for the whole run, whatever hangs. */
export function startWatchdog(totalMs) {
  const watchdog = setTimeout(() => {
    console.error(`e2e: FAILED: the whole run exceeded ${totalMs} ms`);
    process.exit(1);
  }, totalMs);
  watchdog.unref();
  return watchdog;
}

/**
 * Headless Chromium in a fresh profile folder (the caller removes `userDataDir`). Nothing but
 * 127.0.0.1 resolves, so no stray connection can leave the machine. `mapToLoopback` lists host
 * patterns (e.g. `*.shop.example`) that resolve to 127.0.0.1, for tests that need two origins
 * on one machine; `ignoreHTTPSErrors` accepts their self-signed certificate.
 */
export async function launchBrowser(executablePath, { mapToLoopback = [], ignoreHTTPSErrors = false } = {}) {
  const mapped = mapToLoopback.map((pattern) => `MAP ${pattern} 127.0.0.1, `).join('');
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tokengate-e2e-profile-'));
  try {
    const context = await chromium.launchPersistentContext(userDataDir, {
      executablePath,
      headless: true,
      ignoreHTTPSErrors,
      timeout: 30_000,
      viewport: { width: 1100, height: 1000 },
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        `--host-resolver-rules=${mapped}MAP * ~NOTFOUND, EXCLUDE 127.0.0.1`,
      ],
    });
    context.setDefaultTimeout(WAIT_MS);
    return { context, userDataDir };
  } catch (error) {
    fs.rmSync(userDataDir, { recursive: true, force: true });
    throw error;
  }
}

// ---------------------------------------------------------------------------------------
// What the browser saw and sent, recorded from outside the page (CDP), for the leak check.

/** A recorder for the storefront at `base`; `attach` it to the browser context first. */
export function createRecorder(base) {
  const responses = []; // { url, status, method, headers: [{name,value}], body: string|null }
  const requests = []; //  { url, method, headers: [{name,value}], postData }
  const snapshots = []; // { label, html, documentCookie, localStorage, sessionStorage, cookies }
  const pageErrors = [];
  const consoleErrors = []; // the text of every console message of type "error" (a failed load too)
  const pending = new Set();

  function track(promise) {
    pending.add(promise);
    promise.finally(() => pending.delete(promise));
  }

  async function recordResponse(response) {
    const request = response.request();
    const entry = { url: response.url(), status: response.status(), method: request.method(), headers: [], body: null };
    responses.push(entry);
    entry.headers = await response.headersArray(); // raw lines, Set-Cookie included
    const redirect = entry.status >= 300 && entry.status < 400 && entry.status !== 304;
    if (redirect) {
      entry.body = ''; // Chromium keeps no body for redirects; their headers (Location) are checked
      return;
    }
    try {
      entry.body = (await response.body()).toString('utf8');
    } catch (error) {
      entry.bodyError = String(error.message || error).split('\n')[0];
    }
  }

  async function recordRequest(request) {
    const entry = { url: request.url(), method: request.method(), headers: [], postData: request.postData() || '' };
    requests.push(entry);
    entry.headers = await request.headersArray();
  }

  /** The recorded responses for `method path`, in order. */
  function answersTo(method, pathname) {
    return responses.filter((r) => r.method === method && new URL(r.url).pathname === pathname);
  }

  return {
    responses,
    requests,
    snapshots,
    pageErrors,
    consoleErrors,
    attach(context) {
      context.on('response', (response) => track(recordResponse(response)));
      context.on('request', (request) => track(recordRequest(request)));
    },
    watch(page) {
      page.on('pageerror', (error) => pageErrors.push(String(error)));
      page.on('console', (message) => { if (message.type() === 'error') consoleErrors.push(message.text()); });
    },
    async settle() {
      while (pending.size > 0) await Promise.allSettled([...pending]);
    },
    async snapshot(context, page, label) {
      const inPage = await page.evaluate(() => {
        const dump = (storage) => Object.fromEntries(Array.from({ length: storage.length }, (_, i) => [storage.key(i), storage.getItem(storage.key(i))]));
        return { documentCookie: document.cookie, localStorage: dump(window.localStorage), sessionStorage: dump(window.sessionStorage) };
      });
      const entry = { label, html: await page.content(), ...inPage, cookies: await context.cookies() };
      snapshots.push(entry);
      return entry;
    },
    async sessionCookies(context) {
      return (await context.cookies(base)).filter((cookie) => cookie.value !== '');
    },
    answersTo,
    /** "STATUS body" of the last recorded answer to `method path`, for failure messages. */
    lastAnswer(method, pathname) {
      const last = answersTo(method, pathname).at(-1);
      return last ? `${method} ${pathname} answered ${last.status} ${(last.body ?? '').slice(0, 160)}` : `no answer to ${method} ${pathname} recorded`;
    },
    /** Everything recorded, lower-cased, as { where, text } for the leak scanner. */
    haystacks() {
      const list = [];
      for (const r of responses) {
        list.push({ where: `response ${r.status} ${r.method} ${r.url}`, text: `${r.url}\n${r.headers.map((h) => `${h.name}: ${h.value}`).join('\n')}\n\n${r.body ?? ''}` });
      }
      for (const r of requests) {
        list.push({ where: `request ${r.method} ${r.url}`, text: `${r.url}\n${r.headers.map((h) => `${h.name}: ${h.value}`).join('\n')}\n\n${r.postData}` });
      }
      for (const s of snapshots) {
        list.push({ where: `page HTML (${s.label})`, text: s.html });
        list.push({ where: `document.cookie (${s.label})`, text: s.documentCookie });
        list.push({ where: `localStorage (${s.label})`, text: JSON.stringify(s.localStorage) });
        list.push({ where: `sessionStorage (${s.label})`, text: JSON.stringify(s.sessionStorage) });
        list.push({ where: `cookie jar (${s.label})`, text: s.cookies.map((c) => `${c.name}=${c.value}`).join('\n') });
      }
      return list.map((h) => ({ where: h.where, text: h.text.toLowerCase() }));
    },
  };
}

/** The values of header `name` (lower case) in a recorded request or response. */
export const header = (entry, name) => entry.headers.filter((h) => h.name.toLowerCase() === name).map((h) => h.value);

/**
 * The leak scanner: each needle ({ label, value }) is looked for, case-insensitively, in every
 * haystack, whole and by its last 48 characters (a truncated leak; the mock's tokens share
 * leading characters, never trailing ones).
 */
export function findLeaks(needles, stacks) {
  const found = [];
  for (const { label, value } of needles) {
    const whole = value.toLowerCase();
    const tail = whole.length > 48 ? whole.slice(-48) : whole;
    for (const stack of stacks) {
      if (stack.text.includes(whole) || stack.text.includes(tail)) {
        found.push(`${label} (…${value.slice(-8)}) in ${stack.where}`);
      }
    }
  }
  return found;
}

/** `mockJson(method, path, body?)` against commerce-mock's control API at `mock`. */
export function mockClient(mock) {
  return async function mockJson(method, pathname, body) {
    const response = await fetch(mock + pathname, {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(10_000),
    });
    check(response.ok, `${method} ${mock}${pathname} answered ${response.status}`);
    return response.json();
  };
}

// ---------------------------------------------------------------------------------------
// Helpers that read the demo storefront page (assets/demo.html) as a shopper sees it.

export const text = (page, selector) => page.locator(selector).innerText();

export async function pageState(page) {
  return page.evaluate(() => ({
    state: document.getElementById('state').textContent,
    cartCount: document.getElementById('cart-count').textContent,
    cartRows: [...document.querySelectorAll('#cart tr')].map((row) => row.innerText.replace(/\s+/g, ' ').trim()),
    log: document.getElementById('log').textContent.slice(0, 300),
  }));
}

/** Polls the page until `predicate(arg)` holds; on time-out, says what the page showed. */
export async function waitUntil(page, description, predicate, arg) {
  try {
    await page.waitForFunction(predicate, arg, { timeout: WAIT_MS, polling: 50 });
  } catch (error) {
    let shown = '(page unreadable)';
    try { shown = JSON.stringify(await pageState(page)); } catch { /* keep the placeholder */ }
    throw new AssertionError(`timed out after ${WAIT_MS} ms waiting for ${description}; the page shows ${shown}`);
  }
}

/**
 * Blank the "Last answer" panel before an action whose result a test then waits for with
 * `logStartsWith`: the panel keeps the page's previous call (often the same `GET /session`),
 * which would otherwise satisfy the wait before the action's own calls have run.
 */
export async function clearLog(page) {
  await page.evaluate(() => { document.getElementById('log').textContent = ''; });
}

/** True once the "Last answer" panel shows `prefix` (the page's last call and its status). */
export function logStartsWith(prefix) {
  return document.getElementById('log').textContent.startsWith(prefix);
}

/** The JSON body in the "Last answer" panel. */
export async function lastAnswerJson(page) {
  const log = await text(page, '#log');
  return JSON.parse(log.slice(log.indexOf('\n') + 1));
}

// ---------------------------------------------------------------------------------------
// Steps and the summary.

/** `step(name, body)` runs and reports one step; `summary(total, exitCode)` prints the end. */
export function createSteps() {
  const t0 = Date.now();
  const results = []; // { name, ms, ok, error }
  const facts = {}; // what the summary prints

  async function step(name, body) {
    const start = Date.now();
    try {
      await body();
      results.push({ name, ms: Date.now() - start, ok: true });
      console.log(`  ok    ${name} (${Date.now() - start} ms)`);
    } catch (error) {
      results.push({ name, ms: Date.now() - start, ok: false, error });
      console.log(`  FAIL  ${name} (${Date.now() - start} ms)\n        ${error instanceof AssertionError ? error.message : error.stack || error}`);
      throw error;
    }
  }

  function summary(total, exitCode) {
    const passed = results.filter((r) => r.ok).length;
    const failed = Math.max(results.length - passed, exitCode === 0 ? 0 : 1);
    const skipped = Math.max(total - passed - failed, 0);
    console.log('\ne2e summary');
    for (const [key, value] of Object.entries(facts)) console.log(`  ${key.padEnd(11)} ${Array.isArray(value) ? value.join(', ') : value}`);
    console.log(`  total       ${Date.now() - t0} ms`);
    console.log(`\n${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
  }

  return { step, results, facts, summary };
}
