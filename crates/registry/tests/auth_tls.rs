//! TLS with a CA made by openssl and a certs.d directory, and Basic auth with htpasswd and
//! docker's config.json, against a real distribution registry.

mod common;

use base64::Engine as _;
use bytes::Bytes;
use manifold_registry::{Client, ClientOptions, Credential, Error, Stored};
use oci::{Descriptor, Digest, Reference};

use common::{options, Config, Registry};

fn reference(addr: &str, rest: &str) -> Reference {
    Reference::parse(&format!("{addr}/{rest}")).expect("test reference")
}

async fn push_and_pull(client: &Client, r: &Reference, img: &common::TinyImage) {
    for (bytes, mt) in [
        (&img.config, oci::media_type::OCI_CONFIG),
        (&img.layer, oci::media_type::OCI_LAYER_GZIP),
    ] {
        let desc = Descriptor::new(mt, Digest::sha256_of(bytes), bytes.len() as u64);
        client
            .put_blob(r, &desc, &Bytes::from(bytes.clone()))
            .await
            .expect("push blob");
    }
    let d = client
        .put_manifest(r, &img.manifest, oci::media_type::OCI_MANIFEST)
        .await
        .expect("push manifest");
    let m = client.get_manifest(r).await.expect("pull manifest");
    assert_eq!(m.digest(), &d);
    for c in m.children() {
        let b = client
            .get_blob_bytes(r, &c, 1 << 20)
            .await
            .expect("pull blob");
        assert_eq!(Digest::sha256_of(&b), c.digest);
    }
}

#[tokio::test]
async fn tls_fails_with_certs_d_hint_until_the_ca_is_placed() {
    require_peer!("docker-registry");
    require_peer!("openssl");
    let dir = tempfile::tempdir().unwrap();
    let ca = common::make_ca(dir.path(), "manifold test CA");
    let reg = Registry::start(Config {
        tls: Some((ca.server_crt.clone(), ca.server_key.clone())),
        ..Config::default()
    });
    let cfg = tempfile::tempdir().unwrap();
    // Loopback names are insecure registries (as docker has them): their certificates are not
    // checked. 0.0.0.0 reaches the same port under a name that is not loopback.
    let port = reg.addr.rsplit(':').next().unwrap();
    let addr = format!("0.0.0.0:{port}");
    let r = reference(&addr, "secure/app:v1");
    let img = common::tiny_image(cfg.path(), "tls");
    let ca_path = cfg.path().join("certs.d").join(&addr).join("ca.crt");

    let client = Client::new(options(cfg.path())).unwrap();
    let err = client.get_manifest(&r).await.unwrap_err();
    let msg = err.to_string();
    eprintln!("untrusted registry: {msg}");
    assert!(matches!(err, Error::Certificate { .. }), "{msg}");
    assert!(msg.contains(&ca_path.display().to_string()), "{msg}");
    assert!(msg.contains("manifold test CA"), "issuer missing: {msg}");
    assert!(msg.contains(&addr), "{msg}");
    assert!(!msg.contains("http:"), "{msg}");

    // On loopback the same registry is reached over HTTPS without the CA.
    let lo = Client::new(options(cfg.path())).unwrap();
    push_and_pull(&lo, &reference(&reg.addr, "loopback/app:v1"), &img).await;

    std::fs::create_dir_all(ca_path.parent().unwrap()).unwrap();
    std::fs::copy(&ca.ca_crt, &ca_path).unwrap();
    let client = Client::new(options(cfg.path())).unwrap();
    push_and_pull(&client, &r, &img).await;

    // Listed as insecure, the registry is reached without the CA.
    let other = tempfile::tempdir().unwrap();
    let insecure = Client::new(ClientOptions {
        insecure_registries: vec![addr.clone()],
        ..options(other.path())
    })
    .unwrap();
    assert!(insecure.get_manifest(&r).await.is_ok());

    // The registry config's `ca` (buildkitd.toml's key) trusts the CA without certs.d, and its
    // `insecure` skips verification.
    let by_config = tempfile::tempdir().unwrap();
    let mut opts = options(by_config.path());
    opts.registries.host_mut(&addr).ca = vec![ca.ca_crt.clone()];
    assert!(Client::new(opts).unwrap().get_manifest(&r).await.is_ok());
    let mut opts = options(by_config.path());
    opts.registries.host_mut(&addr).insecure = true;
    assert!(Client::new(opts).unwrap().get_manifest(&r).await.is_ok());
    let err = Client::new(options(by_config.path()))
        .unwrap()
        .get_manifest(&r)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Certificate { .. }), "{err}");
}

#[tokio::test]
async fn basic_auth_from_config_json_and_login_logout() {
    require_peer!("docker-registry");
    require_peer!("htpasswd");
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = common::htpasswd(dir.path(), "alice", "wonder land");
    let reg = Registry::start(Config {
        htpasswd: Some(htpasswd),
        ..Config::default()
    });
    let r = reference(&reg.addr, "private/app:v1");

    // No credentials: the error says to log in.
    let empty = tempfile::tempdir().unwrap();
    let anon = Client::new(options(empty.path())).unwrap();
    let err = anon.get_manifest(&r).await.unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.status(), Some(401), "{msg}");
    assert!(
        msg.contains(&format!("manifold login {}", reg.addr)),
        "{msg}"
    );
    assert!(msg.contains("UNAUTHORIZED"), "{msg}");

    // Credentials from a config.json (base64 auth), as docker writes it.
    let cfg = tempfile::tempdir().unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:wonder land");
    std::fs::write(
        cfg.path().join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.addr),
    )
    .unwrap();
    let client = Client::new(options(cfg.path())).unwrap();
    let img = common::tiny_image(cfg.path(), "basic auth");
    push_and_pull(&client, &r, &img).await;
    assert_eq!(client.tags(&r).await.unwrap(), ["v1"]);

    // A wrong stored password is named as such.
    let bad = tempfile::tempdir().unwrap();
    let wrong = base64::engine::general_purpose::STANDARD.encode("alice:nope");
    std::fs::write(
        bad.path().join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{wrong}"}}}}}}"#, reg.addr),
    )
    .unwrap();
    let err = Client::new(options(bad.path()))
        .unwrap()
        .get_manifest(&r)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("refused the stored credentials"), "{err}");
    assert!(!err.contains("nope"), "secret in error: {err}");

    // login checks before it writes; logout removes.
    let home = tempfile::tempdir().unwrap();
    let c = Client::new(options(home.path())).unwrap();
    let err = c
        .login(
            &reg.addr,
            Credential::Basic {
                username: "alice".into(),
                password: "wrong".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(401), "{err}");
    assert!(!home.path().join("config.json").exists());
    let stored = c
        .login(
            &reg.addr,
            Credential::Basic {
                username: "alice".into(),
                password: "wonder land".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(stored, Stored::File(home.path().join("config.json")));
    let after = Client::new(options(home.path())).unwrap();
    assert!(after.get_manifest(&r).await.is_ok());
    assert!(c.logout(&reg.addr).await.unwrap());
    let gone = Client::new(options(home.path())).unwrap();
    assert_eq!(gone.get_manifest(&r).await.unwrap_err().status(), Some(401));
}

#[tokio::test]
async fn bearer_tokens_per_scope_with_basic_and_refresh_token_grants() {
    require_peer!("docker-registry");
    require_peer!("openssl");
    let dir = tempfile::tempdir().unwrap();
    let tokens = common::token::TokenServer::start(
        dir.path(),
        vec![("bob".into(), "builder".into())],
        vec!["refresh-abc".into()],
    )
    .await;
    let reg = Registry::start(Config {
        token: Some((
            tokens.realm.clone(),
            common::token::SERVICE.into(),
            common::token::ISSUER.into(),
            tokens.cert.clone(),
        )),
        ..Config::default()
    });
    let r = reference(&reg.addr, "bear/app:v1");

    // Anonymous: the token grants nothing, the single retry with a fresh token fails too.
    let empty = tempfile::tempdir().unwrap();
    let err = Client::new(options(empty.path()))
        .unwrap()
        .get_manifest(&r)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.status(), Some(401), "{msg}\n{}", reg.log());
    assert!(
        msg.contains(&format!("manifold login {}", reg.addr)),
        "{msg}"
    );
    let anon = tokens.requests();
    assert_eq!(anon.len(), 2, "one token, then one fresh token: {anon:?}");
    assert!(anon.iter().all(|t| t.user.is_none()));

    // Basic credentials at the token endpoint; tokens are cached per scope.
    let cfg = tempfile::tempdir().unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("bob:builder");
    std::fs::write(
        cfg.path().join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.addr),
    )
    .unwrap();
    let client = Client::new(options(cfg.path())).unwrap();
    let img = common::tiny_image(cfg.path(), "bearer");
    push_and_pull(&client, &r, &img).await;
    let seen: Vec<_> = tokens.requests().into_iter().skip(2).collect();
    assert!(
        seen.iter()
            .all(|t| t.user.as_deref() == Some("bob") && t.method == "GET"),
        "{seen:?}"
    );
    let scopes: Vec<_> = seen.iter().map(|t| t.scopes.join(" ")).collect();
    assert!(
        scopes.contains(&"repository:bear/app:pull".to_string()),
        "{scopes:?}"
    );
    assert!(
        scopes.contains(&"repository:bear/app:pull,push".to_string()),
        "{scopes:?}"
    );
    assert!(seen.len() <= 3, "tokens are not cached: {scopes:?}");

    // Parallel requests on a cold cache share one token fetch.
    let cold = Client::new(options(cfg.path())).unwrap();
    cold.ping(&reg.addr).await.unwrap();
    let before = tokens.requests().len();
    let layer_digest = Digest::sha256_of(&img.layer);
    let checks: Vec<_> = (0..8)
        .map(|_| {
            let c = cold.clone();
            let r = r.clone();
            let d = layer_digest.clone();
            tokio::spawn(async move { c.blob_exists(&r, &d).await })
        })
        .collect();
    for h in checks {
        assert!(h.await.unwrap().unwrap().is_some());
    }
    assert_eq!(
        tokens.requests().len(),
        before + 1,
        "{:?}",
        tokens.requests()
    );

    // A mount asks for push on the target and pull on the source in one token.
    let target = reference(&reg.addr, "bear/other:v1");
    let layer = Digest::sha256_of(&img.layer);
    assert!(client.mount_blob(&target, &r, &layer).await.unwrap());
    let last = tokens.requests().last().cloned().unwrap();
    assert_eq!(
        last.scopes,
        [
            "repository:bear/app:pull",
            "repository:bear/other:pull,push"
        ]
    );
    assert_eq!(
        client.catalog(&reg.addr).await.unwrap(),
        ["bear/app", "bear/other"]
    );

    // An identity token is exchanged by the OAuth2 refresh-token POST.
    let idt = tempfile::tempdir().unwrap();
    std::fs::write(
        idt.path().join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"identitytoken":"refresh-abc"}}}}}}"#,
            reg.addr
        ),
    )
    .unwrap();
    let before = tokens.requests().len();
    let m = Client::new(options(idt.path()))
        .unwrap()
        .get_manifest(&r)
        .await
        .unwrap();
    assert_eq!(m.bytes(), img.manifest.as_slice());
    let post = &tokens.requests()[before];
    assert_eq!(post.method, "POST");
    assert_eq!(post.grant_type.as_deref(), Some("refresh_token"));
    assert_eq!(post.scopes, ["repository:bear/app:pull"]);

    // login against a Bearer registry checks the password at the token endpoint.
    let home = tempfile::tempdir().unwrap();
    let c = Client::new(options(home.path())).unwrap();
    let bad = c
        .login(
            &reg.addr,
            Credential::Basic {
                username: "bob".into(),
                password: "nope".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(bad.status(), Some(401), "{bad}");
    assert!(c
        .login(
            &reg.addr,
            Credential::Basic {
                username: "bob".into(),
                password: "builder".into(),
            },
        )
        .await
        .is_ok());
}

#[tokio::test]
async fn client_certificate_from_certs_d() {
    require_peer!("docker-registry");
    require_peer!("openssl");
    let dir = tempfile::tempdir().unwrap();
    let ca = common::make_ca(dir.path(), "manifold mTLS CA");
    let reg = Registry::start(Config {
        tls: Some((ca.server_crt.clone(), ca.server_key.clone())),
        client_ca: Some(ca.ca_crt.clone()),
        ..Config::default()
    });
    let cfg = tempfile::tempdir().unwrap();
    let host_dir = cfg.path().join("certs.d").join(&reg.addr);
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::copy(&ca.ca_crt, host_dir.join("ca.crt")).unwrap();
    let r = reference(&reg.addr, "mtls/app:v1");

    // Trusting the server is not enough: the registry wants a client certificate.
    let err = Client::new(options(cfg.path()))
        .unwrap()
        .ping(&reg.addr)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Tls { .. }), "{msg}");
    assert!(
        msg.contains(&host_dir.display().to_string()) && msg.contains("client.cert"),
        "{msg}"
    );

    common::make_client_cert(dir.path(), &ca, &host_dir);
    let client = Client::new(options(cfg.path())).unwrap();
    let img = common::tiny_image(cfg.path(), "mtls");
    push_and_pull(&client, &r, &img).await;

    // A certificate without its key is named, not ignored.
    std::fs::remove_file(host_dir.join("client.key")).unwrap();
    let err = Client::new(options(cfg.path()))
        .unwrap()
        .ping(&reg.addr)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("client.cert") && err.contains("client.key"),
        "{err}"
    );
}
