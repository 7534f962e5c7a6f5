// A real OpenID Provider for Gatehouse's end-to-end tests: panva/oidc-provider (OpenID
// Certified) on loopback, with static clients, in-memory state and test-only admin endpoints.
//
//   node provider.mjs [PORT]        PORT (or env PORT) 0 picks a free port
//
// Contract with the Rust fixture (tests/src/oidc.rs):
//   - stdout carries exactly one line, `LISTENING <port>`, printed once the provider serves;
//     everything else (including oidc-provider's own notices) goes to stderr.
//   - The issuer is `http://127.0.0.1:<port>`; discovery is at /.well-known/openid-configuration.
//   - SIGTERM/SIGINT stop it cleanly.
//
// Environment:
//   PORT              port to bind (argv[2] wins); 0 = any free port
//   HOST              address to bind (default 127.0.0.1; 0.0.0.0 in its container)
//   OIDC_ISSUER       the issuer URL (default http://127.0.0.1:<port>); in docker-compose.yml
//                     it is http://oidc:9000, the name the other containers reach it by
//   ACCESS_TOKEN_TTL  access token lifetime in seconds (default 300)
//   OIDC_CLIENTS      JSON array of client metadata replacing DEFAULT_CLIENTS below
//   OIDC_KEYS_FILE    JSON file holding the private JWKS: read at start if it exists, written
//                     at start and on every rotation (so a restart keeps the same keys)
//   OIDC_EXIT_WITH_PARENT=1  exit when the parent process goes away
//
// Tokens (client_credentials grant):
//   - with `resource=<absolute URI>`: a JWT access token (RS256, `typ: at+jwt`) with
//     iss, sub (= client_id), aud (= the resource), exp, iat, jti, client_id, scope;
//   - without `resource`: an opaque token, answered by introspection (POST /token/introspection).
//
// Admin endpoints (test-only, no authentication; loopback only):
//   POST /__admin/rotate[?drop_old=1]  new signing key first in the JWKS; answers {"kid": "..."}
//   GET  /__admin/health               200 {"status":"ok"}

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';

// --- Output ------------------------------------------------------------------
// oidc-provider prints notices with console.info (stdout). Send every console method to stderr
// before it is loaded, so stdout holds only the LISTENING line.
console.log = console.error;
console.info = console.error;
console.debug = console.error;
const log = (...args) => console.error('[oidc-provider fixture]', ...args);

const { default: Provider } = await import('oidc-provider');

// --- Settings ----------------------------------------------------------------
function intSetting(name, value, fallback) {
  if (value === undefined || value === '') return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) {
    log(`${name} must be a non-negative integer, got ${JSON.stringify(value)}`);
    process.exit(2);
  }
  return n;
}

const PORT = intSetting('port', process.argv[2] ?? process.env.PORT, 0);
const ACCESS_TOKEN_TTL = intSetting('ACCESS_TOKEN_TTL', process.env.ACCESS_TOKEN_TTL, 300) || 300;
const KEYS_FILE = process.env.OIDC_KEYS_FILE || undefined;
const HOST = process.env.HOST || '127.0.0.1';
const ISSUER = process.env.OIDC_ISSUER || undefined;

// --- Clients -----------------------------------------------------------------
// Static clients (RFC 7591 metadata). `introspection_allowed: true` lets a client introspect
// any client's tokens; other clients may introspect only their own.
const DEFAULT_CLIENTS = [
  {
    client_id: 'gatehouse-test',
    client_secret: 'gatehouse-test-secret',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
    scope: 'read write admin',
  },
  {
    client_id: 'gatehouse-introspector',
    client_secret: 'introspector-secret',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
    introspection_allowed: true,
  },
];

function loadClients() {
  if (!process.env.OIDC_CLIENTS) return DEFAULT_CLIENTS;
  try {
    const clients = JSON.parse(process.env.OIDC_CLIENTS);
    if (!Array.isArray(clients)) throw new Error('expected a JSON array of client metadata');
    return clients;
  } catch (err) {
    log(`OIDC_CLIENTS: ${err.message}`);
    process.exit(2);
  }
}

const CLIENTS = loadClients();

// Scopes the provider knows. Every scope a client may request is listed, because
// oidc-provider drops unknown scopes from requests without a resource indicator.
const SCOPES = [...new Set([
  'openid',
  'offline_access',
  ...CLIENTS.flatMap((c) => (c.scope ? c.scope.split(' ') : [])),
])];
// What a client may get in an access token for a resource server (API).
const API_SCOPES = SCOPES.filter((s) => s !== 'openid' && s !== 'offline_access').join(' ');

// --- Keys --------------------------------------------------------------------
// RS256 signing keys as private JWKs, newest (the signing key) first.
function jwkThumbprint(jwk) {
  // RFC 7638: the required members in lexicographic order.
  const canonical = JSON.stringify({ e: jwk.e, kty: jwk.kty, n: jwk.n });
  return crypto.createHash('sha256').update(canonical).digest('base64url');
}

function generateKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: jwkThumbprint(jwk), alg: 'RS256', use: 'sig' };
}

function loadKeys() {
  if (KEYS_FILE && fs.existsSync(KEYS_FILE)) {
    const { keys } = JSON.parse(fs.readFileSync(KEYS_FILE, 'utf8'));
    if (Array.isArray(keys) && keys.length > 0) {
      log(`loaded ${keys.length} key(s) from ${KEYS_FILE}`);
      return keys;
    }
  }
  return [generateKey()];
}

function saveKeys(keys) {
  if (!KEYS_FILE) return;
  const tmp = `${KEYS_FILE}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify({ keys }), { mode: 0o600 });
  fs.renameSync(tmp, KEYS_FILE);
}

let keys = loadKeys();
saveKeys(keys);

// Signs session cookies (a later browser login flow); constant for the process so that a
// rebuilt Provider still accepts cookies it set before.
const COOKIE_KEYS = [crypto.randomBytes(32).toString('base64url')];

// --- Features ----------------------------------------------------------------
// How oidc-provider picks the token format for the client_credentials grant:
//   - `resource` present: getResourceServerInfo() below describes that resource server, and its
//     accessTokenFormat 'jwt' makes the token a JWT with `aud` = the resource and `scope` = the
//     requested scopes that the resource server offers;
//   - `resource` absent: defaultResource() gives none, so no resource server is involved and the
//     token is opaque (the format's default), stored in the adapter for introspection; its
//     scopes are the requested ones listed in `scopes` (unknown ones are dropped).
// Any absolute URI is accepted as a resource indicator.
function resourceServerInfo(signingKid) {
  return async (ctx, resourceIndicator, client) => ({
    // What the client may get for any API: its own allow-list, else every API scope.
    scope: client.scope || API_SCOPES,
    audience: resourceIndicator,
    accessTokenTTL: ACCESS_TOKEN_TTL,
    accessTokenFormat: 'jwt',
    jwt: { sign: { alg: 'RS256', kid: signingKid } },
  });
}

async function introspectionAllowedPolicy(ctx, client, token) {
  return client.clientId === token.clientId || client.introspection_allowed === true;
}

// The whole configuration for one Provider instance over `jwks` (signing key first).
function configuration(jwks) {
  return {
    clients: CLIENTS,
    scopes: SCOPES,
    jwks: { keys: jwks },
    cookies: { keys: COOKIE_KEYS },
    extraClientMetadata: { properties: ['introspection_allowed'] },
    features: {
      // No login UI yet: the browser login flow will replace this with its own interactions.
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true, allowedPolicy: introspectionAllowedPolicy },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => undefined,
        // Code and refresh token grants (the later login flow): a resource granted at the
        // authorization endpoint applies at the token endpoint without being repeated.
        useGrantedResource: async () => true,
        getResourceServerInfo: resourceServerInfo(jwks[0].kid),
      },
    },
    // Opaque client_credentials tokens carry no account; give introspection the same `sub`
    // as the JWT format (the client_id).
    extraTokenClaims: async (ctx, token) => (
      token.kind === 'ClientCredentials' ? { sub: token.clientId } : undefined
    ),
    ttl: {
      AccessToken: (ctx, token) => token.resourceServer?.accessTokenTTL || ACCESS_TOKEN_TTL,
      ClientCredentials: (ctx, token) => token.resourceServer?.accessTokenTTL || ACCESS_TOKEN_TTL,
      AuthorizationCode: 60,
      IdToken: ACCESS_TOKEN_TTL,
      Grant: 3600,
      Interaction: 600,
      Session: 3600,
      RefreshToken: 3600,
    },
  };
}

// --- Provider ----------------------------------------------------------------
// oidc-provider takes its keys at construction, so a rotation builds a new Provider behind the
// same HTTP server. State survives: oidc-provider 8's default in-memory adapter keeps one store
// per process (module level), shared by every Provider instance.
function buildProvider(issuer) {
  const provider = new Provider(issuer, configuration(keys));
  provider.on('server_error', (ctx, err) => log('server_error', ctx.method, ctx.path, err));
  provider.on('grant.error', (ctx, err) => log('grant.error', err.message, err.error_description ?? ''));
  provider.on('introspection.error', (ctx, err) => log('introspection.error', err.message));
  return { provider, callback: provider.callback() };
}

let current;

function send(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(body));
}

// --- Admin endpoints (test-only) ----------------------------------------------
function admin(req, res, url) {
  if (url.pathname === '/__admin/health' && req.method === 'GET') {
    send(res, 200, { status: 'ok' });
  } else if (url.pathname === '/__admin/rotate' && req.method === 'POST') {
    const key = generateKey();
    const dropOld = ['1', 'true'].includes(url.searchParams.get('drop_old') ?? '');
    keys = dropOld ? [key] : [key, ...keys];
    saveKeys(keys);
    current = buildProvider(current.provider.issuer);
    log(`rotated keys: signing with ${key.kid}, published ${keys.map((k) => k.kid).join(', ')}`);
    send(res, 200, { kid: key.kid });
  } else {
    send(res, 404, { error: 'not_found' });
  }
}

// --- HTTP server ---------------------------------------------------------------
const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  if (url.pathname.startsWith('/__admin/')) {
    try {
      admin(req, res, url);
    } catch (err) {
      log('admin', req.method, url.pathname, err);
      send(res, 500, { error: 'server_error', error_description: err.message });
    }
  } else if (current) {
    current.callback(req, res);
  } else {
    send(res, 503, { error: 'starting' });
  }
});

server.on('error', (err) => {
  log(`listen on ${HOST}:${PORT}: ${err.message}`);
  process.exit(1);
});

server.listen(PORT, HOST, () => {
  const { port } = server.address();
  const issuer = ISSUER ?? `http://127.0.0.1:${port}`;
  current = buildProvider(issuer);
  log(`issuer ${issuer}, signing key ${keys[0].kid}, access token TTL ${ACCESS_TOKEN_TTL}s`);
  process.stdout.write(`LISTENING ${port}\n`);
});

// --- Shutdown ------------------------------------------------------------------
function shutdown(signal) {
  log(`${signal}: stopping`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}

process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

// With OIDC_EXIT_WITH_PARENT=1 (set by the Rust fixture), a test process that dies without
// dropping its fixture does not leave the provider behind.
// (process.ppid is read once at start, so probe the parent with signal 0 instead.)
if (process.env.OIDC_EXIT_WITH_PARENT === '1') {
  const parent = process.ppid;
  setInterval(() => {
    try {
      process.kill(parent, 0);
    } catch (err) {
      if (err.code === 'ESRCH') shutdown('parent exited');
    }
  }, 1000).unref();
}
