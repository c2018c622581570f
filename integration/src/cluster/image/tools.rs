//! Small helpers of the image builders: running programs, hashing files,
//! making tars and directories, and a lock per cached item.

use std::fs::{self, File};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

/// Runs `cmd` to completion, capturing its output; fails with the command
/// line, its exit status and the end of its stderr and stdout unless it
/// exits 0.
pub(super) fn run(cmd: &mut Command) -> Result<Output> {
    let line = command_line(cmd);
    let output = cmd.output().with_context(|| format!("cannot run {line}"))?;
    if !output.status.success() {
        bail!(
            "{line} failed ({}):\n{}{}",
            output.status,
            tail(&String::from_utf8_lossy(&output.stderr), 30),
            tail(&String::from_utf8_lossy(&output.stdout), 30),
        );
    }
    Ok(output)
}

/// `cmd` as one printable line.
fn command_line(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// The last `lines` lines of `text`, each ending in a newline.
pub(super) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].iter().map(|l| format!("{l}\n")).collect()
}

/// Where `name` is: the first match in `$PATH`, then /usr/sbin and /sbin
/// (often missing from a non-root `$PATH`).
pub(super) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// [`find_program`], or an error that says which Debian package to install.
pub(super) fn require_program(name: &str, package: &str) -> Result<PathBuf> {
    find_program(name).with_context(|| format!("{name} is missing: apt-get install {package}"))
}

/// Whether this process runs as root (owns `/proc/self`, which belongs to
/// the effective user).
pub(super) fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The lowercase hex SHA-256 of `bytes`.
pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The lowercase hex SHA-256 of the file at `path`, read in 1 MiB pieces,
/// and the file's size.
pub(super) fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex(&hasher.finalize()), size))
}

/// A short (16 hex digits) hash of `parts`, each length-prefixed so that
/// moving bytes between parts changes it: the cache key of an image.
pub(super) fn cache_key<S: AsRef<[u8]>>(parts: &[S]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        let part = part.as_ref();
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hex(&hasher.finalize())[..16].to_string()
}

/// `bytes` in lowercase hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a tar of everything in `dir` (as `./…`) to `out`, with numeric
/// owners and `extra` options before `-C`.
pub(super) fn tar_dir(dir: &Path, out: &Path, extra: &[&str]) -> Result<()> {
    run(Command::new("tar")
        .arg("--numeric-owner")
        .args(extra)
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .arg("."))?;
    Ok(())
}

/// The options that make a tar of files we wrote ourselves owned by root
/// and reproducible.
pub(super) const TAR_AS_ROOT: &[&str] = &["--owner=0", "--group=0", "--sort=name", "--mtime=@0"];

/// Creates directory `path` (and its parents) and gives it `mode`.
pub(super) fn make_dir(path: &Path, mode: u32) -> Result<()> {
    fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
    set_mode(path, mode)
}

/// Writes `contents` to `path` with `mode`.
pub(super) fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))?;
    set_mode(path, mode)
}

/// Copies `from` to `to` and gives the copy `mode`.
pub(super) fn copy_file(from: &Path, to: &Path, mode: u32) -> Result<()> {
    fs::copy(from, to)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    set_mode(to, mode)
}

/// Sets the permission bits of `path` (not following umask).
pub(super) fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {:o} {}", mode, path.display()))
}

/// Hard-links `from` at `to`, or copies it when they are on different
/// file systems (or hard links are refused).
pub(super) fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    if fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    fs::copy(from, to)
        .map(|_| ())
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))
}

/// Removes `path` if it exists.
pub(super) fn remove_file_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Whether the ELF file at `path` is statically linked (has no `PT_INTERP`
/// program header). Only 64-bit little-endian ELF files are understood.
pub(super) fn is_static_elf(path: &Path) -> Result<bool> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bad = || anyhow::anyhow!("{} is not a 64-bit little-endian ELF file", path.display());
    if bytes.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return Err(bad());
    }
    let u16_at = |at: usize| -> Option<u16> {
        Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
    };
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    let u64_at = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
    };
    let phoff = usize::try_from(u64_at(0x20).ok_or_else(bad)?)?;
    let phentsize = usize::from(u16_at(0x36).ok_or_else(bad)?);
    let phnum = usize::from(u16_at(0x38).ok_or_else(bad)?);
    const PT_INTERP: u32 = 3;
    for i in 0..phnum {
        if u32_at(phoff + i * phentsize).ok_or_else(bad)? == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

/// An exclusive lock on a file, held until dropped: one builder per cached
/// item at a time, across threads and processes.
pub(super) struct Lock {
    _held: Flock<File>,
}

impl Lock {
    /// Blocks until `path` (created if missing) is locked exclusively.
    pub(super) fn acquire(path: &Path) -> Result<Self> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map(|held| Lock { _held: held })
            .map_err(|(_, errno)| anyhow::anyhow!("cannot lock {}: {errno}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_a_file_matches_sha256_of_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"abc").unwrap();
        let (digest, size) = sha256_file(&path).unwrap();
        assert_eq!(digest, sha256_hex(b"abc"));
        assert_eq!(
            digest,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(size, 3);
    }

    #[test]
    fn cache_key_separates_parts() {
        assert_ne!(cache_key(&["ab", "c"]), cache_key(&["a", "bc"]));
        assert_eq!(cache_key(&["ab", "c"]).len(), 16);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail("a", 5), "a\n");
    }

    #[test]
    fn static_and_dynamic_elf_files_are_told_apart() {
        // Whatever runs this test is a dynamically linked ELF file.
        let me = std::env::current_exe().unwrap();
        assert!(!is_static_elf(&me).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("t");
        fs::write(&text, b"#!/bin/sh\n").unwrap();
        assert!(is_static_elf(&text).is_err());
    }
}
