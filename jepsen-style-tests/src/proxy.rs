//! A TCP proxy per directed link between two nodes, so the harness can cut or slow
//! any link without root: node A reaches node B only through proxy (A→B).
//!
//! Cutting a link closes its open connections at once and accepts-then-closes new
//! ones, which a gRPC client sees as an unreachable peer. Slowing a link delays every
//! chunk forwarded in either direction, by a fixed delay plus, when asked, a random
//! jitter per chunk (so some Raft calls finish just inside their deadline and some
//! just past it). Each proxy is bounded: at most
//! [`CONNECTIONS_MAX`] connections at once, 64 KiB buffers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Most connections one proxy carries at once.
pub const CONNECTIONS_MAX: usize = 256;
const BUFFER_BYTES: usize = 64 << 10;

#[derive(Default)]
struct LinkState {
    cut: AtomicBool,
    delay_ms: AtomicU64,
    /// Up to this much more per chunk, drawn at random.
    jitter_ms: AtomicU64,
    open: AtomicUsize,
    cutting: Notify,
}

/// One directed link.
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<LinkState>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(LinkState::default());
        let task = tokio::spawn(accept(listener, target, state.clone()));
        Ok(Self { addr, state, task })
    }

    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        self.state.cutting.notify_waiters();
    }

    pub fn heal(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
        self.state.delay_ms.store(0, Ordering::SeqCst);
        self.state.jitter_ms.store(0, Ordering::SeqCst);
    }

    /// Delays every chunk by `delay` plus a random part of `jitter`.
    pub fn slow_jittered(&self, delay: Duration, jitter: Duration) {
        self.state
            .jitter_ms
            .store(jitter.as_millis() as u64, Ordering::SeqCst);
        self.slow(delay);
    }

    pub fn slow(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn is_cut(&self) -> bool {
        self.state.cut.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, target: SocketAddr, state: Arc<LinkState>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            // Out of file descriptors and the like: pause instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        if state.cut.load(Ordering::SeqCst) || state.open.load(Ordering::SeqCst) >= CONNECTIONS_MAX
        {
            drop(inbound);
            continue;
        }
        let state = state.clone();
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(target).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            state.open.fetch_add(1, Ordering::SeqCst);
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            let cut = state.cutting.notified();
            // Cut while this connection was being made: it must not outlive the cut.
            if state.cut.load(Ordering::SeqCst) {
                state.open.fetch_sub(1, Ordering::SeqCst);
                return;
            }
            tokio::select! {
                _ = pump(ri, wo, &state) => {}
                _ = pump(ro, wi, &state) => {}
                _ = cut => {}
            }
            state.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: &LinkState,
) {
    let mut buf = vec![0u8; BUFFER_BYTES];
    let mut rng = fastrand::Rng::new();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if state.cut.load(Ordering::SeqCst) {
            return;
        }
        let jitter = state.jitter_ms.load(Ordering::SeqCst);
        let delay = state.delay_ms.load(Ordering::SeqCst) + rng.u64(0..=jitter);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn forwards_until_cut_and_again_after_heal() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = echo.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = echo.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut b = [0u8; 16];
                    while let Ok(n) = s.read(&mut b).await {
                        if n == 0 || s.write_all(&b[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let p = Proxy::start(target).await.unwrap();
        let mut c = TcpStream::connect(p.addr).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");
        p.cut();
        // The open connection is closed, and a new one is closed at once.
        let mut rest = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(2), c.read_to_end(&mut rest)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{r:?}");
        let mut c2 = TcpStream::connect(p.addr).await.unwrap();
        let _ = c2.write_all(b"x").await;
        let r = tokio::time::timeout(Duration::from_secs(2), c2.read(&mut b)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{r:?}");
        p.heal();
        let mut c3 = TcpStream::connect(p.addr).await.unwrap();
        c3.write_all(b"pong").await.unwrap();
        c3.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"pong");
    }
}
