//! Reading recordings back: how many video frames a segment decodes to.

use anyhow::Context;
use gstreamer as gst;
use gstreamer::prelude::*;

/// Decodes the recording at `path` (any container and codec GStreamer has) and counts its
/// video frames.
pub fn decoded_video_frames(path: &std::path::Path) -> anyhow::Result<u64> {
    gst::init().context("GStreamer did not initialise")?;
    let desc =
        format!("filesrc location=\"{}\" ! decodebin ! video/x-raw ! fakesink name=sink sync=false", path.display());
    let pipeline =
        gst::parse::launch(&desc)?.downcast::<gst::Pipeline>().map_err(|_| anyhow::anyhow!("not a pipeline"))?;
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sink = pipeline.by_name("sink").context("no sink")?;
    let pad = sink.static_pad("sink").context("no sink pad")?;
    let n = count.clone();
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        gst::PadProbeReturn::Ok
    });
    pipeline.set_state(gst::State::Playing)?;
    let bus = pipeline.bus().context("no bus")?;
    let msg =
        bus.timed_pop_filtered(gst::ClockTime::from_seconds(60), &[gst::MessageType::Eos, gst::MessageType::Error]);
    let _ = pipeline.set_state(gst::State::Null);
    match msg.as_ref().map(|m| m.view()) {
        Some(gst::MessageView::Eos(_)) => Ok(count.load(std::sync::atomic::Ordering::Relaxed)),
        Some(gst::MessageView::Error(e)) => anyhow::bail!("{} does not decode: {}", path.display(), e.error()),
        _ => anyhow::bail!("{} did not finish decoding within 60 s", path.display()),
    }
}
