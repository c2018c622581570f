//! The overlay's classification of what the kernel reports: any route or
//! neighbour message (as the kernel could send it, or a corrupt one) is
//! parsed and classified as weft's or not without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;
use netlink_packet_core::Parseable;
use netlink_packet_route::neighbour::NeighbourMessage;
use netlink_packet_route::route::RouteMessage;

fuzz_target!(|data: &[u8]| {
    let scope = weft_overlay::kernel::Scope {
        network: "10.244.0.0/16".parse().expect("a network"),
        overlay: Some(3),
        underlay: 2,
    };
    if let Ok(msg) = RouteMessage::parse(data) {
        let _ = weft_overlay::kernel::route_of(&msg, &scope);
    }
    if let Ok(msg) = NeighbourMessage::parse(data) {
        let _ = weft_overlay::kernel::neighbour_of(&msg, &scope);
        let _ = weft_overlay::kernel::fdb_of(&msg, &scope);
    }
});
