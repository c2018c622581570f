//! A Debian base made locally with debootstrap (the Containerfile's
//! `debian:<suite>-slim` cannot be pulled here), cached as a tar.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::tools::{self, cache_key, require_program, run, Lock};

/// The mirror used when the host's apt sources name none for the suite.
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// The file name of the cached base of `suite` with `packages`:
/// `debian-<suite>-<short hash of the sorted package list>.tar`.
pub(super) fn base_name(suite: &str, packages: &[String]) -> String {
    let mut sorted = packages.to_vec();
    sorted.sort();
    sorted.dedup();
    format!("debian-{suite}-{}.tar", &cache_key(&sorted)[..12])
}

/// The cached base tar of `suite` with `packages` in `cache`, made with
/// debootstrap (1–3 minutes) unless it is there already.
pub(super) fn base_tar(cache: &Path, suite: &str, packages: &[String]) -> Result<PathBuf> {
    let name = base_name(suite, packages);
    let out = cache.join(&name);
    let _lock = Lock::acquire(&cache.join(format!(".{name}.lock")))?;
    if out.is_file() {
        return Ok(out);
    }
    let debootstrap = require_program("debootstrap", "debootstrap")?;
    if !tools::is_root() {
        bail!("making the Debian base with debootstrap needs root");
    }
    let work = tempfile::Builder::new()
        .prefix(".debootstrap-")
        .tempdir_in(cache)
        .with_context(|| format!("cannot create a directory in {}", cache.display()))?;
    let root = work.path().join("root");
    let made = make_base(
        &debootstrap,
        suite,
        packages,
        &root,
        &work.path().join("base.tar"),
    );
    // debootstrap runs in its own mount namespace (see make_base); this is
    // only a safety net should anything have been mounted here anyway.
    unmount_under(work.path());
    let tar = made?;
    fs::rename(&tar, &out)
        .with_context(|| format!("cannot rename {} to {}", tar.display(), out.display()))?;
    Ok(out)
}

/// Runs debootstrap into `root`, trims the result and tars it to `tar`.
fn make_base(
    debootstrap: &Path,
    suite: &str,
    packages: &[String],
    root: &Path,
    tar: &Path,
) -> Result<PathBuf> {
    tools::make_dir(root, 0o755)?;
    let mirror = host_mirror(suite);
    // In a private mount namespace: what debootstrap mounts in the chroot
    // (/proc, /sys) never shows in the machine's, and goes when it ends,
    // however it ends.
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--"])
        .arg(debootstrap)
        .arg("--variant=minbase");
    if !packages.is_empty() {
        cmd.arg(format!("--include={}", packages.join(",")));
    }
    cmd.arg(suite)
        .arg(root)
        .arg(&mirror)
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("DEBIAN_FRONTEND", "noninteractive");
    run(&mut cmd).map_err(|e| {
        let log = fs::read_to_string(root.join("debootstrap/debootstrap.log")).unwrap_or_default();
        e.context(format!(
            "debootstrap of {suite} from {mirror} failed; the end of its log:\n{}",
            tools::tail(&log, 20)
        ))
    })?;
    trim(root)?;
    ensure_iptables_nft(root)?;
    tools::tar_dir(root, tar, &[])?;
    Ok(tar.to_path_buf())
}

/// Removes the downloaded packages and apt's lists, as the Containerfile's
/// `rm -rf /var/lib/apt/lists/*` and Debian's slim images do.
fn trim(root: &Path) -> Result<()> {
    let archives = root.join("var/cache/apt/archives");
    for entry in read_dir(&archives)? {
        if entry.extension().is_some_and(|ext| ext == "deb") {
            tools::remove_file_if_present(&entry)?;
        }
    }
    for entry in read_dir(&root.join("var/lib/apt/lists"))? {
        let removed = if entry.is_dir() && !entry.is_symlink() {
            fs::remove_dir_all(&entry)
        } else {
            fs::remove_file(&entry)
        };
        removed.with_context(|| format!("cannot remove {}", entry.display()))?;
    }
    Ok(())
}

/// The entries of `dir`, or none if it does not exist.
fn read_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot read {}", dir.display()))
}

/// Makes sure `/usr/sbin/iptables` (if installed) is the nft flavor,
/// Debian's default alternative; switches the alternative if it is not.
fn ensure_iptables_nft(root: &Path) -> Result<()> {
    const IPTABLES: &str = "/usr/sbin/iptables";
    if fs::symlink_metadata(root.join(&IPTABLES[1..])).is_err() {
        return Ok(());
    }
    if is_nft(&link_chain(root, IPTABLES)?) {
        return Ok(());
    }
    run(Command::new("chroot").arg(root).args([
        "update-alternatives",
        "--set",
        "iptables",
        "/usr/sbin/iptables-nft",
    ]))?;
    let chain = link_chain(root, IPTABLES)?;
    if !is_nft(&chain) {
        bail!(
            "{IPTABLES} in the Debian base is not iptables-nft: {}",
            chain.join(" -> ")
        );
    }
    Ok(())
}

/// Whether a chain of links ends in (or passes) the nft flavor.
fn is_nft(chain: &[String]) -> bool {
    chain
        .iter()
        .any(|p| p.ends_with("/iptables-nft") || p.ends_with("/xtables-nft-multi"))
}

/// The symbolic links followed from `path` (absolute, inside `root`):
/// `path` and each target in turn, as absolute paths inside `root`.
fn link_chain(root: &Path, path: &str) -> Result<Vec<String>> {
    let mut chain = vec![path.to_string()];
    let mut current = PathBuf::from(path);
    for _ in 0..16 {
        let inside = current.strip_prefix("/").unwrap_or(&current);
        let Ok(target) = fs::read_link(root.join(inside)) else {
            return Ok(chain);
        };
        current = match current.parent() {
            Some(dir) if target.is_relative() => dir.join(target),
            _ => target,
        };
        chain.push(current.display().to_string());
    }
    bail!("too many links from {path}: {}", chain.join(" -> "))
}

/// The host's mirror for `suite`: the `URIs:` of a deb822 source in
/// /etc/apt/sources.list.d/*.sources whose `Suites:` has it, else the URI
/// of a `deb <uri> <suite> …` line of /etc/apt/sources.list (or
/// sources.list.d/*.list), else deb.debian.org.
fn host_mirror(suite: &str) -> String {
    let mut deb822 = Vec::new();
    let mut one_line = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = read_dir(Path::new("/etc/apt/sources.list.d")) {
        for path in entries {
            match path.extension().and_then(|e| e.to_str()) {
                Some("sources") => deb822.push(path),
                Some("list") => one_line.push(path),
                _ => {}
            }
        }
    }
    deb822.sort();
    one_line.sort();
    let read = |path: &PathBuf| fs::read_to_string(path).unwrap_or_default();
    deb822
        .iter()
        .find_map(|p| mirror_in_deb822(&read(p), suite))
        .or_else(|| {
            one_line
                .iter()
                .find_map(|p| mirror_in_one_line(&read(p), suite))
        })
        .unwrap_or_else(|| DEFAULT_MIRROR.to_string())
}

/// The first URI of the first enabled `deb` stanza of a deb822 sources
/// file whose `Suites:` include `suite`.
fn mirror_in_deb822(text: &str, suite: &str) -> Option<String> {
    text.split("\n\n").find_map(|stanza| {
        let field = |name: &str| {
            stanza.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
            })
        };
        let has = |name: &str, word: &str| {
            field(name).is_some_and(|v| v.split_whitespace().any(|w| w == word))
        };
        let enabled = !field("Enabled").is_some_and(|v| v.eq_ignore_ascii_case("no"));
        (enabled && has("Types", "deb") && has("Suites", suite))
            .then(|| field("URIs")?.split_whitespace().next().map(str::to_string))
            .flatten()
    })
}

/// The URI of the first `deb [options] <uri> <suite> …` line.
fn mirror_in_one_line(text: &str, suite: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let line = line.trim();
        let rest = line.strip_prefix("deb ")?.trim_start();
        let rest = match rest.strip_prefix('[') {
            Some(options) => options.split_once(']')?.1,
            None => rest,
        };
        let mut words = rest.split_whitespace();
        let uri = words.next()?;
        (words.next()? == suite).then(|| uri.to_string())
    })
}

/// Lazily unmounts everything mounted under `dir` (deepest first), so that
/// removing it cannot reach into a mounted file system.
fn unmount_under(dir: &Path) {
    let Ok(dir) = dir.canonicalize() else { return };
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| PathBuf::from(point.replace("\\040", " ")))
        .filter(|point| point.starts_with(&dir) && *point != dir)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for point in points {
        let _ = Command::new("umount").arg("-l").arg(&point).status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_name_depends_on_the_package_set_only() {
        let a = base_name("bookworm", &["nftables".into(), "iptables".into()]);
        let b = base_name(
            "bookworm",
            &["iptables".into(), "nftables".into(), "iptables".into()],
        );
        assert_eq!(a, b);
        assert!(
            a.starts_with("debian-bookworm-") && a.ends_with(".tar"),
            "{a}"
        );
        assert_eq!(a.len(), "debian-bookworm-".len() + 12 + ".tar".len());
        assert_ne!(a, base_name("bookworm", &["iptables".into()]));
    }

    #[test]
    fn the_mirror_is_read_from_deb822_sources() {
        let text = "Types: deb\n# a comment\nURIs: http://example.invalid/debian-security\n\
                    Suites: bookworm-security\nComponents: main\n\n\
                    Types: deb-src\nURIs: http://example.invalid/src\nSuites: bookworm\n\n\
                    Types: deb\nURIs: http://example.invalid/off\nSuites: bookworm\nEnabled: no\n\n\
                    Types: deb\nURIs: http://example.invalid/debian http://other.invalid\n\
                    Suites: bookworm bookworm-updates\nComponents: main\n";
        assert_eq!(
            mirror_in_deb822(text, "bookworm").as_deref(),
            Some("http://example.invalid/debian")
        );
        assert_eq!(
            mirror_in_deb822(text, "bookworm-security").as_deref(),
            Some("http://example.invalid/debian-security")
        );
        assert_eq!(mirror_in_deb822(text, "trixie"), None);
    }

    #[test]
    fn the_mirror_is_read_from_one_line_sources() {
        let text = "# deb http://old.invalid bookworm main\n\
                    deb-src http://src.invalid bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://example.invalid/debian bookworm main\n";
        assert_eq!(
            mirror_in_one_line(text, "bookworm").as_deref(),
            Some("http://example.invalid/debian")
        );
        assert_eq!(mirror_in_one_line(text, "trixie"), None);
    }

    #[test]
    fn links_are_followed_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("usr/sbin")).unwrap();
        fs::create_dir_all(root.join("etc/alternatives")).unwrap();
        std::os::unix::fs::symlink("/etc/alternatives/iptables", root.join("usr/sbin/iptables"))
            .unwrap();
        std::os::unix::fs::symlink(
            "/usr/sbin/iptables-nft",
            root.join("etc/alternatives/iptables"),
        )
        .unwrap();
        std::os::unix::fs::symlink("xtables-nft-multi", root.join("usr/sbin/iptables-nft"))
            .unwrap();
        let chain = link_chain(root, "/usr/sbin/iptables").unwrap();
        assert_eq!(
            chain,
            [
                "/usr/sbin/iptables",
                "/etc/alternatives/iptables",
                "/usr/sbin/iptables-nft",
                "/usr/sbin/xtables-nft-multi"
            ]
        );
        assert!(is_nft(&chain));
        assert!(!is_nft(&["/usr/sbin/iptables-legacy".to_string()]));
    }
}
