//! net-conf.json as a user writes it: any text parses or is refused with a
//! field-named error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = weft::config::NetConf::parse(text);
    }
});
