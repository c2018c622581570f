//! NAT's readers of the kernel's netlink replies (nlmsg, nft_dump): any
//! bytes are read or refused, never a panic or an out-of-bounds read.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    weft_nat::fuzzing::dump_replies(data);
});
