//! weft's container images (`cluster::image`), unpacked and run with
//! chroot: weft's own image (weftd, weft-cni, both iptables flavors, nft),
//! the pause image and the busybox workload image. chroot needs root.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use weft_integration::cluster::image::{
    pause_image, weft_image, without_debug_info, workload_image, OciArchive,
};

/// The PATH the chrooted programs run with.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn require_root() {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the effective user.
    assert_eq!(
        fs::metadata("/proc/self").unwrap().uid(),
        0,
        "the image tests chroot into the images: run them as root"
    );
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

/// The path of the blob `descriptor` points to in the layout at `oci`.
fn blob(oci: &Path, descriptor: &Value) -> PathBuf {
    let digest = descriptor["digest"].as_str().unwrap();
    oci.join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

fn untar(archive: &Path, into: &Path) {
    fs::create_dir_all(into).unwrap();
    let status = Command::new("tar")
        .arg("--numeric-owner")
        .arg("-C")
        .arg(into)
        .arg("-xf")
        .arg(archive)
        .status()
        .unwrap();
    assert!(status.success(), "tar -xf {}", archive.display());
}

/// Unpacks `archive` into `dir`: returns its one layer as a root file
/// system (`dir/rootfs`) and its image config.
fn unpack(archive: &OciArchive, dir: &Path) -> (PathBuf, Value) {
    let oci = dir.join("oci");
    untar(&archive.path, &oci);
    let index = read_json(&oci.join("index.json"));
    let descriptor = &index["manifests"][0];
    assert_eq!(
        descriptor["annotations"]["io.containerd.image.name"],
        archive.reference.as_str()
    );
    let manifest = read_json(&blob(&oci, descriptor));
    let config = read_json(&blob(&oci, &manifest["config"]));
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    let rootfs = dir.join("rootfs");
    untar(&blob(&oci, &layers[0]), &rootfs);
    (rootfs, config)
}

/// Runs `args` chrooted into `rootfs` with `env`; returns its stdout,
/// failing unless it exits 0.
fn chroot_ok(rootfs: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let output = Command::new("chroot")
        .arg(rootfs)
        .args(args)
        .env_clear()
        .env("PATH", PATH)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "chroot {} {args:?}: {}\n{stdout}{}",
        rootfs.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn size_mib(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len() >> 20
}

#[test]
fn weft_image_runs_weft_and_both_iptables_flavors() {
    require_root();
    // This build's binaries, without debug sections (as the cluster tests
    // put them into the image).
    let bin_dir = without_debug_info(
        &[
            ("weftd", env!("CARGO_BIN_EXE_weftd").as_ref()),
            ("weft", env!("CARGO_BIN_EXE_weft").as_ref()),
            ("weft-cni", env!("CARGO_BIN_EXE_weft-cni").as_ref()),
        ],
        &PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("image-bins"),
    )
    .unwrap();
    let started = Instant::now();
    let archive = weft_image("localhost/weft:test", &bin_dir).unwrap();
    println!(
        "weft_image: {} ({} MiB) in {:?}",
        archive.path.display(),
        size_mib(&archive.path),
        started.elapsed()
    );
    let started = Instant::now();
    let again = weft_image("localhost/weft:test", &bin_dir).unwrap();
    println!("weft_image again (cached): {:?}", started.elapsed());
    assert_eq!(again.path, archive.path);
    assert_eq!(archive.reference, "localhost/weft:test");

    let dir = tempfile::tempdir().unwrap();
    let (rootfs, config) = unpack(&archive, dir.path());
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/usr/local/bin/weftd"])
    );
    assert_eq!(
        config["config"]["Env"],
        serde_json::json!([format!("PATH={PATH}")])
    );
    assert!(rootfs.join("usr/share/doc/weft/LICENSE").is_file());
    assert!(rootfs.join("etc/ssl/certs/ca-certificates.crt").is_file());
    assert!(!rootfs.join("var/lib/apt/lists/lock").exists());

    let help = chroot_ok(&rootfs, &["/usr/local/bin/weftd", "--help"], &[]);
    assert!(help.contains("Usage"), "{help}");
    let reply = chroot_ok(
        &rootfs,
        &["/usr/local/bin/weft-cni"],
        &[("CNI_COMMAND", "VERSION")],
    );
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert!(reply["supportedVersions"].is_array(), "{reply}");

    let legacy = chroot_ok(&rootfs, &["iptables-legacy", "--version"], &[]);
    assert!(legacy.contains("legacy"), "{legacy}");
    let nft_flavor = chroot_ok(&rootfs, &["iptables-nft", "--version"], &[]);
    assert!(nft_flavor.contains("nf_tables"), "{nft_flavor}");
    let default = chroot_ok(&rootfs, &["iptables", "--version"], &[]);
    assert!(default.contains("nf_tables"), "{default}");
    let nft = chroot_ok(&rootfs, &["nft", "--version"], &[]);
    assert!(nft.starts_with("nftables"), "{nft}");
}

/// Whether process `pid` catches `signal` (its SigCgt mask).
fn catches(pid: u32, signal: Signal) -> bool {
    let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (signal as i32 - 1)) != 0)
}

/// Waits up to 5 seconds for `child` to exit.
fn wait_exit(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the process did not exit within 5 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn pause_image_exits_0_on_sigterm_and_sigint() {
    require_root();
    let archive = pause_image().unwrap();
    println!(
        "pause_image: {} ({} KiB)",
        archive.path.display(),
        fs::metadata(&archive.path).unwrap().len() >> 10
    );
    assert_eq!(archive.reference, "localhost/weft-pause:1");
    let dir = tempfile::tempdir().unwrap();
    let (rootfs, config) = unpack(&archive, dir.path());
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/pause"])
    );

    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let mut child = Command::new("chroot")
            .arg(&rootfs)
            .arg("/pause")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // chroot execs /pause: the same process, once it catches signals.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !(catches(child.id(), Signal::SIGTERM) && catches(child.id(), Signal::SIGCHLD)) {
            assert!(
                Instant::now() < deadline,
                "/pause never set up its handlers"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(child.try_wait().unwrap().is_none(), "/pause exited early");
        kill(Pid::from_raw(i32::try_from(child.id()).unwrap()), signal).unwrap();
        let status = wait_exit(&mut child);
        assert!(status.success(), "/pause after {signal}: {status}");
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "");
    }
}

#[test]
fn workload_image_has_busybox_applets_and_accounts() {
    require_root();
    let archive = workload_image().unwrap();
    println!(
        "workload_image: {} ({} KiB)",
        archive.path.display(),
        fs::metadata(&archive.path).unwrap().len() >> 10
    );
    assert_eq!(archive.reference, "localhost/weft-workload:1");
    let dir = tempfile::tempdir().unwrap();
    let (rootfs, config) = unpack(&archive, dir.path());
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/bin/sh"])
    );
    assert!(config["config"].get("Cmd").is_none(), "{config}");

    for applet in ["wget", "ping", "nc", "sleep", "sh", "timeout", "ip"] {
        let link = rootfs.join("bin").join(applet);
        assert_eq!(
            fs::read_link(&link).unwrap(),
            Path::new("busybox"),
            "{}",
            link.display()
        );
    }
    chroot_ok(&rootfs, &["/bin/sleep", "0"], &[]);
    let out = chroot_ok(
        &rootfs,
        &[
            "/bin/sh",
            "-c",
            "id -u nobody; id -g nobody; stat -c %a /tmp",
        ],
        &[],
    );
    assert_eq!(out, "65534\n65534\n1777\n");
    let help = chroot_ok(&rootfs, &["/bin/sh", "-c", "wget --help 2>&1; true"], &[]);
    assert!(help.contains("Usage: wget"), "{help}");
}
