//! The API server's audit log of the agents' requests: what weftd asked,
//! counted by verb and resource.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use serde_json::Value;

use super::{ApiOptions, STATE_PLACEHOLDER};

/// The policy: every request of user `node-agent` at metadata level, nothing else.
const POLICY: &str = "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n  users: [\"node-agent\"]\n- level: None\n";

impl ApiOptions {
    /// Also writes the audit log of user `node-agent` to
    /// `<state>/audit.log` (the policy file goes to `policy_dir`).
    pub fn audited(mut self, policy_dir: &Path) -> anyhow::Result<ApiOptions> {
        let policy = policy_dir.join("audit-policy.yaml");
        std::fs::write(&policy, POLICY).context("cannot write the audit policy")?;
        self.extra_args
            .push(format!("--audit-policy-file={}", policy.display()));
        self.extra_args
            .push(format!("--audit-log-path={STATE_PLACEHOLDER}/audit.log"));
        Ok(self)
    }
}

/// Requests of user `node-agent` in the audit log at `log`, as
/// `verb resource[/subresource]` (a `get` of one object gets
/// ` (one object)`); a watch counts when it starts.
pub fn agent_requests(log: &Path) -> anyhow::Result<BTreeMap<String, usize>> {
    let text =
        std::fs::read_to_string(log).with_context(|| format!("no audit log {}", log.display()))?;
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let Ok(e) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if e["user"]["username"] != "node-agent"
            || e["stage"] != "ResponseComplete" && e["stage"] != "ResponseStarted"
        {
            continue;
        }
        if e["stage"] == "ResponseStarted" && e["verb"] != "watch" {
            continue;
        }
        if e["stage"] == "ResponseComplete" && e["verb"] == "watch" {
            continue;
        }
        let r = &e["objectRef"];
        let mut what = format!(
            "{} {}",
            e["verb"].as_str().unwrap_or("?"),
            r["resource"].as_str().unwrap_or("?")
        );
        if let Some(sub) = r["subresource"].as_str() {
            what.push('/');
            what.push_str(sub);
        }
        if r["name"].is_string() && e["verb"] == "get" {
            what.push_str(" (one object)");
        }
        *counts.entry(what).or_insert(0) += 1;
    }
    Ok(counts)
}
