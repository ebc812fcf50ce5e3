//! What a call sends.

/// Where pictures and sound come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// The van's devices.
    Devices {
        /// The camera, like `/dev/video0`.
        camera: String,
        /// The microphone as an ALSA device, like `hw:1`.
        microphone: String,
    },
    /// Test sources: a moving pattern stamped with the wall-clock time, and a tone. `busy`:
    /// a pattern with detail everywhere, which spends the encoder's whole bitrate as a
    /// camera's picture does (a plain one needs a tenth of it).
    Test {
        /// Detail everywhere.
        busy: bool,
    },
}

/// The picture size and rate sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    /// Width, pixels.
    pub width: u32,
    /// Height, pixels.
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
}

impl Default for Format {
    fn default() -> Self {
        Format { width: 640, height: 360, fps: 25 }
    }
}

/// The encoder: the board's hardware H.264 encoder if GStreamer has one, x264 otherwise.
pub fn video_encoder(bitrate_kbps: u32) -> String {
    if gstreamer::ElementFactory::find("v4l2h264enc").is_some() {
        // Hardware: bitrate in bit/s through extra-controls, set once: the bitrate does not
        // follow the link on this path yet (see adapt.rs).
        format!(
            "v4l2h264enc name=venc extra-controls=\"controls,video_bitrate={},repeat_sequence_header=1\" ! video/x-h264,level=(string)4,profile=constrained-baseline",
            bitrate_kbps * 1000
        )
    } else {
        format!(
            "x264enc name=venc tune=zerolatency speed-preset=ultrafast bitrate={bitrate_kbps} key-int-max=50 ! video/x-h264,profile=constrained-baseline"
        )
    }
}

/// The pipeline description of the source part, ending in raw video `v` and raw audio `a`.
pub(crate) fn describe(source: &Source, f: Format) -> String {
    let caps = format!("video/x-raw,format=I420,width={},height={},framerate={}/1", f.width, f.height, f.fps);
    match source {
        Source::Devices { camera, microphone } => format!(
            "v4l2src device={camera} ! videoconvert ! videoscale ! videorate ! {caps} ! queue name=v \
             alsasrc device={microphone} ! audioconvert ! audioresample ! queue name=a"
        ),
        Source::Test { busy } => format!(
            "videotestsrc name=vsrc is-live=true {pattern} ! {caps} ! queue name=v \
             audiotestsrc is-live=true wave=sine freq=440 volume=0.3 ! audioconvert ! audioresample ! queue name=a",
            pattern = if *busy { "pattern=zone-plate kx2=20 ky2=20 kt=1" } else { "pattern=ball" },
        ),
    }
}

/// Draws the wall-clock time (ms, modulo 2^32) as a bar code into an I420 picture's luma.
pub fn stamp(luma: &mut [u8], width: u32, height: u32, stride: usize, now_ms: u64) {
    let cell = crate::stamp::cell(width) as usize;
    if (cell * (crate::stamp::BITS as usize + 2)) > width as usize || cell > height as usize {
        return;
    }
    let value = (now_ms & 0xffff_ffff) as u32;
    for i in 0..crate::stamp::BITS as usize {
        let bit = (value >> (31 - i)) & 1;
        let y_level = if bit == 1 { 235 } else { 16 };
        for row in 0..cell {
            let start = row * stride + (i + 1) * cell;
            if let Some(px) = luma.get_mut(start..start + cell) {
                px.fill(y_level);
            }
        }
    }
}
