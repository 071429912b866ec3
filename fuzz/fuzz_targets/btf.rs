//! Kernel BTF may be truncated or corrupt: parsing and every offset lookup
//! must return errors, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(btf) = probe_user::probe::btf::KernelBtf::from_bytes(data) {
        let _ = btf.kernel_offsets();
        let _ = btf.offset_of("file", "f_path.dentry");
        let _ = btf.enumerator("pageflags", "PG_head");
        let _ = btf.has_function("do_wp_page");
    }
});
