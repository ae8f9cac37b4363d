//! A TCP proxy on 127.0.0.1 that a test can cut, stall and restore, to make a dependency
//! (PostgreSQL, Redis) unreachable for one service without touching the shared server: cut is
//! an outage (connections refused and reset), stall a partition (connections stay open, no
//! byte gets through).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::watch,
    task::{AbortHandle, JoinHandle},
};

#[derive(Debug)]
struct Shared {
    up: AtomicBool,
    /// True while partitioned: bytes are held, nothing is closed.
    stalled: watch::Sender<bool>,
    connections: Mutex<Vec<AbortHandle>>,
}

/// Copies `from` to `to`, holding each chunk while the proxy is stalled.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut stalled: watch::Receiver<bool>) {
    let mut buffer = vec![0_u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stalled.wait_for(|s| !*s).await.is_err() || to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// Forwards one accepted connection to `target` (connecting only once the proxy flows).
async fn forward(inbound: TcpStream, target: SocketAddr, mut stalled: watch::Receiver<bool>) {
    if stalled.wait_for(|s| !*s).await.is_err() {
        return;
    }
    let Ok(outbound) = TcpStream::connect(target).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    tokio::select! {
        () = pump(in_read, out_write, stalled.clone()) => {}
        () = pump(out_read, in_write, stalled) => {}
    }
}

/// Forwards every connection to `target` while up; when cut, closes the connections it carries
/// and closes new ones at once (a client sees the peer go away, as when a database crashes);
/// when stalled, keeps every connection open and accepts new ones, but forwards nothing until
/// restored (a network partition: the peer is silent, not gone).
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// Starts forwarding from a free port to `target`.
    ///
    /// # Panics
    /// When no port can be bound.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            up: AtomicBool::new(true),
            stalled: watch::Sender::new(false),
            connections: Mutex::new(Vec::new()),
        });
        let state = shared.clone();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !state.up.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(forward(inbound, target, state.stalled.subscribe()));
                let mut connections = state.connections.lock().expect("proxy lock");
                connections.retain(|c| !c.is_finished());
                connections.push(task.abort_handle());
            }
        });
        Self {
            addr,
            shared,
            accept,
        }
    }

    /// Where clients connect.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts every connection and refuses new ones until [`Self::restore`].
    ///
    /// # Panics
    /// When the lock is poisoned.
    pub fn cut(&self) {
        self.shared.up.store(false, Ordering::SeqCst);
        for connection in self
            .shared
            .connections
            .lock()
            .expect("proxy lock")
            .drain(..)
        {
            connection.abort();
        }
    }

    /// Holds every byte in both directions, keeping connections open and accepting new ones,
    /// until [`Self::restore`]: a partition, where the peer is silent rather than gone.
    pub fn stall(&self) {
        self.shared.stalled.send_replace(true);
    }

    /// Forwards again (after a cut or a stall); held bytes go through.
    pub fn restore(&self) {
        self.shared.up.store(true, Ordering::SeqCst);
        self.shared.stalled.send_replace(false);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// `url` with its `host:port` replaced by `addr` (credentials, path and query kept).
///
/// # Panics
/// When `url` has no `scheme://` part.
#[must_use]
pub fn url_via(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let (authority, tail) = rest
        .find(['/', '?'])
        .map_or((rest, ""), |i| (&rest[..i], &rest[i..]));
    let credentials = authority
        .rsplit_once('@')
        .map_or(String::new(), |(user, _)| format!("{user}@"));
    format!("{scheme}://{credentials}{addr}{tail}")
}

/// The `host:port` of `url`, resolved (for the proxy's target).
///
/// # Panics
/// When the URL names no reachable address.
#[must_use]
pub fn socket_addr_of(url: &str, default_port: u16) -> SocketAddr {
    use std::net::ToSocketAddrs;
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.find(['/', '?']).map_or(rest, |i| &rest[..i]);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let with_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:{default_port}")
    };
    with_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| panic!("no address for {url}"))
}

#[cfg(test)]
mod tests {
    use super::url_via;

    #[test]
    fn urls_are_redirected_to_the_proxy() {
        let addr = "127.0.0.1:4000".parse().expect("addr");
        assert_eq!(
            url_via("postgres://postgres@127.0.0.1:5432/db?x=1", addr),
            "postgres://postgres@127.0.0.1:4000/db?x=1"
        );
        assert_eq!(url_via("redis://localhost", addr), "redis://127.0.0.1:4000");
    }
}
