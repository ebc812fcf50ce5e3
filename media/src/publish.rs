//! A live call published over WHIP with `webrtcbin`.

use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_sdp as gst_sdp;
use gstreamer_webrtc as gst_webrtc;

use crate::source::{Format, Source};

/// A call being published.
#[derive(Debug)]
pub struct Publisher {
    pipeline: gst::Pipeline,
    encoder: Option<gst::Element>,
    url: String,
    token: String,
    location: String,
    rt: tokio::runtime::Runtime,
    segments: mpsc::Receiver<std::path::PathBuf>,
    ended: mpsc::Receiver<()>,
    link: std::sync::Arc<std::sync::Mutex<LinkView>>,
    stop_adapting: std::sync::Arc<std::sync::atomic::AtomicBool>,
    recorded_frames: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// What the van sees of its link to the hub, from the receiver's reports.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkView {
    /// The video bitrate set now, kbit/s.
    pub target_kbps: u32,
    /// What went out over the last second, video and audio, kbit/s.
    pub sent_kbps: u32,
    /// The last fraction of packets the hub reported lost.
    pub fraction_lost: f64,
    /// The last round trip reported, seconds.
    pub rtt_s: Option<f64>,
    /// What arrived at the hub, by its last transport-wide feedback, kbit/s.
    pub recv_kbps: Option<u32>,
}

/// What a stopped call left.
#[derive(Debug, Clone)]
pub struct Stopped {
    /// Recording segments finished since [`Publisher::finished_segments`] was last asked.
    pub segments: Vec<std::path::PathBuf>,
    /// Frames that went into the recording, in all.
    pub recorded_frames: u64,
}

/// What to publish and where.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The hub's WHIP endpoint, like `http://hub:8080/api/v1/calls/<case>/whip`.
    pub url: String,
    /// The bearer token the hub takes.
    pub token: String,
    /// Camera and microphone, or test sources.
    pub source: Source,
    /// Picture size and rate.
    pub format: Format,
    /// Starting video bitrate, kbit/s.
    pub bitrate_kbps: u32,
    /// Record the call in full quality too, whatever the live link does.
    pub record: Option<Recording>,
}

/// The call's local recording: its own encoder at a steady bitrate, H.264 and Opus in
/// Matroska segments. The folder should be in memory (a tmpfs such as `/run`): a segment is
/// plain until the agent seals it into the case and deletes it.
#[derive(Debug, Clone)]
pub struct Recording {
    /// Where segments are written.
    pub dir: std::path::PathBuf,
    /// Segment length, seconds.
    pub segment_s: u32,
    /// Video bitrate, kbit/s.
    pub bitrate_kbps: u32,
}

fn pipeline_description(s: &Settings) -> String {
    let (vtee, atee, record) = match &s.record {
        None => ("", "", String::new()),
        Some(r) => (
            "tee name=vt ! queue ! ",
            "tee name=at ! queue ! ",
            format!(
                "vt. ! queue name=recq max-size-time=2000000000 ! videoconvert ! \
                   x264enc name=recenc speed-preset=veryfast bitrate={rate} key-int-max={gop} ! h264parse ! \
                   splitmuxsink name=rec muxer-factory=matroskamux location={dir}/segment-%05d.mkv \
                   max-size-time={ns} send-keyframe-requests=true \
                 at. ! queue max-size-time=2000000000 ! opusenc bitrate=64000 ! opusparse ! rec.audio_%u ",
                rate = r.bitrate_kbps,
                gop = s.format.fps * 2,
                dir = r.dir.display(),
                ns = u64::from(r.segment_s) * 1_000_000_000,
            ),
        ),
    };
    format!(
        "{src} \
         v. ! {vtee}videoconvert ! {enc} ! rtph264pay config-interval=-1 aggregate-mode=zero-latency pt=96 ! \
           application/x-rtp,media=video,encoding-name=H264,payload=96,clock-rate=90000,{twcc} ! wb. \
         a. ! {atee}opusenc bitrate=32000 frame-size=20 ! rtpopuspay pt=111 ! \
           application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000,{twcc} ! wb. \
         {record}\
         webrtcbin name=wb bundle-policy=max-bundle latency=50",
        src = crate::source::describe(&s.source, s.format),
        enc = crate::source::video_encoder(s.bitrate_kbps),
        twcc = TWCC_CAPS,
    )
}

/// Transport-wide congestion control (draft-holmer-rmcat-transport-wide-cc-extensions-01):
/// every packet carries a sequence number shared by audio and video, and the hub's media
/// server answers every 50 ms with when each arrived. From that the van knows what the link
/// carries and whether a queue grows, loss before any retransmission repairs it.
const TWCC_CAPS: &str = "extmap-3=http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01,rtcp-fb-transport-cc=(boolean)true";

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Publisher {
    /// Builds the pipeline, makes the offer, posts it to the hub and starts sending.
    pub fn start(settings: &Settings) -> anyhow::Result<Publisher> {
        gst::init().context("GStreamer did not initialise")?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let desc = pipeline_description(settings);
        let pipeline = gst::parse::launch(&desc)
            .with_context(|| format!("the media pipeline did not build: {desc}"))?
            .downcast::<gst::Pipeline>()
            .map_err(|_| anyhow::anyhow!("the media pipeline is not a pipeline"))?;
        let wb = pipeline.by_name("wb").context("no webrtcbin in the pipeline")?;
        if matches!(settings.source, Source::Test { .. }) {
            stamp_frames(&pipeline, settings.format)?;
        }
        let fingerprint = use_ecdsa_certificate(&wb)?;

        wb.connect("on-new-transceiver", false, |args| {
            if let Some(t) = args.get(1).and_then(|a| a.get::<gst_webrtc::WebRTCRTPTransceiver>().ok()) {
                t.set_property("direction", gst_webrtc::WebRTCRTPTransceiverDirection::Sendonly);
                // Retransmit what the receiver reports lost (a cell link loses packets).
                t.set_property("do-nack", true);
            }
            None
        });
        wb.connect("on-negotiation-needed", false, |args| {
            let wb = args.first().and_then(|a| a.get::<gst::Element>().ok())?;
            let target = wb.clone();
            let promise = gst::Promise::with_change_func(move |reply| {
                let Ok(Some(reply)) = reply else {
                    tracing::error!("webrtcbin made no offer");
                    return;
                };
                match reply.value("offer").map(|v| v.get::<gst_webrtc::WebRTCSessionDescription>()) {
                    Ok(Ok(offer)) => {
                        target.emit_by_name::<()>("set-local-description", &[&offer, &None::<gst::Promise>])
                    }
                    _ => tracing::error!("webrtcbin's reply holds no offer"),
                }
            });
            wb.emit_by_name::<()>("create-offer", &[&None::<gst::Structure>, &promise]);
            None
        });
        // WHIP sends the offer once, with every candidate in it: wait for gathering to end.
        let (tx, rx) = mpsc::channel::<String>();
        wb.connect_notify(Some("ice-gathering-state"), move |wb, _| {
            if wb.property::<gst_webrtc::WebRTCICEGatheringState>("ice-gathering-state")
                != gst_webrtc::WebRTCICEGatheringState::Complete
            {
                return;
            }
            if let Some(desc) = wb.property::<Option<gst_webrtc::WebRTCSessionDescription>>("local-description")
                && let Ok(text) = desc.sdp().as_text()
            {
                let _ = tx.send(text);
            }
        });
        let recorded_frames = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        if let Some(enc) = pipeline.by_name("recenc") {
            let n = recorded_frames.clone();
            let pad = enc.static_pad("sink").context("the recording encoder has no input")?;
            pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                gst::PadProbeReturn::Ok
            });
        }
        // From here on a failure stops the pipeline (camera and microphone released).
        let guard = NullOnDrop(Some(pipeline.clone()));
        pipeline.set_state(gst::State::Playing).context("the media pipeline did not start")?;
        let (seg_tx, segments) = mpsc::channel();
        let (end_tx, ended) = mpsc::channel();
        watch_bus(&pipeline, seg_tx, end_tx);
        let offer = rx.recv_timeout(Duration::from_secs(15)).context("webrtcbin made no offer within 15 s")?;

        // webrtcbin writes the fingerprint of the certificate it made first; the DTLS
        // connection presents ours.
        let offer: String = offer
            .split_inclusive('\n')
            .map(|l| {
                if l.starts_with("a=fingerprint:") { format!("a=fingerprint:{fingerprint}\r\n") } else { l.to_owned() }
            })
            .collect();
        let session = rt.block_on(crate::whip::offer(&settings.url, &settings.token, offer))?;
        let sdp = gst_sdp::SDPMessage::parse_buffer(session.answer.as_bytes())
            .map_err(|_| anyhow::anyhow!("the hub's answer is not SDP"))?;
        let answer = gst_webrtc::WebRTCSessionDescription::new(gst_webrtc::WebRTCSDPType::Answer, sdp);
        wb.emit_by_name::<()>("set-remote-description", &[&answer, &None::<gst::Promise>]);
        tracing::info!(location = %session.location, "publishing the call");
        guard.disarm();
        let link = std::sync::Arc::new(std::sync::Mutex::new(LinkView {
            target_kbps: settings.bitrate_kbps,
            ..Default::default()
        }));
        let stop_adapting = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        adapt(&wb, pipeline.by_name("venc"), settings.bitrate_kbps, link.clone(), stop_adapting.clone());
        Ok(Publisher {
            encoder: pipeline.by_name("venc"),
            pipeline,
            url: settings.url.clone(),
            token: settings.token.clone(),
            location: session.location,
            rt,
            segments,
            ended,
            link,
            stop_adapting,
            recorded_frames,
        })
    }

    /// What the van sees of its link now.
    pub fn link(&self) -> LinkView {
        *self.link.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the video bitrate while it runs, kbit/s.
    pub fn set_bitrate(&self, kbps: u32) {
        if let Some(e) = &self.encoder
            && e.has_property("bitrate")
        {
            e.set_property("bitrate", kbps);
        }
    }

    /// Replaces the bearer token [`Publisher::stop`] ends the session with (one taken
    /// briefly, like a van's call ticket, may have lapsed by then).
    pub fn set_token(&mut self, token: String) {
        self.token = token;
    }

    /// The session resource on the hub.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Recording segments finished since the last call (each whole and closed).
    pub fn finished_segments(&self) -> Vec<std::path::PathBuf> {
        self.segments.try_iter().collect()
    }

    /// Frames that went into the recording so far.
    pub fn recorded_frames(&self) -> u64 {
        self.recorded_frames.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops sending, closes the last recording segment, and ends the session at the hub.
    pub fn stop(self) -> anyhow::Result<Stopped> {
        self.stop_adapting.store(true, std::sync::atomic::Ordering::Relaxed);
        // End of stream first, so the last segment is finished properly.
        if self.pipeline.by_name("rec").is_some() {
            self.pipeline.send_event(gst::event::Eos::new());
            if self.ended.recv_timeout(Duration::from_secs(10)).is_err() {
                tracing::warn!("the recording did not finish within 10 s; its last segment may be cut");
            }
        }
        let _ = self.pipeline.set_state(gst::State::Null);
        let stopped = Stopped { segments: self.finished_segments(), recorded_frames: self.recorded_frames() };
        // The hub may be out of reach (a tunnel): it ends the session by itself then, and
        // the recording must not be lost for it.
        if let Err(e) = self.rt.block_on(crate::whip::end(&self.url, &self.token, &self.location)) {
            tracing::warn!(error = %e, "could not end the call's session at the hub; it times out there");
        }
        Ok(stopped)
    }
}

/// GStreamer's DTLS makes an RSA certificate; WebRTC peers that sign only with ECDSA (our
/// hub's DTLS among them) then get no usable client certificate. Each DTLS transport of
/// `webrtcbin` gets one P-256 certificate instead, as it is made (before the offer, whose
/// fingerprint is read from it). A DTLS decoder makes its connection when it is given its
/// connection id, with the certificate it has then, so the connection is made again under
/// a new id after the certificate is set, and the encoder is pointed at it.
fn use_ecdsa_certificate(wb: &gst::Element) -> anyhow::Result<String> {
    let key = rcgen::KeyPair::generate().context("no key for the DTLS certificate")?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).context("no DTLS certificate")?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "medvan-van");
    let cert = params.self_signed(&key).context("no DTLS certificate")?;
    let pem = format!("{}{}", cert.pem(), key.serialize_pem());
    let fingerprint = {
        use sha2::Digest;
        let fp: Vec<String> = sha2::Sha256::digest(cert.der()).iter().map(|b| format!("{b:02X}")).collect();
        format!("sha-256 {}", fp.join(":"))
    };
    let bin = wb.clone().downcast::<gst::Bin>().map_err(|_| anyhow::anyhow!("webrtcbin is not a bin"))?;
    let done = std::sync::Mutex::new(std::collections::HashSet::<String>::new());
    bin.connect_deep_element_added(move |_, _, added| {
        let mut found: Vec<gst::Element> = vec![added.clone()];
        if let Some(b) = added.downcast_ref::<gst::Bin>() {
            found.extend(b.iterate_recurse().into_iter().flatten());
        }
        let mut done = done.lock().unwrap_or_else(|p| p.into_inner());
        for e in found {
            let Some(kind) = e.factory().map(|f| f.name().to_string()) else { continue };
            if kind != "dtlssrtpdec" && kind != "dtlssrtpenc" {
                continue;
            }
            let id = e.property::<Option<String>>("connection-id").unwrap_or_default();
            if id.is_empty() || id.ends_with("-ecdsa") || !done.insert(format!("{kind}/{}", e.name())) {
                continue;
            }
            if kind == "dtlssrtpdec" {
                e.set_property("pem", &pem);
            }
            e.set_property("connection-id", format!("{id}-ecdsa"));
        }
    });
    Ok(fingerprint)
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stop_adapting.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// Sets a pipeline to NULL when dropped, unless disarmed.
struct NullOnDrop(Option<gst::Pipeline>);

impl NullOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for NullOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = p.set_state(gst::State::Null);
        }
    }
}

/// Twice a second: the hub's transport-wide feedback (looked at ten times a second and
/// added up) and its receiver reports (from `webrtcbin`'s statistics) into the
/// [`crate::adapt::Adapter`], and its bitrate into the encoder.
fn adapt(
    wb: &gst::Element,
    encoder: Option<gst::Element>,
    start_kbps: u32,
    view: std::sync::Arc<std::sync::Mutex<LinkView>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let wb = wb.clone();
    std::thread::spawn(move || {
        let mut adapter = crate::adapt::Adapter::new(crate::adapt::AdaptConfig::default(), start_kbps);
        let started = std::time::Instant::now();
        let mut last_bytes: Option<(u64, std::time::Instant)> = None;
        let mut last_report = None;
        let mut last_feedback = None;
        let mut window = crate::adapt::FeedbackWindow::default();
        let mut recv_kbps = None;
        // The RTP session of the bundle, where the transport-wide feedback is read.
        let mut session: Option<gst::Element> = None;
        let mut sent_kbps = 0.0;
        let mut round = 0u64;
        let set_bitrate = |kbps: u32| {
            if let Some(enc) = &encoder
                && enc.has_property("bitrate")
            {
                enc.set_property("bitrate", kbps);
            }
        };
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            round += 1;
            if session.is_none() {
                session = wb
                    .downcast_ref::<gst::Bin>()
                    .and_then(|b| b.by_name("rtpbin"))
                    .and_then(|rtpbin| rtpbin.emit_by_name::<Option<gst::Element>>("get-session", &[&0u32]));
                if let Some(s) = &session {
                    // A sender report every half second rather than every five: each
                    // answered one is a fresh round trip, the only sign of a queue that
                    // stands rather than grows.
                    s.set_property("rtcp-min-interval", 500_000_000u64);
                }
            }
            // The feedback looked at ten times a second (a property read; each look covers
            // one feedback message, and stays as it is until the next one comes).
            if let Some(look) = session.as_ref().and_then(transport_feedback).filter(|l| Some(*l) != last_feedback) {
                last_feedback = Some(look);
                window.add(look.0, look.1, look.2);
            }
            // Decided twice a second, on what the looks add up to.
            if !round.is_multiple_of(5) {
                continue;
            }
            let before = adapter.rate_kbps();
            if let Some(f) = window.take() {
                recv_kbps = Some(f.recv_kbps as u32);
                adapter.feedback(started.elapsed().as_secs_f64(), f, sent_kbps);
            }
            if adapter.rate_kbps() != before {
                set_bitrate(adapter.rate_kbps());
            }
            let (tx, rx) = mpsc::channel();
            let promise = gst::Promise::with_change_func(move |reply| {
                if let Ok(Some(reply)) = reply {
                    let _ = tx.send(reply.to_owned());
                }
            });
            wb.emit_by_name::<()>("get-stats", &[&None::<gst::Pad>, &promise]);
            let Ok(stats) = rx.recv_timeout(Duration::from_secs(2)) else { continue };
            let (mut lost, mut rtt, mut bytes, mut lost_packets) = (0.0f64, None::<f64>, 0u64, 0i64);
            for (_, value) in stats.iter() {
                let Ok(s) = value.get::<gst::Structure>() else { continue };
                match s.get::<gst_webrtc::WebRTCStatsType>("type") {
                    Ok(gst_webrtc::WebRTCStatsType::RemoteInboundRtp) => {
                        lost = lost.max(s.get::<f64>("fraction-lost").unwrap_or(0.0));
                        lost_packets += i64::from(s.get::<i32>("packets-lost").unwrap_or(0));
                        if let Ok(r) = s.get::<f64>("round-trip-time") {
                            rtt = Some(rtt.map_or(r, |x: f64| x.max(r)));
                        }
                    }
                    Ok(gst_webrtc::WebRTCStatsType::OutboundRtp) => bytes += s.get::<u64>("bytes-sent").unwrap_or(0),
                    _ => {}
                }
            }
            let now = std::time::Instant::now();
            sent_kbps = last_bytes
                .map(|(b, t)| (bytes.saturating_sub(b) * 8) as f64 / now.duration_since(t).as_secs_f64() / 1000.0)
                .unwrap_or(0.0);
            last_bytes = Some((bytes, now));
            // The statistics repeat the last receiver report until a new one comes.
            let report = (lost.to_bits(), rtt.map(f64::to_bits), lost_packets);
            tracing::debug!(lost, ?rtt, lost_packets, sent_kbps, "receiver report");
            let at = started.elapsed().as_secs_f64();
            let before = adapter.rate_kbps();
            if Some(report) != last_report {
                last_report = Some(report);
                adapter.report(at, lost, rtt, sent_kbps);
            } else {
                adapter.tick(at, sent_kbps);
            }
            if adapter.rate_kbps() != before {
                set_bitrate(adapter.rate_kbps());
            }
            *view.lock().unwrap_or_else(|p| p.into_inner()) = LinkView {
                target_kbps: adapter.rate_kbps(),
                sent_kbps: sent_kbps as u32,
                fraction_lost: lost,
                rtt_s: rtt,
                recv_kbps,
            };
        }
    });
}

/// The RTP session's transport-wide feedback statistics (GStreamer's `twcc-stats`, the
/// last feedback message) with how many packets it covered, sent and received.
fn transport_feedback(session: &gst::Element) -> Option<(crate::adapt::Feedback, u32, u32)> {
    let s = session.property::<Option<gst::Structure>>("twcc-stats")?;
    let feedback = crate::adapt::Feedback {
        covered_sent_kbps: f64::from(s.get::<u32>("bitrate-sent").ok()?) / 1000.0,
        recv_kbps: f64::from(s.get::<u32>("bitrate-recv").ok()?) / 1000.0,
        lost: s.get::<f64>("packet-loss-pct").ok()? / 100.0,
        delay_trend_ms: s.get::<i64>("avg-delta-of-delta").ok()? as f64 / 1e6,
    };
    Some((feedback, s.get::<u32>("packets-sent").ok()?, s.get::<u32>("packets-recv").ok()?))
}

/// Logs the pipeline's errors and warnings, and reports recording segments as they close,
/// from a thread of its own.
fn watch_bus(pipeline: &gst::Pipeline, segments: mpsc::Sender<std::path::PathBuf>, ended: mpsc::Sender<()>) {
    let Some(bus) = pipeline.bus() else { return };
    bus.set_sync_handler(move |_, msg| {
        if let gst::MessageView::Element(e) = msg.view()
            && let Some(s) = e.structure()
            && s.name() == "splitmuxsink-fragment-closed"
            && let Ok(location) = s.get::<String>("location")
        {
            let _ = segments.send(location.into());
        }
        gst::BusSyncReply::Pass
    });
    std::thread::spawn(move || {
        for msg in bus.iter_timed(gst::ClockTime::NONE) {
            match msg.view() {
                gst::MessageView::Error(e) => {
                    tracing::error!(error = %e.error(), debug = ?e.debug(), "the media pipeline failed");
                    return;
                }
                gst::MessageView::Warning(w) => tracing::warn!(warning = %w.error(), "the media pipeline warns"),
                gst::MessageView::Eos(_) => {
                    let _ = ended.send(());
                    return;
                }
                _ => {}
            }
        }
    });
}

/// Stamps each test frame with the wall-clock time (see [`crate::stamp`]).
fn stamp_frames(pipeline: &gst::Pipeline, f: Format) -> anyhow::Result<()> {
    let queue = pipeline.by_name("v").context("no video queue")?;
    let pad = queue.static_pad("sink").context("the video queue has no sink pad")?;
    // I420: the luma plane first, rows padded to four bytes.
    let stride = (f.width as usize + 3) & !3;
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if let Some(buffer) = info.buffer_mut() {
            let buffer = buffer.make_mut();
            if let Ok(mut map) = buffer.map_writable() {
                crate::source::stamp(map.as_mut_slice(), f.width, f.height, stride, now_ms());
            }
        }
        gst::PadProbeReturn::Ok
    });
    Ok(())
}
