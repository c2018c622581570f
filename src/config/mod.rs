//! weftd's configuration: flags (flanneld's) and `net-conf.json` (flannel's).

pub mod flags;
pub mod net_conf;

pub use flags::{Flags, FlagsError, NatModeChoice};
pub use net_conf::{NetConf, NetConfError};
