//! The flat-panel detector as the X-ray service sees it: arm it for a frame, read the frame.
//!
//! Every kind of panel hands its bytes to the same [`FrameReader`], which yields a frame
//! only when it is whole and its CRC matches.

use xray_proto::detector::{DetectorError, DetectorFrame, FrameReader, Progress};
use xray_sim::detector::{Answer, SimDetector};

/// The largest frame a panel may claim (a 43 x 43 cm panel at 100 µm is 4,300 x 4,300).
pub const MAX_PIXELS: usize = 4_300 * 4_300;

/// A detector.
pub trait Detector: Send {
    /// Gets ready to integrate the next exposure as frame `id`.
    fn arm(&mut self, id: u32) -> Result<(), String>;
    /// The generator fired. Real panels see the X-rays; the simulated one is told.
    fn exposed(&mut self) {}
    /// Reads frame `id`, whole and checked.
    fn read(&mut self, id: u32) -> Result<DetectorFrame, String>;
    /// A name for logs and the DICOM object's detector id.
    fn describe(&self) -> String;
}

/// The simulated panel of `xray-sim`, read through the real frame reader. For the
/// simulated van and tests; the real unit's panel is on USB.
#[derive(Debug)]
pub struct Simulated {
    panel: SimDetector,
    serial: u32,
}

impl Simulated {
    /// A simulated panel of `columns` x `rows`.
    pub fn new(columns: u16, rows: u16, seed: u64) -> Simulated {
        let serial = 4_242;
        Simulated { panel: SimDetector::new(columns, rows, serial, seed), serial }
    }
}

impl Detector for Simulated {
    fn arm(&mut self, id: u32) -> Result<(), String> {
        let cmd = xray_proto::detector::Command::Arm(id).encode();
        self.panel.command(&cmd).map(|_| ()).map_err(|e| e.to_string())
    }

    fn exposed(&mut self) {
        self.panel.exposed();
    }

    fn read(&mut self, id: u32) -> Result<DetectorFrame, String> {
        let cmd = xray_proto::detector::Command::Read(id).encode();
        let transfers = match self.panel.command(&cmd).map_err(|e| e.to_string())? {
            Answer::Frame(t) => t,
            Answer::None => return Err("the detector sent no frame".into()),
        };
        read_transfers(id, transfers.iter().map(Vec::as_slice)).map_err(|e| e.to_string())
    }

    fn describe(&self) -> String {
        format!("MVD-SIM-{}", self.serial)
    }
}

/// Feeds transfers to a [`FrameReader`] until the frame is whole.
pub fn read_transfers<'a>(
    id: u32,
    transfers: impl IntoIterator<Item = &'a [u8]>,
) -> Result<DetectorFrame, DetectorError> {
    let mut reader = FrameReader::new(id, MAX_PIXELS);
    for t in transfers {
        if let Progress::Done(frame) = reader.push(t)? {
            return Ok(frame);
        }
    }
    Err(reader.end())
}

/// The unit's panel on USB, opened when first needed and again after it failed.
#[derive(Debug, Default)]
pub struct Usb {
    device: Option<xray_usb::UsbDetector>,
}

impl Usb {
    /// A panel to be opened on first use.
    pub fn new() -> Usb {
        Usb::default()
    }

    fn device(&mut self) -> Result<&mut xray_usb::UsbDetector, String> {
        if self.device.is_none() {
            self.device = Some(xray_usb::UsbDetector::open(MAX_PIXELS).map_err(|e| e.to_string())?);
        }
        self.device.as_mut().ok_or_else(|| "the detector is not open".to_owned())
    }

    fn run<T>(
        &mut self,
        f: impl FnOnce(&mut xray_usb::UsbDetector) -> Result<T, xray_usb::UsbError>,
    ) -> Result<T, String> {
        let result = f(self.device()?);
        if let Err(xray_usb::UsbError::Usb { .. }) = &result {
            // Unplugged or reset: open it afresh next time.
            self.device = None;
        }
        result.map_err(|e| e.to_string())
    }
}

impl Detector for Usb {
    fn arm(&mut self, id: u32) -> Result<(), String> {
        self.run(|d| d.command(xray_proto::detector::Command::Arm(id)))
    }

    fn read(&mut self, id: u32) -> Result<DetectorFrame, String> {
        self.run(|d| d.read_frame(id))
    }

    fn describe(&self) -> String {
        "MVD-USB".into()
    }
}
