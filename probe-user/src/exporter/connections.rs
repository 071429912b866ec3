//! A listener that bounds the exporter's open connections: at most
//! [`MAX_CONNECTIONS`] at once (a new one closes the least recently active,
//! so a scrape always gets in), and none idle longer than [`IDLE_TIMEOUT`].
//! Without it, idle clients hold a file descriptor each until the process
//! runs out and `/metrics` stops answering.
//!
//! Hand-written on axum's `Listener` trait: tower's limits bound requests,
//! not idle connections, and hyper's header timeout is not reachable
//! through `axum::serve`.

use std::{
    collections::HashMap,
    io,
    net::{Shutdown, SocketAddr},
    os::fd::AsFd as _,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};

pub const MAX_CONNECTIONS: usize = 256;
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The open connections: id -> (last activity, a handle to shut it down).
#[derive(Default)]
struct Table {
    next_id: u64,
    open: HashMap<u64, (Arc<AtomicU64>, std::net::TcpStream)>,
}

impl Table {
    /// Shuts down the least recently active connection.
    fn close_least_active(&mut self) {
        let oldest = self
            .open
            .iter()
            .min_by_key(|(_, (active, _))| active.load(Ordering::Relaxed))
            .map(|(&id, _)| id);
        if let Some(id) = oldest {
            self.close(id);
        }
    }

    /// Shuts down connections idle since before `cutoff_ms`.
    fn close_idle(&mut self, cutoff_ms: u64) {
        let idle: Vec<u64> = self
            .open
            .iter()
            .filter(|(_, (active, _))| active.load(Ordering::Relaxed) < cutoff_ms)
            .map(|(&id, _)| id)
            .collect();
        for id in idle {
            self.close(id);
        }
    }

    /// Shutdown wakes the connection's task with end of file; its `Io`
    /// then drops and leaves the table.
    fn close(&mut self, id: u64) {
        if let Some((_, socket)) = self.open.remove(&id) {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

pub struct BoundedListener {
    inner: TcpListener,
    table: Arc<Mutex<Table>>,
    started: Instant,
    max: usize,
    idle_timeout: Duration,
}

impl BoundedListener {
    pub fn new(inner: TcpListener) -> Self {
        Self {
            inner,
            table: Arc::default(),
            started: Instant::now(),
            max: MAX_CONNECTIONS,
            idle_timeout: IDLE_TIMEOUT,
        }
    }

    /// Closes idle connections every few seconds, also when none arrive.
    pub fn idle_sweeper(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let table = self.table.clone();
        let (started, idle_timeout) = (self.started, self.idle_timeout);
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                let now = started.elapsed().as_millis() as u64;
                let cutoff = now.saturating_sub(idle_timeout.as_millis() as u64);
                table
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .close_idle(cutoff);
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Makes room for one more connection and registers `stream`.
    fn admit(&self, stream: TcpStream) -> io::Result<TrackedIo> {
        // A second handle on the socket, to shut it down from here.
        let handle = std::net::TcpStream::from(stream.as_fd().try_clone_to_owned()?);
        let now = self.now_ms();
        let active = Arc::new(AtomicU64::new(now));
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.close_idle(now.saturating_sub(self.idle_timeout.as_millis() as u64));
        while table.open.len() >= self.max {
            table.close_least_active();
        }
        let id = table.next_id;
        table.next_id += 1;
        table.open.insert(id, (active.clone(), handle));
        Ok(TrackedIo {
            stream,
            id,
            active,
            table: self.table.clone(),
            started: self.started,
        })
    }
}

impl axum::serve::Listener for BoundedListener {
    type Io = TrackedIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => match self.admit(stream) {
                    Ok(io) => return (io, addr),
                    Err(err) => log::debug!("connection from {addr} dropped: {err}"),
                },
                // Out of descriptors or memory: wait rather than spin (as
                // axum does); a connection error is the client's alone.
                Err(err) if is_connection_error(&err) => {}
                Err(err) => {
                    log::warn!("accepting a metrics connection: {err}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// A connection that notes when it last moved bytes and leaves the table
/// when it closes.
pub struct TrackedIo {
    stream: TcpStream,
    id: u64,
    active: Arc<AtomicU64>,
    table: Arc<Mutex<Table>>,
    started: Instant,
}

impl TrackedIo {
    fn touch(&self) {
        self.active
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl Drop for TrackedIo {
    fn drop(&mut self) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.open.remove(&self.id);
    }
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use axum::serve::Listener as _;

    use super::*;

    #[tokio::test]
    async fn a_connection_past_the_cap_closes_the_least_active_one() {
        let inner = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = inner.local_addr().unwrap();
        let mut listener = BoundedListener {
            max: 2,
            ..BoundedListener::new(inner)
        };
        let mut clients = Vec::new();
        let mut accepted = Vec::new();
        for _ in 0..3 {
            clients.push(std::net::TcpStream::connect(address).unwrap());
            accepted.push(listener.accept().await.0);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(listener.table.lock().unwrap().open.len(), 2);
        // The first, least recently active, was shut down: its client reads
        // end of file.
        clients[0]
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(clients[0].read(&mut byte).unwrap(), 0);
        // A closed connection leaves the table.
        drop(accepted.pop());
        assert_eq!(listener.table.lock().unwrap().open.len(), 1);
    }

    #[tokio::test]
    async fn idle_connections_are_closed_past_the_timeout() {
        let inner = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = inner.local_addr().unwrap();
        let mut listener = BoundedListener {
            idle_timeout: Duration::from_millis(20),
            ..BoundedListener::new(inner)
        };
        let _first = std::net::TcpStream::connect(address).unwrap();
        let _kept = listener.accept().await.0;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _second = std::net::TcpStream::connect(address).unwrap();
        let _newer = listener.accept().await.0;
        // Admitting the second swept the first, idle past 20 ms.
        assert_eq!(listener.table.lock().unwrap().open.len(), 1);
    }
}
