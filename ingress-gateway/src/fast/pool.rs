//! The fast path's upstream keep-alive pool: idle HTTP/1.1 connections per endpoint address.
//!
//! ```text
//!  request ─► take(addr) ─► idle connection, newest first (skips ones the endpoint closed)
//!         └─► none: connect (the caller)             response fully read, reusable ─► put(addr, conn)
//!  put / take ─► every SWEEP_INTERVAL: drop connections idle > idle timeout or closed by the peer
//! ```
//!
//! Like nginx's `upstream { keepalive N; }` and Pingora's connection pool: at most
//! [`MAX_IDLE_PER_ENDPOINT`] idle connections per endpoint (the Pingora path's pool holds
//! `crate::proxy::UPSTREAM_KEEPALIVE_POOL_SIZE` per thread), idle ones closed after the idle timeout
//! (`crate::proxy::POOL_IDLE_TIMEOUT`, 60 s). A connection the endpoint closed while idle is
//! noticed without a system call when the reactor already saw it readable (EOF), and dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// Idle connections kept per endpoint; more are closed when returned. An idle connection exists
/// only because that many requests were in flight at once, so the bound is high: with HTTP/2
/// clients one endpoint easily has hundreds of requests in flight (tests/pool.rs: 640 streams;
/// at 128 the second burst opened 512 new connections).
pub const MAX_IDLE_PER_ENDPOINT: usize = 1024;

/// How often `put`/`take` sweep the whole pool for expired or closed connections.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

struct Idle {
    stream: TcpStream,
    since: Instant,
}

/// Idle upstream connections by endpoint address. Shared by all worker threads (one short
/// uncontended lock per request on one worker); with [`Pool::per_thread`], each thread only
/// gets back the connections it returned.
pub struct Pool {
    idle_timeout: Duration,
    per_thread: bool,
    inner: Mutex<Inner>,
}

/// Pool key: the worker thread's shard (0 when shared) and the endpoint.
type Key = (usize, SocketAddr);

struct Inner {
    by_addr: HashMap<Key, Vec<Idle>, foldhash::fast::RandomState>,
    last_sweep: Instant,
}

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// This thread's shard number (1, 2, …; assigned on first use).
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed);
}

/// Whether an idle connection is still usable: nothing to read (a readable idle HTTP/1.1
/// connection means EOF, a reset or stray bytes — none of which a new request may follow).
fn looks_alive(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        // Readiness may be stale (an earlier read drained it): ask the socket.
        Poll::Ready(Ok(())) => {
            let mut probe = [0u8; 1];
            matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        }
        Poll::Ready(Err(_)) => false,
    }
}

impl Pool {
    /// An empty pool closing connections idle longer than `idle_timeout`, shared by all threads
    /// (for runtimes whose threads share one I/O driver: tokio's multi-thread runtime).
    pub fn new(idle_timeout: Duration) -> Self {
        Self::with_sharing(idle_timeout, false)
    }

    /// Like [`Pool::new`], but a connection is only handed back to the thread that returned it:
    /// for one current-thread runtime per thread (Pingora's `work_stealing = false`), where a
    /// socket stays registered with the I/O driver of the runtime that opened it, and would be
    /// woken late (only when that runtime's thread polls its driver) on another.
    pub fn per_thread(idle_timeout: Duration) -> Self {
        Self::with_sharing(idle_timeout, true)
    }

    fn with_sharing(idle_timeout: Duration, per_thread: bool) -> Self {
        Pool {
            idle_timeout,
            per_thread,
            inner: Mutex::new(Inner {
                by_addr: HashMap::default(),
                last_sweep: Instant::now(),
            }),
        }
    }

    fn key(&self, addr: SocketAddr) -> Key {
        (
            if self.per_thread {
                SHARD.with(|s| *s)
            } else {
                0
            },
            addr,
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle connection to `addr` that still looks open (most recently used first), if any.
    pub fn take(&self, addr: SocketAddr) -> Option<TcpStream> {
        let mut inner = self.lock();
        let now = Instant::now();
        self.maybe_sweep(&mut inner, now);
        let list = inner.by_addr.get_mut(&self.key(addr))?;
        while let Some(idle) = list.pop() {
            if now.duration_since(idle.since) < self.idle_timeout && looks_alive(&idle.stream) {
                return Some(idle.stream);
            }
        }
        None
    }

    /// Returns a connection whose last response was read completely.
    pub fn put(&self, addr: SocketAddr, stream: TcpStream) {
        let mut inner = self.lock();
        let now = Instant::now();
        self.maybe_sweep(&mut inner, now);
        let list = inner.by_addr.entry(self.key(addr)).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(Idle { stream, since: now });
        }
    }

    /// Idle connections held (all endpoints).
    pub fn idle(&self) -> usize {
        self.lock().by_addr.values().map(Vec::len).sum()
    }

    fn maybe_sweep(&self, inner: &mut Inner, now: Instant) {
        if now.duration_since(inner.last_sweep) < SWEEP_INTERVAL {
            return;
        }
        inner.last_sweep = now;
        let timeout = self.idle_timeout;
        inner.by_addr.retain(|_, list| {
            list.retain(|i| now.duration_since(i.since) < timeout && looks_alive(&i.stream));
            !list.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn reuses_open_connections_and_drops_closed_ones() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Pool::new(Duration::from_secs(60));
        assert!(pool.take(addr).is_none());

        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        pool.put(addr, client);
        let again = pool.take(addr).expect("open connection reused");
        pool.put(addr, again);
        assert_eq!(pool.idle(), 1);

        // The endpoint closes it while idle: not handed out again.
        drop(server);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.take(addr).is_none(), "closed connection dropped");
        assert_eq!(pool.idle(), 0);

        // Stray bytes from the endpoint make an idle connection unusable too.
        let client = TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        pool.put(addr, client);
        server.write_all(b"junk").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            pool.take(addr).is_none(),
            "connection with unread bytes dropped"
        );
    }

    #[test]
    fn per_thread_pools_give_connections_back_to_their_thread_only() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = std::sync::Arc::new(Pool::per_thread(Duration::from_secs(60)));
        let client = rt.block_on(TcpStream::connect(addr)).unwrap();
        let _server = rt.block_on(listener.accept()).unwrap();
        pool.put(addr, client);
        let other = std::sync::Arc::clone(&pool);
        let taken_elsewhere = std::thread::spawn(move || other.take(addr).is_some())
            .join()
            .unwrap();
        assert!(
            !taken_elsewhere,
            "another thread got this thread's connection"
        );
        let _guard = rt.enter();
        assert!(
            pool.take(addr).is_some(),
            "the returning thread gets it back"
        );
    }

    #[tokio::test]
    async fn expired_connections_are_not_reused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Pool::new(Duration::from_millis(20));
        let client = TcpStream::connect(addr).await.unwrap();
        let _server = listener.accept().await.unwrap();
        pool.put(addr, client);
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(pool.take(addr).is_none());
    }
}
