//! A small selective forwarding unit over str0m (sans-IO WebRTC): one UDP socket for every
//! peer, one thread that drives them all. A peer is a publisher (WHIP: it sends) or a
//! subscriber (WHEP: it receives); each belongs to a room (a case's call). What a
//! publisher sends is forwarded, unchanged and undecoded, to the subscribers of its room
//! who are not the same person; a subscriber's keyframe request goes back to the publisher
//! of the track it watches.
//!
//! The HTTP side accepts the offer (`Sfu::join`) and hands the peer to the thread; the
//! thread owns every `Rtc` from then on.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::media::{Direction, KeyframeRequestKind, MediaData, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};

/// What a peer does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sends media (WHIP).
    Publisher,
    /// Receives media (WHEP).
    Subscriber,
}

/// Why a peer could not join.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The offer does not parse or cannot be answered.
    #[error("the SDP offer was refused: {0}")]
    Offer(String),
    /// The media server is full.
    #[error("{0}")]
    Full(&'static str),
    /// The media server stopped.
    #[error("the media server is not running")]
    Stopped,
}

/// A peer's id (its session resource).
pub type PeerId = u64;

/// Who is in a room.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Participant {
    /// The session id.
    pub session: PeerId,
    /// Who (a user name, or `van:<id>`).
    pub who: String,
    /// `publisher` or `subscriber`.
    pub role: &'static str,
    /// Whether ICE and DTLS are up.
    pub connected: bool,
    /// Media packets forwarded to (subscriber) or received from (publisher) it.
    pub packets: u64,
}

enum Cmd {
    Join(Box<Peer>),
    Leave(PeerId),
}

/// The running media server.
pub struct Sfu {
    tx: Mutex<Sender<Cmd>>,
    advertised: SocketAddr,
    rooms: Arc<Mutex<HashMap<String, Vec<Participant>>>>,
    /// Every live session: its room and person (for `leave`, and the limits). The thread
    /// removes a session when its peer goes.
    sessions: Arc<Mutex<HashMap<PeerId, (String, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
    next: AtomicU64,
}

impl std::fmt::Debug for Sfu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sfu").field("advertised", &self.advertised).finish_non_exhaustive()
    }
}

impl Sfu {
    /// Binds `bind` (UDP) and starts the media thread. `advertised` is the address peers
    /// are told to send to (the host's reachable address and the bound port).
    pub fn start(bind: SocketAddr, advertised_ip: std::net::IpAddr) -> std::io::Result<Sfu> {
        rtc_crypto::install();
        let socket = UdpSocket::bind(bind)?;
        let advertised = SocketAddr::new(advertised_ip, socket.local_addr()?.port());
        let (tx, rx) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let rooms = Arc::new(Mutex::new(HashMap::new()));
        let sessions = Arc::new(Mutex::new(HashMap::new()));
        let thread = {
            let (stop, rooms, sessions) = (stop.clone(), rooms.clone(), sessions.clone());
            std::thread::Builder::new()
                .name("sfu".into())
                .spawn(move || run(socket, advertised, rx, &stop, &rooms, &sessions))?
        };
        Ok(Sfu {
            tx: Mutex::new(tx),
            advertised,
            rooms,
            sessions,
            stop,
            thread: Mutex::new(Some(thread)),
            next: AtomicU64::new(1),
        })
    }

    /// The address peers send media to.
    pub fn address(&self) -> SocketAddr {
        self.advertised
    }

    /// Answers `offer` and adds the peer to `room`. Returns its session id and the answer.
    pub fn join(&self, room: &str, who: &str, role: Role, offer: &str) -> Result<(PeerId, String), JoinError> {
        {
            let sessions = lock(&self.sessions);
            if sessions.len() >= MAX_PEERS {
                return Err(JoinError::Full("the media server is full; try again in a minute"));
            }
            if sessions.values().filter(|(r, _)| r == room).count() >= MAX_ROOM {
                return Err(JoinError::Full("this call has as many sessions as it may; someone must leave first"));
            }
            if sessions.values().filter(|(_, w)| w == who).count() >= MAX_PER_PERSON {
                return Err(JoinError::Full("you have too many call sessions open; leave one first"));
            }
        }
        let offer = SdpOffer::from_sdp_string(offer).map_err(|e| JoinError::Offer(e.to_string()))?;
        // Viewers (browsers) get ICE lite, as a server with a known address should: the
        // viewer checks the path it was given and keeps consent, and media takes that path.
        // Publishers get full ICE: GStreamer 1.22's libnice (the van) neither uses the
        // candidates of an answer nor keeps consent alive by itself, so the server checks
        // the van's paths too.
        // Receiver reports twice a second: a van follows its link by them (GStreamer has no
        // other congestion feedback), and str0m's five seconds for audio is too slow for that.
        let mut rtc = Rtc::builder()
            .set_ice_lite(role == Role::Subscriber)
            .set_stats_interval(Some(Duration::from_secs(1)))
            .set_rtcp_report_interval_audio(Duration::from_millis(500))
            .set_rtcp_report_interval_video(Duration::from_millis(500))
            .build(Instant::now());
        let candidate = Candidate::host(self.advertised, "udp").map_err(|e| JoinError::Offer(e.to_string()))?;
        rtc.add_local_candidate(candidate);
        let answer = rtc.sdp_api().accept_offer(offer).map_err(|e| JoinError::Offer(e.to_string()))?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let peer = Peer {
            id,
            room: room.to_owned(),
            who: who.to_owned(),
            role,
            rtc,
            tracks_in: Vec::new(),
            slots: Vec::new(),
            connected: false,
            packets: 0,
            last_keyframe_request: None,
            lost_since: None,
            joined: Instant::now(),
        };
        lock(&self.sessions).insert(id, (room.to_owned(), who.to_owned()));
        if lock(&self.tx).send(Cmd::Join(Box::new(peer))).is_err() {
            lock(&self.sessions).remove(&id);
            return Err(JoinError::Stopped);
        }
        Ok((id, answer.to_sdp_string()))
    }

    /// Ends a session. Returns whether it existed in `room` for `who`.
    pub fn leave(&self, room: &str, who: &str, id: PeerId) -> bool {
        let mut sessions = lock(&self.sessions);
        let known = sessions.get(&id).is_some_and(|(r, w)| r == room && w == who);
        if known {
            sessions.remove(&id);
            let _ = lock(&self.tx).send(Cmd::Leave(id));
        }
        known
    }

    /// Who is in `room` now.
    pub fn participants(&self, room: &str) -> Vec<Participant> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner()).get(room).cloned().unwrap_or_default()
    }

    /// Whether a session is open (joined, and not yet left or dropped).
    pub fn has_session(&self, id: PeerId) -> bool {
        lock(&self.sessions).contains_key(&id)
    }
}

impl Drop for Sfu {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sessions in all, in one call, and of one person.
const MAX_PEERS: usize = 256;
const MAX_ROOM: usize = 16;
const MAX_PER_PERSON: usize = 8;
/// A peer that has not connected this long after its offer is dropped.
const CONNECT_WITHIN: Duration = Duration::from_secs(20);

/// A track a publisher sends.
#[derive(Debug, Clone, Copy)]
struct TrackIn {
    mid: Mid,
    kind: MediaKind,
}

/// A subscriber's outgoing m-line, and the publisher track bound to it.
#[derive(Debug, Clone, Copy)]
struct Slot {
    mid: Mid,
    kind: MediaKind,
    source: Option<(PeerId, Mid)>,
}

struct Peer {
    id: PeerId,
    room: String,
    who: String,
    role: Role,
    rtc: Rtc,
    tracks_in: Vec<TrackIn>,
    slots: Vec<Slot>,
    connected: bool,
    packets: u64,
    last_keyframe_request: Option<Instant>,
    /// Since when ICE has found no path (a tunnel): the peer is kept a while, so the call
    /// comes back by itself when the link does.
    lost_since: Option<Instant>,
    joined: Instant,
}

/// How long a peer with no path is kept.
const LOST_GRACE: Duration = Duration::from_secs(30);

/// Something one peer's output means for the others.
enum Out {
    Media(PeerId, Box<MediaData>),
    /// A subscriber wants a keyframe of the publisher's track.
    Keyframe(PeerId, Mid, KeyframeRequestKind),
}

fn run(
    socket: UdpSocket,
    local: SocketAddr,
    rx: Receiver<Cmd>,
    stop: &AtomicBool,
    rooms: &Mutex<HashMap<String, Vec<Participant>>>,
    sessions: &Mutex<HashMap<PeerId, (String, String)>>,
) {
    let mut peers: Vec<Peer> = Vec::new();
    let mut buf = vec![0u8; 2000];
    let mut published = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        loop {
            match rx.try_recv() {
                Ok(Cmd::Join(p)) => {
                    tracing::info!(room = %p.room, who = %p.who, role = ?p.role, session = p.id, "joined a call");
                    peers.push(*p);
                }
                Ok(Cmd::Leave(id)) => {
                    if let Some(p) = peers.iter_mut().find(|p| p.id == id) {
                        p.rtc.disconnect();
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        for p in peers.iter_mut().filter(|p| {
            p.lost_since.is_some_and(|t| t.elapsed() > LOST_GRACE)
                || (!p.connected && p.joined.elapsed() > CONNECT_WITHIN)
        }) {
            p.rtc.disconnect();
        }
        peers.retain(|p| {
            let alive = p.rtc.is_alive();
            if !alive {
                tracing::info!(room = %p.room, who = %p.who, session = p.id, "left a call");
                lock(sessions).remove(&p.id);
            }
            alive
        });
        bind_slots(&mut peers);

        let mut timeout = Instant::now() + Duration::from_millis(100);
        let mut outs = Vec::new();
        for p in peers.iter_mut() {
            timeout = timeout.min(poll(p, &socket, &mut outs));
        }
        for out in outs {
            forward(out, &mut peers);
        }

        if published.elapsed() >= Duration::from_millis(250) {
            publish_rooms(&peers, rooms);
            published = Instant::now();
        }

        let wait = timeout.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        let _ = socket.set_read_timeout(Some(wait));
        match socket.recv_from(&mut buf) {
            Ok((n, source)) => {
                if let Ok(contents) = buf[..n].try_into() {
                    let input = Input::Receive(
                        Instant::now(),
                        // The destination must be the address in our candidate, whatever
                        // the socket is bound to, or ICE ignores the packet.
                        Receive { proto: Protocol::Udp, source, destination: local, contents },
                    );
                    if let Some(p) = peers.iter_mut().find(|p| p.rtc.accepts(&input)) {
                        feed(p, input);
                    }
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => tracing::warn!(error = %e, "the media socket failed to read"),
        }
        let now = Instant::now();
        for p in peers.iter_mut() {
            feed(p, Input::Timeout(now));
        }
    }
    rooms.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

fn feed(p: &mut Peer, input: Input<'_>) {
    if !p.rtc.is_alive() {
        return;
    }
    // A fault in the WebRTC stack on one peer's bytes ends that peer, not every call.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.rtc.handle_input(input)));
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::info!(session = p.id, error = %e, "a call peer dropped");
            p.rtc.disconnect();
        }
        Err(_) => {
            tracing::error!(session = p.id, "the WebRTC stack failed on a peer's input; the peer was dropped");
            p.rtc.disconnect();
        }
    }
}

/// Drives one peer until it has nothing more to say; returns when it wants time next.
fn poll(p: &mut Peer, socket: &UdpSocket, outs: &mut Vec<Out>) -> Instant {
    loop {
        if !p.rtc.is_alive() {
            return Instant::now();
        }
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.rtc.poll_output()));
        let Ok(polled) = polled else {
            tracing::error!(session = p.id, "the WebRTC stack failed on a peer; the peer was dropped");
            p.rtc.disconnect();
            return Instant::now();
        };
        match polled {
            Ok(Output::Timeout(t)) => return t,
            Ok(Output::Transmit(t)) => {
                let _ = socket.send_to(&t.contents, t.destination);
            }
            Ok(Output::Event(e)) => event(p, e, outs),
            Err(e) => {
                tracing::info!(session = p.id, error = %e, "a call peer failed");
                p.rtc.disconnect();
            }
        }
    }
}

fn event(p: &mut Peer, e: Event, outs: &mut Vec<Out>) {
    match e {
        Event::Connected => {
            p.connected = true;
            // A new viewer needs a keyframe to start from.
            for s in p.slots.iter().filter(|s| s.kind == MediaKind::Video) {
                if let Some((src, mid)) = s.source {
                    outs.push(Out::Keyframe(src, mid, KeyframeRequestKind::Pli));
                }
            }
        }
        Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
            p.lost_since.get_or_insert_with(Instant::now);
        }
        // Back from a tunnel: the viewers need a fresh picture to start from.
        Event::IceConnectionStateChange(IceConnectionState::Connected | IceConnectionState::Completed)
            if p.lost_since.take().is_some() =>
        {
            for s in p.slots.iter().filter(|s| s.kind == MediaKind::Video) {
                if let Some((src, mid)) = s.source {
                    outs.push(Out::Keyframe(src, mid, KeyframeRequestKind::Pli));
                }
            }
        }
        Event::MediaAdded(m) => match (p.role, m.direction) {
            (Role::Publisher, Direction::RecvOnly | Direction::SendRecv) => {
                p.tracks_in.push(TrackIn { mid: m.mid, kind: m.kind });
            }
            (Role::Subscriber, Direction::SendOnly | Direction::SendRecv) => {
                p.slots.push(Slot { mid: m.mid, kind: m.kind, source: None });
            }
            _ => {}
        },
        Event::MediaData(data) => {
            p.packets += 1;
            if !data.contiguous {
                request_keyframe(p, data.mid);
            }
            outs.push(Out::Media(p.id, Box::new(data)));
        }
        Event::KeyframeRequest(req) => {
            if let Some((src, mid)) = p.slots.iter().find(|s| s.mid == req.mid).and_then(|s| s.source) {
                outs.push(Out::Keyframe(src, mid, req.kind));
            }
        }
        _ => {}
    }
}

fn request_keyframe(p: &mut Peer, mid: Mid) {
    if p.last_keyframe_request.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
        return;
    }
    if let Some(mut w) = p.rtc.writer(mid)
        && w.is_request_keyframe_possible(KeyframeRequestKind::Pli)
    {
        let _ = w.request_keyframe(None, KeyframeRequestKind::Pli);
        p.last_keyframe_request = Some(Instant::now());
    }
}

fn forward(out: Out, peers: &mut [Peer]) {
    match out {
        Out::Media(src, data) => {
            for p in peers.iter_mut().filter(|p| p.role == Role::Subscriber && p.connected) {
                let Some(slot) = p.slots.iter().find(|s| s.source == Some((src, data.mid))) else { continue };
                let Some(w) = p.rtc.writer(slot.mid) else { continue };
                let Some(pt) = w.match_params(data.params) else { continue };
                if w.write(pt, data.network_time, data.time, data.data.clone()).is_ok() {
                    p.packets += 1;
                }
            }
        }
        Out::Keyframe(src, mid, _kind) => {
            if let Some(p) = peers.iter_mut().find(|p| p.id == src) {
                request_keyframe(p, mid);
            }
        }
    }
}

/// Binds each subscriber's free m-lines to tracks of its room, video to video and audio to
/// audio, never to its own person's tracks; a slot whose publisher left is freed.
fn bind_slots(peers: &mut [Peer]) {
    let tracks: Vec<(String, String, PeerId, TrackIn)> = peers
        .iter()
        .filter(|p| p.role == Role::Publisher)
        .flat_map(|p| p.tracks_in.iter().map(|t| (p.room.clone(), p.who.clone(), p.id, *t)))
        .collect();
    let mut keyframes = Vec::new();
    for p in peers.iter_mut().filter(|p| p.role == Role::Subscriber) {
        for i in 0..p.slots.len() {
            if let Some((src, mid)) = p.slots[i].source
                && !tracks.iter().any(|(_, _, id, t)| *id == src && t.mid == mid)
            {
                p.slots[i].source = None;
            }
            if p.slots[i].source.is_some() {
                continue;
            }
            let taken: Vec<(PeerId, Mid)> = p.slots.iter().filter_map(|s| s.source).collect();
            let free = tracks.iter().find(|(room, who, id, t)| {
                *room == p.room && *who != p.who && t.kind == p.slots[i].kind && !taken.contains(&(*id, t.mid))
            });
            if let Some((_, _, id, t)) = free {
                p.slots[i].source = Some((*id, t.mid));
                if t.kind == MediaKind::Video && p.connected {
                    keyframes.push((*id, t.mid));
                }
            }
        }
    }
    for (src, mid) in keyframes {
        if let Some(p) = peers.iter_mut().find(|p| p.id == src) {
            request_keyframe(p, mid);
        }
    }
}

fn publish_rooms(peers: &[Peer], rooms: &Mutex<HashMap<String, Vec<Participant>>>) {
    let mut map: HashMap<String, Vec<Participant>> = HashMap::new();
    for p in peers {
        map.entry(p.room.clone()).or_default().push(Participant {
            session: p.id,
            who: p.who.clone(),
            role: match p.role {
                Role::Publisher => "publisher",
                Role::Subscriber => "subscriber",
            },
            connected: p.connected,
            packets: p.packets,
        });
    }
    *rooms.lock().unwrap_or_else(|p| p.into_inner()) = map;
}
