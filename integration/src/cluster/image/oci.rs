//! The OCI image layout of one single-layer image, as a tar: `oci-layout`,
//! `index.json` and `blobs/sha256/<digest>` for the layer, the config and
//! the manifest.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::tools::{self, link_or_copy, set_mode, sha256_file, sha256_hex};
use super::ImageConfig;

/// Media type of an uncompressed layer.
const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
/// Media type of an image config.
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of an image manifest.
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of the image index (`index.json`).
const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// The annotation `ctr images import` names the image by.
const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI annotation for the tag.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Writes `out` (an OCI image-layout tar: oci-layout, index.json,
/// blobs/sha256/...) from one uncompressed layer tar.
///
/// The image is named `reference` (which must carry a tag, `name:tag`) by
/// the annotation `io.containerd.image.name`, and its tag is in
/// `org.opencontainers.image.ref.name`. `out` appears whole or not at all:
/// it is written under a temporary name next to it, then renamed.
pub fn write_oci_archive(
    layer_tar: &Path,
    reference: &str,
    config: &ImageConfig,
    out: &Path,
) -> Result<()> {
    let tag = tag_of(reference)?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let staging = tempfile::Builder::new()
        .prefix(".oci-")
        .tempdir_in(parent)
        .with_context(|| format!("cannot create a directory in {}", parent.display()))?;
    let blobs = staging.path().join("blobs").join("sha256");
    tools::make_dir(&blobs, 0o755)?;

    let (layer_digest, layer_size) = sha256_file(layer_tar)?;
    link_or_copy(layer_tar, &blobs.join(&layer_digest))?;
    let layer = descriptor(LAYER_MEDIA_TYPE, &layer_digest, layer_size);

    let config = write_blob(
        &blobs,
        CONFIG_MEDIA_TYPE,
        &config_json(config, &layer_digest)?,
    )?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": config,
        "layers": [layer],
    });
    let mut manifest = write_blob(&blobs, MANIFEST_MEDIA_TYPE, &manifest)?;
    manifest["platform"] = json!({ "architecture": oci_architecture()?, "os": "linux" });
    manifest["annotations"] = json!({ CONTAINERD_NAME: reference, REF_NAME: tag });
    let index = json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [manifest],
    });
    tools::write_file(
        &staging.path().join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
        0o644,
    )?;
    tools::write_file(
        &staging.path().join("index.json"),
        &to_bytes(&index)?,
        0o644,
    )?;
    tar_layout(staging.path(), parent, out)
}

/// The tag of `reference` (`localhost/weft:0.1.0` → `0.1.0`); a reference
/// without one, or by digest, is refused.
pub(super) fn tag_of(reference: &str) -> Result<&str> {
    if reference.contains('@') {
        bail!("image reference {reference:?}: references by digest are not supported");
    }
    let last = reference.rsplit('/').next().unwrap_or(reference);
    match last.split_once(':') {
        Some((name, tag)) if !name.is_empty() && !tag.is_empty() => Ok(tag),
        _ => bail!("image reference {reference:?} has no tag (name:tag)"),
    }
}

/// The OCI name of this machine's architecture.
pub(super) fn oci_architecture() -> Result<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => Ok("amd64"),
        "aarch64" => Ok("arm64"),
        other => bail!("no OCI architecture known for {other}"),
    }
}

/// The image config: `config` as `Entrypoint`, `Cmd`, `Env` and
/// `WorkingDir` (empty ones left out), this machine's architecture, and
/// the one layer's diff ID.
fn config_json(config: &ImageConfig, layer_digest: &str) -> Result<Value> {
    let mut run = serde_json::Map::new();
    let lists = [
        ("Entrypoint", &config.entrypoint),
        ("Cmd", &config.cmd),
        ("Env", &config.env),
    ];
    for (key, list) in lists {
        if !list.is_empty() {
            run.insert(key.into(), json!(list));
        }
    }
    if let Some(dir) = &config.working_dir {
        run.insert("WorkingDir".into(), json!(dir));
    }
    Ok(json!({
        "architecture": oci_architecture()?,
        "os": "linux",
        "config": run,
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_digest}")] },
    }))
}

/// A content descriptor.
fn descriptor(media_type: &str, digest_hex: &str, size: u64) -> Value {
    json!({ "mediaType": media_type, "digest": format!("sha256:{digest_hex}"), "size": size })
}

/// Writes `value` as a blob into `blobs` and returns its descriptor.
fn write_blob(blobs: &Path, media_type: &str, value: &Value) -> Result<Value> {
    let bytes = to_bytes(value)?;
    let digest = sha256_hex(&bytes);
    tools::write_file(&blobs.join(&digest), &bytes, 0o644)?;
    Ok(descriptor(media_type, &digest, bytes.len() as u64))
}

/// `value` as compact JSON.
fn to_bytes(value: &Value) -> Result<Vec<u8>> {
    serde_json::to_vec(value).context("cannot serialize JSON")
}

/// Tars the layout in `staging` to a temporary file in `parent`, then
/// renames it to `out`.
fn tar_layout(staging: &Path, parent: &Path, out: &Path) -> Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix(".archive-")
        .suffix(".tar")
        .tempfile_in(parent)
        .with_context(|| format!("cannot create a file in {}", parent.display()))?;
    tools::run(
        std::process::Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "--sort=name"])
            .arg("-C")
            .arg(staging)
            .arg("-cf")
            .arg(tmp.path())
            .args(["oci-layout", "index.json", "blobs"]),
    )?;
    set_mode(tmp.path(), 0o644)?;
    tmp.persist(out)
        .with_context(|| format!("cannot rename an archive to {}", out.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::process::Command;

    fn read_json(path: &Path) -> Value {
        serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
    }

    fn blob_path(root: &Path, descriptor: &Value) -> std::path::PathBuf {
        let digest = descriptor["digest"].as_str().unwrap();
        let hex = digest.strip_prefix("sha256:").unwrap();
        root.join("blobs/sha256").join(hex)
    }

    /// Checks that `descriptor`'s blob exists, has its size and digest.
    fn check_blob(root: &Path, descriptor: &Value, media_type: &str) -> std::path::PathBuf {
        assert_eq!(descriptor["mediaType"], media_type);
        let path = blob_path(root, descriptor);
        let (digest, size) = sha256_file(&path).unwrap();
        assert_eq!(path.file_name().unwrap().to_str().unwrap(), digest);
        assert_eq!(descriptor["size"].as_u64().unwrap(), size);
        path
    }

    #[test]
    fn a_tiny_archive_has_a_consistent_layout() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        fs::create_dir(&rootfs).unwrap();
        fs::write(rootfs.join("hello"), b"hello\n").unwrap();
        let layer = dir.path().join("layer.tar");
        tools::tar_dir(&rootfs, &layer, tools::TAR_AS_ROOT).unwrap();
        let config = ImageConfig {
            entrypoint: vec!["/hello".into()],
            cmd: vec!["a".into()],
            env: vec!["A=b".into()],
            working_dir: Some("/".into()),
        };
        let out = dir.path().join("image.tar");
        write_oci_archive(&layer, "localhost/tiny:7", &config, &out).unwrap();

        let unpacked = dir.path().join("unpacked");
        fs::create_dir(&unpacked).unwrap();
        let status = Command::new("tar")
            .arg("-C")
            .arg(&unpacked)
            .arg("-xf")
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(
            read_json(&unpacked.join("oci-layout")),
            json!({"imageLayoutVersion": "1.0.0"})
        );
        // Every blob is named by its digest.
        let mut blobs = 0;
        for entry in fs::read_dir(unpacked.join("blobs/sha256")).unwrap() {
            let path = entry.unwrap().path();
            let (digest, _) = sha256_file(&path).unwrap();
            assert_eq!(path.file_name().unwrap().to_str().unwrap(), digest);
            blobs += 1;
        }
        assert_eq!(blobs, 3);

        let index = read_json(&unpacked.join("index.json"));
        assert_eq!(index["schemaVersion"], 2);
        let manifests = index["manifests"].as_array().unwrap();
        assert_eq!(manifests.len(), 1);
        let annotations = &manifests[0]["annotations"];
        assert_eq!(annotations[CONTAINERD_NAME], "localhost/tiny:7");
        assert_eq!(annotations[REF_NAME], "7");
        assert_eq!(manifests[0]["platform"]["os"], "linux");
        let manifest_path = check_blob(&unpacked, &manifests[0], MANIFEST_MEDIA_TYPE);

        let manifest = read_json(&manifest_path);
        assert_eq!(manifest["schemaVersion"], 2);
        assert_eq!(manifest["mediaType"], MANIFEST_MEDIA_TYPE);
        let config_path = check_blob(&unpacked, &manifest["config"], CONFIG_MEDIA_TYPE);
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1);
        let layer_path = check_blob(&unpacked, &layers[0], LAYER_MEDIA_TYPE);
        assert_eq!(fs::read(&layer_path).unwrap(), fs::read(&layer).unwrap());

        let image_config = read_json(&config_path);
        assert_eq!(image_config["rootfs"]["diff_ids"][0], layers[0]["digest"]);
        assert_eq!(image_config["os"], "linux");
        assert_eq!(image_config["config"]["Entrypoint"], json!(["/hello"]));
        assert_eq!(image_config["config"]["Cmd"], json!(["a"]));
        assert_eq!(image_config["config"]["Env"], json!(["A=b"]));
        assert_eq!(image_config["config"]["WorkingDir"], "/");

        // Nothing but the archive is left next to it.
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn empty_fields_are_left_out_of_the_config() {
        let config = ImageConfig {
            entrypoint: vec!["/bin/sh".into()],
            ..ImageConfig::default()
        };
        let value = config_json(&config, "00").unwrap();
        assert_eq!(value["config"], json!({"Entrypoint": ["/bin/sh"]}));
        assert_eq!(value["rootfs"]["diff_ids"], json!(["sha256:00"]));
    }

    #[test]
    fn tags_are_read_from_references() {
        assert_eq!(tag_of("localhost/weft:0.1.0").unwrap(), "0.1.0");
        assert_eq!(tag_of("localhost:5000/weft:1").unwrap(), "1");
        assert_eq!(tag_of("weft:x").unwrap(), "x");
        assert!(tag_of("localhost:5000/weft").is_err());
        assert!(tag_of("localhost/weft").is_err());
        assert!(tag_of("localhost/weft:").is_err());
        assert!(tag_of("localhost/weft@sha256:00").is_err());
    }
}
