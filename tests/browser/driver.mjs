// Headless Chromium for Gatehouse's browser tests, driven over line-delimited JSON.
//
//   node driver.mjs        (started by tests/src/browser.rs)
//
// Protocol:
//   - stdout carries only JSON lines. The first is `{"ready": true, "version": "...",
//     "browser_pid": N}` once Chromium runs (or `{"ready": false, "error": "..."}` and exit 1).
//   - stdin takes one command per line: `{"id": 7, "cmd": "goto", "page": "p1", "url": "..."}`.
//     Each gets exactly one answer line, `{"id": 7, "result": {...}}` or `{"id": 7, "error":
//     "..."}`. Commands on one page (or one context, for context commands) run in the order
//     they came; commands on different pages run at once, so answers may come out of order.
//     `fetch`, `cookies` and `blockedCookies` never wait for a queue:
//     several fetches from one page run concurrently. An error never stops the driver.
//   - stderr is a log: each command and its outcome, page errors, cookies Chromium refused, and
//     Chromium's own stderr when BROWSER_DUMPIO=1.
//   - EOF on stdin, SIGTERM or SIGINT close Chromium and exit; with BROWSER_EXIT_WITH_PARENT=1
//     so does the parent process going away.
//
// Commands (ids of contexts are "c1", "c2", ...; of pages "p1", ...):
//   newContext {}                                  -> {context}   an isolated (incognito) context
//   closeContext {context}                         -> {}
//   newPage {context}                              -> {page}
//   closePage {page}                               -> {}
//   goto {page, url, headers?, waitUntil?, timeoutMs?}
//                                                  -> Navigation (below); `headers` are extra
//                                                     request headers for this navigation only
//   fillLogin {page, login, password, timeoutMs?}  -> Navigation: oidc-provider's dev login form
//                                                     (if shown), then its consent page (if
//                                                     shown), until the page leaves the
//                                                     provider's origin
//   click {page, selector, navigation?, timeoutMs?} -> Navigation when `navigation` (default
//                                                     true), else {}
//   waitForUrl {page, prefix, timeoutMs?}          -> {url}  until the page's URL starts with prefix
//   content {page}                                 -> {url, title, text}: body.innerText
//   evaluate {page, expression}                    -> {value}: the expression's JSON value (awaited)
//   fetch {page, url, method?, headers?, body?, redirect?, credentials?}
//                                                  -> {status, type, url, redirected, headers, body}
//                                                     fetch() run inside the page; credentials
//                                                     default "include", redirect "follow"; with
//                                                     "manual" a redirect is {type:
//                                                     "opaqueredirect", status: 0}
//   cookies {context | page, urls?}                -> {cookies: [Cookie]}: every cookie of the
//                                                     context, or those the browser would send to
//                                                     one of `urls`
//   setCookie {context | page, cookies: [{name, value, url | domain, path?, secure?, httpOnly?,
//             sameSite?, expires?}]}               -> {}
//   deleteCookies {context | page, cookies?: [{name, url?, domain?, path?}]}
//                                                  -> {}; without `cookies`, all of the context's
//   blockedCookies {page, clear?}                  -> {cookies: [{url, cookie, reasons}]}: the
//                                                     Set-Cookie lines Chromium refused on this page
//   hold {page, prefix}                            -> {}: from now on the page's requests whose URL
//                                                     starts with `prefix` never leave the browser:
//                                                     each is answered 200 with a short HTML page,
//                                                     so a navigation (or redirect) there ends at
//                                                     that URL, unsent; `prefix` null stops holding
//
// Navigation = {url, status, headers, redirects: [{url, status, location, headers}]}: the final
// URL, the main response's status and headers (lower-case names; repeated ones joined by "\n",
// Set-Cookie included), and the redirects that led there, in order.
// Cookie = {name, value, domain, path, expires (-1: a session cookie), httpOnly, secure,
// session, sameSite ("Strict" | "Lax" | "None" | null when the header gave none), sourceScheme}.

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as readline from 'node:readline';

// stdout is the protocol: everything else goes to stderr.
console.log = console.error;
console.info = console.error;
console.debug = console.error;
const log = (...args) => console.error('[browser driver]', ...args);
const write = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);

const { default: puppeteer } = await import('puppeteer-core');

const EXECUTABLE = process.env.BROWSER_EXECUTABLE || '/usr/bin/chromium';
const DEFAULT_TIMEOUT_MS = Number(process.env.BROWSER_TIMEOUT_MS) || 15000;
const DUMPIO = process.env.BROWSER_DUMPIO === '1';

// As root, without a sandbox; nothing in the background (on this closed network such
// connections are refused and slow Chromium down), no proxy, and every host name but the
// loopback ones unresolvable, so a page can reach nothing but loopback (oidc-provider's pages
// @import a web font).
const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--no-default-browser-check',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-dev-shm-usage',
  '--disable-breakpad',
  '--disable-domain-reliability',
  '--disable-features=Translate,OptimizationHints,MediaRouter,InterestFeedContentSuggestions',
  '--no-proxy-server',
  '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1',
];

// --- Browser -----------------------------------------------------------------
const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'gatehouse-chromium-'));
let browser;

async function launch() {
  browser = await puppeteer.launch({
    executablePath: EXECUTABLE,
    headless: true,
    args: ARGS,
    userDataDir,
    pipe: true,
    dumpio: false,
    // The driver closes Chromium itself (shutdown below).
    handleSIGINT: false,
    handleSIGTERM: false,
    handleSIGHUP: false,
    protocolTimeout: 60000,
  });
  const proc = browser.process();
  if (DUMPIO && proc?.stderr) proc.stderr.on('data', (d) => process.stderr.write(d));
  browser.on('disconnected', () => {
    if (!shuttingDown) {
      log('Chromium disconnected');
      shutdown('Chromium gone', 1);
    }
  });
}

// --- Handles -------------------------------------------------------------------
const contexts = new Map(); // id -> {context, cdp (browser-level session), helperPage}
const pages = new Map(); // id -> {page, contextId, cdp, blocked: []}
let nextContext = 1;
let nextPage = 1;

function contextEntry(id) {
  const entry = contexts.get(id);
  if (!entry) throw new Error(`no context ${JSON.stringify(id)}`);
  return entry;
}

function pageEntry(id) {
  const entry = pages.get(id);
  if (!entry) throw new Error(`no page ${JSON.stringify(id)}`);
  return entry;
}

// A page session for cookie commands on `{context}` or `{page}`: for a context, one of its
// pages, else a hidden about:blank page of its own (made once; a new page takes the
// foreground, so never make one while the context has pages).
async function cookieSession(args) {
  if (args.page !== undefined) return pageEntry(args.page).cdp;
  const entry = contextEntry(args.context);
  for (const p of pages.values()) {
    if (p.contextId === args.context && !p.page.isClosed()) return p.cdp;
  }
  if (!entry.helper) {
    const page = await entry.context.newPage();
    entry.helper = await page.createCDPSession();
  }
  return entry.helper;
}

// Input goes to the foreground tab only (a background tab's clicks start no navigation).
async function foreground(page) {
  await page.bringToFront();
}

function contextIdOf(args) {
  if (args.page !== undefined) return pageEntry(args.page).contextId;
  contextEntry(args.context);
  return args.context;
}

function normalizeCookie(c) {
  return {
    name: c.name,
    value: c.value,
    domain: c.domain,
    path: c.path,
    expires: c.expires,
    httpOnly: c.httpOnly,
    secure: c.secure,
    session: c.session,
    sameSite: c.sameSite ?? null,
    sourceScheme: c.sourceScheme ?? null,
  };
}

function timeoutOf(args) {
  return Number(args.timeoutMs) || DEFAULT_TIMEOUT_MS;
}

function navigation(page, response) {
  if (!response) return { url: page.url(), status: null, headers: {}, redirects: [] };
  const redirects = response.request().redirectChain().map((request) => {
    const hop = request.response();
    return {
      url: request.url(),
      status: hop?.status() ?? null,
      location: hop?.headers().location ?? null,
      headers: hop?.headers() ?? {},
    };
  });
  return { url: page.url(), status: response.status(), headers: response.headers(), redirects };
}

// Runs `action` (which starts a navigation) and answers the navigation it caused.
async function navigated(page, action, timeout, waitUntil = 'load') {
  const [response] = await Promise.all([page.waitForNavigation({ timeout, waitUntil }), action()]);
  return navigation(page, response);
}

// --- Commands ------------------------------------------------------------------
const commands = {
  async newContext() {
    const context = await browser.createBrowserContext();
    const id = `c${nextContext++}`;
    contexts.set(id, { context, helper: null });
    return { context: id };
  },

  async closeContext(args) {
    const entry = contextEntry(args.context);
    contexts.delete(args.context);
    for (const [id, p] of pages) if (p.contextId === args.context) pages.delete(id);
    await entry.context.close();
    return {};
  },

  async newPage(args) {
    const { context } = contextEntry(args.context);
    const page = await context.newPage();
    const id = `p${nextPage++}`;
    const cdp = await page.createCDPSession();
    const entry = { page, contextId: args.context, cdp, blocked: [] };
    await cdp.send('Network.enable');
    // Chromium tells why it refused a Set-Cookie only here.
    const requestUrls = new Map();
    cdp.on('Network.requestWillBeSent', (e) => requestUrls.set(e.requestId, e.request.url));
    cdp.on('Network.responseReceivedExtraInfo', (e) => {
      for (const b of e.blockedCookies ?? []) {
        const item = { url: requestUrls.get(e.requestId) ?? null, cookie: b.cookieLine, reasons: b.blockedReasons };
        entry.blocked.push(item);
        log(`${id}: Chromium refused Set-Cookie ${JSON.stringify(b.cookieLine)} from ${item.url}: ${b.blockedReasons.join(', ')}`);
      }
    });
    page.on('pageerror', (err) => log(`${id} page error: ${err.message}`));
    page.on('console', (msg) => log(`${id} console.${msg.type()}: ${msg.text()}`));
    page.on('requestfailed', (req) => {
      const url = req.url();
      // oidc-provider's pages ask for a web font that cannot load here.
      if (!url.startsWith('https://fonts.googleapis.com/')) log(`${id} request failed: ${req.method()} ${url}: ${req.failure()?.errorText}`);
    });
    page.setDefaultTimeout(DEFAULT_TIMEOUT_MS);
    pages.set(id, entry);
    return { page: id };
  },

  async closePage(args) {
    const { page } = pageEntry(args.page);
    pages.delete(args.page);
    await page.close();
    return {};
  },

  async goto(args) {
    const { page } = pageEntry(args.page);
    if (typeof args.url !== 'string') throw new Error('goto needs a url');
    const headers = args.headers ?? {};
    if (Object.keys(headers).length > 0) await page.setExtraHTTPHeaders(headers);
    try {
      const response = await page.goto(args.url, { timeout: timeoutOf(args), waitUntil: args.waitUntil ?? 'load' });
      return navigation(page, response);
    } finally {
      if (Object.keys(headers).length > 0) await page.setExtraHTTPHeaders({});
    }
  },

  async fillLogin(args) {
    const { page } = pageEntry(args.page);
    const timeout = timeoutOf(args);
    await foreground(page);
    const idp = new URL(page.url()).origin;
    // The login form, or only the consent page when the provider's session already exists.
    await page.waitForSelector('input[name=login], form button[type=submit]', { timeout });
    let result = null;
    if (await page.$('input[name=login]')) {
      await page.type('input[name=login]', String(args.login));
      await page.type('input[name=password]', String(args.password ?? 'password'));
      result = await navigated(page, () => page.click('button[type=submit]'), timeout);
    }
    // The consent page (skipped when the grant exists): one form, one submit button.
    for (let step = 0; step < 3 && new URL(page.url()).origin === idp; step += 1) {
      const consent = await page.$('form button[type=submit]');
      if (!consent || await page.$('input[name=login]')) {
        throw new Error(`still at the provider after login, at ${page.url()}: ${await bodyText(page)}`);
      }
      result = await navigated(page, () => consent.click(), timeout);
    }
    if (new URL(page.url()).origin === idp) {
      throw new Error(`still at the provider after consent, at ${page.url()}: ${await bodyText(page)}`);
    }
    return result;
  },

  async click(args) {
    const { page } = pageEntry(args.page);
    const timeout = timeoutOf(args);
    await foreground(page);
    await page.waitForSelector(args.selector, { timeout });
    if (args.navigation === false) {
      await page.click(args.selector);
      return {};
    }
    return navigated(page, () => page.click(args.selector), timeout);
  },

  async waitForUrl(args) {
    const { page } = pageEntry(args.page);
    const deadline = Date.now() + timeoutOf(args);
    while (!page.url().startsWith(args.prefix)) {
      if (Date.now() >= deadline) throw new Error(`page is at ${page.url()}, not ${args.prefix}...`);
      await new Promise((r) => setTimeout(r, 50));
    }
    return { url: page.url() };
  },

  async content(args) {
    const { page } = pageEntry(args.page);
    return { url: page.url(), title: await page.title(), text: await bodyText(page) };
  },

  async evaluate(args) {
    const { page } = pageEntry(args.page);
    const value = await page.evaluate(`(async () => (${args.expression}))()`);
    return { value: value ?? null };
  },

  async fetch(args) {
    const { page } = pageEntry(args.page);
    const init = {
      method: args.method ?? 'GET',
      headers: args.headers ?? {},
      body: args.body ?? undefined,
      redirect: args.redirect ?? 'follow',
      credentials: args.credentials ?? 'include',
    };
    return page.evaluate(async (url, init) => {
      const response = await fetch(url, init);
      const headers = {};
      response.headers.forEach((value, name) => { headers[name] = value; });
      return {
        status: response.status,
        type: response.type,
        url: response.url,
        redirected: response.redirected,
        headers,
        body: await response.text(),
      };
    }, args.url, init);
  },

  async cookies(args) {
    if (args.urls === undefined || args.urls.length === 0) {
      const all = await browserCdp().send('Storage.getCookies', {
        browserContextId: contextEntry(contextIdOf(args)).context.id,
      });
      return { cookies: all.cookies.map(normalizeCookie) };
    }
    const session = await cookieSession(args);
    const { cookies } = await session.send('Network.getCookies', { urls: args.urls });
    return { cookies: cookies.map(normalizeCookie) };
  },

  async setCookie(args) {
    const session = await cookieSession(args);
    const cookies = (args.cookies ?? []).map((c) => {
      const out = { ...c };
      if (out.sameSite === null) delete out.sameSite;
      return out;
    });
    await session.send('Network.setCookies', { cookies });
    return {};
  },

  async deleteCookies(args) {
    if (args.cookies === undefined) {
      await browserCdp().send('Storage.clearCookies', {
        browserContextId: contextEntry(contextIdOf(args)).context.id,
      });
      return {};
    }
    const session = await cookieSession(args);
    for (const c of args.cookies) await session.send('Network.deleteCookies', c);
    return {};
  },

  async hold(args) {
    const entry = pageEntry(args.page);
    if (entry.hold) {
      entry.page.off('request', entry.hold);
      entry.hold = null;
      await entry.page.setRequestInterception(false);
    }
    if (args.prefix === null || args.prefix === undefined) return {};
    const prefix = String(args.prefix);
    entry.hold = (request) => {
      if (request.isInterceptResolutionHandled()) return;
      if (!request.url().startsWith(prefix)) {
        request.continue();
        return;
      }
      log(`${args.page}: held ${request.method()} ${request.url()}`);
      request.respond({
        status: 200,
        contentType: 'text/html',
        body: '<!doctype html><title>held</title><p>held by the test driver</p>',
      });
    };
    entry.page.on('request', entry.hold);
    await entry.page.setRequestInterception(true);
    return {};
  },

  async blockedCookies(args) {
    const entry = pageEntry(args.page);
    const cookies = entry.blocked;
    if (args.clear) entry.blocked = [];
    return { cookies };
  },
};

async function bodyText(page) {
  return page.evaluate(() => document.body?.innerText ?? '');
}

let browserSession;
function browserCdp() {
  if (!browserSession) browserSession = browser.target().createCDPSession();
  return {
    send: async (method, params) => (await browserSession).send(method, params),
  };
}

// --- Loop ----------------------------------------------------------------------
// Commands that do not navigate, and so may run while the page does something else.
const UNQUEUED = new Set(['fetch', 'cookies', 'blockedCookies']);
const queues = new Map(); // "page:p1" | "context:c1" | "browser" -> the tail of its chain

function enqueue(line) {
  let key = 'browser';
  try {
    const { cmd, page, context } = JSON.parse(line);
    if (UNQUEUED.has(cmd)) {
      handle(line);
      return;
    }
    if (page !== undefined) key = `page:${page}`;
    else if (context !== undefined) key = `context:${context}`;
  } catch {
    // handle() answers the parse error.
  }
  const tail = (queues.get(key) ?? Promise.resolve()).then(() => handle(line));
  queues.set(key, tail);
  tail.then(() => {
    if (queues.get(key) === tail) queues.delete(key);
  });
}

async function handle(line) {
  let request;
  try {
    request = JSON.parse(line);
  } catch (err) {
    write({ id: null, error: `not JSON: ${err.message}` });
    return;
  }
  const { id = null, cmd } = request;
  const started = Date.now();
  const command = Object.hasOwn(commands, cmd) ? commands[cmd] : undefined;
  try {
    if (!command) throw new Error(`unknown command ${JSON.stringify(cmd)}`);
    const result = await command(request);
    log(`#${id} ${cmd}${describe(request)}: ok in ${Date.now() - started} ms${describeResult(result)}`);
    write({ id, result });
  } catch (err) {
    const message = err?.message ?? String(err);
    log(`#${id} ${cmd}${describe(request)}: error after ${Date.now() - started} ms: ${message}`);
    write({ id, error: message });
  }
}

function describe(request) {
  const parts = [request.context, request.page, request.url, request.selector, request.login].filter((v) => v !== undefined);
  return parts.length > 0 ? ` ${parts.join(' ')}` : '';
}

function describeResult(result) {
  if (result?.status === undefined) return '';
  const hops = (result.redirects ?? []).map((r) => `${r.status} ${r.url}`);
  return ` -> ${[...hops, `${result.status} ${result.url}`].join(' -> ')}`;
}

// --- Shutdown ------------------------------------------------------------------
let shuttingDown = false;

async function shutdown(reason, code = 0) {
  if (shuttingDown) return;
  shuttingDown = true;
  log(`${reason}: stopping`);
  setTimeout(() => {
    browser?.process()?.kill('SIGKILL');
    fs.rmSync(userDataDir, { recursive: true, force: true });
    process.exit(code);
  }, 3000).unref();
  try {
    await browser?.close();
  } catch (err) {
    log(`closing Chromium: ${err.message}`);
    browser?.process()?.kill('SIGKILL');
  }
  fs.rmSync(userDataDir, { recursive: true, force: true });
  process.exit(code);
}

process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
process.on('unhandledRejection', (err) => log('unhandled rejection:', err));
process.on('uncaughtException', (err) => log('uncaught exception:', err));

if (process.env.BROWSER_EXIT_WITH_PARENT === '1') {
  const parent = process.ppid;
  setInterval(() => {
    try {
      process.kill(parent, 0);
    } catch (err) {
      if (err.code === 'ESRCH') shutdown('parent exited');
    }
  }, 1000).unref();
}

try {
  await launch();
} catch (err) {
  log(`launching ${EXECUTABLE}: ${err.message}`);
  write({ ready: false, error: err.message });
  fs.rmSync(userDataDir, { recursive: true, force: true });
  process.exit(1);
}

write({ ready: true, version: await browser.version(), browser_pid: browser.process()?.pid ?? null });

const input = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
input.on('line', (line) => {
  if (line.trim() !== '') enqueue(line);
});
input.on('close', () => shutdown('stdin closed'));
