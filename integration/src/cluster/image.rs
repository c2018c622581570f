//! Images for containerd without a registry: single-layer OCI archives that
//! `ctr -n k8s.io images import X.tar` accepts and names exactly by the
//! annotation `io.containerd.image.name` of their `index.json`.
//!
//! - [`pause_image`]: `localhost/weft-pause:1`, our static pause program.
//! - [`workload_image`]: `localhost/weft-workload:1`, Debian's
//!   busybox-static with its applet links.
//! - [`weft_image`]: weft's image, the runtime stage of
//!   `manifests/Containerfile` over a Debian base made with debootstrap and
//!   the binaries built on the host.
//!
//! Each is cached in [`cache_dir`] under a hash of everything it is made
//! of, so a second call returns at once; a build under another hash removes
//! the archives of the same reference it replaces.

mod containerfile;
mod debian;
mod oci;
mod tools;

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use containerfile::{CopySource, RuntimeStage};
use tools::{cache_key, run, sha256_file, Lock};

pub use oci::write_oci_archive;

/// An OCI image archive on disk, ready for `ctr -n k8s.io images import`.
#[derive(Debug, Clone)]
pub struct OciArchive {
    /// The image's full reference (`localhost/weft:0.1.0`), the name
    /// containerd gives it on import.
    pub reference: String,
    /// The archive.
    pub path: PathBuf,
}

/// Entry point, command, environment and working dir of an image config.
#[derive(Debug, Clone, Default)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`, as `NAME=value`.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
}

/// Part of every cache key: change it when the way images are made
/// changes, so that archives made the old way are not reused.
const FORMAT: &str = "weft-image-1";

/// The `PATH` of every image.
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The pause image's reference.
const PAUSE_REFERENCE: &str = "localhost/weft-pause:1";
/// The pause program's source.
const PAUSE_C: &str = include_str!("../../images/pause.c");

/// The workload image's reference.
const WORKLOAD_REFERENCE: &str = "localhost/weft-workload:1";
/// Debian's static busybox (package busybox-static).
const BUSYBOX: &str = "/bin/busybox";
/// The workload image's /etc/passwd.
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
/// The workload image's /etc/group.
const GROUP: &str = "root:x:0:\nnobody:x:65534:\n";

/// The workspace's root directory.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where images are cached: `<workspace>/target/weft-images` (created if
/// missing).
pub fn cache_dir() -> Result<PathBuf> {
    let dir = workspace_root().join("target").join("weft-images");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// `localhost/weft-pause:1`: a static pause program (our own C source
/// integration/images/pause.c compiled with `gcc -static -Os`; it blocks in
/// pause() until SIGTERM/SIGINT, then exits 0, and reaps children on
/// SIGCHLD) as /pause, entrypoint ["/pause"]. Cached in [`cache_dir`] by a
/// hash of the C source.
pub fn pause_image() -> Result<OciArchive> {
    let key = cache_key(&[FORMAT, PAUSE_REFERENCE, PAUSE_C]);
    cached_archive(PAUSE_REFERENCE, &key, |scratch, out| {
        let rootfs = scratch.join("rootfs");
        tools::make_dir(&rootfs, 0o755)?;
        let source = scratch.join("pause.c");
        tools::write_file(&source, PAUSE_C.as_bytes(), 0o644)?;
        compile_static(&source, &rootfs.join("pause"))?;
        let layer = scratch.join("layer.tar");
        tools::tar_dir(&rootfs, &layer, tools::TAR_AS_ROOT)?;
        let config = ImageConfig {
            entrypoint: vec!["/pause".into()],
            ..ImageConfig::default()
        };
        write_oci_archive(&layer, PAUSE_REFERENCE, &config, out)
    })
}

/// Compiles the C file `source` into the static, stripped program `out`.
fn compile_static(source: &Path, out: &Path) -> Result<()> {
    let gcc = tools::require_program("gcc", "gcc libc6-dev")?;
    run(Command::new(gcc)
        .args(["-static", "-Os", "-s", "-Wall", "-o"])
        .arg(out)
        .arg(source))
    .context("cannot compile the pause program (is libc6-dev installed?)")?;
    tools::set_mode(out, 0o755)
}

/// `localhost/weft-workload:1`: Debian's busybox-static as /bin/busybox
/// with a link in /bin for every applet of `busybox --list`, /etc/passwd
/// and /etc/group with root and nobody, and /tmp; entrypoint ["/bin/sh"],
/// no cmd. Cached in [`cache_dir`] by a hash of busybox and those files.
pub fn workload_image() -> Result<OciArchive> {
    let busybox = Path::new(BUSYBOX);
    if !busybox.is_file() {
        bail!("{BUSYBOX} is missing: apt-get install busybox-static");
    }
    if !tools::is_static_elf(busybox)? {
        bail!("{BUSYBOX} is not statically linked: apt-get install busybox-static");
    }
    let applets = busybox_applets(busybox)?;
    let (busybox_digest, _) = sha256_file(busybox)?;
    let listed = applets.join("\n");
    let key = cache_key(&[
        FORMAT,
        WORKLOAD_REFERENCE,
        &busybox_digest,
        &listed,
        PASSWD,
        GROUP,
    ]);
    cached_archive(WORKLOAD_REFERENCE, &key, |scratch, out| {
        let rootfs = scratch.join("rootfs");
        busybox_rootfs(busybox, &applets, &rootfs)?;
        let layer = scratch.join("layer.tar");
        tools::tar_dir(&rootfs, &layer, tools::TAR_AS_ROOT)?;
        let config = ImageConfig {
            entrypoint: vec!["/bin/sh".into()],
            env: vec![PATH_ENV.into()],
            ..ImageConfig::default()
        };
        write_oci_archive(&layer, WORKLOAD_REFERENCE, &config, out)
    })
}

/// The applets of `busybox --list` (without `busybox` itself).
fn busybox_applets(busybox: &Path) -> Result<Vec<String>> {
    let output = run(Command::new(busybox).arg("--list"))?;
    let text = String::from_utf8(output.stdout).context("busybox --list is not UTF-8")?;
    let mut applets = Vec::new();
    for name in text.lines().map(str::trim).filter(|n| !n.is_empty()) {
        if name == "." || name == ".." || name.contains('/') {
            bail!("busybox --list gave the applet name {name:?}");
        }
        if name != "busybox" {
            applets.push(name.to_string());
        }
    }
    if applets.is_empty() {
        bail!("busybox --list gave no applets");
    }
    Ok(applets)
}

/// Fills `rootfs` with busybox, its applet links, the accounts and /tmp.
fn busybox_rootfs(busybox: &Path, applets: &[String], rootfs: &Path) -> Result<()> {
    let bin = rootfs.join("bin");
    let etc = rootfs.join("etc");
    tools::make_dir(rootfs, 0o755)?;
    tools::make_dir(&bin, 0o755)?;
    tools::make_dir(&etc, 0o755)?;
    tools::make_dir(&rootfs.join("tmp"), 0o1777)?;
    tools::make_dir(&rootfs.join("root"), 0o700)?;
    tools::copy_file(busybox, &bin.join("busybox"), 0o755)?;
    for applet in applets {
        let link = bin.join(applet);
        std::os::unix::fs::symlink("busybox", &link)
            .with_context(|| format!("cannot create {}", link.display()))?;
    }
    tools::write_file(&etc.join("passwd"), PASSWD.as_bytes(), 0o644)?;
    tools::write_file(&etc.join("group"), GROUP.as_bytes(), 0o644)
}

/// One file the weft image adds to its Debian base.
#[derive(Debug)]
struct LayerFile {
    /// The file on the host.
    source: PathBuf,
    /// Its absolute path in the image.
    dest: String,
    /// Its permission bits in the image.
    mode: u32,
    /// Its SHA-256 (part of the cache key).
    digest: String,
}

/// weft's image as `reference` (e.g. `localhost/weft:0.1.0`), built from
/// manifests/Containerfile's runtime (last) stage over binaries built on
/// the host (`bin_dir` holds weftd, weft and weft-cni, e.g. target/release).
///
/// The stage's Debian base is made with debootstrap (needs root, 1–3
/// minutes) and cached apart from the image; the image is cached by that
/// base, the files it copies and `reference`.
pub fn weft_image(reference: &str, bin_dir: &Path) -> Result<OciArchive> {
    oci::tag_of(reference)?;
    let root = workspace_root();
    let path = root.join("manifests").join("Containerfile");
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let stage =
        containerfile::runtime_stage(&text).with_context(|| format!("{}", path.display()))?;
    let files = layer_files(&stage, &root, bin_dir)?;
    let config = ImageConfig {
        entrypoint: stage.entrypoint.clone(),
        env: vec![PATH_ENV.into()],
        ..ImageConfig::default()
    };
    let mut parts = vec![
        FORMAT.to_string(),
        reference.to_string(),
        debian::base_name(&stage.suite, &stage.packages),
        stage.entrypoint.join("\0"),
    ];
    for file in &files {
        parts.extend([
            file.dest.clone(),
            file.digest.clone(),
            format!("{:o}", file.mode),
        ]);
    }
    cached_archive(reference, &cache_key(&parts), |scratch, out| {
        let base = debian::base_tar(&cache_dir()?, &stage.suite, &stage.packages)?;
        let layer = scratch.join("layer.tar");
        fs::copy(&base, &layer)
            .with_context(|| format!("cannot copy {} to {}", base.display(), layer.display()))?;
        append_files(&base, &layer, &files, &scratch.join("files"))?;
        write_oci_archive(&layer, reference, &config, out)
    })
}

/// The files the stage copies, found on the host: build outputs in
/// `bin_dir` (mode 0755), other sources under the workspace `root` (their
/// own mode).
fn layer_files(stage: &RuntimeStage, root: &Path, bin_dir: &Path) -> Result<Vec<LayerFile>> {
    stage
        .copies
        .iter()
        .map(|copy| {
            let source = match &copy.source {
                CopySource::BuildOutput(name) => bin_dir.join(name),
                CopySource::Context(path) => root.join(path),
            };
            let metadata = fs::metadata(&source).with_context(|| match &copy.source {
                CopySource::BuildOutput(_) => format!(
                    "{} is missing (cargo build --release -p weft --bin weftd --bin weft --bin weft-cni)",
                    source.display()
                ),
                CopySource::Context(_) => format!("{} is missing", source.display()),
            })?;
            if !metadata.is_file() {
                bail!("{} is not a file", source.display());
            }
            let mode = match &copy.source {
                CopySource::BuildOutput(_) => 0o755,
                CopySource::Context(_) => metadata.permissions().mode() & 0o777,
            };
            let (digest, _) = sha256_file(&source)?;
            Ok(LayerFile {
                source,
                dest: copy.dest.clone(),
                mode,
                digest,
            })
        })
        .collect()
}

/// Appends `files` to the layer tar `layer` (a copy of `base`), with the
/// directories above them that `base` lacks, staged in `staging`.
fn append_files(base: &Path, layer: &Path, files: &[LayerFile], staging: &Path) -> Result<()> {
    let present = tar_entries(base)?;
    tools::make_dir(staging, 0o755)?;
    let mut missing_dirs = BTreeSet::new();
    for file in files {
        let relative = file.dest.trim_start_matches('/');
        for dir in Path::new(relative).ancestors().skip(1) {
            let dir = dir.to_string_lossy();
            if !dir.is_empty() && !present.contains(dir.as_ref()) {
                missing_dirs.insert(dir.into_owned());
            }
        }
        let target = staging.join(relative);
        if let Some(parent) = target.parent() {
            tools::make_dir(parent, 0o755)?;
        }
        tools::copy_file(&file.source, &target, file.mode)?;
    }
    for dir in &missing_dirs {
        tools::set_mode(&staging.join(dir), 0o755)?;
    }
    // A BTreeSet lists a directory before what is below it.
    let names = missing_dirs
        .iter()
        .map(|dir| format!("./{dir}"))
        .chain(files.iter().map(|file| format!(".{}", file.dest)));
    run(Command::new("tar")
        .args([
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "--no-recursion",
        ])
        .arg("-C")
        .arg(staging)
        .arg("-rf")
        .arg(layer)
        .args(names))?;
    Ok(())
}

/// The paths in the tar `path`, relative and without `./` or a trailing
/// `/` (`usr/local/bin`).
fn tar_entries(path: &Path) -> Result<HashSet<String>> {
    let output = run(Command::new("tar").arg("-tf").arg(path))?;
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text
        .lines()
        .map(|line| {
            let line = line.strip_prefix("./").unwrap_or(line);
            line.strip_suffix('/').unwrap_or(line).to_string()
        })
        .collect())
}

/// The archive of `reference` whose cache key is `key`, in
/// [`cache_dir`]: returned if present, else made by `build(scratch, out)`
/// (`scratch` an empty directory removed afterwards) under a lock, after
/// which the archives of `reference` under other keys are removed.
fn cached_archive(
    reference: &str,
    key: &str,
    build: impl FnOnce(&Path, &Path) -> Result<()>,
) -> Result<OciArchive> {
    let cache = cache_dir()?;
    let stem = file_stem(reference);
    let out = cache.join(format!("{stem}-{key}.tar"));
    let archive = OciArchive {
        reference: reference.to_string(),
        path: out.clone(),
    };
    if out.is_file() {
        return Ok(archive);
    }
    let _lock = Lock::acquire(&cache.join(format!(".{stem}.lock")))?;
    if out.is_file() {
        return Ok(archive);
    }
    let scratch = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(&cache)
        .with_context(|| format!("cannot create a directory in {}", cache.display()))?;
    build(scratch.path(), &out).with_context(|| format!("cannot build the image {reference}"))?;
    remove_stale(&cache, &stem, &out)?;
    Ok(archive)
}

/// `reference` as a file name (`localhost/weft:0.1.0` →
/// `localhost-weft-0.1.0`).
fn file_stem(reference: &str) -> String {
    reference
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Removes `<stem>-<key>.tar` archives in `cache` other than `keep`.
fn remove_stale(cache: &Path, stem: &str, keep: &Path) -> Result<()> {
    let prefix = format!("{stem}-");
    for entry in fs::read_dir(cache).with_context(|| format!("cannot read {}", cache.display()))? {
        let path = entry
            .with_context(|| format!("cannot read {}", cache.display()))?
            .path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let key = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".tar"));
        let stale = key.is_some_and(|k| k.len() == 16 && k.chars().all(|c| c.is_ascii_hexdigit()));
        if stale && path != keep {
            tools::remove_file_if_present(&path)?;
        }
    }
    Ok(())
}

/// Copies of `binaries` (name, built file) without their debug sections
/// (`objcopy --strip-debug`: the same code) in `dir`, which is returned.
/// A test build's weftd and weft-cni carry ~300 MB of debug information
/// that every node would otherwise import.
pub fn without_debug_info(binaries: &[(&str, &Path)], dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    for (name, built) in binaries {
        let status = std::process::Command::new("objcopy")
            .arg("--strip-debug")
            .arg(built)
            .arg(dir.join(name))
            .status()
            .context("cannot run objcopy (binutils)")?;
        if !status.success() {
            anyhow::bail!("objcopy --strip-debug {}: {status}", built.display());
        }
    }
    Ok(dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_become_file_stems() {
        assert_eq!(file_stem("localhost/weft:0.1.0"), "localhost-weft-0.1.0");
        assert_eq!(file_stem(PAUSE_REFERENCE), "localhost-weft-pause-1");
    }

    #[test]
    fn only_archives_of_the_same_reference_are_stale() {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            "localhost-weft-0123456789abcdef.tar",
            "localhost-weft-fedcba9876543210.tar",
            "localhost-weft-pause-1-0123456789abcdef.tar",
            "localhost-weft.lock",
            "debian-bookworm-0123456789ab.tar",
        ];
        for name in names {
            fs::write(dir.path().join(name), b"").unwrap();
        }
        let keep = dir.path().join(names[1]);
        remove_stale(dir.path(), "localhost-weft", &keep).unwrap();
        let mut left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "debian-bookworm-0123456789ab.tar",
                "localhost-weft-fedcba9876543210.tar",
                "localhost-weft-pause-1-0123456789abcdef.tar",
                "localhost-weft.lock",
            ]
        );
    }

    #[test]
    fn files_are_appended_below_missing_directories() {
        let dir = tempfile::tempdir().unwrap();
        let base_root = dir.path().join("base");
        fs::create_dir_all(base_root.join("usr/local/bin")).unwrap();
        let base = dir.path().join("base.tar");
        tools::tar_dir(&base_root, &base, tools::TAR_AS_ROOT).unwrap();
        let source = dir.path().join("weftd");
        fs::write(&source, b"#!/bin/sh\n").unwrap();
        let license = dir.path().join("LICENSE");
        fs::write(&license, b"text\n").unwrap();
        let files = [
            LayerFile {
                source,
                dest: "/usr/local/bin/weftd".into(),
                mode: 0o755,
                digest: String::new(),
            },
            LayerFile {
                source: license,
                dest: "/usr/share/doc/weft/LICENSE".into(),
                mode: 0o644,
                digest: String::new(),
            },
        ];
        let layer = dir.path().join("layer.tar");
        fs::copy(&base, &layer).unwrap();
        append_files(&base, &layer, &files, &dir.path().join("staging")).unwrap();
        let listing = run(Command::new("tar").arg("-tvf").arg(&layer)).unwrap();
        let listing = String::from_utf8(listing.stdout).unwrap();
        let lines: Vec<&str> = listing.lines().collect();
        let added: Vec<&str> = lines
            .iter()
            .skip(4) // ./, ./usr/, ./usr/local/, ./usr/local/bin/
            .map(|l| l.split_whitespace().last().unwrap())
            .collect();
        assert_eq!(
            added,
            [
                "./usr/share/",
                "./usr/share/doc/",
                "./usr/share/doc/weft/",
                "./usr/local/bin/weftd",
                "./usr/share/doc/weft/LICENSE",
            ],
            "{listing}"
        );
        let weftd = lines.iter().find(|l| l.ends_with("weftd")).unwrap();
        assert!(weftd.starts_with("-rwxr-xr-x 0/0"), "{weftd}");
        let share = lines.iter().find(|l| l.ends_with("./usr/share/")).unwrap();
        assert!(share.starts_with("drwxr-xr-x 0/0"), "{share}");
    }
}
