//! The real serial shell against the simulator on a pseudo-terminal: an exposure, and the
//! same with each fault, ending safe with the abort said and its dose recorded.

use std::time::{Duration, Instant};

use xray_proto::controller::{Cause, Config, Event, Operator};
use xray_proto::generator::{Faults, GenConfig};
use xray_proto::message::{AbortReason, GenState};
use xray_serial::GeneratorLink;
use xray_sim::{LineFaults, Record, Simulator};

fn sim() -> Simulator {
    Simulator::start(GenConfig::default(), 7).unwrap()
}

/// Waits for an event that `want` picks, collecting everything seen.
fn wait_for(link: &GeneratorLink, seen: &mut Vec<Event>, within: Duration, want: impl Fn(&Event) -> bool) -> Event {
    let end = Instant::now() + within;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match link.events().recv_timeout(left) {
            Ok(e) => {
                seen.push(e.clone());
                if want(&e) {
                    return e;
                }
            }
            Err(_) => panic!(
                "not seen within {within:?}; saw {:#?}",
                seen.iter().filter(|e| !matches!(e, Event::Status(_))).collect::<Vec<_>>()
            ),
        }
    }
}

/// Technique set, armed and ready: a hand (55 kV, 2.5 mAs) over `ms`.
fn ready(link: &GeneratorLink, seen: &mut Vec<Event>, ms: u16) {
    wait_for(link, seen, Duration::from_secs(5), |e| matches!(e, Event::Status(_)));
    link.operator(Operator::SetTechnique { kv_x10: 550, mas_x100: 250, ms });
    wait_for(link, seen, Duration::from_secs(2), |e| matches!(e, Event::TechniqueSet(_)));
    link.operator(Operator::Arm);
    wait_for(link, seen, Duration::from_secs(3), |e| matches!(e, Event::Armed));
}

/// Presses the confirm (the caller keeps sending its hold signal).
fn hold(link: &GeneratorLink, token: u64) {
    link.operator(Operator::ConfirmPress { token });
}

#[test]
fn a_held_confirm_exposes_over_the_serial_port_and_reports_the_dose() {
    let sim = sim();
    let link = GeneratorLink::open(sim.path(), Config::default()).unwrap();
    let mut seen = Vec::new();
    ready(&link, &mut seen, 100);
    hold(&link, 1);
    let done = wait_for(&link, &mut seen, Duration::from_secs(2), |e| {
        // Keep the hold signal coming while waiting.
        link.operator(Operator::ConfirmHold { token: 1 });
        matches!(e, Event::ExposureDone { .. } | Event::Aborted { .. })
    });
    let Event::ExposureDone { technique, delivered, .. } = done else { panic!("{done:?}") };
    assert_eq!((technique.kv_x10, technique.mas_x100, technique.ms), (550, 250, 100));
    assert_eq!(delivered.mas_x100, 250);
    assert!(delivered.dap_x100 > 0, "the dose-area product is reported");
    assert!(matches!(sim.records().last(), Some(Record::Done(_))), "{:?}", sim.records());
    assert_eq!(sim.state(), GenState::Standby);
}

/// Starts a long exposure, injects a fault once the beam is on, and returns how it ended.
fn exposure_with(fault: impl FnOnce(&Simulator, GeneratorLink) -> Option<GeneratorLink>) -> (Simulator, Vec<Event>) {
    let sim = sim();
    let link = GeneratorLink::open(sim.path(), Config::default()).unwrap();
    let mut seen = Vec::new();
    ready(&link, &mut seen, 2000);
    hold(&link, 9);
    wait_for(&link, &mut seen, Duration::from_secs(2), |e| {
        link.operator(Operator::ConfirmHold { token: 9 });
        matches!(e, Event::ExposureStarted { .. })
    });
    std::thread::sleep(Duration::from_millis(100));
    link.operator(Operator::ConfirmHold { token: 9 });
    if let Some(link) = fault(&sim, link) {
        // Keep holding: only the fault may stop the exposure.
        let end = Instant::now() + Duration::from_secs(4);
        while Instant::now() < end {
            link.operator(Operator::ConfirmHold { token: 9 });
            while let Ok(e) = link.events().try_recv() {
                seen.push(e);
            }
            if seen.iter().any(|e| matches!(e, Event::Aborted { .. } | Event::ExposureDone { .. })) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    (sim, seen)
}

fn aborted(seen: &[Event]) -> (Cause, Option<xray_proto::message::Delivered>) {
    seen.iter()
        .find_map(|e| match e {
            Event::Aborted { cause, delivered, .. } => Some((cause.clone(), *delivered)),
            _ => None,
        })
        .unwrap_or_else(|| {
            panic!("no abort in {:#?}", seen.iter().filter(|e| !matches!(e, Event::Status(_))).collect::<Vec<_>>())
        })
}

fn beam_stopped(sim: &Simulator) {
    beam_off(sim);
    assert!(
        sim.records().iter().any(|r| matches!(r, Record::Aborted(..))),
        "the generator stopped the exposure early: {:?}",
        sim.records()
    );
}

fn beam_off(sim: &Simulator) {
    let end = Instant::now() + Duration::from_secs(2);
    while sim.state() == GenState::Exposing && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_ne!(sim.state(), GenState::Exposing, "the beam is still on");
}

#[test]
fn releasing_the_confirm_aborts_with_the_dose_so_far() {
    let (sim, seen) = exposure_with(|_, link| {
        link.operator(Operator::ConfirmRelease { token: 9 });
        Some(link)
    });
    let (cause, delivered) = aborted(&seen);
    assert_eq!(cause, Cause::Released);
    let d = delivered.expect("the generator said what it delivered");
    assert!(d.mas_x100 > 0 && d.mas_x100 < 250, "{d:?}");
    beam_stopped(&sim);
}

#[test]
fn over_temperature_mid_exposure_aborts_and_says_so() {
    let (sim, seen) = exposure_with(|sim, link| {
        sim.set_faults(Faults { over_temperature: true, ..Faults::default() });
        Some(link)
    });
    let (cause, _) = aborted(&seen);
    assert!(
        matches!(
            cause,
            Cause::GeneratorAborted(AbortReason::OverTemperature) | Cause::Interlock(_) | Cause::Generator(_)
        ),
        "{cause:?}"
    );
    beam_stopped(&sim);
}

#[test]
fn a_generator_that_stops_answering_is_aborted_within_a_second() {
    let (sim, seen) = exposure_with(|sim, link| {
        sim.set_faults(Faults { mute: true, ..Faults::default() });
        Some(link)
    });
    let (cause, delivered) = aborted(&seen);
    assert_eq!(cause, Cause::HeartbeatLost);
    assert!(delivered.is_none(), "a mute generator cannot say what it delivered");
    // Muted, the generator still hears: the host's ABORT stops the beam (it cannot say so).
    beam_off(&sim);
}

#[test]
fn dropped_frames_lose_the_heartbeat_and_corrupted_ones_are_a_storm() {
    let (sim, seen) = exposure_with(|sim, link| {
        sim.set_line(LineFaults { drop: 1.0, corrupt: 0.0 });
        Some(link)
    });
    assert_eq!(aborted(&seen).0, Cause::HeartbeatLost);
    beam_stopped(&sim);

    let (sim, seen) = exposure_with(|sim, link| {
        sim.set_line(LineFaults { drop: 0.0, corrupt: 1.0 });
        Some(link)
    });
    assert_eq!(aborted(&seen).0, Cause::CrcStorm);
    beam_stopped(&sim);
}

#[test]
fn a_host_that_dies_mid_exposure_is_stopped_by_the_generators_watchdog() {
    let (sim, _) = exposure_with(|_, link| {
        link.crash();
        None
    });
    let end = Instant::now() + Duration::from_millis(1500);
    while sim.state() == GenState::Exposing && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_ne!(sim.state(), GenState::Exposing, "the beam outlived its host by 1.5 s");
    assert!(
        sim.records().iter().any(|r| matches!(r, Record::Aborted(_, AbortReason::Heartbeat))),
        "{:?}",
        sim.records()
    );
}
