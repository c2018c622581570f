//! weft's NAT subsystem: flannel's SNAT and forward-accept rules, kept in
//! place through one of three backends.
//!
//! Same shape as the overlay: [`SnatRules::build`] (pure) yields a typed
//! [`RuleSet`]; a [`NatBackend`] reads what the kernel holds of weft's chains
//! or table and, only when that differs, replaces it in one transaction:
//!
//! - [`IptablesBackend`] for `iptables-legacy` and `iptables-nft`: chain bodies
//!   (and missing jump rules) through one `iptables-restore --noflush -w`;
//! - [`NftablesBackend`] for native nftables: table, chains and rules in one
//!   netlink batch built with rustables (masquerade flags added to the
//!   finalized batch, see [`masq_flags`]; sent by [`nfnl`]).
//!
//! [`detect()`] picks the mode the host already uses; [`Reconciler`] keeps the
//! rules in place (nf_tables events or a cheap poll).
//!
//! Every rule set, backend and loop works in one address [`Family`], as
//! flannel keeps `iptables` and `ip6tables`, `ip flannel-ipv4` and `ip6
//! flannel-ipv6` apart: a dual-stack node runs one loop per family, each
//! touching only its own family's chains or table.

mod command;
pub mod detect;
pub mod error;
pub mod family;
pub mod iptables;
pub mod masq_flags;
pub mod metrics;
pub mod nfnl;
mod nft_dump;
pub mod nftables;
mod nlmsg;
pub mod reconciler;
pub mod render;
pub mod rules;
pub mod signal;

/// Entry points for `cargo fuzz` (fuzz/): the readers of what the kernel
/// sends back, which are otherwise private.
#[doc(hidden)]
pub mod fuzzing {
    /// Parses `buf` as replies to weft's chain and rule dumps (and as a
    /// netlink stream); must never panic, whatever the bytes.
    pub fn dump_replies(buf: &[u8]) {
        for family in crate::Family::ALL {
            let _ = crate::nft_dump::parse_chains(buf, family, family.nft_table());
            let _ = crate::nft_dump::parse_rules(buf, family, family.nft_table());
            let _ = crate::signal::has_family(buf, family);
        }
        let _ = crate::nlmsg::messages(buf);
    }
}

use std::fmt;

pub use detect::{detect, Detection};
pub use error::NatError;
pub use family::Family;
pub use iptables::IptablesBackend;
pub use nftables::NftablesBackend;
pub use reconciler::{Reconciler, ReconcilerHandle};
pub use rules::{Addr, Chain, Options, Rule, RuleSet, SnatRules, Verdict};

/// How rules reach the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatMode {
    /// iptables over the legacy x_tables kernel interface.
    IptablesLegacy,
    /// iptables over nf_tables (`iptables-nft`).
    IptablesNft,
    /// Native nftables tables (`EnableNFTables`).
    Nftables,
}

impl NatMode {
    /// Every mode.
    pub const ALL: [NatMode; 3] = [
        NatMode::IptablesLegacy,
        NatMode::IptablesNft,
        NatMode::Nftables,
    ];

    /// The mode's name as flags and logs spell it.
    pub fn name(self) -> &'static str {
        match self {
            NatMode::IptablesLegacy => "iptables-legacy",
            NatMode::IptablesNft => "iptables-nft",
            NatMode::Nftables => "nftables",
        }
    }

    /// The backend for this mode in one address family.
    pub fn backend(self, family: Family) -> Box<dyn NatBackend> {
        match self {
            NatMode::IptablesLegacy => Box::new(IptablesBackend::legacy(family)),
            NatMode::IptablesNft => Box::new(IptablesBackend::nft(family)),
            NatMode::Nftables => Box::new(NftablesBackend::new(family)),
        }
    }
}

impl fmt::Display for NatMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for NatMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NatMode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                format!("unknown NAT mode {s:?} (want iptables-legacy, iptables-nft or nftables)")
            })
    }
}

/// What the kernel holds of weft's rules in one mode, in a canonical form
/// that the backend also renders the desired rule set into; equal snapshots
/// mean nothing to write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot(pub Vec<String>);

impl Snapshot {
    /// True when the mode holds nothing of weft's.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One way of programming the rules, in one address family. Every method is
/// blocking (commands or a netlink socket); call it from a thread that may
/// block.
pub trait NatBackend: Send {
    /// The mode this backend implements.
    fn mode(&self) -> NatMode;

    /// The address family it programs; rule sets given to it must be of it.
    fn family(&self) -> Family;

    /// What the kernel holds of weft's chains or table.
    fn observe(&mut self) -> Result<Snapshot, NatError>;

    /// The snapshot the kernel should show for `rules`.
    fn expected(&self, rules: &RuleSet) -> Snapshot;

    /// Replaces weft's rules with `rules` in one transaction (on error the
    /// previous rules stay). `current` is the last observation, so missing
    /// jump rules can be added in the same transaction.
    fn apply(&mut self, rules: &RuleSet, current: &Snapshot) -> Result<(), NatError>;

    /// Removes everything of weft's (and flannel's) in this mode and family:
    /// used when the node switches to another mode.
    fn remove(&mut self) -> Result<(), NatError>;

    /// What announces changes of this mode's rules (see [`signal`]). The
    /// loop waits on it; without one it falls back to polling.
    fn change_signal(&self) -> Result<Box<dyn signal::ChangeSignal>, NatError>;

    /// Observes and applies only if the kernel differs. Returns whether it
    /// wrote. A rule set of another family is refused
    /// ([`NatError::WrongFamily`]) before anything is read.
    fn reconcile(&mut self, rules: &RuleSet) -> Result<bool, NatError> {
        error::ensure_family(self.family(), rules)?;
        let current = self.observe()?;
        if current == self.expected(rules) {
            return Ok(false);
        }
        self.apply(rules, &current)?;
        Ok(true)
    }
}
