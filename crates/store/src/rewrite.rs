//! New views of an image in the store, for places that need another form: uncompressed layers
//! gzip-compressed for a registry (as `docker push` does), Docker media types turned into OCI
//! ones for tools that read only OCI. The result is written into the store beside the original
//! (which keeps its digest); compressed layers are remembered by the digest of what they
//! compress, so the next push compresses nothing.

use std::fs;
use std::io::Read;

use oci::media_type as mt;
use oci::{Descriptor, Digest, Document, Manifest};

use crate::layout::{write_atomic, Layout};
use crate::{io_err, Result};

/// What to change.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rewrite {
    /// Gzip layers stored uncompressed (`...layer.v1.tar`, `...rootfs.diff.tar`).
    pub compress: bool,
    /// Docker v2 manifests, lists, configs and layer types become their OCI equivalents.
    pub oci_media_types: bool,
}

/// What a rewrite did.
#[derive(Clone, Debug)]
pub struct Rewritten {
    /// The root to copy: the original when nothing changed.
    pub root: Descriptor,
    /// Layers compressed now (not found among those remembered).
    pub layers_compressed: usize,
    /// Layers whose compressed form was remembered from before.
    pub layers_reused: usize,
    /// Bytes of the uncompressed layers replaced, and of their compressed forms.
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Manifests and indexes whose media types were changed to OCI's.
    pub converted: usize,
}

impl Rewritten {
    pub fn changed(&self, original: &Descriptor) -> bool {
        self.root.digest != original.digest
    }
}

const MAP_DIR: &str = "compressed";

fn map_path(store: &Layout, uncompressed: &Digest) -> std::path::PathBuf {
    store
        .root()
        .join(MAP_DIR)
        .join(uncompressed.algorithm().as_str())
        .join(uncompressed.hex())
}

/// The remembered compressed form of an uncompressed blob, when the store still has it.
pub(crate) fn remembered(store: &Layout, uncompressed: &Digest) -> Option<(Digest, u64)> {
    let text = fs::read_to_string(map_path(store, uncompressed)).ok()?;
    let (d, size) = text.trim().split_once(' ')?;
    let d = Digest::parse(d).ok()?;
    let size: u64 = size.parse().ok()?;
    (store.blob_size(&d) == Some(size)).then_some((d, size))
}

/// Every remembered pair (uncompressed, compressed), for GC.
pub(crate) fn all_remembered(store: &Layout) -> Vec<(Digest, Digest, std::path::PathBuf)> {
    let mut out = Vec::new();
    let Ok(algs) = fs::read_dir(store.root().join(MAP_DIR)) else {
        return out;
    };
    for alg in algs.flatten() {
        let Ok(rd) = fs::read_dir(alg.path()) else {
            continue;
        };
        for f in rd.flatten() {
            let from = Digest::parse(&format!(
                "{}:{}",
                alg.file_name().to_string_lossy(),
                f.file_name().to_string_lossy()
            ));
            let to = fs::read_to_string(f.path())
                .ok()
                .and_then(|t| t.split_whitespace().next().map(str::to_string))
                .and_then(|d| Digest::parse(&d).ok());
            if let (Ok(from), Some(to)) = (from, to) {
                out.push((from, to, f.path()));
            }
        }
    }
    out
}

fn gzip_layer(store: &Layout, layer: &Descriptor, out: &mut Rewritten) -> Result<(Digest, u64)> {
    if let Some(found) = remembered(store, &layer.digest) {
        out.layers_reused += 1;
        return Ok(found);
    }
    let f = store.open_blob(&layer.digest)?;
    let mut gz = flate2::read::GzEncoder::new(
        std::io::BufReader::with_capacity(1 << 20, f),
        flate2::Compression::default(),
    );
    let (d, size) = store.ingest(&mut gz as &mut dyn Read, None)?;
    let p = map_path(store, &layer.digest);
    if let Some(dir) = p.parent() {
        fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    }
    write_atomic(&p, format!("{d} {size}\n").as_bytes())?;
    out.layers_compressed += 1;
    Ok((d, size))
}

/// The OCI media type for a Docker one (unchanged when it has none).
fn to_oci(media_type: &str) -> &str {
    match media_type {
        mt::DOCKER_MANIFEST => mt::OCI_MANIFEST,
        mt::DOCKER_MANIFEST_LIST => mt::OCI_INDEX,
        mt::DOCKER_CONFIG => mt::OCI_CONFIG,
        mt::DOCKER_LAYER_GZIP => mt::OCI_LAYER_GZIP,
        mt::DOCKER_LAYER_TAR => mt::OCI_LAYER_TAR,
        mt::DOCKER_LAYER_FOREIGN_GZIP => mt::OCI_LAYER_NONDIST_GZIP,
        other => other,
    }
}

/// Rewrites `root` (an image or index in `store`) as `how` says. Children come first, so every
/// blob the new root reaches is in the store when this returns.
pub fn rewrite(store: &Layout, root: &Descriptor, how: Rewrite) -> Result<Rewritten> {
    let mut out = Rewritten {
        root: root.clone(),
        layers_compressed: 0,
        layers_reused: 0,
        bytes_before: 0,
        bytes_after: 0,
        converted: 0,
    };
    out.root = rewrite_one(store, root, how, &mut out)?;
    Ok(out)
}

fn rewrite_one(
    store: &Layout,
    desc: &Descriptor,
    how: Rewrite,
    out: &mut Rewritten,
) -> Result<Descriptor> {
    match store.read_manifest(desc)? {
        Manifest::Index(doc) => {
            let mut idx = doc.value().clone();
            let mut changed = false;
            for child in idx.manifests.iter_mut() {
                if !mt::is_manifest_like(&child.media_type) || !store.has_blob(&child.digest) {
                    continue;
                }
                let new = rewrite_one(store, child, how, out)?;
                if new.digest != child.digest || new.media_type != child.media_type {
                    child.digest = new.digest;
                    child.size = new.size;
                    child.media_type = new.media_type;
                    changed = true;
                }
            }
            let mut media_type = desc.media_type.clone();
            if how.oci_media_types && media_type == mt::DOCKER_MANIFEST_LIST {
                media_type = mt::OCI_INDEX.into();
                idx.media_type = Some(media_type.clone());
                out.converted += 1;
                changed = true;
            }
            if !changed {
                return Ok(desc.clone());
            }
            let new = Document::new(idx);
            store.put_bytes(new.bytes())?;
            Ok(with_bytes(desc, &media_type, new.digest(), new.size()))
        }
        Manifest::Image(doc) => {
            let mut man = doc.value().clone();
            let mut changed = false;
            let mut media_type = desc.media_type.clone();
            let oci = how.oci_media_types || media_type == mt::OCI_MANIFEST;
            if how.oci_media_types && media_type == mt::DOCKER_MANIFEST {
                media_type = mt::OCI_MANIFEST.into();
                man.media_type = Some(media_type.clone());
                man.config.media_type = to_oci(&man.config.media_type).into();
                out.converted += 1;
                changed = true;
            }
            for layer in man.layers.iter_mut() {
                let uncompressed = mt::layer_compression(&layer.media_type)
                    == Some(mt::Compression::None)
                    && !mt::is_non_distributable(&layer.media_type);
                if how.compress && uncompressed && store.has_blob(&layer.digest) {
                    let (d, size) = gzip_layer(store, layer, out)?;
                    out.bytes_before += layer.size;
                    out.bytes_after += size;
                    layer.digest = d;
                    layer.size = size;
                    layer.media_type = if oci {
                        mt::OCI_LAYER_GZIP
                    } else {
                        mt::DOCKER_LAYER_GZIP
                    }
                    .into();
                    changed = true;
                }
                if how.oci_media_types {
                    let m = to_oci(&layer.media_type);
                    if m != layer.media_type {
                        layer.media_type = m.into();
                        changed = true;
                    }
                }
            }
            if !changed {
                return Ok(desc.clone());
            }
            let new = Document::new(man);
            store.put_bytes(new.bytes())?;
            Ok(with_bytes(desc, &media_type, new.digest(), new.size()))
        }
    }
}

/// `desc` (platform and annotations kept) pointing at other bytes.
fn with_bytes(desc: &Descriptor, media_type: &str, digest: &Digest, size: u64) -> Descriptor {
    let mut d = desc.clone();
    d.media_type = media_type.into();
    d.digest = digest.clone();
    d.size = size;
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(store: &Layout, docker: bool) -> Descriptor {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        let body = "hello hello hello hello hello hello\n".repeat(200);
        h.set_path("hello.txt").unwrap();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, body.as_bytes()).unwrap();
        let layer = b.into_inner().unwrap();
        let ld = store.put_bytes(&layer).unwrap();
        let cfg = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{ld}"]}}}}"#
        );
        let cd = store.put_bytes(cfg.as_bytes()).unwrap();
        let (m, c, l) = if docker {
            (mt::DOCKER_MANIFEST, mt::DOCKER_CONFIG, mt::DOCKER_LAYER_TAR)
        } else {
            (mt::OCI_MANIFEST, mt::OCI_CONFIG, mt::OCI_LAYER_TAR)
        };
        let man = format!(
            r#"{{"schemaVersion":2,"mediaType":"{m}","config":{{"mediaType":"{c}","digest":"{cd}","size":{}}},"layers":[{{"mediaType":"{l}","digest":"{ld}","size":{}}}]}}"#,
            cfg.len(),
            layer.len()
        );
        let md = store.put_bytes(man.as_bytes()).unwrap();
        Descriptor::new(m, md, man.len() as u64)
    }

    #[test]
    fn compresses_once_and_remembers() {
        let t = tempfile::tempdir().unwrap();
        let store = Layout::open_or_create(t.path()).unwrap();
        let root = image(&store, true);
        store.set_name("a:1", &root).unwrap();
        let how = Rewrite {
            compress: true,
            oci_media_types: false,
        };
        let first = rewrite(&store, &root, how).unwrap();
        assert!(first.changed(&root));
        assert_eq!((first.layers_compressed, first.layers_reused), (1, 0));
        assert!(first.bytes_after < first.bytes_before);
        let Manifest::Image(doc) = store.read_manifest(&first.root).unwrap() else {
            panic!("an image")
        };
        assert_eq!(doc.value().layers[0].media_type, mt::DOCKER_LAYER_GZIP);
        // The compressed blob is the gzip of the original.
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(store.open_blob(&doc.value().layers[0].digest).unwrap())
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(Digest::sha256_of(&plain).to_string(), {
            let Manifest::Image(o) = store.read_manifest(&root).unwrap() else {
                panic!()
            };
            o.value().layers[0].digest.to_string()
        });

        // GC keeps the remembered blob while the layer it compresses lives.
        store.gc().unwrap();
        let second = rewrite(&store, &root, how).unwrap();
        assert_eq!((second.layers_compressed, second.layers_reused), (0, 1));
        assert_eq!(second.root.digest, first.root.digest);
        store.remove_names(&["a:1".into()]).unwrap();
        store.gc().unwrap();
        assert!(all_remembered(&store).is_empty());
        assert!(!store.has_blob(&doc.value().layers[0].digest));
    }

    #[test]
    fn converts_docker_media_types_to_oci() {
        let t = tempfile::tempdir().unwrap();
        let store = Layout::open_or_create(t.path()).unwrap();
        let root = image(&store, true);
        let how = Rewrite {
            compress: false,
            oci_media_types: true,
        };
        let out = rewrite(&store, &root, how).unwrap();
        assert_eq!(out.converted, 1);
        assert_eq!(out.root.media_type, mt::OCI_MANIFEST);
        let Manifest::Image(doc) = store.read_manifest(&out.root).unwrap() else {
            panic!("an image")
        };
        assert_eq!(doc.value().config.media_type, mt::OCI_CONFIG);
        assert_eq!(doc.value().layers[0].media_type, mt::OCI_LAYER_TAR);
        // An OCI image is left as it is.
        let oci_root = image(&store, false);
        assert!(!rewrite(&store, &oci_root, how).unwrap().changed(&oci_root));
    }
}
