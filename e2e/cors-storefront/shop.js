// A storefront served from its own origin (https://www.shop.example:PORT) calling tokengate
// on another (https://api.shop.example:PORT, given as ?api=…). Every call is a credentialed
// fetch: the browser sends tokengate's HttpOnly cookie (same site, so SameSite=Lax allows
// it), and tokengate's CORS answers let this page read every answer, its errors too. Unsafe
// calls carry X-CSRF, so the browser asks tokengate first with a preflight.
'use strict';

const API = new URL(location.href).searchParams.get('api') || '';
document.getElementById('api').textContent = API;

/** One call; resolves to what the page could read: status, JSON body, request id, or the failure. */
async function call(method, path, body) {
  const headers = { accept: 'application/json' };
  if (method !== 'GET' && method !== 'HEAD') headers['x-csrf'] = '1';
  if (body !== undefined) headers['content-type'] = 'application/json';
  let result;
  try {
    const response = await fetch(API + path, {
      method,
      headers,
      credentials: 'include',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch { json = null; }
    result = { method, path, status: response.status, json, requestId: response.headers.get('x-request-id') };
  } catch (error) {
    // An opaque CORS failure lands here: no status, no body, only "Failed to fetch".
    result = { method, path, status: 0, failure: String(error) };
  }
  const code = result.json && result.json.error ? ` ${result.json.error.code}` : '';
  document.getElementById('log').textContent += `${method} ${path} → ${result.status || result.failure}${code}\n`;
  return result;
}

window.shop = {
  session: () => call('GET', '/session'),
  guest: () => call('POST', '/session/guest'),
  products: () => call('GET', '/api/shoppers/me/products'),
  addToCart: (productId, quantity) =>
    call('POST', `/api/shoppers/me/carts/active?productId=${encodeURIComponent(productId)}&quantity=${encodeURIComponent(quantity)}`),
  cart: () => call('GET', '/api/shoppers/me/carts/active'),
  me: () => call('GET', '/api/shoppers/me'),
  login: (username, password) => call('POST', '/session/login', { username, password }),
  logout: () => call('POST', '/session/logout'),
};
