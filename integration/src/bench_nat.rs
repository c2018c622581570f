//! The NAT section of `just bench`: weft's apply against `nft -f` and
//! `iptables-restore` of the same rules, cold (empty namespace) and no-op
//! (rules already in place), each side timed inside a fresh namespace from
//! the thread that does the work, so no `ip netns exec` is counted.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use weft_nat::render::{iptables_jump, iptables_restore, nft_table, NFT_TABLE};
use weft_nat::{Chain, NatMode, Options, RuleSet, SnatRules};
use weft_netns::Netns;

use crate::bench::{ms, Samples};

/// The seed's example: cluster 10.244.0.0/16, node subnet 10.244.0.0/24.
fn seed_rules() -> anyhow::Result<RuleSet> {
    Ok(SnatRules::build(
        "10.244.0.0/16".parse()?,
        "10.244.0.0/24".parse()?,
        Options::default(),
    )?)
}

/// The reference tool's input for the same rules, and its binary and arguments.
fn reference(mode: NatMode, rules: &RuleSet, cold: bool) -> (String, Vec<String>, String) {
    match mode {
        NatMode::Nftables => {
            // Idempotent as a file can be: create, delete, recreate the table (what weft's batch does too).
            let text = format!(
                "table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n{}",
                nft_table(rules)
            );
            ("nft".into(), vec!["-f".into(), "-".into()], text)
        }
        _ => {
            let binary = if mode == NatMode::IptablesLegacy {
                "iptables-legacy-restore"
            } else {
                "iptables-nft-restore"
            };
            let mut text = iptables_restore(rules);
            if cold {
                // The jump rules too, once (a second restore would duplicate them).
                for chain in [Chain::Postrouting, Chain::Forward] {
                    let table = if chain == Chain::Postrouting {
                        "*nat"
                    } else {
                        "*filter"
                    };
                    let at = text.find(table).unwrap_or(0);
                    let commit = text[at..]
                        .find("COMMIT")
                        .map(|i| at + i)
                        .unwrap_or(text.len());
                    text.insert_str(commit, &format!("{}\n", iptables_jump(chain)));
                }
            }
            let args = ["--noflush", "-w", "5"].map(String::from).to_vec();
            (binary.into(), args, text)
        }
    }
}

/// Runs `binary args < input` in the calling thread's namespace; its duration.
fn timed_tool(binary: &str, args: &[String], input: &str) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let mut child = Command::new(binary)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {binary}"))?;
    child
        .stdin
        .take()
        .context("no stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    let took = t0.elapsed();
    if !out.status.success() {
        bail!(
            "{binary} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(took)
}

/// One measurement in a fresh namespace: the tool or weft, cold then no-op.
fn measure(mode: NatMode, weft: bool, rules: &RuleSet) -> anyhow::Result<(Duration, Duration)> {
    let ns = Netns::new(&format!("bn-{}", if weft { "weft" } else { "ref" }))?;
    let rules = rules.clone();
    ns.run(move || async move {
        if weft {
            let mut backend = mode.backend(rules.family);
            let t0 = Instant::now();
            let wrote = backend.reconcile(&rules)?;
            let cold = t0.elapsed();
            let t0 = Instant::now();
            let again = backend.reconcile(&rules)?;
            let noop = t0.elapsed();
            if !wrote || again {
                bail!("{mode}: weft wrote {wrote} cold and {again} on the no-op");
            }
            Ok((cold, noop))
        } else {
            let (binary, args, cold_text) = reference(mode, &rules, true);
            let cold = timed_tool(&binary, &args, &cold_text)?;
            let (_, _, noop_text) = reference(mode, &rules, false);
            let noop = timed_tool(&binary, &args, &noop_text)?;
            // Both sides must end in weft's exact rules.
            let mut backend = mode.backend(rules.family);
            let seen = backend.observe()?;
            if mode != NatMode::Nftables && seen != backend.expected(&rules) {
                bail!("{mode}: the reference run did not produce the same rules");
            }
            Ok((cold, noop))
        }
    })?
}

/// Prints the NAT section.
pub fn run(runs: usize) -> anyhow::Result<()> {
    let rules = seed_rules()?;
    println!("nat: apply of flannel's rule set (seed example: 6 SNAT + 2 forward rules), median of {runs} fresh namespaces");
    println!(
        "  {:<16} {:>10} {:>10} {:>7}   {:>10} {:>10} {:>7}",
        "mode", "weft cold", "tool cold", "ratio", "weft no-op", "tool no-op", "ratio"
    );
    for mode in NatMode::ALL {
        let (mut wc, mut wn, mut tc, mut tn) = (
            Samples::default(),
            Samples::default(),
            Samples::default(),
            Samples::default(),
        );
        for _ in 0..runs {
            let (c, n) = measure(mode, true, &rules)?;
            wc.push(c);
            wn.push(n);
            let (c, n) = measure(mode, false, &rules)?;
            tc.push(c);
            tn.push(n);
        }
        let ratio = |a: &Samples, b: &Samples| a.median().as_secs_f64() / b.median().as_secs_f64();
        let tool = match mode {
            NatMode::Nftables => "nft -f",
            NatMode::IptablesLegacy => "iptables-legacy-restore",
            NatMode::IptablesNft => "iptables-nft-restore",
        };
        println!(
            "  {:<16} {:>10} {:>10} {:>6.2}x   {:>10} {:>10} {:>6.2}x   (tool: {tool}; goal <= 1.0x)",
            mode.name(),
            ms(wc.median()),
            ms(tc.median()),
            ratio(&wc, &tc),
            ms(wn.median()),
            ms(tn.median()),
            ratio(&wn, &tn),
        );
    }
    println!("  (weft cold = read the kernel + one transaction; weft no-op = one read, no write; the tool re-applies the same rules)");
    Ok(())
}
