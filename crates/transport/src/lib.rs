//! Places images live, as users name them (`store:REF`, `oci:DIR[:NAME]`,
//! `oci-archive:FILE[:NAME]`, `docker-archive:FILE[:NAME]`, a registry reference), opened as the
//! sources and targets of the store's one copy routine. A registry repository becomes a
//! [`store::Source`] and [`store::Target`] here, which keeps `store` and `registry` unaware of
//! each other.
//!
//! This crate decides nothing about what to copy; commands and the build engine do.

pub mod place;
pub mod remote;

use std::path::PathBuf;
use std::sync::OnceLock;

pub use place::{open_source, open_store, target_name, OpenSource, OpenTarget, Place};
pub use remote::RegistryRepo;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Registry(Box<registry::Error>),
    #[error(transparent)]
    Content(#[from] oci::Error),
    #[error("{0}")]
    Place(String),
}

impl From<registry::Error> for Error {
    fn from(e: registry::Error) -> Self {
        Error::Registry(Box::new(e))
    }
}

/// What opening places needs: where the store is, and how to reach registries.
pub struct Env {
    pub store_root: PathBuf,
    pub client_options: registry::ClientOptions,
    client: OnceLock<registry::Client>,
}

impl Env {
    pub fn new(store_root: PathBuf, client_options: registry::ClientOptions) -> Self {
        Env {
            store_root,
            client_options,
            client: OnceLock::new(),
        }
    }

    /// The registry client, made on first use and shared (one token cache, one connection pool).
    pub fn client(&self) -> Result<registry::Client> {
        if let Some(c) = self.client.get() {
            return Ok(c.clone());
        }
        let c = registry::Client::new(self.client_options.clone())?;
        Ok(self.client.get_or_init(|| c).clone())
    }

    /// The registry client if a command made one.
    pub fn client_if_made(&self) -> Option<registry::Client> {
        self.client.get().cloned()
    }

    /// The async runtime registry calls run on.
    pub fn runtime(&self) -> tokio::runtime::Handle {
        runtime().handle().clone()
    }
}

/// One multi-threaded runtime per process for all registry traffic.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .thread_name("manifold-io")
            .enable_all()
            .build()
            .expect("the tokio runtime starts")
    })
}
