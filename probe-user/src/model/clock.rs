//! The kernel's boot clock, as Unix time.

/// Converts the kernel's boot-clock nanoseconds to Unix time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Unix ns minus boot ns, sampled once.
    offset_ns: i128,
}

impl Clock {
    pub fn now() -> Self {
        let read = |clock| {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: `ts` is a valid out-pointer.
            unsafe { libc::clock_gettime(clock, &mut ts) };
            i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
        };
        let boot = read(libc::CLOCK_BOOTTIME);
        let real = read(libc::CLOCK_REALTIME);
        Self {
            offset_ns: real - boot,
        }
    }

    pub fn with_offset(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    pub fn unix_ns(&self, boot_ns: u64) -> u64 {
        u64::try_from(i128::from(boot_ns) + self.offset_ns).unwrap_or(0)
    }
}
