//! Descriptors, image manifests, indexes and image configs.
//!
//! Each type keeps fields it does not know in `extra`, so nothing is lost when a document is read
//! and written again. The bytes that were read (or that we serialized once) travel with the value
//! in a [`Document`], and every digest is computed over exactly those bytes.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::digest::Digest;
use crate::media_type as mt;
use crate::platform::Platform;
use crate::Error;

pub type Annotations = BTreeMap<String, String>;
pub type Extra = Map<String, Value>;

pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// BuildKit marks attestation manifests with this annotation (value `attestation-manifest`).
pub const ANNOTATION_DOCKER_REFERENCE_TYPE: &str = "vnd.docker.reference.type";
pub const ANNOTATION_DOCKER_REFERENCE_DIGEST: &str = "vnd.docker.reference.digest";

/// A reference to content: what it is, its digest and size, and where it runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: Annotations,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl Descriptor {
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Self {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            urls: Vec::new(),
            annotations: Annotations::new(),
            data: None,
            platform: None,
            artifact_type: None,
            extra: Extra::new(),
        }
    }

    /// Attestations (BuildKit's `unknown/unknown` entries) are never runnable images.
    pub fn is_attestation(&self) -> bool {
        self.annotations
            .get(ANNOTATION_DOCKER_REFERENCE_TYPE)
            .is_some_and(|v| v == "attestation-manifest")
            || self.platform.as_ref().is_some_and(Platform::is_unknown)
    }
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: Annotations,
    #[serde(flatten)]
    pub extra: Extra,
}

/// An image index (OCI) or manifest list (Docker).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: Annotations,
    #[serde(flatten)]
    pub extra: Extra,
}

/// No entry of an index runs the wanted platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoMatchingPlatform {
    pub wanted: Platform,
    /// The platforms of the index's runnable entries.
    pub available: Vec<Platform>,
}

impl std::fmt::Display for NoMatchingPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let offers: Vec<String> = self.available.iter().map(|p| p.to_string()).collect();
        write!(
            f,
            "no image for {}; it offers: {}",
            self.wanted,
            if offers.is_empty() {
                "no runnable image".to_string()
            } else {
                offers.join(", ")
            }
        )
    }
}

impl std::error::Error for NoMatchingPlatform {}

impl Index {
    /// The entries that are images to run (attestations and `unknown/unknown` are not), with
    /// their platforms (an entry without one counts as the empty platform).
    pub fn runnable(&self) -> Vec<(&Descriptor, Platform)> {
        self.manifests
            .iter()
            .filter(|d| !d.is_attestation())
            .map(|d| (d, d.platform.clone().unwrap_or_default()))
            .collect()
    }

    /// The entry that best runs `platform`, by containerd's matching and ranking.
    pub fn select(&self, platform: &Platform) -> Result<&Descriptor, Box<NoMatchingPlatform>> {
        self.select_with(&crate::Matcher::new(platform))
    }

    /// [`Index::select`] with a matcher of the caller's (for example a strict one).
    pub fn select_with(
        &self,
        matcher: &crate::Matcher,
    ) -> Result<&Descriptor, Box<NoMatchingPlatform>> {
        let runnable = self.runnable();
        let plats: Vec<Platform> = runnable.iter().map(|(_, p)| p.clone()).collect();
        match matcher.best(&plats) {
            Some(i) => Ok(runnable[i].0),
            None => Err(Box::new(NoMatchingPlatform {
                wanted: matcher.wanted().clone(),
                available: plats,
            })),
        }
    }

    pub fn new(media_type: &str, manifests: Vec<Descriptor>) -> Self {
        Index {
            schema_version: 2,
            media_type: Some(media_type.to_string()),
            artifact_type: None,
            manifests,
            subject: None,
            annotations: Annotations::new(),
            extra: Extra::new(),
        }
    }
}

/// An image config (OCI, or Docker's container image JSON with its extra fields).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    #[serde(
        rename = "os.features",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_features: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ContainerConfig>,
    #[serde(default)]
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl ImageConfig {
    pub fn platform(&self) -> Platform {
        Platform {
            architecture: self.architecture.clone(),
            os: self.os.clone(),
            os_version: self.os_version.clone().unwrap_or_default(),
            os_features: self.os_features.clone().unwrap_or_default(),
            variant: self.variant.clone().unwrap_or_default(),
            features: Vec::new(),
        }
        .normalized()
    }
}

/// The runtime part of a config. Field names are Docker's (capitalized), as in the OCI spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args_escaped: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "OnBuild")]
    pub on_build: Option<Vec<String>>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// Docker's HEALTHCHECK. Durations are nanoseconds, as Docker writes them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Healthcheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<i64>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl Default for RootFs {
    fn default() -> Self {
        RootFs {
            kind: "layers".into(),
            diff_ids: Vec::new(),
            extra: Extra::new(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_layer: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A JSON document with the exact bytes it was read from or serialized to.
///
/// The value is for reading; the bytes are what is stored, sent and hashed. To change a document,
/// build a new value and call [`Document::new`], which serializes it once.
#[derive(Clone, Debug)]
pub struct Document<T> {
    value: T,
    bytes: Vec<u8>,
    digest: Digest,
}

impl<T: Serialize + DeserializeOwned> Document<T> {
    /// Parses `bytes`, keeping them as they are.
    pub fn parse(bytes: Vec<u8>) -> Result<Self, Error> {
        let value = serde_json::from_slice(&bytes).map_err(|e| Error::InvalidDocument {
            what: std::any::type_name::<T>()
                .rsplit("::")
                .next()
                .unwrap_or("document"),
            reason: e.to_string(),
        })?;
        let digest = Digest::sha256_of(&bytes);
        Ok(Document {
            value,
            bytes,
            digest,
        })
    }

    /// Serializes a value we created, once; its digest is over these bytes.
    pub fn new(value: T) -> Self {
        let bytes = serde_json::to_vec(&value).expect("our document types always serialize");
        let digest = Digest::sha256_of(&bytes);
        Document {
            value,
            bytes,
            digest,
        }
    }

    pub fn value(&self) -> &T {
        &self.value
    }
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
    pub fn digest(&self) -> &Digest {
        &self.digest
    }
    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// A descriptor for this document with the given media type.
    pub fn descriptor(&self, media_type: &str) -> Descriptor {
        Descriptor::new(media_type, self.digest.clone(), self.size())
    }
}

/// Any document a tag can point at: an index or an image manifest.
#[derive(Clone, Debug)]
pub enum Manifest {
    Index(Box<Document<Index>>),
    Image(Box<Document<ImageManifest>>),
}

impl Manifest {
    /// Parses manifest bytes, deciding the kind from `mediaType` (or from `content_type`, or from
    /// the shape of the document when neither says).
    pub fn parse(bytes: Vec<u8>, content_type: Option<&str>) -> Result<Self, Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Probe {
            media_type: Option<String>,
            schema_version: Option<u32>,
            manifests: Option<Value>,
            config: Option<Value>,
        }
        let probe: Probe = serde_json::from_slice(&bytes).map_err(|e| Error::InvalidDocument {
            what: "manifest",
            reason: e.to_string(),
        })?;
        if probe.schema_version == Some(1) {
            return Err(Error::InvalidDocument {
                what: "manifest",
                reason: "Docker schema 1 manifests are deprecated and not supported; \
                         re-push the image with a current client"
                    .into(),
            });
        }
        let declared = probe
            .media_type
            .as_deref()
            .or(content_type.filter(|c| mt::is_manifest_like(c)));
        let is_index = match declared {
            Some(m) if mt::is_index(m) => true,
            Some(m) if mt::is_image_manifest(m) || m == mt::OCI_ARTIFACT_MANIFEST => false,
            _ => probe.manifests.is_some() && probe.config.is_none(),
        };
        if is_index {
            Ok(Manifest::Index(Box::new(Document::parse(bytes)?)))
        } else {
            Ok(Manifest::Image(Box::new(Document::parse(bytes)?)))
        }
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            Manifest::Index(d) => d.bytes(),
            Manifest::Image(d) => d.bytes(),
        }
    }

    pub fn digest(&self) -> &Digest {
        match self {
            Manifest::Index(d) => d.digest(),
            Manifest::Image(d) => d.digest(),
        }
    }

    /// The declared media type, or the one the shape implies (OCI when not declared).
    pub fn media_type(&self) -> &str {
        match self {
            Manifest::Index(d) => d.value().media_type.as_deref().unwrap_or(mt::OCI_INDEX),
            Manifest::Image(d) => d.value().media_type.as_deref().unwrap_or(mt::OCI_MANIFEST),
        }
    }

    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            self.media_type(),
            self.digest().clone(),
            self.bytes().len() as u64,
        )
    }

    /// Digests of the content this document points at directly.
    pub fn children(&self) -> Vec<Descriptor> {
        match self {
            Manifest::Index(d) => d.value().manifests.clone(),
            Manifest::Image(d) => {
                let m = d.value();
                let mut c = Vec::with_capacity(m.layers.len() + 1);
                c.push(m.config.clone());
                c.extend(m.layers.iter().cloned());
                c
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_select_ranks_and_says_what_it_offers() {
        let d = |p: &str, n: u8| {
            let mut d = Descriptor::new(mt::OCI_MANIFEST, Digest::sha256_of(&[n]), 1);
            d.platform = Some(Platform::parse(p).unwrap());
            d
        };
        let mut att = d("unknown/unknown", 9);
        att.annotations.insert(
            "vnd.docker.reference.type".into(),
            "attestation-manifest".into(),
        );
        let idx = Index::new(
            mt::OCI_INDEX,
            vec![
                d("linux/arm/v6", 1),
                d("linux/arm/v7", 2),
                d("linux/amd64", 3),
                att,
            ],
        );
        let arm = Platform::parse("linux/arm/v7").unwrap();
        assert_eq!(idx.select(&arm).unwrap().digest, Digest::sha256_of(&[2]));
        let err = idx
            .select(&Platform::parse("linux/s390x").unwrap())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "no image for linux/s390x; it offers: linux/arm/v6, linux/arm/v7, linux/amd64"
        );
    }

    // A Docker manifest list as Docker Hub serves it, with an unusual key order and spacing.
    const DOCKER_LIST: &str = r#"{
   "manifests": [
      {
         "digest": "sha256:1111111111111111111111111111111111111111111111111111111111111111",
         "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
         "platform": {
            "architecture": "amd64",
            "os": "linux"
         },
         "size": 528
      },
      {
         "digest": "sha256:2222222222222222222222222222222222222222222222222222222222222222",
         "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
         "platform": {
            "architecture": "arm",
            "os": "linux",
            "variant": "v7"
         },
         "size": 528
      }
   ],
   "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
   "schemaVersion": 2
}"#;

    // An OCI index with attestations, annotations and a field from the future.
    const OCI_INDEX: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:3333333333333333333333333333333333333333333333333333333333333333","size":1000,"platform":{"architecture":"arm64","os":"linux"}},{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:4444444444444444444444444444444444444444444444444444444444444444","size":566,"annotations":{"vnd.docker.reference.digest":"sha256:3333333333333333333333333333333333333333333333333333333333333333","vnd.docker.reference.type":"attestation-manifest"},"platform":{"architecture":"unknown","os":"unknown"},"futureField":{"x":1}}],"annotations":{"org.opencontainers.image.created":"2024-01-01T00:00:00Z"},"futureTopLevel":[1,2]}"#;

    const CONFIG_HEALTHCHECK: &str = r#"{"architecture":"amd64","config":{"Hostname":"","Env":["PATH=/usr/bin"],"Cmd":["nginx","-g","daemon off;"],"Healthcheck":{"Test":["CMD-SHELL","curl -f http://localhost/ || exit 1"],"Interval":30000000000,"Timeout":5000000000,"Retries":3},"ArgsEscaped":true,"Shell":["/bin/bash","-c"],"OnBuild":["RUN echo hi"],"StopSignal":"SIGQUIT","ExposedPorts":{"80/tcp":{}}},"container":"abc","created":"2024-01-01T00:00:00.000000001Z","docker_version":"24.0.7","history":[{"created":"2024-01-01T00:00:00Z","created_by":"/bin/sh -c #(nop) ADD file:abc in / "},{"created":"2024-01-01T00:00:01Z","created_by":"/bin/sh -c #(nop)  CMD [\"nginx\"]","empty_layer":true}],"os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:5555555555555555555555555555555555555555555555555555555555555555"]}}"#;

    #[test]
    fn docker_list_keeps_bytes_and_digest() {
        let m = Manifest::parse(DOCKER_LIST.as_bytes().to_vec(), None).unwrap();
        let Manifest::Index(doc) = &m else {
            panic!("not an index")
        };
        assert_eq!(m.bytes(), DOCKER_LIST.as_bytes());
        assert_eq!(m.digest(), &Digest::sha256_of(DOCKER_LIST.as_bytes()));
        assert_eq!(m.media_type(), mt::DOCKER_MANIFEST_LIST);
        let plats: Vec<String> = doc
            .value()
            .manifests
            .iter()
            .map(|d| d.platform.as_ref().unwrap().to_string())
            .collect();
        assert_eq!(plats, ["linux/amd64", "linux/arm/v7"]);
    }

    #[test]
    fn oci_index_keeps_unknown_fields_and_marks_attestations() {
        let doc = Document::<Index>::parse(OCI_INDEX.as_bytes().to_vec()).unwrap();
        assert_eq!(doc.digest(), &Digest::sha256_of(OCI_INDEX.as_bytes()));
        let idx = doc.value();
        assert!(!idx.manifests[0].is_attestation());
        assert!(idx.manifests[1].is_attestation());
        assert_eq!(idx.manifests[1].extra["futureField"]["x"], 1);
        // Re-serializing the unchanged value loses nothing and keeps key order.
        let again = serde_json::to_vec(idx).unwrap();
        assert_eq!(again, OCI_INDEX.as_bytes());
    }

    #[test]
    fn config_keeps_docker_fields() {
        let doc = Document::<ImageConfig>::parse(CONFIG_HEALTHCHECK.as_bytes().to_vec()).unwrap();
        let c = doc.value();
        let cc = c.config.as_ref().unwrap();
        let hc = cc.healthcheck.as_ref().unwrap();
        assert_eq!(hc.interval, Some(30_000_000_000));
        assert_eq!(hc.retries, Some(3));
        assert_eq!(cc.shell.as_deref().unwrap(), ["/bin/bash", "-c"]);
        assert_eq!(cc.on_build.as_deref().unwrap(), ["RUN echo hi"]);
        assert_eq!(cc.args_escaped, Some(true));
        assert_eq!(cc.extra["Hostname"], "");
        assert_eq!(c.extra["docker_version"], "24.0.7");
        assert_eq!(c.history[1].empty_layer, Some(true));
        assert_eq!(c.platform().to_string(), "linux/amd64");
        // Every field survives a re-serialization, nested unknown fields included.
        let v1: Value = serde_json::from_str(CONFIG_HEALTHCHECK).unwrap();
        let v2: Value = serde_json::to_value(c).unwrap();
        assert_eq!(v1, v2);
        assert_eq!(doc.bytes(), CONFIG_HEALTHCHECK.as_bytes());
    }

    #[test]
    fn created_documents_hash_their_bytes() {
        let desc = Descriptor::new(mt::OCI_MANIFEST, Digest::sha256_of(b"m"), 1);
        let doc = Document::new(Index::new(mt::OCI_INDEX, vec![desc]));
        assert_eq!(doc.digest(), &Digest::sha256_of(doc.bytes()));
        let back = Document::<Index>::parse(doc.bytes().to_vec()).unwrap();
        assert_eq!(back.digest(), doc.digest());
        assert_eq!(back.value(), doc.value());
    }

    #[test]
    fn parse_detects_kinds_and_refuses_schema1() {
        let man = r#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:5555555555555555555555555555555555555555555555555555555555555555","size":2},"layers":[]}"#;
        let m = Manifest::parse(man.as_bytes().to_vec(), None).unwrap();
        assert!(matches!(m, Manifest::Image(_)));
        assert_eq!(m.media_type(), mt::OCI_MANIFEST);
        assert_eq!(m.children().len(), 1);
        let err = Manifest::parse(br#"{"schemaVersion":1,"fsLayers":[]}"#.to_vec(), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("schema 1"), "{err}");
        let err = Manifest::parse(b"{not json".to_vec(), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid manifest"), "{err}");
    }
}
