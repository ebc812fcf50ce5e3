//! `xray-sim`: runs a simulated X-ray unit on a pseudo-terminal and prints its path. Faults
//! are switched by typing commands on standard input (`help` lists them).

use std::io::BufRead;
use std::time::Duration;

use clap::Parser;
use xray_proto::generator::{Faults, GenConfig};
use xray_sim::{LineFaults, Simulator};

/// A simulated Medvan X-ray unit on a pseudo-terminal.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Milliseconds from PREPARE to READY.
    #[arg(long, default_value_t = 600)]
    prepare_ms: u64,
    /// Seed for line faults (dropped and corrupted frames).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also make this path a symbolic link to the serial port, so a config can name a
    /// fixed path (as udev names the real unit's /dev/ttyXRAY0). An existing link there is
    /// replaced; any other file is left alone and is an error.
    #[arg(long)]
    link: Option<std::path::PathBuf>,
    /// Take no commands on standard input; run until stopped (for scripts and services).
    #[arg(long)]
    no_console: bool,
}

const HELP: &str = "commands: over-temperature on|off, door on|off (open|closed), mute on|off, \
drop <0..1>, corrupt <0..1>, status, quit";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = GenConfig { prepare: Duration::from_millis(args.prepare_ms), ..GenConfig::default() };
    let sim = Simulator::start(config, args.seed)?;
    if let Some(link) = &args.link {
        match std::fs::symlink_metadata(link) {
            Ok(m) if m.file_type().is_symlink() => std::fs::remove_file(link)?,
            Ok(_) => anyhow::bail!("{} exists and is not a symbolic link; choose another --link path", link.display()),
            Err(_) => {}
        }
        std::os::unix::fs::symlink(sim.path(), link)
            .map_err(|e| anyhow::anyhow!("Failed to link {} to the serial port: {e}", link.display()))?;
    }
    println!("serial port: {}", sim.path());
    if args.no_console {
        use std::io::Write;
        std::io::stdout().flush()?;
        // The simulator runs on its own thread; this one only waits to be stopped.
        loop {
            std::thread::park();
        }
    }
    println!("{HELP}");
    let mut faults = Faults::default();
    let mut line = LineFaults::default();
    for input in std::io::stdin().lock().lines() {
        let input = input?;
        let words: Vec<&str> = input.split_whitespace().collect();
        let on = |w: Option<&&str>| matches!(w.copied(), Some("on" | "open"));
        let rate = |w: Option<&&str>| w.and_then(|v| v.parse::<f64>().ok()).filter(|r| (0.0..=1.0).contains(r));
        match words.first().copied() {
            Some("over-temperature") => faults.over_temperature = on(words.get(1)),
            Some("door") => faults.door_open = on(words.get(1)),
            Some("mute") => faults.mute = on(words.get(1)),
            Some("drop") => match rate(words.get(1)) {
                Some(r) => line.drop = r,
                None => {
                    eprintln!("drop takes a share between 0 and 1, for example `drop 0.1`");
                    continue;
                }
            },
            Some("corrupt") => match rate(words.get(1)) {
                Some(r) => line.corrupt = r,
                None => {
                    eprintln!("corrupt takes a share between 0 and 1, for example `corrupt 0.05`");
                    continue;
                }
            },
            Some("status") => {}
            Some("quit") => break,
            _ => {
                println!("{HELP}");
                continue;
            }
        }
        sim.set_faults(faults);
        sim.set_line(line);
        println!("state {:?}, faults {faults:?}, line {line:?}, records {:?}", sim.state(), sim.records());
    }
    Ok(())
}
