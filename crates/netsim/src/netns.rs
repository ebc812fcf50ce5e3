//! Shaping any IP traffic, TCP as well as UDP, so that QUIC and TCP can be compared on the
//! same link. Two network namespaces each get a TUN device; a thread of ours forwards the
//! IP packets between them through a [`Link`] each way. A program run in one namespace
//! (a thread that entered it, or a process under `ip netns exec`) reaches the other
//! namespace's address only through the link.
//!
//! Needs root (namespaces, TUN) and `ip` from iproute2. Linux only.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::link::{Link, LinkConfig, LinkStats};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

/// Two namespaces joined by an emulated link.
#[derive(Debug)]
pub struct NetnsLink {
    namespaces: [String; 2],
    addrs: [Ipv4Addr; 2],
    stop: Arc<AtomicBool>,
    shared: Arc<Mutex<Shared>>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    configs: Option<(LinkConfig, LinkConfig)>,
    stats: (LinkStats, LinkStats),
}

fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Runs `f` on a thread inside network namespace `ns` (as `ip netns add` named it):
/// sockets it opens live there.
pub fn run_in<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || -> io::Result<T> {
        enter(&path)?;
        Ok(f())
    })
    .join()
    .map_err(|_| io::Error::other("the thread in the namespace panicked"))?
}

/// Moves the calling thread into a network namespace.
pub fn enter(path: &str) -> io::Result<()> {
    let file = File::open(path)?;
    // SAFETY: setns takes a valid open fd and a namespace type; it affects this thread only.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn open_tun(name: &str) -> io::Result<File> {
    let file = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun")?;
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let mut req = IfReq { name: [0; 16], flags: IFF_TUN | IFF_NO_PI, _pad: [0; 22] };
    req.name[..name.len().min(15)].copy_from_slice(&name.as_bytes()[..name.len().min(15)]);
    // SAFETY: TUNSETIFF reads an ifreq of the layout above from a valid pointer.
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

impl NetnsLink {
    /// Creates namespaces `<tag>a` (the van's side) and `<tag>b` (the hub's), joined by
    /// `up` (a to b) and `down` (b to a). Addresses are 10.77.`net`.1 and .2.
    pub fn create(tag: &str, net: u8, up: LinkConfig, down: LinkConfig, seed: u64) -> io::Result<NetnsLink> {
        let namespaces = [format!("{tag}a"), format!("{tag}b")];
        let addrs = [Ipv4Addr::new(10, 77, net, 1), Ipv4Addr::new(10, 77, net, 2)];
        for ns in &namespaces {
            let _ = ip(&["netns", "del", ns]);
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        let mut fds = Vec::new();
        for (i, ns) in namespaces.iter().enumerate() {
            let path = format!("/var/run/netns/{ns}");
            let fd = std::thread::spawn(move || -> io::Result<File> {
                enter(&path)?;
                open_tun("mvtun0")
            })
            .join()
            .map_err(|_| io::Error::other("TUN set-up panicked"))??;
            let (me, peer) = (addrs[i].to_string(), addrs[1 - i].to_string());
            ip(&["-n", ns, "addr", "add", &me, "peer", &peer, "dev", "mvtun0"])?;
            ip(&["-n", ns, "link", "set", "mvtun0", "up"])?;
            fds.push(fd);
        }
        let b = fds.pop().expect("two");
        let a = fds.pop().expect("two");
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Mutex::new(Shared { configs: None, stats: Default::default() }));
        let thread = {
            let (stop, shared) = (stop.clone(), shared.clone());
            std::thread::spawn(move || {
                forward(a, b, Link::new(up, seed), Link::new(down, seed ^ 0x5eed), &stop, &shared)
            })
        };
        Ok(NetnsLink { namespaces, addrs, stop, shared, thread: Some(thread) })
    }

    /// The van's namespace.
    pub fn van_ns(&self) -> &str {
        &self.namespaces[0]
    }

    /// The hub's namespace.
    pub fn hub_ns(&self) -> &str {
        &self.namespaces[1]
    }

    /// The van's address.
    pub fn van_addr(&self) -> Ipv4Addr {
        self.addrs[0]
    }

    /// The hub's address.
    pub fn hub_addr(&self) -> Ipv4Addr {
        self.addrs[1]
    }

    /// Changes both directions from now on.
    pub fn set_config(&self, up: LinkConfig, down: LinkConfig) {
        self.shared.lock().unwrap_or_else(|p| p.into_inner()).configs = Some((up, down));
    }

    /// What each direction (up, down) has carried so far.
    pub fn stats(&self) -> (LinkStats, LinkStats) {
        self.shared.lock().unwrap_or_else(|p| p.into_inner()).stats
    }
}

impl Drop for NetnsLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

fn forward(mut a: File, mut b: File, mut up: Link, mut down: Link, stop: &AtomicBool, shared: &Mutex<Shared>) {
    // SAFETY: duplicating our own open fds, so each direction has its own File to write with.
    let (mut a_out, mut b_out) =
        unsafe { (File::from_raw_fd(libc::dup(a.as_raw_fd())), File::from_raw_fd(libc::dup(b.as_raw_fd()))) };
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let next = [up.next_arrival(), down.next_arrival()].into_iter().flatten().min();
        let wait =
            next.map_or(Duration::from_millis(50), |t| t.saturating_duration_since(now)).min(Duration::from_millis(50));
        let mut fds = [
            libc::pollfd { fd: a.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: b.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: polling two valid fds held for the duration of the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, wait.as_millis() as libc::c_int) };
        let now = Instant::now();
        if ready > 0 {
            if fds[0].revents & libc::POLLIN != 0
                && let Ok(n) = a.read(&mut buf)
            {
                up.send(now, buf[..n].to_vec());
            }
            if fds[1].revents & libc::POLLIN != 0
                && let Ok(n) = b.read(&mut buf)
            {
                down.send(now, buf[..n].to_vec());
            }
        }
        while let Some(p) = up.poll_deliver(now) {
            let _ = b_out.write_all(&p);
        }
        while let Some(p) = down.poll_deliver(now) {
            let _ = a_out.write_all(&p);
        }
        let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((u, d)) = s.configs.take() {
            up.set_config(u);
            down.set_config(d);
        }
        s.stats = (up.stats(), down.stats());
    }
}
