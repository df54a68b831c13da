//! The command line (SPEC.md): run a node, or talk to one.
//!
//! Exit status: 0 done, 1 failed at run time, 2 bad usage or bad config.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError, Role};

#[derive(Parser)]
#[command(
    name = "relayd",
    version,
    about = "A primary/warm-standby SMTP relay whose 250 means the mail is on disk"
)]
struct Cli {
    /// The config file; without it, the embedded default (one primary on 127.0.0.1:2525).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Run as this role, whatever [node].role says.
    #[arg(long, value_parser = parse_role)]
    role: Option<Role>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Check a config file and exit: 0 when valid, 2 with the file, line and key of the first error.
    CheckConfig,
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse::<Role>().map_err(|e| e.to_string())
}

/// Runs the command line and returns the process's exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match load(&cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("relayd: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Some(Command::CheckConfig) => match crate::node::check(&config) {
            Ok(()) => {
                println!("{}: ok ({} node {})", config.source, config.node.role, config.node.name);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("relayd: {e}");
                ExitCode::from(2)
            }
        },
        None => crate::node::run(config),
    }
}

fn load(cli: &Cli) -> Result<Config, ConfigError> {
    let config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::embedded_default()?,
    };
    match cli.role {
        Some(role) => config.with_role(role),
        None => Ok(config),
    }
}
