//! TLS on top of the bounded listener: each accepted connection (already
//! counted against the cap and the idle timeout) does its handshake in a
//! task of its own, with a deadline, so a client that opens a socket and
//! says nothing never holds up the next one; finished handshakes are
//! handed to `axum::serve` in the order they complete.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use tokio::sync::mpsc;
use tokio_rustls::{server::TlsStream, TlsAcceptor};

use super::connections::{BoundedListener, TrackedIo};

/// Longer than any real client needs on a LAN; short enough that
/// half-open handshakes cannot pile up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TrackedIo>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `inner` (on the current runtime).
    pub fn new(mut inner: BoundedListener, config: Arc<rustls::ServerConfig>) -> io::Result<Self> {
        use axum::serve::Listener as _;
        let local = inner.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (done, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (io, peer) = inner.accept().await;
                let acceptor = acceptor.clone();
                let done = done.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                        Ok(Ok(stream)) => {
                            let _ = done.send((stream, peer)).await;
                        }
                        Ok(Err(err)) => log::debug!("TLS handshake with {peer} failed: {err}"),
                        Err(_) => log::debug!("TLS handshake with {peer} timed out"),
                    }
                });
            }
        });
        Ok(Self { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TrackedIo>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accepting task ended (its runtime is going away).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
