//! Ring-buffer records are kernel bytes: any of them must decode to an event
//! or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = probe_user::model::events::decode(data) {
        // What decodes must also aggregate without panicking.
        let mut aggregate = probe_user::model::aggregate::Aggregate::new();
        aggregate.apply(&event);
    }
});
