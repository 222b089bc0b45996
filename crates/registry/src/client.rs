//! The connection machinery: one HTTP client per registry host (its own TLS roots), scheme
//! detection, `WWW-Authenticate` handling with a token cache per scope, and retries.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header::{HeaderMap, AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{RequestBuilder, Response, StatusCode, Url};
use tokio::sync::OnceCell;

use crate::auth::{AuthStore, Credential, Stored};
use crate::challenge::{self, Challenge};
use crate::error::{hint_for, RegistryError};
use crate::hosts::RegistryConfig;
use crate::tls::{self, IssuerSlot};
use crate::Error;

/// How the client finds credentials and certificates, and how hard it retries.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// docker's config directory; `None` means `$DOCKER_CONFIG` or `~/.docker`.
    pub docker_config_dir: Option<PathBuf>,
    /// Run `docker-credential-*` helpers from here instead of `PATH` (tests, bundled helpers).
    pub credential_helper_dir: Option<PathBuf>,
    /// Directories holding `HOST[:PORT]/*.crt`, `client.cert`, `client.key`. The first is where
    /// error messages tell users to put a CA.
    pub certs_dirs: Vec<PathBuf>,
    /// Hosts (`name[:port]`) reached over HTTPS without verification, or plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Retries after the first attempt, for connection errors, 429 and 5xx.
    pub max_retries: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// The longest `Retry-After` honored; longer ones are cut to this.
    pub retry_after_max: Duration,
    pub connect_timeout: Duration,
    /// A blob download that delivers nothing for this long counts as dropped (and resumes).
    pub read_timeout: Duration,
    /// A blob download that moves less than [`STALL_MIN_BYTES`] in this long (a peer that
    /// trickles) is stalled: it is dropped and resumes from where it got, and after
    /// `max_retries` stalls fails naming the host and the blob. The CLI reads
    /// `MANIFOLD_STALL_TIMEOUT` (seconds).
    pub stall_timeout: Duration,
    /// The whole of a request that moves no blob (manifests, listings, tokens, an upload's
    /// final PUT). Blob bodies have no total limit: a layer takes as long as it takes.
    pub request_timeout: Duration,
    pub user_agent: String,
    /// Blobs up to this size go in one PUT; larger ones in PATCH chunks of `chunk_size`.
    pub monolithic_max: u64,
    pub chunk_size: u64,
    /// `n` for tag and catalog listings; `None` lets the registry choose.
    pub page_size: Option<u32>,
    /// Per-registry settings (mirrors, plain HTTP, insecure, CAs, key pairs), buildkitd.toml's
    /// `[registry."NAME"]` tables.
    pub registries: RegistryConfig,
}

/// Retries after the first attempt for a mirror: a mirror that fails is passed over for the
/// next host, not waited for.
const MIRROR_RETRIES: u32 = 1;

/// Less than this in a `stall_timeout` window is a stall (16 KiB a minute by default: any
/// working link does far better).
pub const STALL_MIN_BYTES: u64 = 16 << 10;

impl Default for ClientOptions {
    fn default() -> Self {
        let mut certs_dirs = vec![PathBuf::from("/etc/docker/certs.d")];
        if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            certs_dirs.push(PathBuf::from(home).join(".docker/certs.d"));
        }
        certs_dirs.push(PathBuf::from("/etc/containers/certs.d"));
        ClientOptions {
            docker_config_dir: None,
            credential_helper_dir: None,
            certs_dirs,
            insecure_registries: Vec::new(),
            max_retries: 5,
            backoff_base: Duration::from_millis(250),
            backoff_max: Duration::from_secs(20),
            retry_after_max: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(120),
            stall_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(300),
            user_agent: concat!("manifold/", env!("CARGO_PKG_VERSION")).to_string(),
            monolithic_max: 16 << 20,
            chunk_size: 64 << 20,
            page_size: None,
            registries: RegistryConfig::default(),
        }
    }
}

/// A registry client. Cheap to clone; clones share connections and the token cache.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) opts: ClientOptions,
    auth: Option<AuthStore>,
    hosts: Mutex<HashMap<String, Arc<OnceCell<Arc<Host>>>>>,
    /// Clients for token endpoints, by `host[:port]`.
    realm_clients: Mutex<HashMap<String, reqwest::Client>>,
    /// Credentials given directly (login verification), preferred over config.json.
    overrides: Mutex<HashMap<String, Credential>>,
    /// Mirrors that could not be reached, passed over for the rest of this client's life.
    mirrors_down: Mutex<HashMap<String, String>>,
    /// Which host served what, for registries with mirrors: by (registry, host).
    served: Mutex<std::collections::BTreeMap<(String, String), MirrorUse>>,
}

/// What one host did for pulls from one registry that has mirrors.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MirrorUse {
    /// The registry the references name (`docker.io`, `HOST[:PORT]`).
    pub registry: String,
    /// The host that was asked: a mirror, or the registry's own API host.
    pub host: String,
    pub is_mirror: bool,
    /// Manifests and blobs it served.
    pub manifests: u32,
    pub blobs: u32,
    /// Requests it could not serve (unreachable, refused, missing, wrong content); the next
    /// host was asked instead.
    pub failures: u32,
    pub first_failure: Option<String>,
}

/// What a pull asked for, for [`MirrorUse`].
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    Manifest,
    Blob,
}

/// What we know about one registry host.
pub(crate) struct Host {
    pub(crate) name: String,
    pub(crate) base: Url,
    pub(crate) http: reqwest::Client,
    challenge: Mutex<Challenge>,
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    /// Retries after the first attempt for requests to this host.
    pub(crate) retries: u32,
    /// One token fetch at a time per host, so parallel transfers share the first answer.
    token_fetch: tokio::sync::Mutex<()>,
    creds: OnceCell<Option<Credential>>,
}

impl Host {
    fn new(name: String, base: Url, http: reqwest::Client, retries: u32) -> Self {
        Host {
            name,
            base,
            http,
            challenge: Mutex::new(Challenge::None),
            tokens: Mutex::new(HashMap::new()),
            retries,
            token_fetch: tokio::sync::Mutex::new(()),
            creds: OnceCell::new(),
        }
    }
}

/// Adds `auth` to a request only when it goes to the host the credentials or token were issued
/// for (same scheme, host and port as its API base): a registry may name another host in an
/// upload `Location`, and that host gets nothing. Returns whether the header was added.
/// A request that cannot be built is handed back as its error.
pub(crate) fn authorize(
    rb: RequestBuilder,
    host: &Host,
    auth: Option<&str>,
) -> Result<(RequestBuilder, bool), reqwest::Error> {
    let Some(auth) = auth else {
        return Ok((rb, false));
    };
    let (client, req) = rb.build_split();
    let mut req = req?;
    let mut sent = false;
    if same_origin(req.url(), &host.base) {
        if let Ok(mut v) = reqwest::header::HeaderValue::from_str(auth) {
            v.set_sensitive(true);
            req.headers_mut().insert(AUTHORIZATION, v);
            sent = true;
        }
    }
    Ok((RequestBuilder::from_parts(client, req), sent))
}

pub(crate) fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str().map(|h| h.to_ascii_lowercase())
            == b.host_str().map(|h| h.to_ascii_lowercase())
        && a.port_or_known_default() == b.port_or_known_default()
}

/// What a request is for, for error messages.
pub(crate) struct Op<'a> {
    pub(crate) name: &'a str,
    pub(crate) reference: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

pub(crate) fn scope(repository: &str, actions: &str) -> String {
    format!("repository:{repository}:{actions}")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another task panicked mid-update of a cache; the data is
    // still usable, as every update is a single insert.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Client {
    pub fn new(opts: ClientOptions) -> Result<Client, Error> {
        if opts.chunk_size == 0 {
            return Err(Error::Invalid("chunk_size must be positive".into()));
        }
        let dir = opts
            .docker_config_dir
            .clone()
            .or_else(crate::auth::default_config_dir);
        let auth =
            dir.map(|d| AuthStore::new(d).with_helper_dir(opts.credential_helper_dir.clone()));
        Ok(Client {
            inner: Arc::new(Inner {
                opts,
                auth,
                hosts: Mutex::new(HashMap::new()),
                realm_clients: Mutex::new(HashMap::new()),
                overrides: Mutex::new(HashMap::new()),
                mirrors_down: Mutex::new(HashMap::new()),
                served: Mutex::new(std::collections::BTreeMap::new()),
            }),
        })
    }

    pub fn options(&self) -> &ClientOptions {
        &self.inner.opts
    }

    /// The credential store this client reads (`None` when no config directory is known).
    pub fn auth_store(&self) -> Option<&AuthStore> {
        self.inner.auth.as_ref()
    }

    /// Use `cred` for `registry` instead of what config.json says.
    pub fn set_credential(&self, registry: &str, cred: Credential) {
        lock(&self.inner.overrides).insert(api_host(registry).to_string(), cred);
    }

    /// Checks that the registry answers `/v2/` (and learns how it wants to be authenticated).
    pub async fn ping(&self, registry: &str) -> Result<(), Error> {
        self.host(registry).await.map(|_| ())
    }

    /// Checks `cred` against the registry as docker login does, then stores it in config.json
    /// (or its credential helper).
    pub async fn login(&self, registry: &str, cred: Credential) -> Result<Stored, Error> {
        let store = self.inner.auth.clone().ok_or_else(|| {
            Error::Invalid("no docker config directory: set DOCKER_CONFIG or HOME".into())
        })?;
        // A fresh client, so neither cached tokens nor stored credentials mask a bad password.
        let probe = Client::new(self.inner.opts.clone())?;
        probe.set_credential(registry, cred.clone());
        probe.verify_credentials(registry).await.map_err(|mut e| {
            if let Error::Refused {
                status: 401, hint, ..
            } = &mut e
            {
                *hint = "unauthorized: wrong username or password".into();
            }
            e
        })?;
        store.login(registry, &cred).await
    }

    /// Removes the stored login for `registry`; returns whether there was one.
    pub async fn logout(&self, registry: &str) -> Result<bool, Error> {
        let store = self.inner.auth.clone().ok_or_else(|| {
            Error::Invalid("no docker config directory: set DOCKER_CONFIG or HOME".into())
        })?;
        store.logout(registry).await
    }

    async fn verify_credentials(&self, registry: &str) -> Result<(), Error> {
        let host = self.host(registry).await?;
        let op = Op {
            name: "login to",
            reference: registry.to_string(),
        };
        let ch = lock(&host.challenge).clone();
        match ch {
            Challenge::None => Ok(()),
            Challenge::Basic => {
                let url = self.url(&host, "v2/")?;
                let resp = self
                    .request(&host, &[], &op, &|c: &reqwest::Client| c.get(url.clone()))
                    .await?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(self.refused(&host, &op, resp).await)
                }
            }
            Challenge::Bearer { .. } => self.token(&host, &[], true, &op).await.map(|_| ()),
        }
    }

    pub(crate) fn url(&self, host: &Host, path: &str) -> Result<Url, Error> {
        host.base.join(path).map_err(|e| Error::Protocol {
            op: "building URL".into(),
            reference: path.into(),
            host: host.name.clone(),
            reason: e.to_string(),
        })
    }

    fn is_insecure(&self, host: &str) -> bool {
        let bare = host.split(':').next().unwrap_or(host);
        self.inner
            .opts
            .insecure_registries
            .iter()
            .any(|h| h == host || h == bare)
            || self
                .inner
                .opts
                .registries
                .host(host)
                .is_some_and(|c| c.insecure || c.http)
    }

    /// Does the registry config say `http = true` for this host?
    fn plain_only(&self, host: &str) -> bool {
        self.inner
            .opts
            .registries
            .host(host)
            .is_some_and(|c| c.http)
    }

    fn build_http(
        &self,
        host: &str,
        insecure: bool,
        slot: Arc<IssuerSlot>,
    ) -> Result<reqwest::Client, Error> {
        let o = &self.inner.opts;
        let (cas, keypair) = match o.registries.host(host) {
            Some(c) => (
                c.ca.as_slice(),
                c.keypair.first().map(|k| (k.cert.clone(), k.key.clone())),
            ),
            None => (&[][..], None),
        };
        let tls = tls::client_config(host, &o.certs_dirs, cas, keypair, insecure, slot)?;
        reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .user_agent(o.user_agent.clone())
            .connect_timeout(o.connect_timeout)
            // No client-wide read timeout: it would also fire while a long chunk is being
            // sent and the registry, rightly, says nothing. Keepalive finds dead peers.
            .tcp_keepalive(Duration::from_secs(30))
            .tcp_keepalive_interval(Duration::from_secs(10))
            .tcp_keepalive_retries(3u32)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| Error::Tls {
                host: host.into(),
                reason: format!("building the HTTP client: {e}"),
            })
    }

    /// The connection state for `registry`, pinging it the first time.
    pub(crate) async fn host(&self, registry: &str) -> Result<Arc<Host>, Error> {
        let registry = api_host(registry);
        let cell = lock(&self.inner.hosts)
            .entry(registry.to_string())
            .or_default()
            .clone();
        cell.get_or_try_init(|| self.connect(registry, self.inner.opts.max_retries))
            .await
            .cloned()
    }

    /// The connection state for a mirror, kept apart from the same host used directly: a
    /// mirror gets fewer retries, since the next host is there to ask.
    async fn mirror_host(&self, name: &str) -> Result<Arc<Host>, Error> {
        let cell = lock(&self.inner.hosts)
            .entry(format!("{name} (mirror)"))
            .or_default()
            .clone();
        cell.get_or_try_init(|| self.connect(name, MIRROR_RETRIES))
            .await
            .cloned()
    }

    /// The hosts to pull content of `registry` from, in order: its mirrors that are not known
    /// to be down, then the registry itself (by its reference name; `host` maps it).
    pub(crate) fn pull_candidates(&self, registry: &str) -> Vec<(String, bool)> {
        let down = lock(&self.inner.mirrors_down);
        let mut out: Vec<(String, bool)> = self
            .inner
            .opts
            .registries
            .mirrors(registry)
            .iter()
            .filter(|m| !down.contains_key(*m))
            .map(|m| (m.clone(), true))
            .collect();
        out.push((registry.to_string(), false));
        out
    }

    /// Connects to a pull candidate.
    pub(crate) async fn candidate(&self, name: &str, mirror: bool) -> Result<Arc<Host>, Error> {
        if mirror {
            self.mirror_host(name).await
        } else {
            self.host(name).await
        }
    }

    /// Connects to the first of `cands` that answers, removing it and any before it from the
    /// list; mirrors that fail are recorded. The registry itself is last, and its error is
    /// returned as it is.
    pub(crate) async fn connect_first(
        &self,
        registry: &str,
        cands: &mut Vec<(String, bool)>,
    ) -> Result<(Arc<Host>, bool), Error> {
        while !cands.is_empty() {
            let (name, mirror) = cands.remove(0);
            match self.candidate(&name, mirror).await {
                Ok(h) => return Ok((h, mirror)),
                Err(e) if mirror => self.note_mirror_failure(registry, &name, &e),
                Err(e) => return Err(e),
            }
        }
        Err(Error::Invalid(format!(
            "no host to pull from for {registry}"
        )))
    }

    /// Does `registry` have mirrors configured (so pulls say which host served)?
    pub(crate) fn has_mirrors(&self, registry: &str) -> bool {
        !self.inner.opts.registries.mirrors(registry).is_empty()
    }

    /// Records that `host` served a pull from `registry`.
    pub(crate) fn note_served(&self, registry: &str, host: &str, mirror: bool, kind: Kind) {
        if !self.has_mirrors(registry) {
            return;
        }
        tracing::info!(registry, host, mirror, "served by {host}");
        self.with_use(registry, host, mirror, |u| match kind {
            Kind::Manifest => u.manifests += 1,
            Kind::Blob => u.blobs += 1,
        });
    }

    /// Updates what `host` did for pulls from `registry`.
    fn with_use(&self, registry: &str, host: &str, mirror: bool, f: impl FnOnce(&mut MirrorUse)) {
        let mut s = lock(&self.inner.served);
        f(s.entry((registry.to_string(), host.to_string()))
            .or_insert_with(|| MirrorUse {
                registry: registry.to_string(),
                host: host.to_string(),
                is_mirror: mirror,
                ..MirrorUse::default()
            }));
    }

    /// Records that mirror `host` could not serve a pull from `registry`; a mirror that cannot
    /// be reached is not asked again.
    pub(crate) fn note_mirror_failure(&self, registry: &str, host: &str, e: &Error) {
        let reason = e.to_string();
        tracing::info!(
            registry,
            host,
            "mirror failed, trying the next host: {reason}"
        );
        if matches!(
            e,
            Error::Unreachable { .. }
                | Error::Connect { .. }
                | Error::Tls { .. }
                | Error::Certificate { .. }
                | Error::PlainHttp { .. }
        ) {
            lock(&self.inner.mirrors_down).insert(host.to_string(), reason.clone());
        }
        self.with_use(registry, host, true, |u| {
            u.failures += 1;
            u.first_failure.get_or_insert(reason);
        });
    }

    /// Which hosts served pulls from registries that have mirrors, and which mirrors failed,
    /// for progress output.
    pub fn mirror_report(&self) -> Vec<MirrorUse> {
        lock(&self.inner.served).values().cloned().collect()
    }

    /// Runs `f` against each pull candidate of `registry` in turn (mirrors, then the registry),
    /// returning the first success; a mirror's failure is recorded and the next host asked.
    pub(crate) async fn pull_through<T, F, Fut>(
        &self,
        registry: &str,
        kind: Kind,
        f: F,
    ) -> Result<T, Error>
    where
        F: Fn(Arc<Host>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        for (name, mirror) in self.pull_candidates(registry) {
            if !mirror {
                let host = self.host(&name).await?;
                let v = f(host.clone()).await?;
                self.note_served(registry, &host.name, false, kind);
                return Ok(v);
            }
            let r = match self.mirror_host(&name).await {
                Ok(host) => f(host).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(v) => {
                    self.note_served(registry, &name, true, kind);
                    return Ok(v);
                }
                Err(e) => self.note_mirror_failure(registry, &name, &e),
            }
        }
        Err(Error::Invalid(format!(
            "no host to pull from for {registry}"
        )))
    }

    fn ca_path(&self, host: &str) -> PathBuf {
        self.inner
            .opts
            .certs_dirs
            .first()
            .cloned()
            .unwrap_or_else(|| PathBuf::from("/etc/docker/certs.d"))
            .join(host)
            .join("ca.crt")
    }

    /// A TLS failure as an error that says what to do; `None` when the peer does not speak
    /// TLS at all (a plain-HTTP port) or the failure is not about TLS.
    fn tls_error(&self, host: &str, e: &reqwest::Error, slot: &IssuerSlot) -> Option<Error> {
        let dir = self.ca_path(host);
        let dir = dir.parent().unwrap_or(&dir);
        match tls::find_rustls_error(e)? {
            rustls::Error::InvalidCertificate(ce) => Some(Error::Certificate {
                host: host.into(),
                issuer: slot.take(),
                reason: describe_cert_error(ce),
                ca_path: self.ca_path(host),
            }),
            rustls::Error::InvalidMessage(_) => None,
            rustls::Error::AlertReceived(alert) => Some(Error::Tls {
                host: host.into(),
                reason: format!(
                    "the registry ended the TLS handshake ({alert:?}); if it requires a client certificate, put client.cert and client.key in {}",
                    dir.display()
                ),
            }),
            other => Some(Error::Tls {
                host: host.into(),
                reason: other.to_string(),
            }),
        }
    }

    /// Finds the scheme: HTTPS first, then plain HTTP for loopback and insecure hosts (as
    /// docker does, which also skips certificate checks for them). A plain-HTTP port reached
    /// over HTTPS for any other host fails at once, naming the flag that allows it.
    async fn connect(&self, name: &str, retries: u32) -> Result<Arc<Host>, Error> {
        let plain_ok = self.is_insecure(name) || tls::is_loopback(name);
        let plain_only = self.plain_only(name);
        let insecure = plain_ok;
        let slot = Arc::new(IssuerSlot::default());
        let http = self.build_http(name, insecure, slot.clone())?;
        let op = Op {
            name: "ping",
            reference: name.to_string(),
        };
        let mut errors = Vec::new();
        for scheme in ["https", "http"] {
            if scheme == "http" && !plain_ok {
                break;
            }
            if scheme == "https" && plain_only {
                continue;
            }
            let base = Url::parse(&format!("{scheme}://{name}/")).map_err(|e| {
                Error::Invalid(format!("registry host {name:?} does not make a URL: {e}"))
            })?;
            let ping = base
                .join("v2/")
                .map_err(|e| Error::Invalid(e.to_string()))?;
            // Probing HTTPS on a plain-HTTP loopback registry must not spend the retry budget.
            let tries = if scheme == "https" && plain_ok {
                0
            } else {
                retries
            };
            let host = Host::new(name.to_string(), base.clone(), http.clone(), retries);
            // A loopback port that is not TLS may never answer a ClientHello (plain TCP
            // proxies do not): do not wait the full connect timeout before trying HTTP.
            let probe_limit = if scheme == "https" && tls::is_loopback(name) {
                Some(Duration::from_secs(3))
            } else {
                None
            };
            match self
                .execute(
                    &host,
                    &op,
                    tries,
                    &|| {
                        let rb = http.get(ping.clone());
                        match probe_limit {
                            Some(t) => rb.timeout(t),
                            None => rb,
                        }
                    },
                    Some(&slot),
                )
                .await
            {
                Ok(resp) => {
                    let status = resp.status();
                    let ch = if status == StatusCode::UNAUTHORIZED {
                        www_authenticate(resp.headers()).unwrap_or(Challenge::Basic)
                    } else if status.is_success() {
                        Challenge::None
                    } else {
                        let mut e = self.refused(&host, &op, resp).await;
                        if let Error::Refused { hint, .. } = &mut e {
                            *hint = format!("{name} does not look like an OCI registry (GET /v2/ must answer 200 or 401)");
                            if let Some(first) = errors.first() {
                                // Most likely an HTTPS port whose TLS attempt failed: say how.
                                hint.push_str(&format!("; the HTTPS attempt failed with {first}"));
                            }
                        }
                        return Err(e);
                    };
                    tracing::debug!(host = name, scheme, "registry reached");
                    *lock(&host.challenge) = ch;
                    return Ok(Arc::new(host));
                }
                Err(e @ Error::Certificate { .. }) if !insecure => return Err(e),
                Err(e @ Error::PlainHttp { .. }) if !plain_ok => return Err(e),
                // The port speaks TLS but the handshake failed: plain HTTP would only confuse.
                Err(e @ Error::Tls { .. }) => return Err(e),
                Err(Error::Connect {
                    url,
                    attempts,
                    reason,
                    ..
                }) => errors.push(format!(
                    "{url} failed after {attempts} attempt(s): {reason}"
                )),
                Err(e) => errors.push(format!("{scheme}: {e}")),
            }
        }
        Err(Error::Unreachable {
            host: name.into(),
            reasons: errors.join("; "),
        })
    }

    fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let o = &self.inner.opts;
        if let Some(ra) = retry_after {
            return ra.min(o.retry_after_max);
        }
        let exp = o
            .backoff_base
            .saturating_mul(1u32 << attempt.min(16))
            .min(o.backoff_max);
        // Full jitter over the upper half, so parallel transfers do not retry in lockstep.
        let r = std::collections::hash_map::RandomState::new().hash_one(attempt) % 1000;
        exp / 2 + exp / 2 * (r as u32) / 1000
    }

    /// Sends with retries on connection errors, 429 and 5xx. Returns any other answer.
    pub(crate) async fn execute(
        &self,
        host: &Host,
        op: &Op<'_>,
        retries: u32,
        mk: &(dyn Fn() -> RequestBuilder + Send + Sync),
        slot: Option<&IssuerSlot>,
    ) -> Result<Response, Error> {
        let mut attempt = 0u32;
        loop {
            let res = mk().send().await;
            match res {
                Ok(resp) => {
                    let s = resp.status();
                    let retryable = s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error();
                    if retryable && attempt < retries {
                        let wait = self.backoff(attempt, retry_after(resp.headers()));
                        tracing::debug!(host = %host.name, status = s.as_u16(), ?wait, "retrying {}", op.name);
                        drop(resp);
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                        continue;
                    }
                    return Ok(resp);
                }
                Err(e) => {
                    let empty = IssuerSlot::default();
                    if let Some(ce) = self.tls_error(&host.name, &e, slot.unwrap_or(&empty)) {
                        return Err(ce);
                    }
                    // Retrying will not make a plain-HTTP port speak TLS.
                    if matches!(
                        tls::find_rustls_error(&e),
                        Some(rustls::Error::InvalidMessage(_))
                    ) {
                        return Err(Error::PlainHttp {
                            host: host.name.clone(),
                        });
                    }
                    // A name that does not resolve will not resolve on the next try either.
                    let permanent = e.is_builder() || describe(&e).contains("dns error");
                    if attempt < retries && !permanent {
                        let wait = self.backoff(attempt, None);
                        tracing::debug!(host = %host.name, ?wait, "retrying {} after: {e}", op.name);
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(Error::Connect {
                        host: host.name.clone(),
                        url: e
                            .url()
                            .map(|u| redact(u).to_string())
                            .unwrap_or_else(|| host.base.to_string()),
                        attempts: attempt + 1,
                        reason: describe(&e),
                    });
                }
            }
        }
    }

    /// Sends with authentication: retries once with a fresh token (or credentials) on 401.
    /// The whole exchange is bounded by `request_timeout`.
    pub(crate) async fn request(
        &self,
        host: &Arc<Host>,
        scopes: &[String],
        op: &Op<'_>,
        mk: &(dyn Fn(&reqwest::Client) -> RequestBuilder + Send + Sync),
    ) -> Result<Response, Error> {
        let limit = self.inner.opts.request_timeout;
        self.request_with(host, scopes, op, &|c| mk(c).timeout(limit))
            .await
    }

    /// Like [`Client::request`] without a total time limit, for blob downloads.
    pub(crate) async fn request_stream(
        &self,
        host: &Arc<Host>,
        scopes: &[String],
        op: &Op<'_>,
        mk: &(dyn Fn(&reqwest::Client) -> RequestBuilder + Send + Sync),
    ) -> Result<Response, Error> {
        self.request_with(host, scopes, op, mk).await
    }

    async fn request_with(
        &self,
        host: &Arc<Host>,
        scopes: &[String],
        op: &Op<'_>,
        mk: &(dyn Fn(&reqwest::Client) -> RequestBuilder + Send + Sync),
    ) -> Result<Response, Error> {
        let mut scopes = scopes.to_vec();
        let mut fresh = false;
        loop {
            let auth = self.authorization(host, &scopes, fresh, op).await?;
            let foreign = std::sync::atomic::AtomicBool::new(false);
            let resp = self
                .execute(
                    host,
                    op,
                    host.retries,
                    &|| {
                        match authorize(mk(&host.http), host, auth.as_deref()) {
                            Ok((rb, sent)) => {
                                if auth.is_some() && !sent {
                                    foreign.store(true, std::sync::atomic::Ordering::Relaxed);
                                }
                                rb
                            }
                            // Sending fails with the same error, without credentials.
                            Err(_) => mk(&host.http),
                        }
                    },
                    None,
                )
                .await?;
            // A 401 from another host (an upload Location elsewhere) is its own business: our
            // credentials are not offered to it.
            if resp.status() != StatusCode::UNAUTHORIZED
                || fresh
                || foreign.load(std::sync::atomic::Ordering::Relaxed)
            {
                return Ok(resp);
            }
            let Some(ch) = www_authenticate(resp.headers()) else {
                return Ok(resp);
            };
            if let Challenge::Bearer {
                scope: Some(extra), ..
            } = &ch
            {
                for s in extra.split(' ') {
                    if !s.is_empty() && !scopes.iter().any(|x| x == s) {
                        scopes.push(s.to_string());
                    }
                }
            }
            let changed = *lock(&host.challenge) != ch;
            *lock(&host.challenge) = ch.clone();
            let can_retry = match ch {
                Challenge::Bearer { .. } => true,
                Challenge::Basic => changed || auth.is_none() && self.creds(host).await?.is_some(),
                Challenge::None => false,
            };
            if !can_retry {
                return Ok(resp);
            }
            fresh = true;
        }
    }

    /// Like [`Client::request`] but sends once (for streamed bodies that cannot be replayed).
    pub(crate) async fn send_once(
        &self,
        host: &Arc<Host>,
        scopes: &[String],
        op: &Op<'_>,
        rb: RequestBuilder,
    ) -> Result<Result<Response, reqwest::Error>, Error> {
        let auth = self.authorization(host, scopes, false, op).await?;
        match authorize(rb, host, auth.as_deref()) {
            Ok((rb, _)) => Ok(rb.send().await),
            Err(e) => Ok(Err(e)),
        }
    }

    pub(crate) async fn creds(&self, host: &Host) -> Result<Option<Credential>, Error> {
        if let Some(c) = lock(&self.inner.overrides).get(&host.name) {
            return Ok(Some(c.clone()));
        }
        host.creds
            .get_or_try_init(|| async {
                match &self.inner.auth {
                    Some(store) => store.get(&host.name).await,
                    None => Ok(None),
                }
            })
            .await
            .cloned()
    }

    async fn authorization(
        &self,
        host: &Arc<Host>,
        scopes: &[String],
        fresh: bool,
        op: &Op<'_>,
    ) -> Result<Option<String>, Error> {
        let ch = lock(&host.challenge).clone();
        match ch {
            Challenge::None => Ok(None),
            Challenge::Basic => Ok(match self.creds(host).await? {
                Some(Credential::Basic { username, password }) => Some(basic(&username, &password)),
                Some(Credential::IdentityToken { username, token }) => {
                    Some(basic(&username, &token))
                }
                None => None,
            }),
            Challenge::Bearer { .. } => Ok(Some(format!(
                "Bearer {}",
                self.token(host, scopes, fresh, op).await?
            ))),
        }
    }

    /// A bearer token for `scopes`, from the cache unless `fresh`.
    async fn token(
        &self,
        host: &Arc<Host>,
        scopes: &[String],
        fresh: bool,
        op: &Op<'_>,
    ) -> Result<String, Error> {
        let mut sorted = scopes.to_vec();
        sorted.sort();
        let key = sorted.join(" ");
        let cached = || {
            lock(&host.tokens)
                .get(&key)
                .filter(|(_, exp)| *exp > Instant::now())
                .map(|(t, _)| t.clone())
        };
        if !fresh {
            if let Some(t) = cached() {
                return Ok(t);
            }
        }
        let _one_at_a_time = host.token_fetch.lock().await;
        if !fresh {
            if let Some(t) = cached() {
                return Ok(t);
            }
        }
        let Challenge::Bearer { realm, service, .. } = lock(&host.challenge).clone() else {
            return Err(Error::Invalid(
                "token requested without a Bearer challenge".into(),
            ));
        };
        let realm_url = Url::parse(&realm).map_err(|e| Error::Protocol {
            op: op.name.into(),
            reference: op.reference.clone(),
            host: host.name.clone(),
            reason: format!("the registry's token realm {realm:?} is not a URL: {e}"),
        })?;
        let realm_host = match realm_url.port() {
            Some(p) => format!("{}:{p}", realm_url.host_str().unwrap_or("")),
            None => realm_url.host_str().unwrap_or("").to_string(),
        };
        let http = self.realm_client(&realm_host)?;
        let creds = self.creds(host).await?;
        let token_host = Host::new(
            realm_host.clone(),
            realm_url.clone(),
            http.clone(),
            host.retries,
        );
        let token_op = Op {
            name: "getting a token for",
            reference: op.reference.clone(),
        };
        let resp = match &creds {
            Some(Credential::IdentityToken { token, .. }) => {
                // OAuth2 refresh-token grant (what docker does with an identity token).
                let mut form = vec![
                    ("grant_type", "refresh_token".to_string()),
                    ("refresh_token", token.clone()),
                    ("client_id", "manifold".to_string()),
                    ("scope", sorted.join(" ")),
                ];
                if let Some(s) = &service {
                    form.push(("service", s.clone()));
                }
                let body = form
                    .iter()
                    .map(|(k, v)| format!("{k}={}", urlencode(v)))
                    .collect::<Vec<_>>()
                    .join("&");
                self.execute(
                    &token_host,
                    &token_op,
                    self.inner.opts.max_retries,
                    &|| {
                        http.post(realm_url.clone())
                            .header("Content-Type", "application/x-www-form-urlencoded")
                            .body(body.clone())
                    },
                    None,
                )
                .await?
            }
            _ => {
                let mut url = realm_url.clone();
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = &service {
                        q.append_pair("service", s);
                    }
                    for s in &sorted {
                        q.append_pair("scope", s);
                    }
                    if let Some(c) = &creds {
                        if !c.username().is_empty() {
                            q.append_pair("account", c.username());
                        }
                    }
                }
                let auth = match &creds {
                    Some(Credential::Basic { username, password }) => {
                        Some(basic(username, password))
                    }
                    _ => None,
                };
                self.execute(
                    &token_host,
                    &token_op,
                    self.inner.opts.max_retries,
                    &|| {
                        let rb = http.get(url.clone());
                        match &auth {
                            Some(a) => rb.header(AUTHORIZATION, a),
                            None => rb,
                        }
                    },
                    None,
                )
                .await?
            }
        };
        if !resp.status().is_success() {
            let mut e = self.refused(&token_host, &token_op, resp).await;
            if let Error::Refused { hint, status, .. } = &mut e {
                *hint = hint_for(*status, &host.name, creds.is_some());
            }
            return Err(e);
        }
        #[derive(serde::Deserialize)]
        struct TokenReply {
            #[serde(default)]
            token: String,
            #[serde(default)]
            access_token: String,
            expires_in: Option<u64>,
        }
        let bytes = read_limited(resp, 1 << 20)
            .await
            .map_err(|reason| Error::Protocol {
                op: token_op.name.into(),
                reference: op.reference.clone(),
                host: realm_host.clone(),
                reason,
            })?;
        let reply: TokenReply = serde_json::from_slice(&bytes).map_err(|e| Error::Protocol {
            op: token_op.name.into(),
            reference: op.reference.clone(),
            host: realm_host.clone(),
            reason: format!("the token endpoint answered something other than a token: {e}"),
        })?;
        let t = if reply.token.is_empty() {
            reply.access_token
        } else {
            reply.token
        };
        if t.is_empty() {
            return Err(Error::Protocol {
                op: token_op.name.into(),
                reference: op.reference.clone(),
                host: realm_host,
                reason: "the token endpoint answered without a token".into(),
            });
        }
        // Renew a little early; 60 s is the spec's default lifetime.
        let life = Duration::from_secs(reply.expires_in.unwrap_or(60).max(10) - 5);
        lock(&host.tokens).insert(key, (t.clone(), Instant::now() + life));
        Ok(t)
    }

    fn realm_client(&self, realm_host: &str) -> Result<reqwest::Client, Error> {
        if let Some(c) = lock(&self.inner.realm_clients).get(realm_host) {
            return Ok(c.clone());
        }
        let c = self.build_http(
            realm_host,
            self.is_insecure(realm_host),
            Arc::new(IssuerSlot::default()),
        )?;
        lock(&self.inner.realm_clients).insert(realm_host.to_string(), c.clone());
        Ok(c)
    }

    /// Turns a refusal into an error naming the registry's codes and messages.
    pub(crate) async fn refused(&self, host: &Host, op: &Op<'_>, resp: Response) -> Error {
        let status = resp.status().as_u16();
        let body = read_limited(resp, 64 << 10).await.unwrap_or_default();
        #[derive(serde::Deserialize)]
        struct Body {
            #[serde(default)]
            errors: Vec<RegistryError>,
        }
        let mut errors = serde_json::from_slice::<Body>(&body)
            .map(|b| b.errors)
            .unwrap_or_default();
        if errors.is_empty() {
            let text = String::from_utf8_lossy(&body);
            let text = text.trim();
            if !text.is_empty() && !text.starts_with('{') && !text.starts_with('<') {
                errors.push(RegistryError {
                    code: String::new(),
                    message: text.chars().take(200).collect(),
                });
            }
        }
        let had = lock(&self.inner.overrides).contains_key(&host.name)
            || host.creds.get().is_some_and(Option::is_some);
        Error::Refused {
            op: op.name.to_string(),
            reference: op.reference.clone(),
            host: host.name.clone(),
            status,
            errors,
            hint: hint_for(status, &host.name, had),
        }
    }
}

/// Docker Hub's name in references is not where its API lives.
pub(crate) fn api_host(registry: &str) -> &str {
    match registry {
        "docker.io" | "index.docker.io" => "registry-1.docker.io",
        other => other,
    }
}

fn basic(user: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"))
    )
}

fn www_authenticate(h: &HeaderMap) -> Option<Challenge> {
    h.get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(challenge::parse)
}

fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(RETRY_AFTER)?.to_str().ok()?.trim();
    v.parse::<u64>().ok().map(Duration::from_secs)
}

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A URL without its query, which may carry upload state or signed-URL secrets.
pub(crate) fn redact(u: &Url) -> Url {
    let mut u = u.clone();
    u.set_query(None);
    u
}

/// A reqwest error's whole chain, with the URL's query (upload state, signed-URL secrets) removed.
pub(crate) fn describe(e: &reqwest::Error) -> String {
    let s = error_chain(e);
    match e.url() {
        Some(u) if u.query().is_some() => s.replace(u.as_str(), redact(u).as_str()),
        _ => s,
    }
}

pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = s.source();
    }
    parts.join(": ")
}

fn describe_cert_error(e: &rustls::CertificateError) -> String {
    use rustls::CertificateError as C;
    match e {
        C::UnknownIssuer => "signed by an unknown authority".into(),
        C::Expired | C::ExpiredContext { .. } => "expired".into(),
        C::NotValidYet | C::NotValidYetContext { .. } => "not valid yet".into(),
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "not valid for this host name".into()
        }
        C::BadSignature => "bad signature".into(),
        other => format!("{other:?}"),
    }
}

/// Reads a body up to `max` bytes; more is an error (manifests, error bodies, tokens).
pub(crate) async fn read_limited(mut resp: Response, max: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| describe(&e))? {
        if out.len() + chunk.len() > max {
            return Err(format!("the answer is larger than {max} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_honors_retry_after() {
        let c = Client::new(ClientOptions {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            retry_after_max: Duration::from_secs(3),
            ..ClientOptions::default()
        })
        .unwrap();
        let d0 = c.backoff(0, None);
        assert!(
            d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100),
            "{d0:?}"
        );
        let d3 = c.backoff(3, None);
        assert!(
            d3 >= Duration::from_millis(400) && d3 <= Duration::from_millis(800),
            "{d3:?}"
        );
        assert!(c.backoff(20, None) <= Duration::from_secs(1));
        assert_eq!(
            c.backoff(0, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            c.backoff(0, Some(Duration::from_secs(99))),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn urlencodes_form_values() {
        assert_eq!(
            urlencode("repository:a/b:pull push"),
            "repository%3Aa%2Fb%3Apull%20push"
        );
    }
}
