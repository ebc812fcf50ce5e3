//! A UDP relay on loopback with one [`Link`] each way.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::net::UdpSocket;

use crate::link::{Link, LinkConfig, LinkStats};

/// Relays between one client (whoever sends to it first) and a server.
#[derive(Debug, Clone)]
pub struct UdpRelay {
    local: SocketAddr,
    up: Arc<Mutex<Link>>,
    down: Arc<Mutex<Link>>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl UdpRelay {
    /// Starts a relay on loopback towards `server`. `up` shapes client-to-server packets,
    /// `down` the other way.
    pub async fn start(server: SocketAddr, up: LinkConfig, down: LinkConfig, seed: u64) -> std::io::Result<UdpRelay> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let local = front.local_addr()?;
        let up = Arc::new(Mutex::new(Link::new(up, seed)));
        let down = Arc::new(Mutex::new(Link::new(down, seed.rotate_left(17))));
        let (u, d) = (up.clone(), down.clone());
        let task = tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let mut fbuf = vec![0u8; 65536];
            let mut bbuf = vec![0u8; 65536];
            loop {
                // Deliver whatever has arrived on either link.
                let now = Instant::now();
                let ups: Vec<Vec<u8>> = {
                    let mut link = lock(&u);
                    std::iter::from_fn(|| link.poll_deliver(now)).collect()
                };
                for p in ups {
                    let _ = back.send_to(&p, server).await;
                }
                if let Some(c) = client {
                    let downs: Vec<Vec<u8>> = {
                        let mut link = lock(&d);
                        std::iter::from_fn(|| link.poll_deliver(now)).collect()
                    };
                    for p in downs {
                        let _ = front.send_to(&p, c).await;
                    }
                }
                tokio::select! {
                    r = front.recv_from(&mut fbuf) => {
                        if let Ok((n, from)) = r {
                            client = Some(from);
                            lock(&u).send(Instant::now(), fbuf[..n].to_vec());
                        }
                    }
                    r = back.recv_from(&mut bbuf) => {
                        if let Ok((n, _)) = r {
                            lock(&d).send(Instant::now(), bbuf[..n].to_vec());
                        }
                    }
                    _ = next_arrival(&u, &d) => {}
                }
            }
        });
        Ok(UdpRelay { local, up, down, task: Arc::new(task) })
    }

    /// Where clients send.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Reshapes both directions (for example `loss: 1.0` to cut the link).
    pub fn set_config(&self, config: LinkConfig) {
        lock(&self.up).set_config(config.clone());
        lock(&self.down).set_config(config);
    }

    /// Client-to-server and server-to-client statistics.
    pub fn stats(&self) -> (LinkStats, LinkStats) {
        (lock(&self.up).stats(), lock(&self.down).stats())
    }

    /// Bytes carried both ways (delivered, duplicates included).
    pub fn bytes_carried(&self) -> u64 {
        let (u, d) = self.stats();
        u.bytes_out + d.bytes_out
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

/// Sleeps until the next packet in flight on either link arrives (or forever if none is).
async fn next_arrival(up: &Mutex<Link>, down: &Mutex<Link>) {
    let next = [lock(up).next_arrival(), lock(down).next_arrival()].into_iter().flatten().min();
    match next {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
