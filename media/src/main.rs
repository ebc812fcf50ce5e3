//! `media-publish`: publishes a call from the van's camera and microphone (or test
//! sources) to the hub over WHIP, until interrupted.

use clap::Parser;

/// Publishes a live call to the hub over WHIP.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The hub's WHIP endpoint: http://HOST:PORT/api/v1/calls/CASE/whip
    #[arg(long)]
    whip: String,
    /// A bearer token the hub accepts for that case. Better passed in the environment as
    /// MEDVAN_TOKEN, where other users cannot read it from the process list.
    #[arg(long)]
    token: Option<String>,
    /// Test sources (a stamped pattern and a tone) instead of the devices.
    #[arg(long)]
    test: bool,
    /// With --test: a pattern with detail everywhere, loading the link as a camera does.
    #[arg(long)]
    busy: bool,
    /// The camera.
    #[arg(long, default_value = "/dev/video0")]
    camera: String,
    /// The microphone (ALSA).
    #[arg(long, default_value = "default")]
    microphone: String,
    /// Width, pixels.
    #[arg(long, default_value_t = 640)]
    width: u32,
    /// Height, pixels.
    #[arg(long, default_value_t = 360)]
    height: u32,
    /// Frames per second.
    #[arg(long, default_value_t = 25)]
    fps: u32,
    /// Video bitrate, kbit/s.
    #[arg(long, default_value_t = 1500)]
    bitrate: u32,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let a = Args::parse();
    let token = match a.token.or_else(|| std::env::var("MEDVAN_TOKEN").ok()) {
        Some(t) if !t.is_empty() => t,
        _ => anyhow::bail!("no token: set MEDVAN_TOKEN (or --token) to a token the hub accepts for the case"),
    };
    let source = if a.test {
        media::source::Source::Test { busy: a.busy }
    } else {
        media::source::Source::Devices { camera: a.camera, microphone: a.microphone }
    };
    let publisher = media::publish::Publisher::start(&media::publish::Settings {
        url: a.whip,
        token,
        source,
        format: media::source::Format { width: a.width, height: a.height, fps: a.fps },
        bitrate_kbps: a.bitrate,
        record: None,
    })?;
    println!("{}", publisher.location());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        rt.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
        let _ = tx.send(());
    });
    let _ = rx.recv();
    publisher.stop().map(|_| ())
}
