//! A simulated X-ray unit that any developer or test can run: the generator's side of the
//! serial protocol (`xray_proto::generator`) on a pseudo-terminal, with the unit's timings
//! and faults switched on and off while it runs (over-temperature, door open, no answer,
//! dropped or corrupted frames). The host side opens [`Simulator::path`] as it would the
//! real unit's serial port. [`detector::SimDetector`] is the flat panel's side of its USB
//! protocol, showing a hand phantom ([`phantom`]).

pub mod detector;
pub mod phantom;
pub mod umockdev;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use serialport::{SerialPort, TTYPort};
use xray_proto::frame::{Decoded, Decoder};
use xray_proto::generator::{Faults, GenConfig, GenInput, Generator};
use xray_proto::message::{GenState, Reply};

/// Faults on the line itself, applied to what the generator sends.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LineFaults {
    /// The share of frames lost, 0 to 1.
    pub drop: f64,
    /// The share of frames with a byte flipped, 0 to 1.
    pub corrupt: f64,
}

/// What the simulated generator reported, for tests and the operator's console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// An exposure started.
    Started(u64),
    /// An exposure ended as planned.
    Done(xray_proto::message::Delivered),
    /// An exposure was stopped early.
    Aborted(xray_proto::message::Delivered, xray_proto::message::AbortReason),
    /// An error.
    Error(xray_proto::message::GenError),
}

#[derive(Debug, Default)]
struct Shared {
    faults: Faults,
    line: LineFaults,
    state: Option<GenState>,
    records: Vec<Record>,
}

/// A running simulator; it stops when dropped.
#[derive(Debug)]
pub struct Simulator {
    path: String,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Simulator {
    /// Opens a pseudo-terminal and starts the generator behind it. `seed` makes line faults
    /// repeatable.
    pub fn start(config: GenConfig, seed: u64) -> anyhow::Result<Simulator> {
        let (mut master, slave) = TTYPort::pair()?;
        let path = slave.name().ok_or_else(|| anyhow::anyhow!("the pseudo-terminal has no name"))?;
        // The host opens the other side by its path, with an exclusive lock: ours must be
        // closed for that. The terminal lives on as long as the master side is open.
        drop(slave);
        master.set_timeout(Duration::from_millis(2))?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::Builder::new()
                .name("xray-sim".into())
                .spawn(move || run(master, config, seed, &shared, &stop))?
        };
        Ok(Simulator { path, shared, stop, thread: Some(thread) })
    }

    /// The serial port to open.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Switches the unit's faults.
    pub fn set_faults(&self, faults: Faults) {
        lock(&self.shared).faults = faults;
    }

    /// Switches the line's faults.
    pub fn set_line(&self, line: LineFaults) {
        lock(&self.shared).line = line;
    }

    /// The generator's state.
    pub fn state(&self) -> GenState {
        lock(&self.shared).state.unwrap_or(GenState::Standby)
    }

    /// What the generator has reported so far.
    pub fn records(&self) -> Vec<Record> {
        lock(&self.shared).records.clone()
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

fn run(mut port: TTYPort, config: GenConfig, seed: u64, shared: &Mutex<Shared>, stop: &AtomicBool) {
    let mut generator = Generator::new(config);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut faults = Faults::default();
    let mut watch = Decoder::default();
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let (want, line) = {
            let s = lock(shared);
            (s.faults, s.line)
        };
        if want != faults {
            faults = want;
            generator.set_faults(now, faults);
        }
        match port.read(&mut buf) {
            Ok(n) if n > 0 => generator.handle_input(Instant::now(), GenInput::Received(&buf[..n])),
            Ok(_) => generator.handle_input(Instant::now(), GenInput::Tick),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                generator.handle_input(Instant::now(), GenInput::Tick)
            }
            Err(_) => {
                // No host has the line open (the master reads an error then): as a unit with
                // its cable unplugged, it keeps time and waits.
                std::thread::sleep(Duration::from_millis(2));
                generator.handle_input(Instant::now(), GenInput::Tick);
            }
        }
        while let Some(mut frame) = generator.poll_transmit() {
            watch.push(&frame);
            while let Some(Decoded::Frame(f)) = watch.next_decoded() {
                if let Ok(r) = Reply::decode(f.kind, &f.payload) {
                    let record = match r {
                        Reply::ExposureStarted(t) => Some(Record::Started(t)),
                        Reply::ExposureDone(d) => Some(Record::Done(d)),
                        Reply::ExposureAborted(d, why) => Some(Record::Aborted(d, why)),
                        Reply::Error(e) => Some(Record::Error(e)),
                        _ => None,
                    };
                    if let Some(r) = record {
                        lock(shared).records.push(r);
                    }
                }
            }
            if rng.random_bool(line.drop.clamp(0.0, 1.0)) {
                continue;
            }
            if rng.random_bool(line.corrupt.clamp(0.0, 1.0)) {
                let i = rng.random_range(1..frame.len());
                frame[i] ^= 1 << rng.random_range(0..8);
            }
            // A host that is not there loses what was sent, as on a real line.
            let _ = port.write_all(&frame);
        }
        lock(shared).state = Some(generator.state());
    }
}
