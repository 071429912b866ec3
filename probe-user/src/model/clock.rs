//! The kernel's boot clock, as Unix time.

/// Converts the kernel's boot-clock nanoseconds to Unix time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Unix ns minus boot ns, sampled once.
    offset_ns: i128,
}

impl Clock {
    pub fn now() -> Self {
        let boot = i128::from(boot_ns());
        let real = timespec_ns(rustix::time::clock_gettime(rustix::time::ClockId::Realtime));
        Self {
            offset_ns: real - boot,
        }
    }

    pub fn with_offset(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    /// Unix time minus boot time (what a recording keeps).
    pub fn offset_ns(&self) -> i128 {
        self.offset_ns
    }

    pub fn unix_ns(&self, boot_ns: u64) -> u64 {
        u64::try_from(i128::from(boot_ns) + self.offset_ns).unwrap_or(0)
    }
}

/// The boot clock now, in ns: the clock the kernel's records carry.
pub fn boot_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    u64::try_from(timespec_ns(now)).unwrap_or(0)
}

fn timespec_ns(ts: rustix::time::Timespec) -> i128 {
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}
