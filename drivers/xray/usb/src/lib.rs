//! The detector's shell: the flat panel's USB protocol (`PROTOCOL.md`) over `rusb` bulk
//! transfers. Commands go out on endpoint `0x01`; a frame comes back on `0x82` in
//! transfers of up to 16 KiB, checked by [`xray_proto::detector::FrameReader`] as they
//! arrive.
//!
//! Tests drive this exact code against a virtual device: `umockdev` describes the panel
//! to libusb and replays the panel's transfers (see `tests/umockdev.rs`).

use std::time::Duration;

use rusb::UsbContext;
use xray_proto::detector::{
    Command, DetectorError, DetectorFrame, EP_IN, EP_OUT, FrameReader, MAX_TRANSFER, PRODUCT_ID, Progress, VENDOR_ID,
};

/// How long one transfer may take before the panel counts as gone.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(2);

/// What went wrong on the USB side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UsbError {
    /// No panel on the bus.
    #[error("no X-ray detector (USB {VENDOR_ID:04x}:{PRODUCT_ID:04x}) is connected: check its cable and power")]
    NotFound,
    /// libusb failed.
    #[error("the detector's USB link failed while {doing}: {source}")]
    Usb {
        /// What the shell was doing.
        doing: &'static str,
        /// libusb's error.
        source: rusb::Error,
    },
    /// The panel sent a bad frame.
    #[error(transparent)]
    Frame(#[from] DetectorError),
}

fn usb(doing: &'static str) -> impl FnOnce(rusb::Error) -> UsbError {
    move |source| UsbError::Usb { doing, source }
}

/// The panel, opened and its interface claimed.
#[derive(Debug)]
pub struct UsbDetector {
    handle: rusb::DeviceHandle<rusb::Context>,
    max_pixels: usize,
}

impl UsbDetector {
    /// Opens the first panel on the bus. Frames claiming more than `max_pixels` are refused
    /// before any memory is set aside for them.
    pub fn open(max_pixels: usize) -> Result<UsbDetector, UsbError> {
        let context = rusb::Context::new().map_err(usb("starting libusb"))?;
        let devices = context.devices().map_err(usb("listing USB devices"))?;
        for device in devices.iter() {
            let Ok(desc) = device.device_descriptor() else { continue };
            if desc.vendor_id() != VENDOR_ID || desc.product_id() != PRODUCT_ID {
                continue;
            }
            let handle = device.open().map_err(usb("opening the detector"))?;
            // No kernel driver binds to a vendor-specific interface: nothing to detach.
            handle.claim_interface(0).map_err(usb("claiming the detector's interface"))?;
            return Ok(UsbDetector { handle, max_pixels });
        }
        Err(UsbError::NotFound)
    }

    /// Sends one command.
    pub fn command(&mut self, cmd: Command) -> Result<(), UsbError> {
        let bytes = cmd.encode();
        let n = self.handle.write_bulk(EP_OUT, &bytes, TRANSFER_TIMEOUT).map_err(usb("sending a command"))?;
        if n != bytes.len() {
            return Err(UsbError::Usb { doing: "sending a command", source: rusb::Error::Io });
        }
        Ok(())
    }

    /// Asks for frame `id` and reads it, whole and checked.
    pub fn read_frame(&mut self, id: u32) -> Result<DetectorFrame, UsbError> {
        self.command(Command::Read(id))?;
        let mut reader = FrameReader::new(id, self.max_pixels);
        let mut buf = vec![0u8; MAX_TRANSFER];
        loop {
            let n = match self.handle.read_bulk(EP_IN, &mut buf, TRANSFER_TIMEOUT) {
                Ok(n) => n,
                Err(rusb::Error::Timeout) => return Err(reader.end().into()),
                Err(e) => return Err(UsbError::Usb { doing: "reading a frame", source: e }),
            };
            if n == 0 {
                return Err(reader.end().into());
            }
            if let Progress::Done(frame) = reader.push(&buf[..n])? {
                return Ok(frame);
            }
        }
    }
}
