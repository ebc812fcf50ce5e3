//! The simulated GPS receiver as a program, for developers: plays a drive on a
//! pseudo-terminal and prints its path, for `edge-agent` to read as `[gps] device`.

use clap::Parser;
use geofence::LatLon;

/// Plays a drive as a GPS receiver on a pseudo-terminal.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Route corners as "lat,lon" pairs separated by spaces, for example
    /// "51.5007,-0.1246 51.5033,-0.1196".
    #[arg(long, num_args = 1.., required = true)]
    route: Vec<String>,
    /// Speed, metres per second.
    #[arg(long, default_value_t = 15.0)]
    speed: f64,
    /// Position noise, metres (1-sigma per axis).
    #[arg(long, default_value_t = 15.0)]
    noise: f64,
    /// Play this many times faster than real time.
    #[arg(long, default_value_t = 1.0)]
    speedup: f64,
    /// Damage one sentence in every this many fixes (0: none).
    #[arg(long, default_value_t = 0)]
    damage_every: u32,
    /// Seed for the noise.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let route = args
        .route
        .iter()
        .map(|p| {
            let (a, b) = p.split_once(',').ok_or_else(|| anyhow::anyhow!("'{p}' is not lat,lon"))?;
            let at = LatLon { lat: a.trim().parse()?, lon: b.trim().parse()? };
            anyhow::ensure!(at.is_valid(), "'{p}' is not a latitude and longitude in range");
            Ok(at)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    let drive = gps_sim::Drive { route, speed_mps: args.speed, start_ms: now, noise_m: args.noise, hz: 1.0 };
    let sim =
        gps_sim::Simulator::start(drive, args.seed, args.speedup, gps_sim::LineFaults { every: args.damage_every })?;
    println!("{}", sim.path());
    loop {
        std::thread::park();
    }
}
