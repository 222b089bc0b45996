//! TLS per registry host: system roots plus `certs.d/HOST[:PORT]/*.crt`, client certificates
//! (`*.cert` + `*.key`), and a verifier that remembers who issued a certificate it refused, so the
//! error can name the issuer.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::Error;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// System roots are read once per process: the bundle has hundreds of certificates.
fn system_roots() -> &'static Vec<CertificateDer<'static>> {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::debug!("loading system certificates: {e}");
        }
        found.certs
    })
}

/// Is this host one docker talks to over plain HTTP by default (loopback)?
pub(crate) fn is_loopback(host: &str) -> bool {
    let name = host_without_port(host);
    name == "localhost"
        || name == "::1"
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn host_without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.split(':').next().unwrap_or(host)
}

/// The files docker reads for `host` from one certs.d directory.
struct HostCerts {
    cas: Vec<PathBuf>,
    client: Option<(PathBuf, PathBuf)>,
}

fn scan(dir: &Path, host: &str) -> Result<HostCerts, Error> {
    let mut out = HostCerts {
        cas: Vec::new(),
        client: None,
    };
    let d = dir.join(host);
    let entries = match std::fs::read_dir(&d) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => {
            return Err(Error::Io {
                what: "reading certificates directory".into(),
                path: d,
                source: e,
            })
        }
    };
    let mut names: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    names.sort();
    for p in names {
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        match ext {
            "crt" => out.cas.push(p),
            "cert" => {
                let key = p.with_extension("key");
                if !key.exists() {
                    return Err(Error::Tls {
                        host: host.into(),
                        reason: format!(
                            "client certificate {} has no matching key {}",
                            p.display(),
                            key.display()
                        ),
                    });
                }
                out.client = Some((p, key));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Remembers the issuer of the last certificate the verifier refused.
#[derive(Debug, Default)]
pub(crate) struct IssuerSlot(Mutex<Option<String>>);

impl IssuerSlot {
    pub(crate) fn take(&self) -> Option<String> {
        self.0.lock().ok().and_then(|mut g| g.take())
    }
}

#[derive(Debug)]
struct Verifier {
    inner: Arc<WebPkiServerVerifier>,
    slot: Arc<IssuerSlot>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let r = self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        if r.is_err() {
            if let Ok(mut g) = self.slot.0.lock() {
                *g = issuer_name(end_entity.as_ref());
            }
        }
        r
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Accepts any certificate: only for hosts the user listed as insecure.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Builds the rustls config for `host` (`name[:port]` as in references).
/// `extra_cas` and `keypair` come from the registry config (`ca`, `keypair`); the key pair
/// wins over a certs.d one.
pub(crate) fn client_config(
    host: &str,
    certs_dirs: &[PathBuf],
    extra_cas: &[PathBuf],
    keypair: Option<(PathBuf, PathBuf)>,
    insecure: bool,
    slot: Arc<IssuerSlot>,
) -> Result<rustls::ClientConfig, Error> {
    let tls_err = |reason: String| Error::Tls {
        host: host.into(),
        reason,
    };
    let prov = provider();
    let mut roots = RootCertStore::empty();
    let (_added, _ignored) = roots.add_parsable_certificates(system_roots().iter().cloned());
    let mut client = keypair;
    let mut cas: Vec<PathBuf> = extra_cas.to_vec();
    for dir in certs_dirs {
        let found = scan(dir, host)?;
        cas.extend(found.cas);
        if client.is_none() {
            client = found.client;
        }
    }
    for ca in cas {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&ca)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| tls_err(format!("reading CA file {}: {e}", ca.display())))?;
        if certs.is_empty() {
            return Err(tls_err(format!(
                "CA file {} holds no PEM certificate",
                ca.display()
            )));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| tls_err(format!("CA file {}: {e}", ca.display())))?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(prov.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?;
    let builder = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(prov)))
    } else {
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), prov)
            .build()
            .map_err(|e| tls_err(format!("no usable root certificates: {e}")))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier { inner, slot }))
    };
    let cfg = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| {
                    tls_err(format!(
                        "reading client certificate {}: {e}",
                        cert.display()
                    ))
                })?;
            let key_der = PrivateKeyDer::from_pem_file(&key)
                .map_err(|e| tls_err(format!("reading client key {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| tls_err(format!("client certificate {}: {e}", cert.display())))?
        }
    };
    Ok(cfg)
}

/// Finds a rustls error in an error's source chain.
pub(crate) fn find_rustls_error<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        // io::Error's source() skips the error it wraps; rustls errors sit two io::Errors deep.
        cur = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

/// The issuer's common name (or the whole DN's last attribute) from a DER certificate.
///
/// A small DER walk: Certificate → tbsCertificate → [version], serial, signature, issuer.
pub(crate) fn issuer_name(der: &[u8]) -> Option<String> {
    let (cert, _) = read_tlv(der)?;
    if cert.0 != 0x30 {
        return None;
    }
    let (tbs, _) = read_tlv(cert.1)?;
    let mut rest = tbs.1;
    let (first, after) = read_tlv(rest)?;
    rest = if first.0 == 0xa0 {
        read_tlv(after)?.1
    } else {
        after
    }; // skip serial
    let (_sigalg, after) = read_tlv(rest)?;
    let (issuer, _) = read_tlv(after)?;
    let mut names = Vec::new();
    let mut rdns = issuer.1;
    while !rdns.is_empty() {
        let (set, next) = read_tlv(rdns)?;
        let (atv, _) = read_tlv(set.1)?;
        let (oid, val) = read_tlv(atv.1)?;
        let (value, _) = read_tlv(val)?;
        let text = String::from_utf8_lossy(value.1).to_string();
        names.push((oid.1.to_vec(), text));
        rdns = next;
    }
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    const O: &[u8] = &[0x55, 0x04, 0x0a];
    names
        .iter()
        .find(|(o, _)| o == CN)
        .or_else(|| names.iter().find(|(o, _)| o == O))
        .or(names.last())
        .map(|(_, v)| v.clone())
}

type Tlv<'a> = (u8, &'a [u8]);

fn read_tlv(b: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)? as usize;
    let (len, hdr) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = hdr.checked_add(len)?;
    let body = b.get(hdr..end)?;
    Some(((tag, body), b.get(end..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5443",
            "127.1.2.3",
            "[::1]:5000",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "registry.example",
            "10.0.0.1:5000",
            "ghcr.io",
            "[fe80::1]:5000",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn tlv_parser_refuses_truncated_input() {
        assert_eq!(issuer_name(&[]), None);
        assert_eq!(issuer_name(&[0x30, 0x82, 0xff]), None);
        assert_eq!(issuer_name(&[0x30, 0x05, 0x30, 0x10]), None);
    }
}
