//! The X-ray unit's shells: one short loop each around the sans-IO cores of `xray-proto`.
//!
//! [`GeneratorLink`] runs the safety controller on its own thread over a serial port
//! (`serialport`): it opens the port (and opens it again if it goes away), feeds the
//! controller what arrives, what the operator does and the time, and writes what the
//! controller sends.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serialport::SerialPort;
use xray_proto::controller::{Config, Controller, Event, Input, Operator, Output};

/// How often the port is tried again while it cannot be opened.
const REOPEN_EVERY: Duration = Duration::from_millis(500);
/// The longest the loop waits on the port before looking at the operator's inputs.
const POLL: Duration = Duration::from_millis(5);

/// The generator, driven by the safety controller on a thread of its own.
#[derive(Debug)]
pub struct GeneratorLink {
    operator: mpsc::Sender<Operator>,
    events: mpsc::Receiver<Event>,
    stop: Arc<AtomicBool>,
    /// Whether stopping disarms first (a clean shutdown) or just stops (as a crash would).
    disarm_on_stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl GeneratorLink {
    /// Starts driving the generator on the serial port at `path`.
    pub fn open(path: &str, config: Config) -> std::io::Result<GeneratorLink> {
        let (operator, operator_rx) = mpsc::channel();
        let (events_tx, events) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let disarm_on_stop = Arc::new(AtomicBool::new(true));
        let thread = {
            let (path, stop, disarm) = (path.to_owned(), stop.clone(), disarm_on_stop.clone());
            std::thread::Builder::new()
                .name("xray-generator".into())
                .spawn(move || run(&path, config, &operator_rx, &events_tx, &stop, &disarm))?
        };
        Ok(GeneratorLink { operator, events, stop, disarm_on_stop, thread: Some(thread) })
    }

    /// Passes on what the operator did.
    pub fn operator(&self, op: Operator) {
        // The thread lives as long as this link: the send cannot fail before it is dropped.
        let _ = self.operator.send(op);
    }

    /// A handle that passes on what the operator does, for other threads.
    pub fn operator_handle(&self) -> OperatorHandle {
        OperatorHandle(self.operator.clone())
    }

    /// What happened, in order.
    pub fn events(&self) -> &mpsc::Receiver<Event> {
        &self.events
    }

    /// Stops the thread as a crashed process would: nothing more is sent, not even a
    /// disarm. The generator's watchdog is what stops the beam then. For tests.
    pub fn crash(mut self) {
        self.disarm_on_stop.store(false, Ordering::Relaxed);
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Passes operator inputs to a [`GeneratorLink`]'s controller from any thread. Once the
/// link is gone, inputs go nowhere (and nothing can fire).
#[derive(Debug, Clone)]
pub struct OperatorHandle(mpsc::Sender<Operator>);

impl OperatorHandle {
    /// Passes on what the operator did.
    pub fn send(&self, op: Operator) {
        let _ = self.0.send(op);
    }
}

impl Drop for GeneratorLink {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run(
    path: &str,
    config: Config,
    operator: &mpsc::Receiver<Operator>,
    events: &mpsc::Sender<Event>,
    stop: &AtomicBool,
    disarm_on_stop: &AtomicBool,
) {
    let mut ctl = Controller::new(config, Instant::now());
    let mut port: Option<Box<dyn SerialPort>> = None;
    let mut next_open = Instant::now();
    let mut deadline = Instant::now();
    let mut buf = [0u8; 256];
    loop {
        let now = Instant::now();
        if stop.load(Ordering::Relaxed) {
            if disarm_on_stop.load(Ordering::Relaxed) {
                // A clean shutdown stops an exposure and leaves the unit in standby.
                ctl.handle_input(now, Input::Operator(Operator::Disarm));
                drain(&mut ctl, &mut port, events, &mut deadline, now);
            }
            return;
        }
        if port.is_none() && now >= next_open {
            match serialport::new(path, 115_200).timeout(POLL).open() {
                Ok(p) => {
                    tracing::info!(%path, "the generator's serial port is open");
                    port = Some(p);
                    ctl.handle_input(now, Input::Connected);
                }
                Err(e) => {
                    tracing::debug!(%path, error = %e, "cannot open the generator's serial port yet");
                    next_open = now + REOPEN_EVERY;
                }
            }
        }
        while let Ok(op) = operator.try_recv() {
            ctl.handle_input(Instant::now(), Input::Operator(op));
        }
        drain(&mut ctl, &mut port, events, &mut deadline, Instant::now());
        let wait = deadline.saturating_duration_since(Instant::now()).clamp(Duration::from_millis(1), POLL);
        let read = match port.as_mut() {
            Some(p) => {
                let _ = p.set_timeout(wait);
                p.read(&mut buf)
            }
            None => {
                std::thread::sleep(wait);
                Err(std::io::ErrorKind::TimedOut.into())
            }
        };
        let now = Instant::now();
        match read {
            Ok(n) if n > 0 => ctl.handle_input(now, Input::Received(&buf[..n])),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut || e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if port.is_some() => {
                tracing::warn!(%path, error = %e, "lost the generator's serial port");
                port = None;
                next_open = now + REOPEN_EVERY;
                ctl.handle_input(now, Input::Disconnected);
            }
            Err(_) => {}
        }
        if now >= deadline {
            ctl.handle_input(now, Input::Tick);
        }
    }
}

/// Writes what the controller sends, passes on its events, and notes its next deadline.
fn drain(
    ctl: &mut Controller,
    port: &mut Option<Box<dyn SerialPort>>,
    events: &mpsc::Sender<Event>,
    deadline: &mut Instant,
    now: Instant,
) {
    loop {
        match ctl.poll_output() {
            Output::Transmit(bytes) => {
                let failed = match port.as_mut() {
                    Some(p) => p.write_all(&bytes).and_then(|()| p.flush()).is_err(),
                    None => false,
                };
                if failed {
                    tracing::warn!("could not write to the generator's serial port");
                    *port = None;
                    ctl.handle_input(now, Input::Disconnected);
                }
            }
            Output::Event(e) => {
                let _ = events.send(e);
            }
            Output::Timeout(t) => {
                *deadline = t;
                return;
            }
        }
    }
}
