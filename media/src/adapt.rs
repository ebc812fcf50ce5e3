//! Following the link, sans-IO: the video bitrate from what the hub's receiver tells the
//! van. GStreamer 1.22 in Debian has no congestion controller for `webrtcbin`, so this is
//! ours: a fast cut when packets are lost or a queue fills on the cell link, a steady climb
//! back while the link is clean. Audio is not touched: at 32 kbit/s it always fits, and the
//! picture gives way first.
//!
//! Two sources, the first preferred:
//! - transport-wide feedback ([`Feedback`]): every 50 ms the hub's media server says when
//!   each packet arrived, so the van knows what the link carried, whether a queue is
//!   growing, and what was lost before any retransmission repaired it;
//! - RTCP receiver reports ([`Adapter::report`]): the fraction lost and a round trip,
//!   measured only when a sender report comes back answered. They decide when the feedback
//!   is silent (a media server that does not send it); while it flows, a fresh round trip
//!   still shows what the feedback cannot: a queue that stands rather than grows.

/// Limits and pace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptConfig {
    /// The lowest video bitrate, kbit/s.
    pub min_kbps: u32,
    /// The highest, kbit/s.
    pub max_kbps: u32,
}

impl Default for AdaptConfig {
    fn default() -> Self {
        AdaptConfig { min_kbps: 200, max_kbps: 2500 }
    }
}

/// The controller.
#[derive(Debug, Clone)]
pub struct Adapter {
    cfg: AdaptConfig,
    rate: f64,
    base_rtt: Option<f64>,
    hold_until_s: f64,
    last_s: Option<f64>,
    clean: bool,
    /// Where the link was last found full; near it the climb is careful, until it has held
    /// above it for a while (the link got better).
    ceiling: Option<f64>,
    /// When the ceiling was last set: the cuts of one congestion keep the highest estimate.
    ceiling_at: f64,
    clean_above_since: Option<f64>,
    /// The round trip last given, to tell a new measurement from a repeated one.
    last_rtt: Option<f64>,
    /// When transport-wide feedback last came: while it is fresh, it decides.
    feedback_at: Option<f64>,
    /// What arrived at the hub by the last feedback, kbit/s.
    arrived_kbps: f64,
    /// Feedback in a row that hinted at a queue.
    suspect_in_a_row: u32,
    /// Until when a standing queue seen in the round trip is being drained.
    drain_until_s: f64,
}

/// What the hub's transport-wide congestion feedback says about the packets since the last
/// look (GStreamer's `twcc-stats`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Feedback {
    /// The feedback's own figure: how fast the packets it covers were sent, kbit/s. Beside
    /// what arrived of the same packets it tells a link that narrowed from a key frame's
    /// burst, which this side's own count (see [`Adapter::feedback`]) takes in too.
    pub covered_sent_kbps: f64,
    /// What arrived at the hub in it, kbit/s.
    pub recv_kbps: f64,
    /// The fraction of those packets lost (before any retransmission).
    pub lost: f64,
    /// How much later each packet arrived than the one before, beyond how much later it
    /// was sent (the mean delta of deltas), ms: above zero, a queue is growing.
    pub delay_trend_ms: f64,
}

/// Feedback gathered over a few looks: each of GStreamer's figures covers one feedback
/// message (50 ms, a handful of packets at low rates), too few to judge alone. Rates and
/// the delay trend are averaged by packets, loss counted over all of them.
#[derive(Debug, Clone, Copy, Default)]
pub struct FeedbackWindow {
    sent_packets: f64,
    recv_packets: f64,
    covered_sent: f64,
    recv: f64,
    delay_trend: f64,
}

impl FeedbackWindow {
    /// One look: the feedback's figures and how many packets they cover.
    pub fn add(&mut self, fb: Feedback, packets_sent: u32, packets_recv: u32) {
        let (sent, recv) = (f64::from(packets_sent), f64::from(packets_recv));
        self.sent_packets += sent;
        self.recv_packets += recv;
        self.covered_sent += fb.covered_sent_kbps * sent;
        self.recv += fb.recv_kbps * recv;
        self.delay_trend += fb.delay_trend_ms * recv;
    }

    /// What the looks since the last call add up to, if they covered a few packets.
    pub fn take(&mut self) -> Option<Feedback> {
        let w = std::mem::take(self);
        if w.recv_packets < 3.0 || w.sent_packets < 1.0 {
            return None;
        }
        Some(Feedback {
            covered_sent_kbps: w.covered_sent / w.sent_packets,
            recv_kbps: w.recv / w.recv_packets,
            lost: (1.0 - w.recv_packets / w.sent_packets).clamp(0.0, 1.0),
            delay_trend_ms: w.delay_trend / w.recv_packets,
        })
    }
}

/// Feedback older than this no longer decides; the receiver reports do.
const FEEDBACK_FRESH_S: f64 = 2.0;
/// Feedback silent this long (it comes every 50 ms) means the link carries nothing.
const FEEDBACK_SILENT_S: f64 = 1.0;

impl Adapter {
    /// Starts at `start_kbps`.
    pub fn new(cfg: AdaptConfig, start_kbps: u32) -> Adapter {
        Adapter {
            cfg,
            rate: f64::from(start_kbps.clamp(cfg.min_kbps, cfg.max_kbps)),
            base_rtt: None,
            hold_until_s: 0.0,
            last_s: None,
            clean: true,
            ceiling: None,
            ceiling_at: f64::NEG_INFINITY,
            clean_above_since: None,
            last_rtt: None,
            feedback_at: None,
            arrived_kbps: 0.0,
            suspect_in_a_row: 0,
            drain_until_s: 0.0,
        }
    }

    fn feedback_fresh(&self, now_s: f64) -> bool {
        self.feedback_at.is_some_and(|at| now_s - at < FEEDBACK_FRESH_S)
    }

    /// New transport-wide feedback at `now_s`. The link is over-used when packets are lost
    /// or a queue grows while less arrives than was sent: the bitrate goes just under what
    /// arrived, at once (what the link carries now, not a guess from a fraction). Returns
    /// the new bitrate if it changed.
    ///
    /// `sent_kbps` is what this side sent lately by its own count (video, audio,
    /// retransmissions), not the feedback's figure for the packets it covers: those still
    /// queued on the link are not in it, so it hides the very queue it should show.
    pub fn feedback(&mut self, now_s: f64, fb: Feedback, sent_kbps: f64) -> Option<u32> {
        let before = self.rate_kbps();
        self.feedback_at = Some(now_s);
        let arrived_before = std::mem::replace(&mut self.arrived_kbps, fb.recv_kbps.max(0.0));
        let min = f64::from(self.cfg.min_kbps);
        // A queue grows: arrivals spread out and fall behind what was sent. A window holds
        // a few dozen packets and the encoder sends in bursts (a key frame), so a hint
        // counts only when the next feedback repeats it; a clear sign counts at once.
        let hint = fb.recv_kbps < sent_kbps * 0.75 || (fb.delay_trend_ms > 0.5 && fb.recv_kbps < sent_kbps * 0.9);
        self.suspect_in_a_row = if hint { self.suspect_in_a_row + 1 } else { 0 };
        // Half of what was sent arriving, the same packets arriving slower than they left:
        // the link narrowed.
        let narrowed = fb.recv_kbps < sent_kbps * 0.55 && fb.recv_kbps < fb.covered_sent_kbps * 0.7;
        let clear = fb.lost > 0.10 || fb.delay_trend_ms > 4.0 || narrowed;
        if clear || self.suspect_in_a_row >= 2 {
            let carried = if clear { fb.recv_kbps } else { (fb.recv_kbps + arrived_before) / 2.0 }.max(0.0);
            // What arrived includes the audio: the picture takes the rest.
            self.rate = (carried * 0.85).min(self.rate).max(min);
            // Feedback comes every 50 ms: half a second shows whether the cut was enough.
            self.hold_until_s = now_s + 0.5;
            self.clean = false;
            self.full_here(now_s, carried);
            self.suspect_in_a_row = 0;
        } else if hint || fb.lost > 0.03 || fb.delay_trend_ms > 1.0 {
            // Not clean enough to climb, not (yet) bad enough to cut.
            self.clean = false;
        } else {
            self.clean = true;
        }
        self.tick(now_s, sent_kbps);
        let after = self.rate_kbps();
        (after != before).then_some(after)
    }

    /// The link was found full at `now_s`, having carried about `carried_kbps`. Cuts within
    /// a few seconds of each other are one congestion: the ceiling is the most the link was
    /// seen to carry in it, not where the last cut landed (a run of cuts ends at the floor,
    /// and a ceiling there lets the climb run fast past the real limit).
    fn full_at(&mut self, now_s: f64, carried_kbps: f64) {
        let carried = carried_kbps.max(self.rate);
        self.ceiling = Some(match self.ceiling {
            Some(c) if now_s - self.ceiling_at <= 4.0 => c.max(carried),
            _ => carried,
        });
        self.ceiling_at = now_s;
        self.clean_above_since = None;
    }

    /// The link was found full at `now_s` by the feedback, carrying `arrived_kbps`: what
    /// arrived is what it carries now, so that is the ceiling (not the most of a run of
    /// cuts, as with the receiver reports' guesses).
    fn full_here(&mut self, now_s: f64, arrived_kbps: f64) {
        self.ceiling = Some(arrived_kbps.max(f64::from(self.cfg.min_kbps)));
        self.ceiling_at = now_s;
        self.clean_above_since = None;
    }

    /// The bitrate now, kbit/s.
    pub fn rate_kbps(&self) -> u32 {
        self.rate.round() as u32
    }

    /// A new receiver report at `now_s` (seconds on any steady clock): the fraction of
    /// packets lost since the one before, the round trip, and what this side sent over the
    /// last second (kbit/s, all streams). Returns the new bitrate if it changed.
    ///
    /// A round trip is measured only when a sender report comes back answered (every half
    /// second as the van sets it, five seconds by GStreamer's default), and the statistics
    /// repeat the last one meanwhile: the same value again is not news, or a queue long
    /// drained would cut the bitrate report after report.
    pub fn report(&mut self, now_s: f64, fraction_lost: f64, rtt_s: Option<f64>, sent_kbps: f64) -> Option<u32> {
        let before = self.rate_kbps();
        let repeated = rtt_s.is_some() && rtt_s == self.last_rtt;
        if rtt_s.is_some() {
            self.last_rtt = rtt_s;
        }
        let rtt_s = if repeated { None } else { rtt_s };
        if let Some(rtt) = rtt_s.filter(|r| r.is_finite() && *r >= 0.0) {
            // The shortest round trip lately is the link without a queue; it drifts up slowly
            // so a route that changed is learnt again.
            let base = self.base_rtt.map_or(rtt, |b| if rtt < b { rtt } else { b + (rtt - b) * 0.02 });
            self.base_rtt = Some(base);
        }
        let queueing = match (rtt_s, self.base_rtt) {
            (Some(r), Some(b)) => r - b,
            _ => 0.0,
        };
        if self.feedback_fresh(now_s) {
            // The transport-wide feedback sees the same link sooner and in more detail, but
            // only a queue that grows: one that stands (filled in a burst and kept full
            // since) shows in the round trip alone. It delays the sound and the case sync
            // that share the link, so it is drained: well under what arrives, for a while.
            if queueing > 0.25 && now_s >= self.drain_until_s {
                let arrived = if self.arrived_kbps > 0.0 { self.arrived_kbps } else { sent_kbps };
                self.rate = (arrived * 0.6).min(self.rate).max(f64::from(self.cfg.min_kbps));
                self.hold_until_s = now_s + 1.0;
                // The next round trips still show the queue as it was: wait for it to drain.
                self.drain_until_s = now_s + 3.0;
                self.clean = false;
                self.full_here(now_s, arrived);
            }
            self.tick(now_s, sent_kbps);
            let after = self.rate_kbps();
            return (after != before).then_some(after);
        }
        let min = f64::from(self.cfg.min_kbps);
        if fraction_lost > 0.10 {
            // The link carried what was not lost: go just under that, at once.
            let carried = if sent_kbps > 0.0 { sent_kbps * (1.0 - fraction_lost) } else { self.rate * 0.6 };
            self.rate = (self.rate * 0.7).min(carried * 0.85).max(min);
            self.hold_until_s = now_s + 1.0;
            self.clean = false;
            self.full_at(now_s, carried);
        } else if fraction_lost > 0.03 || queueing > 0.2 {
            let carried = if sent_kbps > 0.0 { sent_kbps * (1.0 - fraction_lost) * 0.9 } else { self.rate };
            self.rate = (self.rate * 0.8).max(min);
            self.hold_until_s = now_s + 1.0;
            self.clean = false;
            self.full_at(now_s, carried);
        } else {
            self.clean = queueing < 0.1;
        }
        self.tick(now_s, sent_kbps);
        let after = self.rate_kbps();
        (after != before).then_some(after)
    }

    /// Time passing with no new report: the bitrate climbs while the last report was clean
    /// (by four fifths each second, so it is back within a few seconds of a link recovering;
    /// carefully near where the link was last found full).
    /// Returns the new bitrate if it changed.
    /// The climb never sets the bitrate more than twice what actually went out
    /// (`sent_kbps`; three times while transport-wide feedback is fresh): the reports of a
    /// link filling up come late, and a bitrate far ahead of them would overshoot the link
    /// many times over before the first one arrives.
    pub fn tick(&mut self, now_s: f64, sent_kbps: f64) -> Option<u32> {
        let before = self.rate_kbps();
        let dt = self.last_s.map_or(0.0, |l| (now_s - l).clamp(0.0, 2.0));
        self.last_s = Some(now_s);
        let min = f64::from(self.cfg.min_kbps);
        if self.feedback_at.is_some_and(|at| now_s - at > FEEDBACK_SILENT_S) {
            // Feedback comes every 50 ms: a second of silence is a link that carries
            // nothing (a tunnel). Halve each second, so the picture restarts small and
            // climbs as the link proves itself, rather than flooding it on its return.
            self.clean = false;
            self.rate = (self.rate * 0.5f64.powf(dt)).max(min);
        } else if self.clean && now_s >= self.hold_until_s {
            let fresh = self.feedback_fresh(now_s);
            if let Some(c) = self.ceiling {
                // The link got better: more than the old ceiling arrives (the feedback says
                // so), or the bitrate stayed clean above it for a while (1.5 s with
                // feedback, which shows a queue at once; 2 s on receiver reports). An
                // encoder that makes less than it is allowed can keep arrivals low on a
                // link with room, hence the second way.
                let proof_s = if fresh { 1.5 } else { 2.0 };
                if fresh && self.arrived_kbps >= c * 1.25 {
                    self.ceiling = None;
                    self.clean_above_since = None;
                } else if self.rate >= c * 0.9 {
                    let since = *self.clean_above_since.get_or_insert(now_s);
                    if now_s - since >= proof_s {
                        self.ceiling = None;
                        self.clean_above_since = None;
                    }
                }
            }
            // With feedback a queue shows within a fraction of a second, so the climb past
            // where the link was full may be bolder.
            let careful = if fresh { 1.3 } else { 1.05 };
            let pace: f64 = if self.ceiling.is_some_and(|c| self.rate >= c * 0.9) { careful } else { 1.8 };
            // With feedback a queue shows at once, so the lead may be longer, but never
            // past twice what the link was seen to deliver.
            let lead = if fresh {
                (sent_kbps.max(min) * 3.0).min(self.arrived_kbps.max(min) * 2.0)
            } else {
                sent_kbps.max(min) * 2.0
            };
            let lead = lead.max(self.rate);
            self.rate = (self.rate * pace.powf(dt)).min(lead).min(f64::from(self.cfg.max_kbps));
        } else {
            self.clean_above_since = None;
        }
        let after = self.rate_kbps();
        (after != before).then_some(after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link of `cap` kbit/s with a report every 1.5 s: what is sent over the cap is lost
    /// (and queues first).
    fn run(a: &mut Adapter, t: &mut f64, cap: u32, secs: f64) -> Vec<(f64, u32)> {
        let mut trace = Vec::new();
        let end = *t + secs;
        let mut next_report = *t;
        while *t < end {
            let sent = f64::from(a.rate_kbps()) * 1.1;
            if *t >= next_report {
                let (loss, rtt) = if sent > f64::from(cap) {
                    ((sent - f64::from(cap)) / sent, Some(0.05 + 0.3))
                } else {
                    (0.0, Some(0.05))
                };
                a.report(*t, loss, rtt, sent);
                next_report = *t + 1.5;
            } else {
                a.tick(*t, sent);
            }
            trace.push((*t, a.rate_kbps()));
            *t += 0.5;
        }
        trace
    }

    #[test]
    fn the_bitrate_follows_a_step_down_and_up_within_five_seconds() {
        let mut a = Adapter::new(AdaptConfig::default(), 1500);
        let mut t = 0.0;
        let up = run(&mut a, &mut t, 4000, 15.0);
        assert!(up.last().unwrap().1 >= 2400, "climbs to the cap on a clean 4 Mbit/s link: {up:?}");
        let down = run(&mut a, &mut t, 500, 15.0);
        let settled = down.iter().find(|(_, r)| *r <= 460).expect("comes under 0.5 Mbit/s");
        assert!(settled.0 - down[0].0 <= 5.0, "within 5 s: {down:?}");
        // And stays near it, probing a little above now and then.
        let settled: Vec<u32> = down.iter().skip(10).map(|(_, r)| *r).collect();
        let mean = settled.iter().sum::<u32>() as f64 / settled.len() as f64;
        assert!(mean <= 550.0 && settled.iter().all(|r| (200..=800).contains(r)), "{down:?}");
        let back = run(&mut a, &mut t, 4000, 15.0);
        let recovered = back.iter().find(|(_, r)| *r >= 1000).expect("climbs back");
        assert!(recovered.0 - back[0].0 <= 5.0, "back within 5 s: {back:?}");
    }

    /// A link of `cap` kbit/s behind a queue of one second: what is sent over the cap waits,
    /// and only a full queue drops. Reports every 0.5 s, with no round trip in them (the
    /// worst case: only loss tells the van, and late). Returns the trace.
    fn run_queued(a: &mut Adapter, t: &mut f64, queue: &mut f64, cap: f64, secs: f64) -> Vec<(f64, u32)> {
        let mut trace = Vec::new();
        let end = *t + secs;
        while *t < end {
            let sent = f64::from(a.rate_kbps()) + 32.0;
            *queue += (sent - cap) * 0.5;
            let limit = cap * 1.0;
            let dropped = (*queue - limit).max(0.0);
            *queue = queue.clamp(0.0, limit);
            let loss = dropped / (sent * 0.5);
            a.report(*t, loss.min(1.0), None, sent);
            trace.push((*t, a.rate_kbps()));
            *t += 0.5;
        }
        trace
    }

    #[test]
    fn a_queue_that_hides_a_full_link_does_not_send_the_climb_far_past_it() {
        let mut a = Adapter::new(AdaptConfig::default(), 1500);
        let (mut t, mut queue) = (0.0, 0.0);
        run_queued(&mut a, &mut t, &mut queue, 4000.0, 15.0);
        let narrow = run_queued(&mut a, &mut t, &mut queue, 500.0, 12.0);
        let down = narrow.iter().find(|(_, r)| *r <= 460).expect("comes under the link");
        assert!(down.0 - narrow[0].0 <= 5.0, "down within 5 s: {narrow:?}");
        // Once down, it probes near the link, not at three or four times it.
        let after: Vec<u32> = narrow.iter().filter(|(at, _)| *at >= down.0 + 2.0).map(|(_, r)| *r).collect();
        assert!(after.iter().all(|r| *r <= 900), "stays near the 0.5 Mbit/s link: {narrow:?}");
        let back = run_queued(&mut a, &mut t, &mut queue, 4000.0, 10.0);
        let up = back.iter().find(|(_, r)| *r >= 1000).expect("climbs back");
        assert!(up.0 - back[0].0 <= 5.0, "back to 1 Mbit/s within 5 s: {back:?}");
    }

    #[test]
    fn a_round_trip_repeated_by_the_statistics_cuts_once_not_at_every_report() {
        let mut a = Adapter::new(AdaptConfig::default(), 2000);
        // A clean link learns its round trip (50 ms)...
        a.report(0.0, 0.0, Some(0.05), 2000.0);
        // ...then a queue: one measurement of 800 ms, which the statistics then repeat while
        // only the loss figure changes, long after the queue drained.
        let cut = a.report(0.5, 0.0, Some(0.8), 2000.0).expect("a queue cuts");
        let mut t = 1.0;
        while t < 6.0 {
            let lost = if ((t * 2.0) as u32).is_multiple_of(2) { 0.0 } else { 0.01 };
            a.report(t, lost, Some(0.8), f64::from(cut));
            t += 0.5;
        }
        assert!(a.rate_kbps() >= cut, "cut once to {cut}, not again and again: {}", a.rate_kbps());
    }

    #[test]
    fn steady_random_loss_lowers_the_rate_but_not_to_nothing() {
        let mut a = Adapter::new(AdaptConfig::default(), 1500);
        for i in 0..60 {
            a.report(f64::from(i) * 1.5, 0.05, Some(0.2), 1500.0);
        }
        assert!(a.rate_kbps() >= AdaptConfig::default().min_kbps);
        assert!(a.rate_kbps() < 1500);
    }

    /// A link of `cap` kbit/s behind a queue of 300 ms, seen through transport-wide
    /// feedback every 0.5 s: what arrived, what was lost, how the queueing delay moved.
    fn run_feedback(a: &mut Adapter, t: &mut f64, queue: &mut f64, cap: f64, secs: f64) -> Vec<(f64, u32)> {
        let mut trace = Vec::new();
        let end = *t + secs;
        while *t < end {
            let sent = f64::from(a.rate_kbps()) + 32.0;
            let delay_before = *queue / cap;
            let recv = (sent + *queue / 0.5).min(cap);
            *queue = (*queue + (sent - cap) * 0.5).max(0.0);
            let dropped = (*queue - cap * 0.3).max(0.0);
            *queue -= dropped;
            let packets = (sent * 0.5 / 9.6).max(1.0);
            let fb = Feedback {
                covered_sent_kbps: sent,
                recv_kbps: recv,
                lost: (dropped / (sent * 0.5)).min(1.0),
                delay_trend_ms: (*queue / cap - delay_before) * 1000.0 / packets,
            };
            a.feedback(*t, fb, sent);
            trace.push((*t, a.rate_kbps()));
            *t += 0.5;
        }
        trace
    }

    #[test]
    fn with_transport_feedback_a_step_down_is_followed_without_overshoot_and_up_within_five_seconds() {
        let mut a = Adapter::new(AdaptConfig::default(), 1500);
        let (mut t, mut queue) = (0.0, 0.0);
        let first = run_feedback(&mut a, &mut t, &mut queue, 4000.0, 15.0);
        assert!(first.last().unwrap().1 >= 2400, "climbs to the cap on a clean 4 Mbit/s link: {first:?}");
        let narrow = run_feedback(&mut a, &mut t, &mut queue, 500.0, 15.0);
        let down = narrow.iter().find(|(_, r)| *r <= 460).expect("comes under the link");
        assert!(down.0 - narrow[0].0 <= 2.0, "down within 2 s: {narrow:?}");
        // Probing the link from below, never far over it: the queue shows before loss does.
        let after: Vec<u32> = narrow.iter().filter(|(at, _)| *at > down.0).map(|(_, r)| *r).collect();
        assert!(after.iter().all(|r| *r <= 650), "stays near the 0.5 Mbit/s link: {narrow:?}");
        let mean = after.iter().sum::<u32>() as f64 / after.len() as f64;
        assert!(mean >= 300.0, "and uses most of it: {narrow:?}");
        let back = run_feedback(&mut a, &mut t, &mut queue, 4000.0, 10.0);
        let up = back.iter().find(|(_, r)| *r >= 1000).expect("climbs back");
        assert!(up.0 - back[0].0 <= 5.0, "back to 1 Mbit/s within 5 s: {back:?}");
    }

    #[test]
    fn a_standing_queue_seen_in_the_round_trip_is_drained_once_then_the_clean_feedback_climbs() {
        let mut a = Adapter::new(AdaptConfig::default(), 600);
        a.report(0.0, 0.0, Some(0.05), 600.0);
        let clean = |a: &mut Adapter, t: f64| {
            let sent = f64::from(a.rate_kbps()) + 32.0;
            a.feedback(t, Feedback { covered_sent_kbps: sent, recv_kbps: sent, lost: 0.0, delay_trend_ms: 0.0 }, sent);
        };
        clean(&mut a, 0.5);
        // The feedback sees no queue growing, but the round trip shows one standing: 750 ms
        // over the link's own. Drained: well under what arrives.
        let before = a.rate_kbps();
        a.report(0.75, 0.0, Some(0.8), f64::from(before));
        let drained = a.rate_kbps();
        assert!(f64::from(drained) <= f64::from(before + 32) * 0.6 + 1.0, "drained from {before} to {drained}");
        // The statistics repeat that round trip until the next one is answered: one cut,
        // not one per report; the clean feedback then climbs again.
        let mut t = 1.0;
        while t < 8.0 {
            clean(&mut a, t);
            a.report(t + 0.25, 0.0, Some(0.8), f64::from(a.rate_kbps()));
            t += 0.5;
        }
        assert!(a.rate_kbps() >= drained * 2, "climbs back after one drain: {drained} -> {}", a.rate_kbps());
        // Once the feedback falls silent, the receiver reports decide again.
        let before = a.rate_kbps();
        a.report(t + 3.0, 0.2, Some(0.9), f64::from(before));
        assert!(a.rate_kbps() < before, "a lossy report cuts once the feedback is stale");
    }

    #[test]
    fn feedback_falling_silent_is_a_dead_link_the_picture_restarts_small_and_climbs_back() {
        let mut a = Adapter::new(AdaptConfig::default(), 2500);
        let (mut t, mut queue) = (0.0, 0.0);
        run_feedback(&mut a, &mut t, &mut queue, 4000.0, 5.0);
        assert_eq!(a.rate_kbps(), 2500);
        // A tunnel: nothing arrives, so no feedback comes, and no receiver report either.
        let tunnel_end = t + 10.0;
        while t < tunnel_end {
            a.tick(t, 0.0);
            t += 0.5;
        }
        assert_eq!(a.rate_kbps(), AdaptConfig::default().min_kbps, "down to the floor in a 10 s tunnel");
        let back = run_feedback(&mut a, &mut t, &mut queue, 4000.0, 8.0);
        let up = back.iter().find(|(_, r)| *r >= 1000).expect("climbs back");
        assert!(up.0 - back[0].0 <= 5.0, "1 Mbit/s within 5 s of the tunnel: {back:?}");
    }

    #[test]
    fn a_window_of_feedback_weighs_each_look_by_its_packets_and_counts_loss_over_all() {
        let look = |covered, recv, trend| Feedback {
            covered_sent_kbps: covered,
            recv_kbps: recv,
            lost: 0.0,
            delay_trend_ms: trend,
        };
        let mut w = FeedbackWindow::default();
        assert_eq!(w.take(), None, "nothing looked at");
        // A key frame's burst in a big window, then two small quiet ones with a loss.
        w.add(look(2000.0, 1900.0, 0.0), 30, 30);
        w.add(look(400.0, 300.0, 2.0), 5, 4);
        w.add(look(400.0, 400.0, 0.0), 5, 5);
        let fb = w.take().expect("enough packets");
        assert!((fb.recv_kbps - (1900.0 * 30.0 + 300.0 * 4.0 + 400.0 * 5.0) / 39.0).abs() < 1e-9);
        assert!((fb.covered_sent_kbps - (2000.0 * 30.0 + 400.0 * 10.0) / 40.0).abs() < 1e-9);
        assert!((fb.lost - 1.0 / 40.0).abs() < 1e-9, "one packet of 40");
        assert!((fb.delay_trend_ms - 8.0 / 39.0).abs() < 1e-9);
        assert_eq!(w.take(), None, "taken: the window starts again");
    }
}
