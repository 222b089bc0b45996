//! Media types of the OCI image spec and Docker's schema 2. Unknown media types are plain strings
//! that pass through untouched; these helpers only classify.

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const OCI_LAYER_NONDIST_TAR: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
pub const OCI_LAYER_NONDIST_GZIP: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
pub const OCI_LAYER_NONDIST_ZSTD: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// The artifact manifest of image-spec 1.1-rc (withdrawn, still found in registries).
pub const OCI_ARTIFACT_MANIFEST: &str = "application/vnd.oci.artifact.manifest.v1+json";
pub const OCI_LAYOUT_HEADER: &str = "application/vnd.oci.layout.header.v1+json";

pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_FOREIGN_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
pub const DOCKER_PLUGIN_CONFIG: &str = "application/vnd.docker.plugin.v1+json";

/// The Accept list for fetching any manifest or index, in preference order.
pub const MANIFEST_ACCEPT: &[&str] = &[
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    DOCKER_MANIFEST,
    OCI_ARTIFACT_MANIFEST,
];

pub fn is_index(mt: &str) -> bool {
    mt == OCI_INDEX || mt == DOCKER_MANIFEST_LIST
}

pub fn is_image_manifest(mt: &str) -> bool {
    mt == OCI_MANIFEST || mt == DOCKER_MANIFEST
}

/// An index or a manifest: something a tag can point at and a registry serves under /manifests/.
pub fn is_manifest_like(mt: &str) -> bool {
    is_index(mt) || is_image_manifest(mt) || mt == OCI_ARTIFACT_MANIFEST
}

pub fn is_docker(mt: &str) -> bool {
    mt.starts_with("application/vnd.docker.")
}

/// How a layer blob is compressed, judged by its media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// The compression of a layer media type, or `None` when the type is not a layer.
pub fn layer_compression(mt: &str) -> Option<Compression> {
    match mt {
        OCI_LAYER_TAR | OCI_LAYER_NONDIST_TAR | DOCKER_LAYER_TAR => Some(Compression::None),
        OCI_LAYER_GZIP | OCI_LAYER_NONDIST_GZIP | DOCKER_LAYER_GZIP | DOCKER_LAYER_FOREIGN_GZIP => {
            Some(Compression::Gzip)
        }
        OCI_LAYER_ZSTD | OCI_LAYER_NONDIST_ZSTD => Some(Compression::Zstd),
        _ => None,
    }
}

/// Non-distributable ("foreign") layers are not pushed; registries fetch them from their urls.
pub fn is_non_distributable(mt: &str) -> bool {
    mt.contains(".nondistributable.") || mt == DOCKER_LAYER_FOREIGN_GZIP
}

/// The manifest media type that matches a family: Docker's when `docker`, OCI's otherwise.
pub fn manifest_for(docker: bool) -> &'static str {
    if docker {
        DOCKER_MANIFEST
    } else {
        OCI_MANIFEST
    }
}

pub fn index_for(docker: bool) -> &'static str {
    if docker {
        DOCKER_MANIFEST_LIST
    } else {
        OCI_INDEX
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        assert!(is_index(OCI_INDEX) && is_index(DOCKER_MANIFEST_LIST));
        assert!(!is_index(OCI_MANIFEST));
        assert!(is_image_manifest(DOCKER_MANIFEST));
        assert!(is_manifest_like(OCI_ARTIFACT_MANIFEST));
        assert_eq!(
            layer_compression(DOCKER_LAYER_GZIP),
            Some(Compression::Gzip)
        );
        assert_eq!(layer_compression(OCI_LAYER_ZSTD), Some(Compression::Zstd));
        assert_eq!(
            layer_compression(OCI_LAYER_NONDIST_TAR),
            Some(Compression::None)
        );
        assert_eq!(layer_compression(OCI_CONFIG), None);
        assert_eq!(layer_compression("application/x-unknown"), None);
        assert!(is_non_distributable(DOCKER_LAYER_FOREIGN_GZIP));
        assert!(is_non_distributable(OCI_LAYER_NONDIST_ZSTD));
        assert!(!is_non_distributable(OCI_LAYER_GZIP));
        assert!(is_docker(DOCKER_CONFIG) && !is_docker(OCI_CONFIG));
    }
}
