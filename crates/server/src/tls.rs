//! TLS for the server: certificate files given, or a private CA and server certificate made
//! once under the registry directory (`--tls auto`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, Clone)]
pub enum TlsConfig {
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    /// Names (host names or IP addresses) the certificate is for.
    Auto {
        names: Vec<String>,
    },
}

/// The rustls config, and with `Auto` the CA certificate clients must trust.
pub fn server_config(
    cfg: &TlsConfig,
    root: &Path,
) -> Result<(Arc<rustls::ServerConfig>, Option<PathBuf>), String> {
    let (cert, key, ca) = match cfg {
        TlsConfig::Files { cert, key } => (cert.clone(), key.clone(), None),
        TlsConfig::Auto { names } => {
            let dir = root.join("registry/tls");
            let ca = auto_certs(&dir, names)?;
            (dir.join("server.crt"), dir.join("server.key"), Some(ca))
        }
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&key)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key.display()))?;
    let mut sc = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("the certificate and key do not make a TLS identity: {e}"))?;
    sc.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(sc), ca))
}

/// Makes `ca.crt`, `server.crt` and `server.key` in `dir` unless they exist for these names.
/// The CA's key is not kept: it signs this one certificate and nothing else ever.
fn auto_certs(dir: &Path, names: &[String]) -> Result<PathBuf, String> {
    let ca_path = dir.join("ca.crt");
    let names_path = dir.join("names");
    let mut names = names.to_vec();
    names.sort();
    names.dedup();
    let want = names.join("\n");
    if ca_path.is_file()
        && dir.join("server.key").is_file()
        && std::fs::read_to_string(&names_path).ok().as_deref() == Some(want.as_str())
    {
        return Ok(ca_path);
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let err = |e: rcgen::Error| format!("cannot make the TLS certificates: {e}");
    let ca_key = rcgen::KeyPair::generate().map_err(err)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "manifold registry private CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let mut params = rcgen::CertificateParams::new(names.clone()).map_err(err)?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer).map_err(err)?;
    let write = |name: &str, text: &str, mode: u32| -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    write("server.key", &key.serialize_pem(), 0o600)?;
    write(
        "server.crt",
        &format!("{}{}", cert.pem(), ca_cert.pem()),
        0o644,
    )?;
    write("ca.crt", &ca_cert.pem(), 0o644)?;
    write("names", &want, 0o644)?;
    Ok(ca_path)
}
