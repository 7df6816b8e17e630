// A real OpenID provider for tokengate's tests: panva's certified `oidc-provider`, configured
// for a test run (see README.md). It listens on 127.0.0.1 (port 0 by default), uses its URL as
// the issuer, and prints one line `listening on http://127.0.0.1:PORT` once ready.
//
// Environment (all optional):
//   OIDC_PORT                   port to bind on 127.0.0.1 (default 0: any free port)
//   OIDC_INITIAL_ACCESS_TOKEN   the initial access token for dynamic registration
//                               (default "test-initial-access-token")
//   OIDC_TTL_ACCESS_TOKEN, OIDC_TTL_ID_TOKEN, OIDC_TTL_REFRESH_TOKEN, OIDC_TTL_SESSION,
//   OIDC_TTL_GRANT              lifetimes in seconds (defaults 10, 60, 3600, 3600, 3600)
//
// Besides the provider, `/__test/` is a test-only control surface (never in a real deployment):
//   GET /__test/stats   counts of token calls by grant_type and status, revocation calls by
//                       token_type_hint, introspections, back-channel logout deliveries
//   GET /__test/tokens  every token the token endpoint handed out, with its live state
//   GET /__test/grants  every grant, and whether it is still alive
import { createPrivateKey, generateKeyPairSync, randomBytes } from 'node:crypto';
import http from 'node:http';

import Provider from 'oidc-provider';

const seconds = (name, fallback) => {
  const value = Number(process.env[name] ?? fallback);
  if (!Number.isInteger(value) || value <= 0) {
    throw new Error(`${name} must be a positive number of seconds, not ${process.env[name]}`);
  }
  return value;
};

const ttl = {
  AccessToken: seconds('OIDC_TTL_ACCESS_TOKEN', 10),
  IdToken: seconds('OIDC_TTL_ID_TOKEN', 60),
  RefreshToken: seconds('OIDC_TTL_REFRESH_TOKEN', 3600),
  Session: seconds('OIDC_TTL_SESSION', 3600),
  Grant: seconds('OIDC_TTL_GRANT', 3600),
  Interaction: 600,
  AuthorizationCode: 60,
};
const initialAccessToken = process.env.OIDC_INITIAL_ACCESS_TOKEN || 'test-initial-access-token';

// Signing keys made fresh at every start: RS256 (the default for ID and logout tokens) and ES256.
// The key is generated as PEM and read back into a key object of its own before the JWK export:
// Node.js 20 can deadlock at start when a garbage collection during `export({ format: 'jwk' })`
// of a freshly generated key finalizes its key-generation job, whose destructor takes the
// mutex the export holds (seen as a provider that never printed its ready line; gdb showed
// ~KeyGenJob waiting in uv_mutex_lock under ExportJWKEcKey).
function jwk(type, options, alg) {
  const { privateKey } = generateKeyPairSync(type, {
    ...options,
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
    publicKeyEncoding: { type: 'spki', format: 'pem' },
  });
  const key = createPrivateKey(privateKey);
  return { ...key.export({ format: 'jwk' }), alg, use: 'sig', kid: `${alg.toLowerCase()}-${randomBytes(4).toString('hex')}` };
}
const jwks = {
  keys: [jwk('rsa', { modulusLength: 2048 }, 'RS256'), jwk('ec', { namedCurve: 'P-256' }, 'ES256')],
};

// Any login name is an account; its name and email are derived from it.
async function findAccount(_ctx, id) {
  return {
    accountId: id,
    async claims() {
      const local = id.split('@')[0];
      return { sub: id, name: `Test ${local}`, email: id.includes('@') ? id : `${id}@example.test`, email_verified: true };
    },
  };
}

// What the control surface reports. Token values are recorded so tests can check that none
// reached the browser; this is a test provider on 127.0.0.1.
const stats = { token: {}, revocation: {}, introspection: 0, end_session: 0, backchannel_logout: [] };
const issued = [];
const grants = new Map();

const bump = (object, ...keys) => {
  const last = keys.pop();
  const inner = keys.reduce((o, k) => (o[k] ??= {}), object);
  inner[last] = (inner[last] ?? 0) + 1;
};

// oidc-provider refuses outgoing requests to special-use addresses (SSRF protection), which
// includes 127.0.0.1 where the tests' clients listen. This test provider sends without that
// guard, and records every back-channel logout delivery and its HTTP result.
async function fetchWithoutSsrfGuard(url, options) {
  delete options.dispatcher;
  const isLogout = options.body instanceof URLSearchParams && options.body.has('logout_token');
  try {
    const response = await fetch(url, options);
    if (isLogout) stats.backchannel_logout.push({ url: String(url), status: response.status });
    return response;
  } catch (err) {
    if (isLogout) stats.backchannel_logout.push({ url: String(url), error: String(err?.cause ?? err) });
    throw err;
  }
}

const configuration = {
  findAccount,
  jwks,
  ttl,
  cookies: { keys: [randomBytes(32).toString('hex')] },
  claims: { openid: ['sub'], profile: ['name'], email: ['email', 'email_verified'] },
  scopes: ['openid', 'offline_access', 'profile', 'email'],
  // name and email in the ID token too (tokengate shows them in GET /session), not only at userinfo.
  conformIdTokenClaims: false,
  pkce: { required: () => true }, // S256 is the only method oidc-provider 9 accepts
  rotateRefreshToken: true,
  // A refresh token for every client allowed the refresh_token grant, with or without
  // offline_access (which oidc-provider drops when `prompt` is sent without `consent`).
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  fetch: fetchWithoutSsrfGuard,
  features: {
    devInteractions: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    registration: { enabled: true, initialAccessToken },
    registrationManagement: { enabled: true, rotateRegistrationAccessToken: false },
  },
};

// The control surface and the bookkeeping, in front of the provider's own routes.
function testSurface(provider) {
  return async function surface(ctx, next) {
    if (ctx.path.startsWith('/__test/')) {
      await answerControl(provider, ctx);
      return;
    }
    await next();
    record(ctx);
  };
}

function record(ctx) {
  const { route, params, entities } = ctx.oidc ?? {};
  if (route === 'token') {
    bump(stats.token, params?.grant_type ?? 'none', String(ctx.status));
    if (ctx.status === 200 && ctx.body && typeof ctx.body === 'object') {
      const { access_token: accessToken, refresh_token: refreshToken, id_token: idToken } = ctx.body;
      issued.push({
        grant_type: params.grant_type,
        grant_id: entities?.Grant?.jti ?? null,
        client_id: entities?.Client?.clientId ?? null,
        access_token: accessToken ?? null,
        refresh_token: refreshToken ?? null,
        id_token: idToken ?? null,
      });
    }
  } else if (route === 'revocation') {
    bump(stats.revocation, params?.token_type_hint ?? 'none', String(ctx.status));
  } else if (route === 'introspection') {
    stats.introspection += 1;
  } else if (route === 'end_session_confirm') {
    stats.end_session += 1;
  }
}

async function answerControl(provider, ctx) {
  ctx.set('cache-control', 'no-store');
  if (ctx.method !== 'GET') {
    ctx.status = 405;
    ctx.body = { error: 'method_not_allowed' };
  } else if (ctx.path === '/__test/stats') {
    ctx.body = stats;
  } else if (ctx.path === '/__test/tokens') {
    ctx.body = await Promise.all(issued.map(async (entry) => ({
      ...entry,
      access_token_active: await isActive(provider.AccessToken, entry.access_token),
      refresh_token_state: await refreshState(provider, entry.refresh_token),
    })));
  } else if (ctx.path === '/__test/grants') {
    ctx.body = await Promise.all([...grants.values()].map(async (grant) => ({
      ...grant,
      active: Boolean(await provider.Grant.find(grant.grant_id)),
    })));
  } else {
    ctx.status = 404;
    ctx.body = { error: 'not_found' };
  }
}

async function isActive(model, value) {
  if (!value) return false;
  const token = await model.find(value);
  return Boolean(token && !token.isExpired);
}

// "active", "consumed" (rotated away, still remembered for reuse detection) or "gone".
async function refreshState(provider, value) {
  if (!value) return 'gone';
  const token = await provider.RefreshToken.find(value, { ignoreExpiration: true });
  if (!token) return 'gone';
  if (token.consumed) return 'consumed';
  return token.isExpired ? 'expired' : 'active';
}

function logErrors(provider) {
  const events = [
    'authorization.error', 'grant.error', 'revocation.error', 'introspection.error', 'end_session.error',
    'end_session_confirm.error', 'registration_create.error', 'registration_read.error',
    'registration_update.error', 'userinfo.error', 'jwks.error', 'discovery.error', 'backchannel.error',
  ];
  for (const event of events) {
    provider.on(event, (...args) => {
      const err = args.find((a) => a instanceof Error);
      const detail = err ? `${err.name}: ${err.message}${err.error_description ? ` (${err.error_description})` : ''}` : '';
      console.error(`oidc-provider ${event}: ${detail}`);
    });
  }
  provider.on('server_error', (_ctx, err) => console.error('oidc-provider server_error:', err));
  provider.on('grant.saved', (grant) => {
    grants.set(grant.jti, { grant_id: grant.jti, client_id: grant.clientId, account_id: grant.accountId });
  });
}

const server = http.createServer();
server.on('error', (err) => {
  console.error('oidc test provider:', err);
  process.exit(1);
});
server.listen(Number(process.env.OIDC_PORT ?? 0), '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, configuration);
  logErrors(provider);
  provider.use(testSurface(provider));
  server.on('request', provider.callback());
  console.log(`listening on ${issuer}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
