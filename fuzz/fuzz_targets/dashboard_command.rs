//! Dashboard commands: the parser must return a command or an error for any input,
//! never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitalgate::fanout::protocol::Command;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Command::parse(text);
    }
});
