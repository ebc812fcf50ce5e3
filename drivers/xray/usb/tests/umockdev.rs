//! The real rusb code path against a virtual detector. The kernel here has no USB gadget or
//! usbip, so `umockdev` stands in for the bus: a device description (sysfs attributes and
//! descriptors of our panel, 4d56:0d01) and an ioctl script of the usbfs transfers the
//! simulated panel (`xray_sim::detector::SimDetector`) makes. libusb enumerates it, claims
//! it and does the bulk transfers through umockdev's preload library.
//!
//! The test writes both files, then runs itself again under `umockdev-run` with
//! `MEDVAN_UMOCKDEV_SIDE=host`; that run opens the panel with `UsbDetector` and checks the
//! frame it reads against the one the panel sent.

use std::path::Path;
use std::process::Command;

use xray_proto::detector::Command as DetectorCommand;
use xray_sim::detector::{Answer, SimDetector};
use xray_sim::umockdev::{self, DEVNODE};
use xray_usb::{UsbDetector, UsbError};

const SIDE: &str = "MEDVAN_UMOCKDEV_SIDE";
const FRAME_ID: u32 = 7;
const COLUMNS: u16 = 512;
const ROWS: u16 = 384;

fn panel() -> SimDetector {
    SimDetector::new(COLUMNS, ROWS, 31_337, 5)
}

/// Inside the sandbox: the shell as the agent runs it.
fn host_side() {
    let mut usb = UsbDetector::open(4_300 * 4_300).unwrap_or_else(|e| panic!("{e}"));
    usb.command(DetectorCommand::Arm(FRAME_ID)).unwrap();
    let frame = usb.read_frame(FRAME_ID).unwrap_or_else(|e| panic!("{e}"));
    let mut sent = panel();
    sent.command(&DetectorCommand::Arm(FRAME_ID).encode()).unwrap();
    sent.exposed();
    let Answer::Frame(transfers) = sent.command(&DetectorCommand::Read(FRAME_ID).encode()).unwrap() else {
        panic!("the panel sent nothing")
    };
    let bytes: Vec<u8> = transfers.concat();
    let pixels: Vec<u16> =
        bytes[32..bytes.len() - 8].chunks_exact(2).map(|p| u16::from_le_bytes([p[0], p[1]])).collect();
    assert_eq!((frame.header.columns, frame.header.rows, frame.header.serial), (COLUMNS, ROWS, 31_337));
    assert!(frame.pixels == pixels, "the pixels read over USB differ from those sent");
    println!("UMOCKDEV-HOST-OK {} transfers, {} bytes", transfers.len(), bytes.len());
}

fn umockdev_run() -> bool {
    Command::new("umockdev-run").arg("--version").output().is_ok_and(|o| o.status.success())
}

fn run_inside(dir: &Path, script: &str, test: &str) -> (bool, String) {
    std::fs::write(dir.join("panel.umockdev"), umockdev::device_file()).unwrap();
    std::fs::write(dir.join("panel.ioctl"), script).unwrap();
    let out = Command::new("umockdev-run")
        .arg("-d")
        .arg(dir.join("panel.umockdev"))
        .arg("-i")
        .arg(format!("{DEVNODE}={}", dir.join("panel.ioctl").display()))
        .arg("--")
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(SIDE, "host")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn a_frame_read_through_libusb_matches_what_the_panel_sent() {
    if std::env::var(SIDE).is_ok() {
        return host_side();
    }
    assert!(umockdev_run(), "umockdev-run is missing: run scripts/setup-deps.sh (Debian package umockdev)");
    let mut p = panel();
    p.command(&DetectorCommand::Arm(FRAME_ID).encode()).unwrap();
    p.exposed();
    let Ok(Answer::Frame(transfers)) = p.command(&DetectorCommand::Read(FRAME_ID).encode()) else { panic!() };
    let dir = tempfile::tempdir().unwrap();
    let (ok, text) = run_inside(
        dir.path(),
        &umockdev::ioctl_script(&[DetectorCommand::Arm(FRAME_ID), DetectorCommand::Read(FRAME_ID)], &transfers),
        "a_frame_read_through_libusb_matches_what_the_panel_sent",
    );
    assert!(ok && text.contains("UMOCKDEV-HOST-OK"), "{text}");
    println!("{}", text.lines().find(|l| l.contains("UMOCKDEV-HOST-OK")).unwrap_or(""));
}

#[test]
fn a_frame_damaged_on_the_wire_is_refused_whole_with_what_to_do() {
    let test = "a_frame_damaged_on_the_wire_is_refused_whole_with_what_to_do";
    if std::env::var(SIDE).is_ok() {
        let mut usb = UsbDetector::open(4_300 * 4_300).unwrap_or_else(|e| panic!("{e}"));
        usb.command(DetectorCommand::Arm(FRAME_ID)).unwrap();
        let err = usb.read_frame(FRAME_ID).unwrap_err();
        assert!(matches!(err, UsbError::Frame(xray_proto::detector::DetectorError::Corrupt)), "{err:?}");
        println!("UMOCKDEV-HOST-OK {err}");
        return;
    }
    let mut p = panel();
    p.command(&DetectorCommand::Arm(FRAME_ID).encode()).unwrap();
    p.exposed();
    let Ok(Answer::Frame(mut transfers)) = p.command(&DetectorCommand::Read(FRAME_ID).encode()) else { panic!() };
    // One bit flipped in the middle of the pixels.
    let middle = transfers.len() / 2;
    transfers[middle][100] ^= 0x04;
    let dir = tempfile::tempdir().unwrap();
    let (ok, text) = run_inside(
        dir.path(),
        &umockdev::ioctl_script(&[DetectorCommand::Arm(FRAME_ID), DetectorCommand::Read(FRAME_ID)], &transfers),
        test,
    );
    assert!(ok && text.contains("UMOCKDEV-HOST-OK") && text.contains("read it again"), "{text}");
}

#[test]
fn no_panel_on_the_bus_is_a_clear_error() {
    if std::env::var(SIDE).is_ok() {
        return;
    }
    match UsbDetector::open(100) {
        Err(e @ UsbError::NotFound) => assert!(e.to_string().contains("check its cable")),
        Err(UsbError::Usb { .. }) => {} // no usbfs at all in this sandbox: also not a panel
        other => panic!("{other:?}"),
    }
}
