//! The detector's side of its USB protocol, sans-IO: commands in, frame streams out. The
//! USB tests turn what it says into a `umockdev` script; the agent's simulated van reads it
//! through the same [`xray_proto::detector::FrameReader`] as a real detector.

use xray_proto::detector::{Command, DetectorError, FrameHeader, MAX_TRANSFER, encode_frame};

use crate::phantom;

/// A simulated flat panel showing the hand phantom.
#[derive(Debug, Clone)]
pub struct SimDetector {
    columns: u16,
    rows: u16,
    serial: u32,
    seed: u64,
    armed: Option<u32>,
    /// The last frame integrated, kept until read or re-armed.
    integrated: Option<u32>,
}

/// What the simulated panel answers to a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Nothing to read back.
    None,
    /// The frame, as the bulk IN transfers it streams.
    Frame(Vec<Vec<u8>>),
}

impl SimDetector {
    /// A panel of `columns` x `rows` pixels; `seed` varies the noise.
    pub fn new(columns: u16, rows: u16, serial: u32, seed: u64) -> SimDetector {
        SimDetector { columns, rows, serial, seed, armed: None, integrated: None }
    }

    /// The generator fired: an armed panel integrates the exposure.
    pub fn exposed(&mut self) {
        if let Some(id) = self.armed.take() {
            self.integrated = Some(id);
        }
    }

    /// Takes one bulk OUT transfer.
    pub fn command(&mut self, bytes: &[u8]) -> Result<Answer, DetectorError> {
        match Command::decode(bytes)? {
            Command::Arm(id) => {
                self.armed = Some(id);
                Ok(Answer::None)
            }
            Command::Disarm => {
                self.armed = None;
                Ok(Answer::None)
            }
            Command::Read(id) => {
                // A panel that was armed but saw no exposure still reads out (a dark frame
                // is what a real one sends); one never armed for this id has nothing.
                if self.integrated != Some(id) && self.armed != Some(id) {
                    return Err(DetectorError::WrongFrame { wanted: id, got: self.integrated.unwrap_or(0) });
                }
                self.integrated = None;
                self.armed = None;
                Ok(Answer::Frame(self.frame_transfers(id)))
            }
        }
    }

    /// Frame `id` as the transfers the panel streams (up to 16 KiB each).
    pub fn frame_transfers(&self, id: u32) -> Vec<Vec<u8>> {
        let image = phantom::hand(self.columns, self.rows, self.seed ^ u64::from(id));
        let header = FrameHeader {
            bits_stored: 14,
            columns: self.columns,
            rows: self.rows,
            pixel_pitch_um: 140,
            frame_id: id,
            serial: self.serial,
            temperature_x10: 312,
        };
        encode_frame(&header, &image.pixels).chunks(MAX_TRANSFER).map(<[u8]>::to_vec).collect()
    }
}

#[cfg(test)]
mod tests {
    use xray_proto::detector::{FrameReader, Progress};

    use super::*;

    #[test]
    fn an_armed_and_exposed_panel_streams_a_frame_the_host_reads() {
        let mut d = SimDetector::new(64, 48, 7, 1);
        assert!(d.command(&Command::Read(1).encode()).is_err(), "nothing armed");
        assert_eq!(d.command(&Command::Arm(1).encode()), Ok(Answer::None));
        d.exposed();
        let Ok(Answer::Frame(transfers)) = d.command(&Command::Read(1).encode()) else { panic!("no frame") };
        let mut r = FrameReader::new(1, 64 * 48);
        let mut frame = None;
        for t in &transfers {
            assert!(t.len() <= MAX_TRANSFER);
            if let Progress::Done(f) = r.push(t).unwrap() {
                frame = Some(f);
            }
        }
        let f = frame.unwrap();
        assert_eq!((f.header.columns, f.header.rows, f.header.serial), (64, 48, 7));
        assert!(d.command(&Command::Read(1).encode()).is_err(), "a frame is read once");
    }
}
