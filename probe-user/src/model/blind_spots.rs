//! What each backend cannot see, said in the report and by `doctor`, so
//! no page is missing without the user being told why it may be.

/// Stores the kernel gives no signal for, whatever the backend.
const EVERY_BACKEND: &[&str] = &[
    "tmpfs/shmem/ramfs: pages mapped writable by a read fault take no fault when stored to; they are reported as possibly_written_pages, not as written",
    "a large folio mapped writable whole by one write fault: its other pages are reported as span_pages (the kernel's granularity), stored to or not",
];

/// Blind spots of the backends without function hooks.
const TRACEPOINT_ONLY: &[&str] = &[
    "writes by get_user_pages take no user page fault and are not seen: O_DIRECT read(2) into a mapping, MADV_POPULATE_WRITE, process_vm_writev, writes to /proc/PID/mem, io_uring and RDMA buffers (the fentry and kprobe backends see them)",
];

/// The blind spots of `backend` ("fentry", "kprobe" or "tracepoint").
pub fn blind_spots(backend: &str) -> Vec<&'static str> {
    let mut spots = EVERY_BACKEND.to_vec();
    if backend == "tracepoint" {
        spots.extend_from_slice(TRACEPOINT_ONLY);
    }
    spots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_tracepoint_backend_misses_get_user_pages_writes() {
        let gup = |backend| {
            blind_spots(backend)
                .iter()
                .any(|s| s.contains("get_user_pages"))
        };
        assert!(gup("tracepoint"));
        assert!(!gup("fentry"));
        assert!(!gup("kprobe"));
        assert!(blind_spots("fentry").iter().any(|s| s.contains("tmpfs")));
    }
}
