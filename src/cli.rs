//! What every command shares at its edge: the `-v`/`-q` flags, the stderr log subscriber
//! (the library only emits `tracing` events; a binary decides where they go) and the
//! SIGINT/SIGTERM handler that removes unfinished outputs ([`crate::io`]).
//!
//! Levels: `-q` warnings and errors only (and no progress bars), default adds what a command
//! did (info), `-v` adds the steps inside a stage (debug), `-vv` everything (trace).
//! `RUST_LOG` (e.g. `powersynth=debug`, `warn,powersynth::transfer=trace`), when set, takes
//! precedence.

use clap::Args;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;

/// `-v` / `-q`, flattened into each command's arguments.
#[derive(Args, Debug, Clone, Copy, Default)]
pub struct LogArgs {
    /// More log detail on stderr: -v for the steps of each stage, -vv for everything
    /// (RUST_LOG, e.g. `powersynth::transfer=debug`, overrides both flags).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only warnings and errors on stderr, and no progress bars.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

impl LogArgs {
    /// The level the flags ask for.
    pub(crate) fn level(&self) -> LevelFilter {
        match (self.quiet, self.verbose) {
            (true, _) => LevelFilter::WARN,
            (false, 0) => LevelFilter::INFO,
            (false, 1) => LevelFilter::DEBUG,
            _ => LevelFilter::TRACE,
        }
    }

    /// Installs the stderr subscriber: `RUST_LOG` if set and valid (a bad value is reported
    /// and the flags are used), else the flags' level for every target.
    pub fn init(&self) {
        let mut bad = None;
        let filter = match std::env::var("RUST_LOG") {
            Ok(v) if !v.trim().is_empty() => match v.parse::<Targets>() {
                Ok(t) => t,
                Err(e) => {
                    bad = Some(format!("RUST_LOG={v:?} ignored: {e}"));
                    Targets::new().with_default(self.level())
                }
            },
            _ => Targets::new().with_default(self.level()),
        };
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_target(self.verbose > 0)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .without_time();
        // A second init (tests calling main twice) keeps the first subscriber.
        let _ = tracing_subscriber::registry()
            .with(fmt)
            .with(filter)
            .try_init();
        if let Some(b) = bad {
            tracing::warn!("{b}");
        }
        // SIGINT / SIGTERM: remove this run's staging folders and temporary files, then exit
        // (130): an interrupted command leaves its output as it was before the run.
        let handler = ctrlc::set_handler(|| {
            let n = crate::io::remove_in_progress();
            eprintln!("interrupted: removed {n} unfinished output(s)");
            std::process::exit(130);
        });
        if let Err(e) = handler {
            tracing::debug!("no signal handler: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        log: LogArgs,
    }

    #[test]
    fn flags_map_to_levels_and_conflict() {
        let level = |a: &[&str]| Cmd::try_parse_from(a).map(|c| c.log.level());
        assert_eq!(level(&["x"]).unwrap(), LevelFilter::INFO);
        assert_eq!(level(&["x", "-q"]).unwrap(), LevelFilter::WARN);
        assert_eq!(level(&["x", "-v"]).unwrap(), LevelFilter::DEBUG);
        assert_eq!(level(&["x", "-vv"]).unwrap(), LevelFilter::TRACE);
        assert!(level(&["x", "-q", "-v"]).is_err());
    }
}
