//! The command line (docs/contract.md, "Command line"): run a node, or talk to one.
//!
//! Exit status: 0 done, 1 failed at run time, 2 bad usage or bad config.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::admin::commands;
use crate::config::{Config, ConfigError, Role};
use crate::spool::QueueId;

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
    #[arg(long, value_parser = |s: &str| s.parse::<Role>())]
    role: Option<Role>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Check a config file and exit: 0 when valid, 2 with the file, line and key of the first error.
    CheckConfig,
    /// Show the running node's role, epoch, peer, replication lag and queue.
    Status {
        /// Print the admin endpoint's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List, show, flush or delete the running node's queued messages.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// Make this standby the primary (refused while the primary is alive, unless --force).
    Promote {
        /// Promote even though the primary seems alive (it must really be down: two primaries
        /// would deliver at once until the old one learns of the new epoch).
        #[arg(long)]
        force: bool,
    },
    /// Planned switchover: this primary stops accepting, lets the standby catch up, hands over
    /// and follows it. No mail lost, none delivered twice.
    Demote,
    /// Certificates for the cluster link's mutual TLS.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Make a CA (DIR/ca.pem, DIR/ca.key) and, for each node, DIR/NAME.pem and DIR/NAME.key,
    /// signed by that CA and usable as client and server.
    Init {
        /// Where to write the files.
        dir: PathBuf,
        /// The node names, comma-separated: as in each node's [node].name.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<String>,
    },
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Every queued message: id, age, size, sender, recipients and their states.
    List {
        /// Print the admin endpoint's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One message in detail.
    Show {
        /// The queue id (32 hexadecimal digits, as in the 250 reply and the logs).
        #[arg(value_parser = crate::admin::commands::parse_queue_id)]
        id: QueueId,
        /// Print the admin endpoint's JSON instead of the details.
        #[arg(long)]
        json: bool,
    },
    /// Try every deferred message now.
    Flush,
    /// Remove a message from the queue without delivering it.
    Delete {
        /// The queue id.
        #[arg(value_parser = crate::admin::commands::parse_queue_id)]
        id: QueueId,
    },
}

/// Runs the command line and returns the process's exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Making certificates needs no config.
    if let Some(Command::Certs { command: CertsCommand::Init { dir, nodes } }) = &cli.command {
        return match crate::certs::init(dir, nodes) {
            Ok(()) => {
                println!("{}: ca.pem, ca.key and a certificate and key per node", dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("relayd: {e}");
                ExitCode::FAILURE
            }
        };
    }
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
        Some(Command::Status { json }) => commands::status(&config, json),
        Some(Command::Queue { command }) => match command {
            QueueCommand::List { json } => commands::queue_list(&config, json),
            QueueCommand::Show { id, json } => commands::queue_show(&config, id, json),
            QueueCommand::Flush => commands::queue_flush(&config),
            QueueCommand::Delete { id } => commands::queue_delete(&config, id),
        },
        Some(Command::Promote { force }) => commands::promote(&config, force),
        Some(Command::Demote) => commands::demote(&config),
        Some(Command::Certs { .. }) => ExitCode::SUCCESS,
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
