//! What every front end's loop waits on besides the session: the signals
//! that end it (SIGINT, SIGTERM) and its refresh tick. One place, so each
//! loop installs them the same way, before it says it is tracing.

use std::time::Duration;

use anyhow::Context as _;
use tokio::{
    signal::unix::{signal, Signal, SignalKind},
    time::{Interval, MissedTickBehavior},
};

/// SIGINT and SIGTERM, installed together.
#[derive(Debug)]
pub struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignals {
    /// Installs the handlers: from now on the signals end the loop rather
    /// than the process (install them before announcing anything, so that
    /// whoever reads the announcement may signal at once).
    pub fn install() -> anyhow::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("SIGTERM handler")?,
        })
    }

    /// Waits for either; returns its name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

/// A refresh tick every `period`; a late tick is not made up for with a
/// burst (a loop that stalled refreshes once, then keeps its period).
pub fn ticker(period: Duration) -> Interval {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick
}
