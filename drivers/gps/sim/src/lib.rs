//! A simulated GPS receiver. A [`Drive`] is a route driven at a steady speed; each second
//! (or at `hz`) the receiver reports the true position plus noise that wanders the way a
//! receiver's does (a slowly varying offset plus fast jitter, so consecutive fixes are
//! correlated as real ones are), as GGA and RMC sentences with checksums. [`Simulator`]
//! plays a drive on a pseudo-terminal, the same bytes a receiver on a USB serial adapter
//! would send, optionally faster than real time and with damaged lines mixed in.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use geofence::{LatLon, bearing_deg, distance_m, offset};
use rand::{RngExt, SeedableRng};
use serialport::{SerialPort, TTYPort};

/// A drive: where, how fast, how noisy.
#[derive(Debug, Clone)]
pub struct Drive {
    /// The route's corners; the van parks at the last.
    pub route: Vec<LatLon>,
    /// Speed, metres per second.
    pub speed_mps: f64,
    /// GPS time of the first fix, ms since the epoch.
    pub start_ms: i64,
    /// The noise's 1-sigma per axis, metres (15 is a typical phone-grade receiver in a street).
    pub noise_m: f64,
    /// Fixes per second.
    pub hz: f64,
}

/// One simulated fix: the truth and what the receiver says.
#[derive(Debug, Clone)]
pub struct SimFix {
    /// GPS time, ms since the epoch.
    pub t_ms: i64,
    /// Where the van really is.
    pub truth: LatLon,
    /// Where the receiver says it is.
    pub reported: LatLon,
    /// The sentences (GGA then RMC), each ending CR LF.
    pub sentences: String,
}

impl Drive {
    /// Where the van is `t_s` seconds into the drive, and its heading.
    pub fn truth(&self, t_s: f64) -> (LatLon, f64) {
        let mut left = (t_s * self.speed_mps).max(0.0);
        for w in self.route.windows(2) {
            let leg = distance_m(w[0], w[1]);
            let heading = bearing_deg(w[0], w[1]);
            if left <= leg {
                return (offset(w[0], heading, left), heading);
            }
            left -= leg;
        }
        let n = self.route.len();
        let heading = if n >= 2 { bearing_deg(self.route[n - 2], self.route[n - 1]) } else { 0.0 };
        (self.route[n - 1], heading)
    }

    /// How long the drive takes, seconds.
    pub fn duration_s(&self) -> f64 {
        self.route.windows(2).map(|w| distance_m(w[0], w[1])).sum::<f64>() / self.speed_mps
    }

    /// The fixes, forever (parked at the end once the route is done). Seeded: the same seed
    /// gives the same noise.
    pub fn fixes(&self, seed: u64) -> impl Iterator<Item = SimFix> + use<> {
        let drive = self.clone();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        // Noise: a first-order Gauss-Markov process (time constant ~10 s) carrying most of
        // the variance, plus white jitter; per-axis sigma = noise_m.
        let (mut bias_n, mut bias_e) = (0.0f64, 0.0f64);
        let dt = 1.0 / drive.hz;
        let phi = (-dt / 10.0f64).exp();
        let slow = drive.noise_m * 0.9;
        let fast = drive.noise_m * (1.0f64 - 0.81).sqrt();
        let mut started = false;
        (0u64..).map(move |i| {
            if !started {
                bias_n = slow * gauss(&mut rng);
                bias_e = slow * gauss(&mut rng);
                started = true;
            }
            bias_n = phi * bias_n + slow * (1.0 - phi * phi).sqrt() * gauss(&mut rng);
            bias_e = phi * bias_e + slow * (1.0 - phi * phi).sqrt() * gauss(&mut rng);
            let n = bias_n + fast * gauss(&mut rng);
            let e = bias_e + fast * gauss(&mut rng);
            let t_s = i as f64 * dt;
            let (truth, heading) = drive.truth(t_s);
            let reported = offset(offset(truth, 0.0, n), 90.0, e);
            let moving = t_s < drive.duration_s();
            let t_ms = drive.start_ms + (t_s * 1000.0).round() as i64;
            let speed = if moving { drive.speed_mps } else { 0.0 };
            let sentences = sentences(t_ms, reported, speed, heading, drive.noise_m / 5.0);
            SimFix { t_ms, truth, reported, sentences }
        })
    }
}

fn gauss(rng: &mut impl RngExt) -> f64 {
    let u: f64 = rng.random_range(f64::EPSILON..1.0);
    let v: f64 = rng.random_range(0.0..1.0);
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

/// The GGA and RMC of one fix.
pub fn sentences(t_ms: i64, at: LatLon, speed_mps: f64, course: f64, hdop: f64) -> String {
    let fix = gps_nmea::Fix {
        at_ms: t_ms,
        lat: at.lat,
        lon: at.lon,
        speed_mps: Some(speed_mps),
        course_deg: Some(course),
        hdop: Some(hdop),
        satellites: Some(9),
    };
    gps_nmea::gga_line(&fix, 35.0) + &gps_nmea::rmc_line(&fix)
}

/// Damage to put on the line, one kind in turn every `every` fixes.
#[derive(Debug, Clone, Copy, Default)]
pub struct LineFaults {
    /// Every this many fixes, damage one sentence (0: never).
    pub every: u32,
}

/// Damages a sentence in one of five ways, by `n`.
pub fn damage(line: &str, n: u32) -> Vec<u8> {
    let body = line.trim_end();
    match n % 5 {
        // A flipped character: the checksum no longer matches.
        0 => {
            let mut b = body.as_bytes().to_vec();
            b[10] = if b[10] == b'1' { b'2' } else { b'1' };
            [b, b"\r\n".to_vec()].concat()
        }
        // Cut off by the next sentence.
        1 => body.as_bytes()[..body.len() / 2].to_vec(),
        // No checksum.
        2 => format!("{}\r\n", &body[..body.len() - 3]).into_bytes(),
        // Line noise (a baud mismatch).
        3 => vec![0xff, 0x00, 0x9c, b'$', 0xe1, b'\r', b'\n'],
        // Far too long (a line end lost).
        _ => [b"$GPGSV,".to_vec(), vec![b'9'; 200], b"\r\n".to_vec()].concat(),
    }
}

/// A receiver on a pseudo-terminal.
#[derive(Debug)]
pub struct Simulator {
    path: String,
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Simulator {
    /// Opens a pseudo-terminal and plays `drive` on it, `speedup` times faster than real time.
    pub fn start(drive: Drive, seed: u64, speedup: f64, faults: LineFaults) -> anyhow::Result<Simulator> {
        let (mut master, slave) = TTYPort::pair()?;
        let path = slave.name().ok_or_else(|| anyhow::anyhow!("the pseudo-terminal has no name"))?;
        drop(slave);
        master.set_timeout(Duration::from_millis(50))?;
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, sent) = (stop.clone(), sent.clone());
            std::thread::Builder::new().name("gps-sim".into()).spawn(move || {
                let period = Duration::from_secs_f64(1.0 / drive.hz / speedup.max(0.01));
                let t0 = Instant::now();
                for (i, fix) in drive.fixes(seed).enumerate() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let due = t0 + period * i as u32;
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let i = i as u32;
                    if faults.every > 0 && i % faults.every == faults.every - 1 {
                        let _ = master.write_all(&damage(&fix.sentences, i / faults.every));
                    }
                    // Nobody reading yet (the port not opened) is not an error for a receiver.
                    if master.write_all(fix.sentences.as_bytes()).is_ok() {
                        sent.store(fix.t_ms as u64, Ordering::Relaxed);
                    }
                    let _ = master.flush();
                }
            })?
        };
        Ok(Simulator { path, sent, stop, thread: Some(thread) })
    }

    /// The serial port to open.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// GPS time of the last fix written, ms since the epoch (0 before the first).
    pub fn last_sent_ms(&self) -> i64 {
        self.sent.load(Ordering::Relaxed) as i64
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gps_nmea::{FixBuilder, LineReader};

    #[test]
    fn the_sentences_parse_back_to_the_reported_positions() {
        let drive = Drive {
            route: vec![LatLon { lat: -33.9, lon: 151.2 }, LatLon { lat: -33.91, lon: 151.21 }],
            speed_mps: 20.0,
            start_ms: 1_795_876_496_000,
            noise_m: 15.0,
            hz: 1.0,
        };
        let mut reader = LineReader::new();
        let mut builder = FixBuilder::new();
        let mut errs = Vec::new();
        for sim in drive.fixes(7).take(100) {
            let fixes: Vec<_> = reader
                .push(sim.sentences.as_bytes())
                .into_iter()
                .filter_map(|s| s.map_err(|e| errs.push(e)).ok())
                .filter_map(|s| builder.push(s))
                .collect();
            assert_eq!(fixes.len(), 1);
            assert_eq!(fixes[0].at_ms, sim.t_ms);
            let back = LatLon { lat: fixes[0].lat, lon: fixes[0].lon };
            assert!(distance_m(back, sim.reported) < 0.2, "{back:?} {:?}", sim.reported);
        }
        assert!(errs.is_empty(), "{errs:?}");
    }

    #[test]
    fn the_noise_is_about_as_large_as_asked() {
        let drive =
            Drive { route: vec![LatLon { lat: 51.0, lon: 0.0 }], speed_mps: 1.0, start_ms: 0, noise_m: 15.0, hz: 1.0 };
        let errs: Vec<f64> = drive.fixes(3).take(5000).map(|f| distance_m(f.truth, f.reported)).collect();
        let rms = (errs.iter().map(|e| e * e).sum::<f64>() / errs.len() as f64).sqrt();
        // Two axes of 15 m each: a radial RMS of about 21 m.
        assert!((15.0..28.0).contains(&rms), "{rms}");
    }

    #[test]
    fn every_kind_of_damage_is_refused_and_the_next_fix_still_read() {
        let line = sentences(1_000_000, LatLon { lat: 10.0, lon: 10.0 }, 0.0, 0.0, 1.0);
        for n in 0..5 {
            let mut reader = LineReader::new();
            let mut bytes = damage(line.lines().nth(1).unwrap(), n);
            bytes.extend_from_slice(line.as_bytes());
            let got = reader.push(&bytes);
            assert!(got.iter().any(Result::is_err), "damage {n} went unnoticed");
            assert_eq!(got.iter().filter(|s| s.is_ok()).count(), 2, "damage {n}: {got:?}");
        }
    }
}
