//! weft's overlay subsystem.
//!
//! It programs, for every other node of the cluster, what flannel programs:
//! with VXLAN a device `flannel.<VNI>`, and per peer a route
//! `subnet via subnet.0 dev flannel.1 onlink`, a PERMANENT neighbour
//! `subnet.0 → VTEP MAC` and an FDB entry `VTEP MAC → node IP self permanent`;
//! with host-gw (or VXLAN DirectRouting for peers on the same L2 network) a
//! plain route `subnet via node IP`.
//!
//! The shape is a reconciler: [`desired`] (pure) turns configuration and
//! leases into an [`OverlayState`]; [`diff`] (pure) compares it with what the
//! kernel holds and yields the smallest [`Plan`]; [`kernel::Kernel`] (the only
//! rtnetlink user) observes and applies; [`Reconciler`] runs the loop, fed by
//! lease changes, a netlink monitor and a resync tick.

pub mod backend;
pub mod desired;
pub mod diff;
pub mod error;
pub mod family;
pub mod kernel;
pub mod mac;
pub mod metrics;
pub mod model;
pub mod peers;
pub mod reconciler;
pub mod state;

pub use backend::{
    Backend, BackendConfig, DataPlane, HostGw, UdpConfig, VxlanBackendData, VxlanConfig,
    DEFAULT_UDP_PORT, DEFAULT_VNI, DEFAULT_VXLAN_PORT, TUN_DEVICE, UDP_OVERHEAD, VXLAN6_HEADROOM,
    VXLAN_OVERHEAD,
};
pub use desired::{desired, Desired};
pub use diff::{diff, plan, Changes, DeviceOp, Plan};
pub use error::{KernelError, LeaseError, LeaseFault};
pub use family::{Family, PerFamily};
pub use kernel::Kernel;
pub use mac::MacAddr;
pub use metrics::OverlayMetrics;
pub use model::{Lease, LocalNode, OverlayConfig, UnderlayFacts};
pub use peers::{Peers, Touched};
pub use reconciler::{Input, Options, Reconciler, ReconcilerHandle, Report, Snapshot, Stats};
pub use state::{
    Dev, DeviceSpec, Entries, FdbEntry, Forward, LinkSpec, Neighbour, Observed, ObservedDevice,
    ObservedKind, OverlayState, Route, TunDevice, VxlanDevice, VxlanParams, ROUTE_PROTOCOL,
};
