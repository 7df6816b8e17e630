//! A real, certified OpenID provider for the tests: panva's `oidc-provider` from npm, run as
//! `node tests/oidc/provider.mjs` (config and control surface described in
//! `tests/oidc/README.md`), and a [`UserAgent`] that drives its login, consent and logout pages
//! over HTTP the way a browser would.
//!
//! ```ignore
//! let op = OidcProvider::start(OidcOptions::default());
//! let client = op.register_client(ClientSpec::web("http://shop.test/session/callback")).await;
//! // ... start tokengate with op.issuer(), client.client_id, client.client_secret ...
//! op.update_client(&client, &format!("http://{}/session/backchannel-logout", proxy.addr)).await;
//! let mut agent = op.user_agent();
//! let callback = agent.authorize(&location_from_tokengate, "alice@example.com").await?;
//! ```
//!
//! The provider's process is stopped by its PID when the `OidcProvider` drops. It must start:
//! a missing `node` or `tests/oidc/node_modules` fails the test with what to run.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

use super::{http_client, HttpClient, Reply};

/// The initial access token the provider requires for dynamic client registration.
pub const INITIAL_ACCESS_TOKEN: &str = "test-initial-access-token-7c1e";

const INSTALL_HINT: &str = "run `npm ci --prefix tests/oidc` (Node.js >= 20 is needed)";

/// Lifetimes, in seconds, of what the provider issues.
#[derive(Debug, Clone)]
pub struct OidcOptions {
    pub access_token_ttl: u64,
    pub id_token_ttl: u64,
    pub refresh_token_ttl: u64,
    pub session_ttl: u64,
}

impl Default for OidcOptions {
    fn default() -> Self {
        Self { access_token_ttl: 10, id_token_ttl: 60, refresh_token_ttl: 3600, session_ttl: 3600 }
    }
}

/// A running provider.
pub struct OidcProvider {
    child: Child,
    issuer: String,
    client: HttpClient,
    log_file: PathBuf,
    _dir: tempfile::TempDir,
}

/// Client metadata for dynamic registration (RFC 7591 names).
#[derive(Debug, Clone)]
pub struct ClientSpec {
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    pub backchannel_logout_uri: Option<String>,
    /// `client_secret_basic` or `client_secret_post`.
    pub token_endpoint_auth_method: String,
    /// Whether logout tokens carry `sid` (true by default).
    pub backchannel_logout_session_required: bool,
    /// `RS256` (the default) or `ES256`: how ID and logout tokens are signed.
    pub id_token_signed_response_alg: String,
}

impl ClientSpec {
    /// A confidential web client with one redirect URI, Basic auth, the code and refresh grants.
    pub fn web(redirect_uri: &str) -> ClientSpec {
        ClientSpec {
            redirect_uris: vec![redirect_uri.to_string()],
            post_logout_redirect_uris: Vec::new(),
            backchannel_logout_uri: None,
            token_endpoint_auth_method: "client_secret_basic".into(),
            backchannel_logout_session_required: true,
            id_token_signed_response_alg: "RS256".into(),
        }
    }

    fn metadata(&self) -> Value {
        let mut metadata = json!({
            "redirect_uris": self.redirect_uris,
            "post_logout_redirect_uris": self.post_logout_redirect_uris,
            "token_endpoint_auth_method": self.token_endpoint_auth_method,
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "backchannel_logout_session_required": self.backchannel_logout_session_required,
            "id_token_signed_response_alg": self.id_token_signed_response_alg,
        });
        if let Some(uri) = &self.backchannel_logout_uri {
            metadata["backchannel_logout_uri"] = json!(uri);
        }
        metadata
    }
}

/// What registration returned. `Debug` hides the secrets.
#[derive(Clone)]
pub struct RegisteredClient {
    pub client_id: String,
    pub client_secret: String,
    pub registration_access_token: String,
    pub registration_client_uri: String,
    pub token_endpoint_auth_method: String,
}

impl std::fmt::Debug for RegisteredClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisteredClient")
            .field("client_id", &self.client_id)
            .field("token_endpoint_auth_method", &self.token_endpoint_auth_method)
            .finish_non_exhaustive()
    }
}

impl RegisteredClient {
    /// Headers and form fields that authenticate this client at the token, revocation and
    /// introspection endpoints, by its registered method.
    fn authenticate(&self, form: &mut Vec<(String, String)>) -> Vec<(String, String)> {
        if self.token_endpoint_auth_method == "client_secret_post" {
            form.push(("client_id".into(), self.client_id.clone()));
            form.push(("client_secret".into(), self.client_secret.clone()));
            return Vec::new();
        }
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.client_id, self.client_secret));
        vec![("authorization".into(), format!("Basic {basic}"))]
    }
}

impl OidcProvider {
    /// Starts the provider on 127.0.0.1 and waits (at most 30 s) for its `listening on` line.
    /// Panics, saying what to install, when it cannot start.
    pub fn start(options: OidcOptions) -> OidcProvider {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc");
        assert!(
            root.join("node_modules/oidc-provider/package.json").is_file(),
            "oidc-provider is not installed in tests/oidc: {INSTALL_HINT}"
        );
        let dir = tempfile::tempdir().expect("a temporary directory for the provider's log");
        let log_file = dir.path().join("oidc-provider.log");
        let log = std::fs::File::create(&log_file).expect("the provider's log file");
        let mut command = Command::new("node");
        command
            .arg(root.join("provider.mjs"))
            .current_dir(&root)
            .env("OIDC_PORT", "0")
            .env("OIDC_INITIAL_ACCESS_TOKEN", INITIAL_ACCESS_TOKEN)
            .env("OIDC_TTL_ACCESS_TOKEN", options.access_token_ttl.to_string())
            .env("OIDC_TTL_ID_TOKEN", options.id_token_ttl.to_string())
            .env("OIDC_TTL_REFRESH_TOKEN", options.refresh_token_ttl.to_string())
            .env("OIDC_TTL_SESSION", options.session_ttl.to_string())
            .env("OIDC_TTL_GRANT", options.session_ttl.max(options.refresh_token_ttl).to_string())
            .env_remove("DEBUG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let (child, line) = spawn_node(command, &log_file);
        let Some(issuer) = line.split_whitespace().find(|w| w.starts_with("http://127.0.0.1:")) else {
            panic!("the OpenID provider announced no URL: {line:?}");
        };
        OidcProvider { child, issuer: issuer.to_string(), client: http_client(None), log_file, _dir: dir }
    }

    /// The issuer URL, `http://127.0.0.1:PORT` (discovery is at `/.well-known/openid-configuration`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The node process's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the provider wrote to stderr so far (its warnings and every error it answered).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    /// The discovery document.
    pub async fn discovery(&self) -> Value {
        self.get_json("/.well-known/openid-configuration").await
    }

    /// Registers a client (RFC 7591) with the initial access token.
    pub async fn register_client(&self, spec: ClientSpec) -> RegisteredClient {
        let reply = self
            .send(
                Method::POST,
                &format!("{}/reg", self.issuer),
                &[
                    ("authorization", &format!("Bearer {INITIAL_ACCESS_TOKEN}")),
                    ("content-type", "application/json"),
                ],
                spec.metadata().to_string(),
            )
            .await;
        assert_eq!(reply.status, 201, "client registration failed: {}", reply.text());
        let body = reply.json();
        let field = |name: &str| body[name].as_str().unwrap_or_default().to_string();
        RegisteredClient {
            client_id: field("client_id"),
            client_secret: field("client_secret"),
            registration_access_token: field("registration_access_token"),
            registration_client_uri: field("registration_client_uri"),
            token_endpoint_auth_method: field("token_endpoint_auth_method"),
        }
    }

    /// Sets the client's `backchannel_logout_uri` (RFC 7592 read, then full update), for
    /// when it is known only after the client (tokengate) has started. Returns the new metadata.
    pub async fn update_client(&self, client: &RegisteredClient, backchannel_logout_uri: &str) -> Value {
        let bearer = format!("Bearer {}", client.registration_access_token);
        let read =
            self.send(Method::GET, &client.registration_client_uri, &[("authorization", &bearer)], "").await;
        assert_eq!(read.status, 200, "reading the client's registration failed: {}", read.text());
        let mut metadata = read.json();
        if let Some(fields) = metadata.as_object_mut() {
            for forbidden in [
                "registration_access_token",
                "registration_client_uri",
                "client_secret_expires_at",
                "client_id_issued_at",
                "client_secret",
            ] {
                fields.remove(forbidden);
            }
        }
        metadata["backchannel_logout_uri"] = json!(backchannel_logout_uri);
        let headers = [("authorization", bearer.as_str()), ("content-type", "application/json")];
        let update =
            self.send(Method::PUT, &client.registration_client_uri, &headers, metadata.to_string()).await;
        assert_eq!(update.status, 200, "updating the client's registration failed: {}", update.text());
        update.json()
    }

    /// `GET /__test/stats`: `token.<grant_type>.<status>`, `revocation.<token_type_hint>.<status>`
    /// (`none` when no hint), `introspection`, `end_session` (confirmed logouts), and
    /// `backchannel_logout`: one `{url, status}` or `{url, error}` per delivery.
    pub async fn stats(&self) -> Value {
        self.get_json("/__test/stats").await
    }

    /// How many `grant_type` calls the token endpoint answered with `status`.
    pub async fn token_calls(&self, grant_type: &str, status: u16) -> u64 {
        self.stats().await["token"][grant_type][status.to_string()].as_u64().unwrap_or(0)
    }

    /// `GET /__test/tokens`: every successful token response, in order, as
    /// `{grant_type, grant_id, client_id, access_token, refresh_token, id_token,
    /// access_token_active, refresh_token_state}` where the state is `active`, `consumed`
    /// (rotated away), `expired` or `gone` (revoked).
    pub async fn tokens(&self) -> Vec<Value> {
        self.get_json("/__test/tokens").await.as_array().cloned().unwrap_or_default()
    }

    /// `GET /__test/grants`: `{grant_id, client_id, account_id, active}` for every grant.
    pub async fn grants(&self) -> Vec<Value> {
        self.get_json("/__test/grants").await.as_array().cloned().unwrap_or_default()
    }

    /// Every token value the token endpoint handed out (access, refresh and ID tokens), for a
    /// leak check: none of them may reach the browser or tokengate's log.
    pub async fn issued_token_values(&self) -> Vec<String> {
        let fields = ["access_token", "refresh_token", "id_token"];
        let tokens = self.tokens().await;
        tokens.iter().flat_map(|t| fields.iter().filter_map(|f| t[*f].as_str().map(str::to_string))).collect()
    }

    /// RFC 7662 introspection, authenticated as `client`.
    pub async fn introspect(&self, client: &RegisteredClient, token: &str) -> Value {
        let reply = self.client_post(client, "/token/introspection", &[("token", token)]).await;
        assert_eq!(reply.status, 200, "introspection failed: {}", reply.text());
        reply.json()
    }

    /// A token endpoint request as `client` (`grant_type` and the rest in `form`).
    pub async fn token_request(&self, client: &RegisteredClient, form: &[(&str, &str)]) -> Reply {
        self.client_post(client, "/token", form).await
    }

    /// RFC 7009 revocation as `client`.
    pub async fn revoke(&self, client: &RegisteredClient, token: &str, hint: Option<&str>) -> Reply {
        let mut form = vec![("token", token)];
        form.extend(hint.map(|h| ("token_type_hint", h)));
        self.client_post(client, "/token/revocation", &form).await
    }

    /// An authorization request URL (code flow, PKCE S256) for clients the test drives itself;
    /// tokengate's tests get theirs from `GET /session/authorize` instead.
    pub fn authorization_url(&self, client_id: &str, redirect_uri: &str, params: &[(&str, &str)]) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("client_id", client_id);
        query.append_pair("redirect_uri", redirect_uri);
        query.append_pair("response_type", "code");
        query.extend_pairs(params);
        format!("{}/auth?{}", self.issuer, query.finish())
    }

    /// The end_session endpoint with `params` (e.g. `client_id`, `post_logout_redirect_uri`,
    /// `state`, `id_token_hint`), for [`UserAgent::end_session`].
    pub fn end_session_url(&self, params: &[(&str, &str)]) -> String {
        let query = form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
        format!("{}/session/end?{query}", self.issuer)
    }

    /// A browser for the provider's pages, with an empty cookie jar.
    pub fn user_agent(&self) -> UserAgent {
        UserAgent { client: self.client.clone(), origin: self.issuer.clone(), jar: CookieJar::default() }
    }

    async fn client_post(&self, client: &RegisteredClient, path: &str, form: &[(&str, &str)]) -> Reply {
        let mut fields: Vec<(String, String)> =
            form.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let auth = client.authenticate(&mut fields);
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(&fields).finish();
        let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/x-www-form-urlencoded")];
        headers.extend(auth.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        self.send(Method::POST, &format!("{}{path}", self.issuer), &headers, body).await
    }

    async fn get_json(&self, path: &str) -> Value {
        let reply = self.send(Method::GET, &format!("{}{path}", self.issuer), &[], "").await;
        assert_eq!(reply.status, 200, "GET {path} at the provider: {}", reply.text());
        reply.json()
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<String>,
    ) -> Reply {
        send(&self.client, method, url, headers, body.into()).await
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        // Child::kill signals this child's PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns node and waits for its first stdout line; on failure, says what to install.
fn spawn_node(mut command: Command, log_file: &Path) -> (Child, String) {
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => panic!("cannot run `node` for the OpenID provider ({e}): {INSTALL_HINT}"),
    };
    let stdout = child.stdout.take().expect("a piped stdout");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = sender.send(line);
        let mut sink = String::new();
        while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    // Generous: under a full parallel test run on two cores, node takes a while to load
    // oidc-provider and make its keys (30 s was once not enough in CI).
    match receiver.recv_timeout(Duration::from_secs(90)) {
        Ok(line) if line.starts_with("listening on ") => (child, line),
        other => {
            let _ = child.kill();
            let status = child.wait().ok();
            let log = std::fs::read_to_string(log_file).unwrap_or_default();
            panic!(
                "the OpenID provider did not start (exit {status:?}, stdout {other:?}); {INSTALL_HINT}\n\
                 --- its stderr:\n{log}"
            );
        }
    }
}

async fn send(
    client: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: String,
) -> Reply {
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(Bytes::from(body))).expect("a valid request");
    let response = client.request(request).await.expect("the OpenID provider answers");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    Reply { status, headers, body }
}

/// Whether to approve or cancel at the consent page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consent {
    Approve,
    /// Follows the page's "Cancel" link: the provider redirects with `error=access_denied`.
    Deny,
}

/// A browser on the provider's pages: follows redirects on the provider's origin with a
/// cookie jar, fills the devInteractions login form (any login name is an account; the
/// password is ignored), approves consent, and stops at the first redirect that leaves the
/// provider, which is the client's `redirect_uri` (or `post_logout_redirect_uri`).
pub struct UserAgent {
    client: HttpClient,
    origin: String,
    jar: CookieJar,
}

impl UserAgent {
    /// Drives an authorization request to its end and returns the URL the provider sent the
    /// browser to (`redirect_uri?code=…&state=…&iss=…`, or `?error=…`). An error page at the
    /// provider (e.g. an unregistered `redirect_uri`) is `Err` with its status and text.
    pub async fn authorize(&mut self, authorization_url: &str, login: &str) -> Result<String, String> {
        self.authorize_with(authorization_url, login, Consent::Approve).await
    }

    pub async fn authorize_with(
        &mut self,
        authorization_url: &str,
        login: &str,
        consent: Consent,
    ) -> Result<String, String> {
        let mut next = Step::get(authorization_url);
        for _ in 0..20 {
            let page = match self.follow(next).await? {
                Landing::Left(url) => return Ok(url),
                Landing::Page(page) => page,
            };
            let form = Form::first(&page.html).ok_or_else(|| {
                format!("no form on the provider's page {}: {}", page.url, excerpt(&page.html))
            })?;
            next = match (form.has_field("login"), form.field("prompt"), consent) {
                (true, _, _) => form.submit(&page.url, &[("login", login), ("password", "any-password")]),
                (false, Some("consent"), Consent::Deny) => {
                    Step::get(&resolve(&page.url, &abort_link(&page.html)?))
                }
                (false, _, _) => form.submit(&page.url, &[]),
            };
        }
        Err("the provider's pages did not end in a redirect within 20 steps".into())
    }

    /// RP-initiated logout: opens `end_session_url` (see [`OidcProvider::end_session_url`]),
    /// confirms "Yes, sign me out" (the form's `xsrf` plus `logout=yes`), which makes the
    /// provider send a back-channel logout token to every client of the session, and returns
    /// where the browser ended: the `post_logout_redirect_uri` (off the provider) or the
    /// provider's own "signed out" page URL.
    pub async fn end_session(&mut self, end_session_url: &str) -> Result<String, String> {
        let page = match self.follow(Step::get(end_session_url)).await? {
            Landing::Left(url) => return Ok(url),
            Landing::Page(page) => page,
        };
        let form = Form::first(&page.html)
            .ok_or_else(|| format!("no logout form at {}: {}", page.url, excerpt(&page.html)))?;
        match self.follow(form.submit(&page.url, &[("logout", "yes")])).await? {
            Landing::Left(url) => Ok(url),
            Landing::Page(page) => Ok(page.url),
        }
    }

    /// Sends `step`, then follows redirects on the provider's origin until a page (200) or a
    /// redirect elsewhere.
    async fn follow(&mut self, mut step: Step) -> Result<Landing, String> {
        for _ in 0..20 {
            let mut headers = Vec::new();
            let cookies = self.jar.header_for(path_of(&step.url));
            if !cookies.is_empty() {
                headers.push(("cookie", cookies.as_str()));
            }
            if step.method == Method::POST {
                headers.push(("content-type", "application/x-www-form-urlencoded"));
            }
            let reply = send(&self.client, step.method.clone(), &step.url, &headers, step.body.clone()).await;
            for set_cookie in reply.set_cookies() {
                self.jar.store(&set_cookie);
            }
            if reply.status.is_redirection() {
                let location =
                    reply.headers.get("location").and_then(|v| v.to_str().ok()).unwrap_or_default();
                let target = resolve(&step.url, location);
                if !target.starts_with(&format!("{}/", self.origin)) {
                    return Ok(Landing::Left(target));
                }
                step = Step::get(&target);
                continue;
            }
            if reply.status != 200 {
                return Err(format!("{} at {}: {}", reply.status, step.url, excerpt(&reply.text())));
            }
            return Ok(Landing::Page(Page { url: step.url, html: reply.text() }));
        }
        Err("more than 20 redirects at the provider".into())
    }
}

enum Landing {
    /// A redirect to a URL off the provider.
    Left(String),
    Page(Page),
}

struct Page {
    url: String,
    html: String,
}

struct Step {
    method: Method,
    url: String,
    body: String,
}

impl Step {
    fn get(url: &str) -> Step {
        Step { method: Method::GET, url: url.to_string(), body: String::new() }
    }
}

/// The first `<form>` of a page: its action, method and named `<input>`s (hidden values kept).
struct Form {
    action: String,
    method: Method,
    fields: Vec<(String, String)>,
}

impl Form {
    fn first(html: &str) -> Option<Form> {
        let start = html.find("<form")?;
        let tag_end = start + html[start..].find('>')?;
        let tag = &html[start..tag_end];
        let end = html[tag_end..].find("</form>").map_or(html.len(), |e| tag_end + e);
        let method = if attribute(tag, "method").is_some_and(|m| m.eq_ignore_ascii_case("post")) {
            Method::POST
        } else {
            Method::GET
        };
        let mut fields = Vec::new();
        let mut rest = &html[tag_end..end];
        while let Some(at) = rest.find("<input") {
            let input_end = at + rest[at..].find('>').unwrap_or(rest.len() - at);
            let input = &rest[at..input_end];
            if let Some(name) = attribute(input, "name") {
                fields.push((name, attribute(input, "value").unwrap_or_default()));
            }
            rest = &rest[input_end..];
        }
        Some(Form { action: attribute(tag, "action").unwrap_or_default(), method, fields })
    }

    fn has_field(&self, name: &str) -> bool {
        self.fields.iter().any(|(n, _)| n == name)
    }

    fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The request submitting this form from `page_url`, with `values` set (replacing or added).
    fn submit(&self, page_url: &str, values: &[(&str, &str)]) -> Step {
        let mut fields = self.fields.clone();
        for (name, value) in values {
            match fields.iter_mut().find(|(n, _)| n == name) {
                Some(field) => field.1 = value.to_string(),
                None => fields.push((name.to_string(), value.to_string())),
            }
        }
        let encoded = form_urlencoded::Serializer::new(String::new()).extend_pairs(&fields).finish();
        let action =
            if self.action.is_empty() { page_url.to_string() } else { resolve(page_url, &self.action) };
        if self.method == Method::POST {
            Step { method: Method::POST, url: action, body: encoded }
        } else {
            Step::get(&format!("{action}?{encoded}"))
        }
    }
}

/// The consent page's "[ Cancel ]" link (`…/interaction/UID/abort`).
fn abort_link(html: &str) -> Result<String, String> {
    html.split("href=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(unescape)
        .find(|href| href.ends_with("/abort"))
        .ok_or_else(|| format!("no cancel link on the consent page: {}", excerpt(html)))
}

/// The value of `name="…"` (or `name='…'`) in one tag, unescaped.
fn attribute(tag: &str, name: &str) -> Option<String> {
    let mut rest = tag;
    while let Some(at) = rest.find(name) {
        let before_ok = rest[..at].ends_with(|c: char| c.is_ascii_whitespace());
        let after = rest[at + name.len()..].trim_start();
        if let (true, Some(value)) = (before_ok, after.strip_prefix('=')) {
            let value = value.trim_start();
            let quote = value.chars().next().filter(|q| *q == '"' || *q == '\'')?;
            let inner = &value[1..];
            return inner.find(quote).map(|end| unescape(&inner[..end]));
        }
        rest = &rest[at + name.len()..];
    }
    None
}

/// The few HTML entities oidc-provider's templates produce in attribute values.
fn unescape(value: &str) -> String {
    value
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&#x2F;", "/")
        .replace("&#47;", "/")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// `location` resolved against `base` (absolute URLs pass through).
fn resolve(base: &str, location: &str) -> String {
    url::Url::parse(base)
        .and_then(|b| b.join(location))
        .map(String::from)
        .unwrap_or_else(|_| location.to_string())
}

fn path_of(url: &str) -> String {
    url::Url::parse(url).map(|u| u.path().to_string()).unwrap_or_else(|_| "/".into())
}

fn excerpt(text: &str) -> String {
    text.chars().take(400).collect()
}

/// A cookie jar for one host: cookies by (name, path), sent on path-match (RFC 6265 5.1.4),
/// removed by `Max-Age<=0`, an `Expires` in a past year, or an empty value. Enough for
/// oidc-provider, which scopes its interaction cookies to `/interaction/UID` and `/auth/UID`.
#[derive(Default)]
struct CookieJar {
    cookies: Vec<Cookie>,
}

struct Cookie {
    name: String,
    value: String,
    path: String,
}

impl CookieJar {
    fn store(&mut self, set_cookie: &str) {
        let mut parts = set_cookie.split(';');
        let Some((name, value)) = parts.next().and_then(|p| p.split_once('=')) else { return };
        let (name, value) = (name.trim().to_string(), value.trim().to_string());
        let mut path = "/".to_string();
        let mut expired = value.is_empty();
        for attr in parts {
            let (key, val) = attr.split_once('=').unwrap_or((attr, ""));
            match key.trim().to_ascii_lowercase().as_str() {
                "path" if val.trim().starts_with('/') => path = val.trim().to_string(),
                "max-age" => expired |= val.trim().parse::<i64>().is_ok_and(|s| s <= 0),
                "expires" => expired |= expires_in_past_year(val),
                _ => {}
            }
        }
        self.cookies.retain(|c| !(c.name == name && c.path == path));
        if !expired {
            self.cookies.push(Cookie { name, value, path });
        }
    }

    /// The `Cookie` header for a request to `path`: longer paths first.
    fn header_for(&self, path: String) -> String {
        let mut matching: Vec<&Cookie> =
            self.cookies.iter().filter(|c| path_matches(&c.path, &path)).collect();
        matching.sort_by_key(|c| std::cmp::Reverse(c.path.len()));
        matching.iter().map(|c| format!("{}={}", c.name, c.value)).collect::<Vec<_>>().join("; ")
    }
}

fn path_matches(cookie_path: &str, request_path: &str) -> bool {
    request_path == cookie_path
        || (request_path.starts_with(cookie_path)
            && (cookie_path.ends_with('/') || request_path[cookie_path.len()..].starts_with('/')))
}

/// Whether an HTTP date (`Thu, 01 Jan 1970 00:00:00 GMT`) lies in a year before this one:
/// how a server deletes a cookie. Finer expiry does not matter within one test.
fn expires_in_past_year(date: &str) -> bool {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let this_year = 1970 + now.as_secs() / 31_556_952;
    date.split_whitespace().filter_map(|w| w.parse::<u64>().ok()).any(|y| y >= 1970 && y < this_year)
}

/// The claims of a JWT (its payload, not verified: the tests read what the provider sent).
pub fn jwt_claims(jwt: &str) -> Value {
    jwt_part(jwt, 1)
}

/// The header of a JWT.
pub fn jwt_header(jwt: &str) -> Value {
    jwt_part(jwt, 0)
}

fn jwt_part(jwt: &str, index: usize) -> Value {
    let part = jwt.split('.').nth(index).unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

/// A PKCE pair: a random `verifier` and its S256 `challenge`.
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

impl Pkce {
    pub fn new() -> Pkce {
        use sha2::Digest as _;
        let verifier = random_token();
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(verifier.as_bytes()));
        Pkce { verifier, challenge }
    }
}

impl Default for Pkce {
    fn default() -> Self {
        Pkce::new()
    }
}

/// 32 random bytes, base64url: for `state`, `nonce` and PKCE verifiers.
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The query parameters of a URL, by name (first value wins).
pub fn query_params(url: &str) -> std::collections::HashMap<String, String> {
    let mut params = std::collections::HashMap::new();
    if let Ok(url) = url::Url::parse(url) {
        for (k, v) in url.query_pairs() {
            params.entry(k.into_owned()).or_insert_with(|| v.into_owned());
        }
    }
    params
}
