//! The embedded registry: the OCI distribution spec v1.1 (pull, push, chunked and resumable
//! uploads, cross-repository mounts, tag listing and catalog, deletes, referrers) over the store
//! crate's OCI layout, either a registry directory of its own or manifold's local store.
//!
//! This crate serves content; it refuses to know how images are built or how other registries
//! are reached as a client. Every write is verified against its digest before anything names it.

pub mod auth;
mod conn;
pub mod error;
mod handlers;
pub mod proxy;
pub mod route;
pub mod storage;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

pub use storage::{GcReport, Naming, Storage};

/// What `manifold registry serve` was asked for.
#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    pub root: PathBuf,
    pub naming: Naming,
    /// Run GC this often (None: only `manifold registry gc`).
    pub gc_every: Option<Duration>,
    pub gc_grace: Duration,
    pub auth: Option<auth::AuthConfig>,
    pub tls: Option<tls::TlsConfig>,
    pub proxy: Option<proxy::ProxyConfig>,
}

/// What the server tells its caller once it listens.
#[derive(Debug, Clone)]
pub struct Ready {
    pub addr: SocketAddr,
    pub tls: bool,
    /// With `--tls auto`: the CA certificate clients must trust.
    pub ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}; pick another with --addr")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("{0}")]
    Other(String),
}

pub(crate) struct App {
    pub storage: Storage,
    pub auth: Option<auth::Auth>,
    pub tls: bool,
    pub proxy: Option<proxy::Upstream>,
    pub sessions: handlers::Sessions,
    pub metrics: Metrics,
}

/// Counters for `/metrics`.
#[derive(Default)]
pub(crate) struct Metrics {
    requests: std::sync::Mutex<std::collections::BTreeMap<(String, u16), u64>>,
    bytes_out: std::sync::atomic::AtomicU64,
    bytes_in: std::sync::atomic::AtomicU64,
}

impl Metrics {
    fn render(&self) -> String {
        use std::fmt::Write as _;
        use std::sync::atomic::Ordering;
        let mut s = String::new();
        s.push_str("# HELP manifold_registry_requests_total Requests served, by method and status.\n# TYPE manifold_registry_requests_total counter\n");
        let mut errors = 0;
        if let Ok(m) = self.requests.lock() {
            for ((method, status), n) in m.iter() {
                let _ = writeln!(
                    s,
                    "manifold_registry_requests_total{{method=\"{method}\",status=\"{status}\"}} {n}"
                );
                if *status >= 400 {
                    errors += n;
                }
            }
        }
        let _ = write!(
            s,
            "# HELP manifold_registry_errors_total Requests answered with a status of 400 or more.\n# TYPE manifold_registry_errors_total counter\nmanifold_registry_errors_total {errors}\n\
             # HELP manifold_registry_sent_bytes_total Response body bytes (by Content-Length).\n# TYPE manifold_registry_sent_bytes_total counter\nmanifold_registry_sent_bytes_total {}\n\
             # HELP manifold_registry_received_bytes_total Request body bytes (by Content-Length).\n# TYPE manifold_registry_received_bytes_total counter\nmanifold_registry_received_bytes_total {}\n",
            self.bytes_out.load(Ordering::Relaxed),
            self.bytes_in.load(Ordering::Relaxed)
        );
        s
    }
}

fn content_length(h: &axum::http::HeaderMap) -> u64 {
    h.get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One log line per request (method, path, status, bytes in and out, time), and the counters.
async fn log_requests(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    use std::sync::atomic::Ordering;
    let start = Instant::now();
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let bytes_in = content_length(req.headers());
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let bytes_out = if method == "HEAD" {
        0
    } else {
        content_length(resp.headers())
    };
    // Formatted first: stderr is unbuffered, and eprintln! would write each piece separately.
    let line = format!(
        "{method} {path} {status} in={bytes_in} out={bytes_out} {:.1}ms\n",
        start.elapsed().as_secs_f64() * 1000.0
    );
    {
        use std::io::Write as _;
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
    app.metrics.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
    app.metrics
        .bytes_out
        .fetch_add(bytes_out, Ordering::Relaxed);
    if let Ok(mut m) = app.metrics.requests.lock() {
        *m.entry((method, status)).or_default() += 1;
    }
    resp
}

fn router(app: Arc<App>) -> axum::Router {
    axum::Router::new()
        .fallback(handlers::dispatch)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            log_requests,
        ))
        .with_state(app)
}

/// Serves until SIGINT or SIGTERM, then finishes running requests. `ready` gets the bound
/// address (useful with port 0).
pub fn serve(config: Config, ready: impl FnOnce(Ready)) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Other(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(async move {
        let storage = Storage::open(&config.root, config.naming)?;
        let auth = match &config.auth {
            Some(a) => Some(auth::Auth::new(a.clone()).map_err(Error::Other)?),
            None => None,
        };
        let (tls, ca) = match &config.tls {
            Some(t) => {
                let (sc, ca) = tls::server_config(t, &config.root).map_err(Error::Other)?;
                (Some(Arc::new(tokio_rustls::TlsAcceptor::from(sc))), ca)
            }
            None => (None, None),
        };
        let proxy = match &config.proxy {
            Some(p) => Some(proxy::Upstream::new(p.clone()).map_err(Error::Other)?),
            None => None,
        };
        let app = Arc::new(App {
            storage,
            proxy,
            auth,
            tls: tls.is_some(),
            sessions: Default::default(),
            metrics: Default::default(),
        });
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .map_err(|source| Error::Bind {
                addr: config.addr,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.addr,
            source,
        })?;
        ready(Ready {
            addr,
            tls: tls.is_some(),
            ca,
        });
        if let Some(every) = config.gc_every {
            let app = app.clone();
            let grace = config.gc_grace;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let a = app.clone();
                    match tokio::task::spawn_blocking(move || {
                        a.storage.gc(grace, Duration::from_secs(7 * 86400), false)
                    })
                    .await
                    {
                        Ok(Ok(r)) => eprintln!(
                            "gc: removed {} blobs ({} bytes), kept {} young ones",
                            r.blobs_removed, r.bytes_freed, r.blobs_kept_young
                        ),
                        Ok(Err(e)) => eprintln!("gc failed: {}", e.message),
                        Err(e) => eprintln!("gc failed: {e}"),
                    }
                }
            });
        }
        let incoming = conn::incoming(listener, tls).map_err(|source| Error::Bind {
            addr: config.addr,
            source,
        })?;
        axum::serve(incoming, router(app))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .map_err(|e| Error::Other(format!("server failed: {e}")))
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("shutting down: finishing running requests");
}
