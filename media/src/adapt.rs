//! Following the link, sans-IO: the video bitrate from what the hub's receiver reports (RTCP
//! receiver reports: the fraction lost and the round trip). GStreamer 1.22 in Debian has no
//! congestion controller for `webrtcbin`, so this is ours: a fast cut when packets are lost
//! or the round trip grows (a queue filling on the cell link), a steady climb back while the
//! link is clean. Audio is not touched: at 32 kbit/s it always fits, and the picture gives
//! way first.

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
}

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
        }
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

    /// The bitrate now, kbit/s.
    pub fn rate_kbps(&self) -> u32 {
        self.rate.round() as u32
    }

    /// A new receiver report at `now_s` (seconds on any steady clock): the fraction of
    /// packets lost since the one before, the round trip, and what this side sent over the
    /// last second (kbit/s, all streams). Returns the new bitrate if it changed.
    ///
    /// A round trip is measured only when a sender report comes back answered (every few
    /// seconds), and the statistics repeat the last one meanwhile: the same value again is
    /// not news, or a queue long drained would cut the bitrate report after report.
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
    /// (`sent_kbps`): the reports of a link filling up come late, and a bitrate far ahead of
    /// them would overshoot the link many times over before the first one arrives.
    pub fn tick(&mut self, now_s: f64, sent_kbps: f64) -> Option<u32> {
        let before = self.rate_kbps();
        let dt = self.last_s.map_or(0.0, |l| (now_s - l).clamp(0.0, 2.0));
        self.last_s = Some(now_s);
        if self.clean && now_s >= self.hold_until_s {
            let near = self.ceiling.is_some_and(|c| self.rate >= c * 0.9);
            if near {
                let since = *self.clean_above_since.get_or_insert(now_s);
                if now_s - since >= 2.0 {
                    // Clean above the old ceiling for 2 s: the link got better.
                    self.ceiling = None;
                    self.clean_above_since = None;
                }
            }
            let pace: f64 = if self.ceiling.is_some_and(|c| self.rate >= c * 0.9) { 1.05 } else { 1.8 };
            let lead = (sent_kbps.max(f64::from(self.cfg.min_kbps)) * 2.0).max(self.rate);
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
}
