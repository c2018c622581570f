//! On-disk state: the delegate configuration saved per container under
//! `dataDir` (flannel's layout: `<dataDir>/<containerID>`, dir 0700, file
//! 0600), and host-local's reservations (`<ipam dataDir>/<network>/<ip>`,
//! content `<containerID>\r\n<ifname>`, or only the ID from old versions),
//! which GC releases itself because the reference host-local has no GC.
//!
//! Every path is `<dir>/<name>` with `name` a checked container ID (or, for
//! reservations, a file that is already there and whose name is an IP
//! address): nothing is written outside those directories.

use std::collections::HashSet;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::env::{check_container_id, is_valid_container_id};
use super::error::CniError;

/// Saves `bytes` as `<data_dir>/<id>` atomically and durably: written to a
/// temporary file in the same directory (`dataDir` is created 0700, the file
/// is 0600), synced, renamed over, and the directory synced. Readers see
/// the old file or the whole new one.
pub fn save(data_dir: &Path, id: &str, bytes: &[u8]) -> Result<(), CniError> {
    check_container_id(id)?;
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(|e| CniError::io(format!("cannot create dataDir {}", data_dir.display()), &e))?;
    let path = data_dir.join(id);
    // Never a valid container ID (leading dot), so never mistaken for one.
    let tmp = data_dir.join(format!(".{id}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = match create_new(&tmp) {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                std::fs::remove_file(&tmp)?;
                create_new(&tmp)?
            }
            other => other?,
        };
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        File::open(data_dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        CniError::io(format!("cannot save {}", path.display()), &e)
    })
}

/// `O_CREAT|O_EXCL`, mode 0600: never follows a symlink planted at `path`.
fn create_new(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Reads `<data_dir>/<id>`; `None` if it does not exist.
pub fn load(data_dir: &Path, id: &str) -> Result<Option<Vec<u8>>, CniError> {
    check_container_id(id)?;
    let path = data_dir.join(id);
    match std::fs::read(&path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CniError::io(format!("cannot read {}", path.display()), &e)),
    }
}

/// Removes `<data_dir>/<id>` (already gone is fine).
pub fn remove(data_dir: &Path, id: &str) -> Result<(), CniError> {
    check_container_id(id)?;
    let path = data_dir.join(id);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(CniError::io(
            format!("cannot remove {}", path.display()),
            &e,
        )),
        _ => Ok(()),
    }
}

/// The container IDs with a saved configuration (regular files whose names
/// are valid container IDs), sorted. A missing `dataDir` has none.
pub fn list(data_dir: &Path) -> Result<Vec<String>, CniError> {
    let entries = match std::fs::read_dir(data_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(CniError::io(
                format!("cannot list dataDir {}", data_dir.display()),
                &e,
            ))
        }
    };
    let mut ids: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| is_valid_container_id(name))
        .collect();
    ids.sort();
    Ok(ids)
}

/// One host-local reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The file, `<dir>/<ip>`.
    pub path: PathBuf,
    /// The reserved address.
    pub ip: IpAddr,
    /// The container it is reserved for.
    pub container_id: String,
    /// The interface (empty in files of old host-local versions).
    pub ifname: String,
}

/// host-local's reservations in `dir` (regular files named by an IP
/// address). Files still empty (host-local creates the file, then writes the
/// ID) are skipped, so a reservation being made is never taken for a leak.
pub fn reservations(dir: &Path) -> Result<Vec<Reservation>, CniError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(CniError::io(
                format!("cannot list host-local's directory {}", dir.display()),
                &e,
            ))
        }
    };
    let mut out = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let Some(ip) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<IpAddr>().ok())
        else {
            continue;
        };
        let Ok(content) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let mut lines = content.trim().lines();
        let container_id = lines.next().unwrap_or("").trim().to_owned();
        if container_id.is_empty() {
            continue;
        }
        out.push(Reservation {
            path: entry.path(),
            ip,
            container_id,
            ifname: lines.next().unwrap_or("").trim().to_owned(),
        });
    }
    out.sort_by_key(|r| r.ip);
    Ok(out)
}

/// Releases the reservations in `dir` of containers not in `valid`; returns
/// the released ones.
pub fn release_stale(dir: &Path, valid: &HashSet<&str>) -> Result<Vec<Reservation>, CniError> {
    let mut released = Vec::new();
    for r in reservations(dir)? {
        if valid.contains(r.container_id.as_str()) {
            continue;
        }
        match std::fs::remove_file(&r.path) {
            Ok(()) => released.push(r),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                return Err(CniError::io(
                    format!("cannot release {}", r.path.display()),
                    &e,
                ))
            }
        }
    }
    Ok(released)
}
