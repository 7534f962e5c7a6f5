//! A real browser: Debian's headless Chromium, driven by `tests/browser/driver.mjs`
//! (puppeteer-core under Node) over line-delimited JSON on its stdin and stdout.
//!
//! [`Browser::start`] launches the driver, which launches Chromium with a fresh profile and no
//! network but loopback (every other host name fails to resolve). A [`Context`] is an isolated
//! incognito profile (its own cookies); a [`Page`] is a tab in one. Every call is one driver
//! command and answers within [`BrowserOptions::command_timeout`]; an error names the command and
//! carries the tail of the driver's log (each command, page errors, and every Set-Cookie
//! Chromium refused, with its reason), so `.expect(..)` panics with what happened.
//!
//! Commands on one page run in order; commands on different pages run at once, and so do
//! [`Page::fetch`]es from one page (`tokio::join!` them to race requests).
//!
//! Cookies on loopback, as Chromium treats them: `http://localhost` and `http://127.0.0.1` are
//! potentially trustworthy origins, so `Secure` and `__Host-` cookies set over plain http on
//! them are kept and sent back; `SameSite=None` without `Secure` is refused; a cookie without
//! `SameSite` is `Lax` by default (reported as `same_site: None`). `localhost` and `127.0.0.1`
//! are different sites: a cookie of one is never sent to the other, and a navigation from one
//! to the other is cross-site (`SameSite=Lax` cookies go along only with top-level `GET`s).
//!
//! The driver exits when the test process does (stdin closes; `BROWSER_EXIT_WITH_PARENT`), and
//! dropping the last handle closes Chromium.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::oneshot;

use crate::{binary, oidc::node_binary, repo_root};

/// How long Chromium may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of the driver's stderr kept for error messages and [`Browser::log`].
const LOG_LINES: usize = 400;
/// Lines of that log an error message carries.
const ERROR_TAIL: usize = 40;

/// `tests/browser`, the Node package holding the driver.
fn package_dir() -> PathBuf {
    repo_root().join("tests/browser")
}

/// Chromium: `GATEHOUSE_CHROMIUM`, else `chromium` on PATH (`/usr/bin/chromium` from
/// scripts/install-test-deps.sh).
pub fn chromium_binary() -> PathBuf {
    binary("GATEHOUSE_CHROMIUM", ".venv/bin/chromium", "chromium")
}

/// How to start the browser.
#[derive(Debug, Clone)]
pub struct BrowserOptions {
    /// How long one command may take before the call fails (the driver's own navigation
    /// timeout is 15 s, so a slow page fails there first, with the browser's reason).
    pub command_timeout: Duration,
    /// Copy Chromium's own stderr into the driver's log (noisy; for debugging a launch).
    pub chromium_log: bool,
}

impl Default for BrowserOptions {
    fn default() -> BrowserOptions {
        BrowserOptions { command_timeout: Duration::from_secs(20), chromium_log: false }
    }
}

/// Why a browser call failed. Its `Debug` is its `Display`, so `.expect(..)` prints the
/// driver's log readably.
pub struct BrowserError {
    /// The command and its main argument, e.g. `goto http://localhost:4242/app`.
    pub command: String,
    pub kind: BrowserErrorKind,
    /// The end of the driver's log when the error happened.
    pub log_tail: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrowserErrorKind {
    /// The driver ran the command and it failed, e.g. `net::ERR_CONNECTION_REFUSED at
    /// http://...`, `Waiting for selector ... failed`, or a fetch's `TypeError`.
    Failed(String),
    /// No answer within the command timeout.
    Timeout(Duration),
    /// The driver is gone (or answered something that is not the protocol).
    Driver(String),
}

impl BrowserError {
    /// The driver's error message, for assertions on expected failures.
    pub fn message(&self) -> &str {
        match &self.kind {
            BrowserErrorKind::Failed(m) | BrowserErrorKind::Driver(m) => m,
            BrowserErrorKind::Timeout(_) => "timeout",
        }
    }
}

impl std::fmt::Display for BrowserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            BrowserErrorKind::Failed(m) => write!(f, "browser command `{}` failed: {m}", self.command)?,
            BrowserErrorKind::Timeout(t) => write!(f, "browser command `{}` got no answer within {t:?}", self.command)?,
            BrowserErrorKind::Driver(m) => write!(f, "browser command `{}`: driver failure: {m}", self.command)?,
        }
        write!(f, "\n--- browser driver log (tail) ---\n{}", self.log_tail)
    }
}

impl std::fmt::Debug for BrowserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for BrowserError {}

pub type Result<T> = std::result::Result<T, BrowserError>;

/// A navigation's outcome: where the page ended up and how it got there.
#[derive(Debug, Clone, Deserialize)]
pub struct Navigation {
    /// The page's URL afterwards.
    pub url: String,
    /// The main response's status (`None` for a same-document navigation).
    pub status: Option<u16>,
    /// The main response's headers, names in lower case; repeated ones (`set-cookie`) joined
    /// with `\n`.
    pub headers: BTreeMap<String, String>,
    /// The redirects that led to `url`, in order.
    pub redirects: Vec<Redirect>,
}

/// One redirect of a navigation.
#[derive(Debug, Clone, Deserialize)]
pub struct Redirect {
    pub url: String,
    pub status: Option<u16>,
    pub location: Option<String>,
    pub headers: BTreeMap<String, String>,
}

impl Navigation {
    /// A header of the main response.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }

    /// A query parameter of the final URL.
    pub fn query(&self, name: &str) -> Option<String> {
        query_param(&self.url, name)
    }

    /// Every URL of the navigation, redirects first, each with its status.
    pub fn chain(&self) -> Vec<(Option<u16>, &str)> {
        self.redirects
            .iter()
            .map(|r| (r.status, r.url.as_str()))
            .chain(std::iter::once((self.status, self.url.as_str())))
            .collect()
    }
}

/// A query parameter of `url`, decoded.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// A cookie in the browser's jar.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Cookie {
    pub name: String,
    pub value: String,
    /// The host for a host-only cookie, `.example` for a domain cookie.
    pub domain: String,
    pub path: String,
    /// Seconds since the epoch; -1 for a session cookie.
    pub expires: f64,
    pub http_only: bool,
    pub secure: bool,
    pub session: bool,
    /// `Strict`, `Lax` or `None` as the cookie gave it; `None` (no attribute) acts as Lax.
    pub same_site: Option<String>,
    /// `Secure` or `NonSecure`: the scheme of the page that set it.
    pub source_scheme: Option<String>,
}

/// A cookie to put into the jar: give `url` (a host-only cookie for its host and path), or
/// `domain`.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SetCookie {
    pub name: String,
    pub value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secure: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_only: Option<bool>,
    /// `Strict`, `Lax` or `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub same_site: Option<String>,
    /// Seconds since the epoch; absent for a session cookie.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<f64>,
}

impl SetCookie {
    /// A host-only session cookie for `url`'s host (path `/` unless set).
    pub fn new(name: &str, value: &str, url: &str) -> SetCookie {
        SetCookie { name: name.into(), value: value.into(), url: Some(url.into()), ..SetCookie::default() }
    }
}

/// Which cookies [`Context::delete_cookies`] removes: by name, for a URL (domain and path
/// match it) or an exact domain and path.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeleteCookie {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl DeleteCookie {
    pub fn for_url(name: &str, url: &str) -> DeleteCookie {
        DeleteCookie { name: name.into(), url: Some(url.into()), ..DeleteCookie::default() }
    }
}

/// A Set-Cookie Chromium refused, and why (e.g. `SameSiteNoneInsecure`).
#[derive(Debug, Clone, Deserialize)]
pub struct BlockedCookie {
    /// The request whose response carried it.
    pub url: Option<String>,
    /// The Set-Cookie value.
    pub cookie: String,
    pub reasons: Vec<String>,
}

/// What a page shows.
#[derive(Debug, Clone, Deserialize)]
pub struct PageContent {
    pub url: String,
    pub title: String,
    /// `document.body.innerText`; for a JSON response, the JSON.
    pub text: String,
}

impl PageContent {
    /// The text as JSON (a JSON response, e.g. the echo upstream's).
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.text).ok()
    }
}

/// How `fetch()` treats redirects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RedirectMode {
    #[default]
    Follow,
    /// A redirect answers `{type: "opaqueredirect", status: 0}`; headers and body are hidden.
    Manual,
    Error,
}

/// Whether `fetch()` sends cookies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Credentials {
    #[default]
    Include,
    SameOrigin,
    Omit,
}

/// A `fetch()` from inside a page (so with the page's origin, cookies and CORS).
#[derive(Debug, Clone, Default, Serialize)]
pub struct FetchInit {
    pub method: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub body: Option<String>,
    pub redirect: RedirectMode,
    pub credentials: Credentials,
}

impl FetchInit {
    /// A `GET` with cookies, following redirects.
    pub fn get() -> FetchInit {
        FetchInit::default()
    }

    /// A `POST` of `body`.
    pub fn post(body: &str) -> FetchInit {
        FetchInit { method: Some("POST".into()), body: Some(body.into()), ..FetchInit::default() }
    }

    pub fn header(mut self, name: &str, value: &str) -> FetchInit {
        self.headers.insert(name.into(), value.into());
        self
    }

    pub fn redirect(mut self, mode: RedirectMode) -> FetchInit {
        self.redirect = mode;
        self
    }

    pub fn credentials(mut self, credentials: Credentials) -> FetchInit {
        self.credentials = credentials;
        self
    }
}

/// A `fetch()`'s response, as the page's script sees it.
#[derive(Debug, Clone, Deserialize)]
pub struct FetchResponse {
    /// 0 for an opaque redirect (RedirectMode::Manual).
    pub status: u16,
    /// `basic`, `cors`, `opaqueredirect`, ...
    #[serde(rename = "type")]
    pub kind: String,
    pub url: String,
    pub redirected: bool,
    /// What the page may read: `set-cookie` never, and cross-origin only the CORS-safelisted.
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl FetchResponse {
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.body).ok()
    }
}

/// Options of [`Page::click_with`].
#[derive(Debug, Clone, Copy)]
pub struct ClickOptions {
    /// Wait for the navigation the click starts (default true).
    pub navigation: bool,
    /// How long to wait for the element and the navigation (default: the driver's 15 s).
    pub timeout: Option<Duration>,
}

impl Default for ClickOptions {
    fn default() -> ClickOptions {
        ClickOptions { navigation: true, timeout: None }
    }
}

/// Options of a navigation.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GotoOptions {
    /// Extra request headers for this navigation (its redirects and subresources included).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// `load` (default), `domcontentloaded`, `networkidle0`, `networkidle2`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_until: Option<String>,
    /// The driver's navigation timeout in milliseconds (default 15000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

impl GotoOptions {
    pub fn header(mut self, name: &str, value: &str) -> GotoOptions {
        self.headers.insert(name.into(), value.into());
        self
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<std::result::Result<Value, String>>>>>;
type Log = Arc<Mutex<VecDeque<String>>>;

/// The driver process and its pipes; shared by every handle, stopped when the last one goes.
struct Driver {
    stdin: tokio::sync::Mutex<Option<ChildStdin>>,
    pending: Pending,
    log: Log,
    next_id: AtomicU64,
    timeout: Duration,
    child: Mutex<Option<Child>>,
    browser_pid: Option<u32>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").field("browser_pid", &self.browser_pid).finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind, still usable.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn log_tail(log: &Log, lines: usize) -> String {
    let log = lock(log);
    let skip = log.len().saturating_sub(lines);
    log.iter().skip(skip).cloned().collect::<Vec<_>>().join("\n")
}

impl Driver {
    fn error(&self, command: &str, kind: BrowserErrorKind) -> BrowserError {
        BrowserError { command: command.to_string(), kind, log_tail: log_tail(&self.log, ERROR_TAIL) }
    }

    /// Sends `cmd` with `args` (a JSON object) and waits for its answer.
    async fn call<T: DeserializeOwned>(&self, cmd: &str, args: Value, what: &str) -> Result<T> {
        self.call_within(cmd, args, what, self.timeout).await
    }

    /// [`Driver::call`] for a command with its own `timeoutMs`: waits a little longer than
    /// that, so the driver's answer (with its reason) comes first.
    async fn call_timed<T: DeserializeOwned>(&self, cmd: &str, args: Value, what: &str) -> Result<T> {
        let driver_timeout = args["timeoutMs"].as_u64().map(Duration::from_millis).unwrap_or_default();
        let timeout = self.timeout.max(driver_timeout + Duration::from_secs(5));
        self.call_within(cmd, args, what, timeout).await
    }

    async fn call_within<T: DeserializeOwned>(
        &self,
        cmd: &str,
        mut args: Value,
        what: &str,
        timeout: Duration,
    ) -> Result<T> {
        let command = if what.is_empty() { cmd.to_string() } else { format!("{cmd} {what}") };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        args["id"] = json!(id);
        args["cmd"] = json!(cmd);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        let line = format!("{args}\n");
        {
            let mut stdin = self.stdin.lock().await;
            let Some(stdin) = stdin.as_mut() else {
                lock(&self.pending).remove(&id);
                return Err(self.error(&command, BrowserErrorKind::Driver("driver stopped".into())));
            };
            if let Err(e) = stdin.write_all(line.as_bytes()).await {
                lock(&self.pending).remove(&id);
                return Err(self.error(&command, BrowserErrorKind::Driver(format!("writing to the driver: {e}"))));
            }
            let _ = stdin.flush().await;
        }
        let answer = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => {
                return Err(self.error(&command, BrowserErrorKind::Driver("the driver exited".into())));
            }
            Err(_) => {
                lock(&self.pending).remove(&id);
                return Err(self.error(&command, BrowserErrorKind::Timeout(timeout)));
            }
        };
        let value = answer.map_err(|m| self.error(&command, BrowserErrorKind::Failed(m)))?;
        serde_json::from_value(value.clone())
            .map_err(|e| self.error(&command, BrowserErrorKind::Driver(format!("unexpected answer {value}: {e}"))))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Closing stdin makes the driver close Chromium and exit; give it a moment, then kill
        // both (Chromium runs in its own process group, so its helpers go with it).
        self.stdin.get_mut().take();
        let Some(mut child) = lock(&self.child).take() else { return };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.start_kill();
        if let Some(pid) = self.browser_pid {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A running headless Chromium.
#[derive(Debug, Clone)]
pub struct Browser {
    driver: Arc<Driver>,
    version: String,
}

/// An isolated browser profile: its own cookies, storage and cache.
#[derive(Debug, Clone)]
pub struct Context {
    driver: Arc<Driver>,
    id: String,
}

/// A tab.
#[derive(Debug, Clone)]
pub struct Page {
    driver: Arc<Driver>,
    id: String,
}

#[derive(Deserialize)]
struct Ready {
    ready: bool,
    version: Option<String>,
    browser_pid: Option<u32>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct Answer {
    id: Option<u64>,
    result: Option<Value>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct Empty {}

impl Browser {
    /// Starts Chromium with the default options.
    pub async fn start() -> std::io::Result<Browser> {
        Browser::start_with(BrowserOptions::default()).await
    }

    pub async fn start_with(options: BrowserOptions) -> std::io::Result<Browser> {
        let missing = |what: String| {
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("{what}: run scripts/install-test-deps.sh"))
        };
        if !package_dir().join("node_modules/puppeteer-core").is_dir() {
            return Err(missing(format!("{} is missing puppeteer-core", package_dir().join("node_modules").display())));
        }
        let chromium = chromium_binary();
        if !chromium.is_file() {
            return Err(missing(format!("no Chromium at {} (or set GATEHOUSE_CHROMIUM)", chromium.display())));
        }
        let mut command = Command::new(node_binary());
        command
            .arg("driver.mjs")
            .current_dir(package_dir())
            .env("BROWSER_EXECUTABLE", &chromium)
            .env("BROWSER_EXIT_WITH_PARENT", "1")
            .env("BROWSER_TIMEOUT_MS", "15000")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if options.chromium_log {
            command.env("BROWSER_DUMPIO", "1");
        }
        let mut child = command.spawn().map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("starting {} driver.mjs: {e} (install Node, or set GATEHOUSE_NODE)", node_binary().display()),
            )
        })?;
        let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(std::io::Error::other("driver pipes missing"));
        };

        let log: Log = Arc::new(Mutex::new(VecDeque::new()));
        let stderr_log = Arc::clone(&log);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut log = lock(&stderr_log);
                if log.len() == LOG_LINES {
                    log.pop_front();
                }
                log.push_back(line);
            }
        });

        let mut stdout = BufReader::new(stdout).lines();
        let fail = |what: String, log: &Log| {
            std::io::Error::other(format!("browser driver {what}; its log:\n{}", log_tail(log, ERROR_TAIL)))
        };
        let ready = match tokio::time::timeout(START_TIMEOUT, stdout.next_line()).await {
            Ok(Ok(Some(line))) => serde_json::from_str::<Ready>(&line)
                .map_err(|e| fail(format!("printed {line:?} ({e}) instead of its ready line"), &log))?,
            Ok(Ok(None)) | Ok(Err(_)) => {
                // Let the stderr task catch the driver's last words.
                tokio::time::sleep(Duration::from_millis(200)).await;
                return Err(fail("exited before it was ready".into(), &log));
            }
            Err(_) => return Err(fail(format!("was not ready within {START_TIMEOUT:?}"), &log)),
        };
        if !ready.ready {
            tokio::time::sleep(Duration::from_millis(200)).await;
            return Err(fail(
                format!("could not launch {}: {}", chromium.display(), ready.error.unwrap_or_default()),
                &log,
            ));
        }

        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let answers = Arc::clone(&pending);
        let reader_log = Arc::clone(&log);
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                let Ok(answer) = serde_json::from_str::<Answer>(&line) else {
                    lock(&reader_log).push_back(format!("[browser fixture] not an answer: {line}"));
                    continue;
                };
                let Some(tx) = answer.id.and_then(|id| lock(&answers).remove(&id)) else { continue };
                let _ = tx.send(match answer.error {
                    Some(error) => Err(error),
                    None => Ok(answer.result.unwrap_or(Value::Null)),
                });
            }
            // The driver is gone: every waiting call learns it now.
            lock(&answers).clear();
        });

        let driver = Driver {
            stdin: tokio::sync::Mutex::new(Some(stdin)),
            pending,
            log,
            next_id: AtomicU64::new(1),
            timeout: options.command_timeout,
            child: Mutex::new(Some(child)),
            browser_pid: ready.browser_pid,
        };
        Ok(Browser { driver: Arc::new(driver), version: ready.version.unwrap_or_default() })
    }

    /// Chromium's version, e.g. `Chrome/156.0.8078.114`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The driver's log so far (its last lines): commands, page errors, refused cookies.
    pub fn log(&self) -> String {
        log_tail(&self.driver.log, LOG_LINES)
    }

    /// A new isolated context (no cookies).
    pub async fn new_context(&self) -> Result<Context> {
        #[derive(Deserialize)]
        struct Created {
            context: String,
        }
        let created: Created = self.driver.call("newContext", json!({}), "").await?;
        Ok(Context { driver: Arc::clone(&self.driver), id: created.context })
    }

    /// A new context with one page in it, the usual start of a test.
    pub async fn new_page(&self) -> Result<(Context, Page)> {
        let context = self.new_context().await?;
        let page = context.new_page().await?;
        Ok((context, page))
    }
}

impl Context {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub async fn new_page(&self) -> Result<Page> {
        #[derive(Deserialize)]
        struct Created {
            page: String,
        }
        let created: Created = self.driver.call("newPage", json!({ "context": self.id }), &self.id).await?;
        Ok(Page { driver: Arc::clone(&self.driver), id: created.page })
    }

    /// Every cookie of the context (`urls` empty), or those the browser would send to one of
    /// `urls`.
    pub async fn cookies(&self, urls: &[&str]) -> Result<Vec<Cookie>> {
        cookies(&self.driver, json!({ "context": self.id, "urls": urls }), &self.id).await
    }

    /// The cookie `name` the browser would send to `url`.
    pub async fn cookie(&self, url: &str, name: &str) -> Result<Option<Cookie>> {
        Ok(self.cookies(&[url]).await?.into_iter().find(|c| c.name == name))
    }

    pub async fn set_cookies(&self, cookies: &[SetCookie]) -> Result<()> {
        let _: Empty =
            self.driver.call("setCookie", json!({ "context": self.id, "cookies": cookies }), &self.id).await?;
        Ok(())
    }

    pub async fn delete_cookies(&self, cookies: &[DeleteCookie]) -> Result<()> {
        let _: Empty =
            self.driver.call("deleteCookies", json!({ "context": self.id, "cookies": cookies }), &self.id).await?;
        Ok(())
    }

    /// Empties the context's cookie jar.
    pub async fn clear_cookies(&self) -> Result<()> {
        let _: Empty = self.driver.call("deleteCookies", json!({ "context": self.id }), &self.id).await?;
        Ok(())
    }

    /// Closes the context and its pages.
    pub async fn close(self) -> Result<()> {
        let _: Empty = self.driver.call("closeContext", json!({ "context": self.id }), &self.id).await?;
        Ok(())
    }
}

async fn cookies(driver: &Driver, args: Value, what: &str) -> Result<Vec<Cookie>> {
    #[derive(Deserialize)]
    struct Cookies {
        cookies: Vec<Cookie>,
    }
    let answer: Cookies = driver.call("cookies", args, what).await?;
    Ok(answer.cookies)
}

impl Page {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Navigates to `url` and waits for its `load` event. A page that answers with an error
    /// status is still a navigation (`Ok`); a connection that fails is an `Err`
    /// (`net::ERR_CONNECTION_REFUSED at ...`).
    pub async fn goto(&self, url: &str) -> Result<Navigation> {
        self.goto_with(url, GotoOptions::default()).await
    }

    pub async fn goto_with(&self, url: &str, options: GotoOptions) -> Result<Navigation> {
        let mut args = serde_json::to_value(options).unwrap_or_else(|_| json!({}));
        args["page"] = json!(self.id);
        args["url"] = json!(url);
        self.driver.call_timed("goto", args, url).await
    }

    /// Signs in on the oidc-provider dev login page that the page shows (any login and
    /// password; skipped when the provider shows only its consent page), confirms the consent
    /// page if it comes, and answers the navigation that leaves the provider (to the redirect
    /// URI, and on from there). Call it while the page is at the provider.
    pub async fn fill_login(&self, login: &str, password: &str) -> Result<Navigation> {
        let args = json!({ "page": self.id, "login": login, "password": password });
        self.driver.call("fillLogin", args, login).await
    }

    /// Clicks the first element matching `selector` (waiting for it to appear) and waits for
    /// the navigation it starts.
    pub async fn click(&self, selector: &str) -> Result<Navigation> {
        self.driver.call("click", json!({ "page": self.id, "selector": selector }), selector).await
    }

    /// Clicks, with a timeout for the element and the navigation, or without waiting for a
    /// navigation (`navigation: false`; answers `None`).
    pub async fn click_with(&self, selector: &str, options: ClickOptions) -> Result<Option<Navigation>> {
        let mut args = json!({ "page": self.id, "selector": selector, "navigation": options.navigation });
        if let Some(timeout) = options.timeout {
            args["timeoutMs"] = json!(timeout.as_millis().max(1));
        }
        if options.navigation {
            Ok(Some(self.driver.call_timed("click", args, selector).await?))
        } else {
            let _: Empty = self.driver.call_timed("click", args, selector).await?;
            Ok(None)
        }
    }

    /// Waits until the page's URL starts with `prefix`; answers the URL.
    pub async fn wait_for_url(&self, prefix: &str) -> Result<String> {
        #[derive(Deserialize)]
        struct At {
            url: String,
        }
        let at: At = self.driver.call("waitForUrl", json!({ "page": self.id, "prefix": prefix }), prefix).await?;
        Ok(at.url)
    }

    /// The page's URL, title and text.
    pub async fn content(&self) -> Result<PageContent> {
        self.driver.call("content", json!({ "page": self.id }), &self.id).await
    }

    /// Evaluates a JavaScript expression in the page (promises are awaited); answers its JSON
    /// value.
    pub async fn evaluate(&self, expression: &str) -> Result<Value> {
        #[derive(Deserialize)]
        struct Evaluated {
            value: Value,
        }
        let args = json!({ "page": self.id, "expression": expression });
        Ok(self.driver.call::<Evaluated>("evaluate", args, expression).await?.value)
    }

    /// `fetch(url, init)` run by the page's own script.
    pub async fn fetch(&self, url: &str, init: FetchInit) -> Result<FetchResponse> {
        let mut args = serde_json::to_value(init).unwrap_or_else(|_| json!({}));
        args["page"] = json!(self.id);
        args["url"] = json!(url);
        self.driver.call("fetch", args, url).await
    }

    /// Cookies of the page's context: all of them (`urls` empty), or those it would send to
    /// one of `urls`.
    pub async fn cookies(&self, urls: &[&str]) -> Result<Vec<Cookie>> {
        cookies(&self.driver, json!({ "page": self.id, "urls": urls }), &self.id).await
    }

    pub async fn set_cookies(&self, cookies: &[SetCookie]) -> Result<()> {
        let _: Empty = self.driver.call("setCookie", json!({ "page": self.id, "cookies": cookies }), &self.id).await?;
        Ok(())
    }

    pub async fn delete_cookies(&self, cookies: &[DeleteCookie]) -> Result<()> {
        let _: Empty =
            self.driver.call("deleteCookies", json!({ "page": self.id, "cookies": cookies }), &self.id).await?;
        Ok(())
    }

    /// Keeps the page's requests to URLs starting with `prefix` inside the browser: each is
    /// answered 200 with a short page instead, so a navigation or redirect there ends at that
    /// URL without reaching the server. Use it to stop a login at its callback and look at (or
    /// alter) the URL first. Replaces an earlier hold.
    pub async fn hold_requests(&self, prefix: &str) -> Result<()> {
        let _: Empty = self.driver.call("hold", json!({ "page": self.id, "prefix": prefix }), prefix).await?;
        Ok(())
    }

    /// Lets every request through again.
    pub async fn release_requests(&self) -> Result<()> {
        let _: Empty = self.driver.call("hold", json!({ "page": self.id, "prefix": null }), &self.id).await?;
        Ok(())
    }

    /// The Set-Cookie headers Chromium refused on this page so far, with its reasons.
    pub async fn blocked_cookies(&self) -> Result<Vec<BlockedCookie>> {
        #[derive(Deserialize)]
        struct Blocked {
            cookies: Vec<BlockedCookie>,
        }
        let answer: Blocked = self.driver.call("blockedCookies", json!({ "page": self.id }), &self.id).await?;
        Ok(answer.cookies)
    }

    pub async fn close(self) -> Result<()> {
        let _: Empty = self.driver.call("closePage", json!({ "page": self.id }), &self.id).await?;
        Ok(())
    }
}
