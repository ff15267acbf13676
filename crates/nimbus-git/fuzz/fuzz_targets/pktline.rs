#![no_main]
//! The pkt-line parser and the streaming validator must reject any input without panicking,
//! and agree with each other on where the framed part ends.

use libfuzzer_sys::fuzz_target;
use nimbus_git::pktline::{self, Validator};

fuzz_target!(|data: &[u8]| {
    let whole = pktline::parse_all(data);
    let mut validator = Validator::new(usize::MAX, 1 << 20);
    let mut ok = true;
    for chunk in data.chunks(5) {
        if validator.feed(chunk).is_err() {
            ok = false;
            break;
        }
    }
    if ok {
        ok = validator.finish(false).is_ok();
    }
    assert_eq!(whole.is_ok(), ok, "parser and validator disagree");
});
