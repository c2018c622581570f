//! Identities for the cluster's components: client certificates signed by
//! the API server's CA (`<state>/pki/ca.{crt,key}`, made by the start
//! script; the server trusts it through `--client-ca-file`), and the
//! kubeconfigs that use them. The common name is the user, the
//! organisation the group, as kubeadm does it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

/// One identity: `CN=<user>`, `O=<group>`.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    /// File stem for its key, certificate and kubeconfig.
    pub file: &'a str,
    /// The user name (e.g. `system:node:node1`).
    pub user: &'a str,
    /// The group, if any (e.g. `system:nodes`).
    pub group: Option<&'a str>,
}

/// Makes a key and a client certificate for `who` under `out`, and a
/// kubeconfig `<out>/<file>.kubeconfig` for `server` that uses them.
pub fn kubeconfig(
    pki: &Path,
    out: &Path,
    server: &str,
    who: Identity<'_>,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(out)?;
    let key = out.join(format!("{}.key", who.file));
    let csr = out.join(format!("{}.csr", who.file));
    let crt = out.join(format!("{}.crt", who.file));
    let ext = out.join(format!("{}.ext", who.file));
    let subject = match who.group {
        Some(g) => format!("/O={g}/CN={}", who.user),
        None => format!("/CN={}", who.user),
    };
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        path(&key)?,
        "-out",
        path(&csr)?,
        "-subj",
        &subject,
    ])?;
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
    )?;
    let serial = format!("0x{:x}", rand_serial());
    openssl(&[
        "x509",
        "-req",
        "-in",
        path(&csr)?,
        "-CA",
        path(&pki.join("ca.crt"))?,
        "-CAkey",
        path(&pki.join("ca.key"))?,
        "-set_serial",
        &serial,
        "-days",
        "30",
        "-extfile",
        path(&ext)?,
        "-out",
        path(&crt)?,
    ])?;
    let config = out.join(format!("{}.kubeconfig", who.file));
    std::fs::write(
        &config,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: weft\n  cluster:\n    server: {server}\n    \
             certificate-authority: {ca}\nusers:\n- name: {user}\n  user:\n    client-certificate: {crt}\n    \
             client-key: {key}\ncontexts:\n- name: weft\n  context:\n    cluster: weft\n    user: {user}\n\
             current-context: weft\n",
            ca = pki.join("ca.crt").display(),
            user = who.user,
            crt = crt.display(),
            key = key.display(),
        ),
    )?;
    Ok(config)
}

fn rand_serial() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    // Unique enough for certificates that live for one run.
    (nanos as u64) ^ (u64::from(std::process::id()) << 40)
}

fn openssl(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run openssl")?;
    if !out.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn path(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("not UTF-8: {}", p.display()))
}
