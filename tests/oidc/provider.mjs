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
//   ID_TOKEN_TTL      ID token lifetime in seconds (default: ACCESS_TOKEN_TTL)
//   REFRESH_TOKEN_TTL refresh token lifetime in seconds (default 3600)
//   SESSION_TTL       the provider's own login session (its `_session` cookie), seconds (default 3600)
//   OIDC_ROTATE_REFRESH_TOKEN  1 (default): every refresh returns a new refresh token and
//                     consumes the old one; 0: refresh tokens are reused until they expire
//   OIDC_CLIENTS      JSON array of client metadata replacing DEFAULT_CLIENTS below
//   OIDC_REDIRECT_URIS, OIDC_POST_LOGOUT_REDIRECT_URIS  comma-separated; the `redirect_uris` and
//                     `post_logout_redirect_uris` of every code-flow client (those allowed
//                     authorization_code) that OIDC_CLIENTS does not give its own (default
//                     http://localhost:10000/app/callback and http://localhost:10000/, the
//                     compose stack's gateway)
//   OIDC_BACKCHANNEL_LOGOUT_URI  likewise, the `backchannel_logout_uri` (default none), with
//                     `backchannel_logout_session_required: true`
//   OIDC_KEYS_FILE    JSON file holding the private JWKS: read at start if it exists, written
//                     at start and on every rotation (so a restart keeps the same keys)
//   OIDC_EXIT_WITH_PARENT=1  exit when the parent process goes away
//
// Tokens (client_credentials grant):
//   - with `resource=<absolute URI>`: a JWT access token (RS256, `typ: at+jwt`) with
//     iss, sub (= client_id), aud (= the resource), exp, iat, jti, client_id, scope;
//   - without `resource`: an opaque token, answered by introspection (POST /token/introspection).
//
// Browser login (authorization code + PKCE), for the code-flow clients `gatehouse-web`
// (confidential, client_secret_basic) and `gatehouse-public` (public, auth method none):
//   - the dev login form at /interaction/<uid> (input[name=login], input[name=password]; any
//     login and password are accepted; the login becomes `sub`), then a consent page (one
//     submit button); the account's claims are sub, email (<login>@gatehouse.test),
//     email_verified and name (the login), and they go into the ID token (scopes email,
//     profile), with `sid`;
//   - PKCE (S256) is required; the token endpoint returns a refresh token without
//     `offline_access`, bound to the provider's login session: it stops working when that
//     session ends (logout). Reusing a consumed (rotated) refresh token fails with invalid_grant
//     and revokes the whole grant, its newest refresh token included;
//   - RP-initiated logout at /session/end (a confirm page: button[name=logout]); on confirm the
//     provider POSTs a logout token to the `backchannel_logout_uri` of each client of the session.
//   Cookies (`_interaction`, `_interaction_resume`, `_session`) are HttpOnly, SameSite=Lax and,
//   over http, not Secure, so they work in a browser on http://127.0.0.1.
//
// Admin endpoints (test-only, no authentication; loopback only):
//   POST /__admin/rotate[?drop_old=1]  new signing key first in the JWKS; answers {"kid": "..."}
//   GET  /__admin/health               200 {"status":"ok"}
//   POST /__admin/code-clients         JSON {redirect_uris?, post_logout_redirect_uris?,
//                                      backchannel_logout_uri? (null: none)}: sets those
//                                      fields of every code-flow client, OIDC_CLIENTS' included
//                                      (sessions and tokens are kept);
//                                      answers {"clients": [...]}, their new metadata
//   GET  /__admin/stats                token endpoint calls by grant_type, granted or not:
//                                      {"authorization_code": 1, "refresh_token": 2}
//   GET  /__admin/events               {"token_errors": [{grant_type, error, error_description}],
//                                      "backchannel_logout": [{client_id, sub, sid, ok, error?}],
//                                      "end_session": N}
//   POST /__admin/reset-stats          zeroes the stats and events
//   POST /__admin/logout?sub=S | ?sid=I  ends the provider's login sessions of that user (or
//                                      the one holding that sid) as an admin would: sends the
//                                      back-channel logout to each of their clients that has a
//                                      URI, revokes their grants (tokens) and destroys the
//                                      sessions; answers {"sessions": N, "backchannel_logout": [...]}
//   POST /__admin/token-delay          JSON {ms}: every token endpoint call waits this long
//                                      before it is handled (0: none), so that concurrent
//                                      callers overlap one slow call; answers {}
//   POST /__admin/sign                 JSON {header?, claims}: a JWT over `claims`, signed RS256
//                                      with the current signing key (`alg` and `kid` set unless
//                                      `header` gives them); answers {"token": "..."}. For tokens
//                                      the provider would not issue (a logout token with a
//                                      nonce, a replayed jti)
//   POST /__admin/forge-id-token       JSON {claims}: the next ID token the token endpoint issues
//                                      (either grant) gets these claims merged in and is signed
//                                      again with the signing key: a valid signature over wrong
//                                      content (another nonce, aud, iss). Once; answers {}

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
const ID_TOKEN_TTL = intSetting('ID_TOKEN_TTL', process.env.ID_TOKEN_TTL, 0) || ACCESS_TOKEN_TTL;
const REFRESH_TOKEN_TTL = intSetting('REFRESH_TOKEN_TTL', process.env.REFRESH_TOKEN_TTL, 3600) || 3600;
const SESSION_TTL = intSetting('SESSION_TTL', process.env.SESSION_TTL, 3600) || 3600;
const ROTATE_REFRESH_TOKEN = process.env.OIDC_ROTATE_REFRESH_TOKEN !== '0';
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
  // The browser login flow (authorization code + PKCE): a confidential web client, as a
  // gateway is, and a public one. Their URIs come from the environment (see codeClientUris).
  {
    client_id: 'gatehouse-web',
    client_secret: 'gatehouse-web-secret',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  },
  {
    client_id: 'gatehouse-public',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'none',
  },
];

const isCodeClient = (c) => (c.grant_types ?? ['authorization_code']).includes('authorization_code');

function listSetting(value, fallback) {
  if (value === undefined) return fallback;
  return value.split(',').map((v) => v.trim()).filter((v) => v !== '');
}

// The URIs of every code-flow client: the gateway's port is only known at run time.
let codeClientUris = {
  redirect_uris: listSetting(process.env.OIDC_REDIRECT_URIS, ['http://localhost:10000/app/callback']),
  post_logout_redirect_uris: listSetting(
    process.env.OIDC_POST_LOGOUT_REDIRECT_URIS,
    ['http://localhost:10000/'],
  ),
  backchannel_logout_uri: process.env.OIDC_BACKCHANNEL_LOGOUT_URI || null,
};

// `clients` with `uris` in every code-flow client: in all of them when `override`, else only
// where a client (from OIDC_CLIENTS) does not give its own.
function withCodeClientUris(clients, uris, { override }) {
  return clients.map((client) => {
    if (!isCodeClient(client)) return client;
    const out = { ...client };
    const fill = (field, value) => {
      if (override || out[field] === undefined) out[field] = value;
    };
    fill('redirect_uris', uris.redirect_uris);
    fill('post_logout_redirect_uris', uris.post_logout_redirect_uris);
    if (override || out.backchannel_logout_uri === undefined) {
      delete out.backchannel_logout_uri;
      delete out.backchannel_logout_session_required;
      if (uris.backchannel_logout_uri) {
        out.backchannel_logout_uri = uris.backchannel_logout_uri;
        out.backchannel_logout_session_required = true;
      }
    }
    return out;
  });
}

function loadClients() {
  if (!process.env.OIDC_CLIENTS) return withCodeClientUris(DEFAULT_CLIENTS, codeClientUris, { override: true });
  try {
    const clients = JSON.parse(process.env.OIDC_CLIENTS);
    if (!Array.isArray(clients)) throw new Error('expected a JSON array of client metadata');
    return withCodeClientUris(clients, codeClientUris, { override: false });
  } catch (err) {
    log(`OIDC_CLIENTS: ${err.message}`);
    process.exit(2);
  }
}

let CLIENTS = loadClients();

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

// A compact JWS (RS256) over `claims` with the current signing key.
function signJwt(header, claims) {
  const key = keys[0];
  const part = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const input = `${part({ alg: 'RS256', kid: key.kid, ...header })}.${part(claims)}`;
  const privateKey = crypto.createPrivateKey({ key, format: 'jwk' });
  return `${input}.${crypto.sign('sha256', Buffer.from(input), privateKey).toString('base64url')}`;
}

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

// The account behind any login of the dev form: `sub` is the login name.
async function findAccount(ctx, sub) {
  return {
    accountId: sub,
    async claims() {
      return { sub, email: `${sub}@gatehouse.test`, email_verified: true, name: sub };
    },
  };
}

// Refresh tokens for every client allowed the grant, not only with `offline_access`: a gateway
// keeps a session going without asking for offline access. Such a token ends with the
// provider's login session.
async function issueRefreshToken(ctx, client) {
  return client.grantTypeAllowed('refresh_token');
}

// The whole configuration for one Provider instance over `jwks` (signing key first).
function configuration(jwks) {
  return {
    clients: CLIENTS,
    scopes: SCOPES,
    jwks: { keys: jwks },
    // Over http the provider never marks its cookies Secure. SameSite=Lax (the default for
    // `long` is None, which Chromium refuses without Secure and which made oidc-provider add
    // `.legacy` twins): the browser reaches the provider by top-level GET navigations from
    // the relying party, and posts its forms from the provider's own pages.
    cookies: {
      keys: COOKIE_KEYS,
      long: { signed: true, httpOnly: true, sameSite: 'lax' },
      short: { signed: true, httpOnly: true, sameSite: 'lax' },
    },
    extraClientMetadata: { properties: ['introspection_allowed'] },
    findAccount,
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name'],
    },
    // The scopes' claims (email, name) go into the ID token too, not only to userinfo: the
    // relying party reads the user from the ID token.
    conformIdTokenClaims: false,
    pkce: { methods: ['S256'], required: () => true },
    issueRefreshToken,
    rotateRefreshToken: () => ROTATE_REFRESH_TOKEN,
    features: {
      // The built-in login and consent pages: any login and password sign in.
      devInteractions: { enabled: true },
      clientCredentials: { enabled: true },
      introspection: { enabled: true, allowedPolicy: introspectionAllowedPolicy },
      revocation: { enabled: true },
      rpInitiatedLogout: { enabled: true },
      backchannelLogout: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => undefined,
        // Code and refresh token grants: a resource granted at the authorization endpoint
        // applies at the token endpoint without being repeated.
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
      IdToken: ID_TOKEN_TTL,
      Grant: Math.max(3600, REFRESH_TOKEN_TTL, SESSION_TTL),
      Interaction: 600,
      Session: SESSION_TTL,
      RefreshToken: REFRESH_TOKEN_TTL,
    },
  };
}

// --- Stats and events (test-only) ----------------------------------------------
// Module level, so they survive the Provider rebuilds of rotations and client updates.
let stats = {};
let events = { token_errors: [], backchannel_logout: [], end_session: 0 };
// Login sessions by uid -> accountId, for /__admin/logout (the memory adapter cannot list them).
const loginSessions = new Map();

function resetStats() {
  stats = {};
  events = { token_errors: [], backchannel_logout: [], end_session: 0 };
}

// How long every token endpoint call waits first (POST /__admin/token-delay), in ms.
let tokenDelayMs = 0;

async function delayTokenCalls(ctx, next) {
  if (tokenDelayMs > 0 && ctx.method === 'POST' && ctx.path === '/token') {
    await new Promise((resolve) => { setTimeout(resolve, tokenDelayMs); });
  }
  await next();
}

// Claims the next issued ID token gets (POST /__admin/forge-id-token), or null.
let forgedIdTokenClaims = null;

// Rewrites the next token response's ID token with the forged claims, signed again.
async function forgeIdToken(ctx, next) {
  await next();
  const body = ctx.body;
  if (ctx.oidc?.route !== 'token' || forgedIdTokenClaims === null || typeof body?.id_token !== 'string') return;
  const [header, payload] = body.id_token.split('.').slice(0, 2)
    .map((part) => JSON.parse(Buffer.from(part, 'base64url').toString('utf8')));
  body.id_token = signJwt(header, { ...payload, ...forgedIdTokenClaims });
  log(`forged the ID token of a ${ctx.oidc.params?.grant_type} grant: ${JSON.stringify(forgedIdTokenClaims)}`);
  forgedIdTokenClaims = null;
}

// Counts every token endpoint call by grant_type, whether or not it is granted.
async function countTokenCalls(ctx, next) {
  try {
    await next();
  } finally {
    if (ctx.oidc?.route === 'token') {
      const grantType = ctx.oidc.params?.grant_type ?? 'unknown';
      stats[grantType] = (stats[grantType] ?? 0) + 1;
    }
  }
}

// --- Provider ----------------------------------------------------------------
// oidc-provider takes its keys at construction, so a rotation builds a new Provider behind the
// same HTTP server. State survives: oidc-provider 8's default in-memory adapter keeps one store
// per process (module level), shared by every Provider instance.
function buildProvider(issuer) {
  const provider = new Provider(issuer, configuration(keys));
  // `sid` in every ID token, not only for clients with a back-channel logout URI: a relying
  // party keys its sessions by it before any logout is configured.
  provider.Client.prototype.includeSid = () => true;
  provider.use(countTokenCalls);
  provider.use(forgeIdToken);
  provider.use(delayTokenCalls);
  provider.on('server_error', (ctx, err) => log('server_error', ctx.method, ctx.path, err));
  provider.on('grant.error', (ctx, err) => {
    log('grant.error', err.message, err.error_description ?? '');
    events.token_errors.push({
      grant_type: ctx.oidc?.params?.grant_type ?? 'unknown',
      error: err.error ?? err.message,
      error_description: err.error_description ?? null,
    });
  });
  provider.on('introspection.error', (ctx, err) => log('introspection.error', err.message));
  provider.on('authorization.success', (ctx) => {
    const session = ctx.oidc?.session;
    if (session?.accountId) loginSessions.set(session.uid, session.accountId);
  });
  provider.on('end_session.success', () => {
    events.end_session += 1;
  });
  provider.on('backchannel.success', (ctx, client, sub, sid) => {
    log(`back-channel logout to ${client.backchannelLogoutUri}: ok (sub ${sub}, sid ${sid})`);
    events.backchannel_logout.push({ client_id: client.clientId, sub, sid, ok: true });
  });
  provider.on('backchannel.error', (ctx, err, client, sub, sid) => {
    log(`back-channel logout to ${client.backchannelLogoutUri}: ${err.message}`);
    events.backchannel_logout.push({ client_id: client.clientId, sub, sid, ok: false, error: err.message });
  });
  return { provider, callback: provider.callback() };
}

let current;

function send(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(body));
}

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const text = Buffer.concat(chunks).toString('utf8');
  return text.trim() === '' ? {} : JSON.parse(text);
}

// Ends the login sessions of `sub` (or the one holding `sid`) as an admin would.
async function adminLogout({ sub, sid }) {
  const { provider } = current;
  const sent = [];
  let ended = 0;
  for (const [uid, accountId] of loginSessions) {
    const session = await provider.Session.findByUid(uid);
    if (!session) {
      loginSessions.delete(uid);
      continue;
    }
    const authorizations = Object.entries(session.authorizations ?? {});
    const matches = sub !== null
      ? accountId === sub
      : authorizations.some(([, authorization]) => authorization.sid === sid);
    if (!matches) continue;
    for (const [clientId, authorization] of authorizations) {
      const client = await provider.Client.find(clientId);
      if (client?.backchannelLogoutUri) {
        const event = { client_id: clientId, sub: accountId, sid: authorization.sid };
        try {
          await client.backchannelLogout(accountId, authorization.sid);
          Object.assign(event, { ok: true });
        } catch (err) {
          Object.assign(event, { ok: false, error: err.message });
        }
        log(`admin back-channel logout to ${client.backchannelLogoutUri}: ${event.ok ? 'ok' : event.error}`);
        events.backchannel_logout.push(event);
        sent.push(event);
      }
      if (authorization.grantId) {
        await Promise.all([provider.AccessToken, provider.RefreshToken, provider.AuthorizationCode]
          .map((model) => model.revokeByGrantId(authorization.grantId)));
        await provider.Grant.adapter.destroy(authorization.grantId);
      }
    }
    await session.destroy();
    loginSessions.delete(uid);
    ended += 1;
  }
  return { sessions: ended, backchannel_logout: sent };
}

function checkUris(value, field) {
  if (!Array.isArray(value) || value.some((v) => typeof v !== 'string')) {
    throw new TypeError(`${field} must be an array of strings`);
  }
  return value;
}

async function admin(req, res, url) {
  const route = `${req.method} ${url.pathname}`;
  if (route === 'GET /__admin/health') {
    send(res, 200, { status: 'ok' });
  } else if (route === 'POST /__admin/rotate') {
    const key = generateKey();
    const dropOld = ['1', 'true'].includes(url.searchParams.get('drop_old') ?? '');
    keys = dropOld ? [key] : [key, ...keys];
    saveKeys(keys);
    current = buildProvider(current.provider.issuer);
    log(`rotated keys: signing with ${key.kid}, published ${keys.map((k) => k.kid).join(', ')}`);
    send(res, 200, { kid: key.kid });
  } else if (route === 'POST /__admin/code-clients') {
    let body;
    try {
      body = await readJson(req);
    } catch (err) {
      send(res, 400, { error: 'invalid_request', error_description: err.message });
      return;
    }
    const uris = { ...codeClientUris };
    let clients;
    try {
      if (body.redirect_uris !== undefined) uris.redirect_uris = checkUris(body.redirect_uris, 'redirect_uris');
      if (body.post_logout_redirect_uris !== undefined) {
        uris.post_logout_redirect_uris = checkUris(body.post_logout_redirect_uris, 'post_logout_redirect_uris');
      }
      if (body.backchannel_logout_uri !== undefined) uris.backchannel_logout_uri = body.backchannel_logout_uri || null;
      clients = withCodeClientUris(CLIENTS, uris, { override: true });
      await Promise.all(clients.filter(isCodeClient).map((c) => current.provider.Client.validate(c)));
    } catch (err) {
      send(res, 400, { error: 'invalid_client_metadata', error_description: err.error_description ?? err.message });
      return;
    }
    CLIENTS = clients;
    current = buildProvider(current.provider.issuer);
    codeClientUris = uris;
    log(`code-flow clients: ${JSON.stringify(uris)}`);
    send(res, 200, { clients: clients.filter(isCodeClient) });
  } else if (route === 'POST /__admin/token-delay') {
    let body;
    try {
      body = await readJson(req);
      if (!Number.isInteger(body.ms) || body.ms < 0) throw new TypeError('ms must be a non-negative integer');
    } catch (err) {
      send(res, 400, { error: 'invalid_request', error_description: err.message });
      return;
    }
    tokenDelayMs = body.ms;
    send(res, 200, {});
  } else if (route === 'POST /__admin/sign' || route === 'POST /__admin/forge-id-token') {
    let body;
    try {
      body = await readJson(req);
      if (typeof body.claims !== 'object' || body.claims === null || Array.isArray(body.claims)) {
        throw new TypeError('claims must be a JSON object');
      }
    } catch (err) {
      send(res, 400, { error: 'invalid_request', error_description: err.message });
      return;
    }
    if (route === 'POST /__admin/sign') {
      send(res, 200, { token: signJwt(body.header ?? {}, body.claims) });
    } else {
      forgedIdTokenClaims = body.claims;
      send(res, 200, {});
    }
  } else if (route === 'GET /__admin/stats') {
    send(res, 200, stats);
  } else if (route === 'GET /__admin/events') {
    send(res, 200, events);
  } else if (route === 'POST /__admin/reset-stats') {
    resetStats();
    send(res, 200, {});
  } else if (route === 'POST /__admin/logout') {
    const sub = url.searchParams.get('sub');
    const sid = url.searchParams.get('sid');
    if ((sub === null) === (sid === null)) {
      send(res, 400, { error: 'invalid_request', error_description: 'give exactly one of sub and sid' });
      return;
    }
    send(res, 200, await adminLogout({ sub, sid }));
  } else {
    send(res, 404, { error: 'not_found' });
  }
}

// --- HTTP server ---------------------------------------------------------------
const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  if (url.pathname.startsWith('/__admin/')) {
    admin(req, res, url).catch((err) => {
      log('admin', req.method, url.pathname, err);
      send(res, 500, { error: 'server_error', error_description: err.message });
    });
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
  log(`issuer ${issuer}, signing key ${keys[0].kid}, TTLs: access token ${ACCESS_TOKEN_TTL}s, ID token ${ID_TOKEN_TTL}s, refresh token ${REFRESH_TOKEN_TTL}s (rotation ${ROTATE_REFRESH_TOKEN ? "on" : "off"}), session ${SESSION_TTL}s; code-flow clients: ${JSON.stringify(codeClientUris)}`);
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
