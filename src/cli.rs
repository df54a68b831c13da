//! The command line (docs/contract.md, "Command line"): run a node, or talk to one.
//!
//! Exit status: 0 done, 1 failed at run time, 2 bad usage or bad config.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::admin::commands;
use crate::config::{Config, ConfigError, Role};
use crate::delivery::QueueChange;
use crate::spool::QueueId;

mod manual;

#[derive(Parser)]
#[command(
    name = "relayd",
    version,
    about = "A primary/warm-standby SMTP relay whose 250 means the mail is on disk",
    long_about = "A primary/warm-standby SMTP relay whose 250 means the mail is on disk.\n\n\
        Without a subcommand relayd runs a node in the role its config names (--role overrides \
        it): a primary accepts mail for its relay domains and relays it, streaming its spool's \
        change log to a standby; a standby follows and takes over when the primary is gone and \
        the witness grants it the next epoch; a witness holds no mail and grants epochs. The \
        subcommands talk to a running node's admin endpoint ([admin].listen of the config)."
)]
struct Cli {
    /// The config file; without it, the embedded default (one primary on 127.0.0.1:2525).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Run as this role, whatever [node].role says.
    #[arg(long, value_parser = |s: &str| s.parse::<Role>())]
    role: Option<Role>,
    #[command(subcommand)]
    command: Option<Subcommand>,
}

/// What to do; without one, run a node.
#[derive(clap::Subcommand)]
enum Subcommand {
    /// Check a config file and exit: 0 when valid, 2 with the file, line and key of the first error.
    CheckConfig,
    /// Show the running node's role, epoch, peer, replication lag and queue (a witness: its
    /// grant, and when it last heard each data node).
    Status {
        /// Print the admin endpoint's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Who was primary in each epoch, from when, and why (as the running node's spool holds it).
    History {
        /// Print the admin endpoint's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List, show, flush, requeue, delete, hold, release or bounce the running node's queued
    /// messages.
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
    /// Maintenance: turn automatic failover off (pause) or on (resume) at run time. Given to
    /// the primary it is replicated to the standby; given to a standby it holds there alone.
    Failover {
        #[command(subcommand)]
        command: FailoverCommand,
    },
    /// On a standby: drop its spool and rebuild it from a full snapshot of the primary's
    /// (refused on a primary).
    Rebuild,
    /// Certificates for the cluster link's mutual TLS.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Write the man pages or the shell completions into DIR, made from these definitions so
    /// that they cannot fall behind them (scripts/package-deb.sh runs it; not for operators,
    /// hence hidden).
    #[command(hide = true)]
    Generate { what: Generated, dir: PathBuf },
}

/// What `relayd generate` writes.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Generated {
    /// relayd.1, and a page per subcommand (relayd-queue-list.1, ...).
    Man,
    /// relayd.bash, _relayd (zsh) and relayd.fish.
    Completions,
}

#[derive(clap::Subcommand)]
enum FailoverCommand {
    /// No standby promotes itself until resumed (relayd promote still does; a primary still
    /// fences itself when it loses its standby and the witness).
    Pause,
    /// Automatic failover on again.
    Resume,
}

#[derive(clap::Subcommand)]
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

/// What a bulk change needs one of (without any, `relayd queue delete` is bad usage, not
/// every message).
const WHICH: [&str; 7] = ["id", "all", "state", "domain", "sender", "recipient", "older_than"];

#[derive(clap::Subcommand)]
enum QueueCommand {
    /// Queued messages: id, age, size, sender, recipients and their states. Without a flag,
    /// the whole queue; with a filter, --limit or --after, a page of it.
    List {
        #[command(flatten)]
        filter: commands::Selection,
        /// At most this many messages (with a filter: 100 unless given).
        #[arg(long)]
        limit: Option<usize>,
        /// The page after this queue id (as the previous page's last line says).
        #[arg(long, value_parser = crate::admin::api::parse_queue_id)]
        after: Option<QueueId>,
        /// Print the admin endpoint's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One message in detail, or its content as stored (like postcat).
    Show {
        /// The queue id (32 hexadecimal digits, as in the 250 reply and the logs).
        #[arg(value_parser = crate::admin::api::parse_queue_id)]
        id: QueueId,
        /// Print the admin endpoint's JSON instead of the details.
        #[arg(long, conflicts_with = "content")]
        json: bool,
        /// Print the message itself (headers and body) as stored.
        #[arg(long)]
        content: bool,
    },
    /// Try every deferred message now.
    Flush,
    /// Try messages now with the current routes: one, those a filter selects, or --all.
    Requeue(Which),
    /// Remove messages from the queue without delivering them: one by its id, or those a
    /// filter selects (or --all), printing the count.
    Delete(Bulk),
    /// Hold messages (postsuper -h): none is delivered, nor expired, until released. One by
    /// its id, or those a filter selects (or --all).
    Hold(Bulk),
    /// Release held messages (postsuper -H): each is tried at once. One by its id, or the
    /// held ones a filter selects (or --all).
    Release(Bulk),
    /// Bounce messages now: every recipient still to be delivered is bounced by the operator
    /// (5.0.0) and the sender gets a DSN (none for the null sender). One by its id, or those a
    /// filter selects (or --all).
    Bounce(Bulk),
}

/// Which messages a change of the queue means: one, those a filter selects, or every one.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("selector").required(true).multiple(true).args(WHICH)))]
struct Which {
    /// The queue id.
    #[arg(value_parser = crate::admin::api::parse_queue_id, conflicts_with_all = ["all", "state", "domain", "sender", "recipient", "older_than"])]
    id: Option<QueueId>,
    #[command(flatten)]
    filter: commands::Selection,
    /// Every queued message (a filter is required otherwise).
    #[arg(long)]
    all: bool,
}

/// The messages of a bulk change, and whether to change them or only say which it would.
#[derive(clap::Args)]
struct Bulk {
    #[command(flatten)]
    which: Which,
    /// Change nothing: list and count what would change.
    #[arg(long)]
    dry_run: bool,
}

impl Bulk {
    fn run(&self, config: &Config, change: QueueChange) -> ExitCode {
        let Bulk { which: Which { id, filter, all }, dry_run } = self;
        commands::queue_bulk(config, change, *id, filter, *all, *dry_run)
    }
}

/// Runs the command line and returns the process's exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let configured = |run: &dyn Fn(Config) -> ExitCode| match load(&cli) {
        Ok(config) => run(config),
        Err(e) => {
            eprintln!("relayd: {e}");
            ExitCode::from(2)
        }
    };
    match &cli.command {
        // Making certificates needs no config.
        Some(Subcommand::Certs { command: CertsCommand::Init { dir, nodes } }) => {
            certs_init(dir, nodes)
        }
        Some(Subcommand::Generate { what, dir }) => generate(*what, dir),
        Some(Subcommand::CheckConfig) => configured(&|config| check_config(&config)),
        Some(Subcommand::Status { json }) => configured(&|config| commands::status(&config, *json)),
        Some(Subcommand::History { json }) => {
            configured(&|config| commands::history(&config, *json))
        }
        Some(Subcommand::Queue { command }) => configured(&|config| match command {
            QueueCommand::List { filter, limit, after, json } => {
                commands::queue_list(&config, filter, *limit, *after, *json)
            }
            QueueCommand::Show { id, content: true, .. } => commands::queue_content(&config, *id),
            QueueCommand::Show { id, json, .. } => commands::queue_show(&config, *id, *json),
            QueueCommand::Flush => commands::queue_flush(&config),
            QueueCommand::Requeue(Which { id, filter, all }) => {
                commands::queue_requeue(&config, *id, filter, *all)
            }
            QueueCommand::Delete(Bulk { which: Which { id: Some(id), .. }, dry_run: false }) => {
                commands::queue_delete(&config, *id)
            }
            QueueCommand::Delete(bulk) => bulk.run(&config, QueueChange::Delete),
            QueueCommand::Hold(bulk) => bulk.run(&config, QueueChange::Hold),
            QueueCommand::Release(bulk) => bulk.run(&config, QueueChange::Release),
            QueueCommand::Bounce(bulk) => bulk.run(&config, QueueChange::Bounce),
        }),
        Some(Subcommand::Promote { force }) => {
            configured(&|config| commands::promote(&config, *force))
        }
        Some(Subcommand::Demote) => configured(&|config| commands::demote(&config)),
        Some(Subcommand::Failover { command }) => {
            let paused = matches!(command, FailoverCommand::Pause);
            configured(&|config| commands::failover(&config, paused))
        }
        Some(Subcommand::Rebuild) => configured(&|config| commands::rebuild(&config)),
        None => configured(&crate::node::run),
    }
}

/// `relayd certs init DIR --nodes A,B,...`.
fn certs_init(dir: &Path, nodes: &[String]) -> ExitCode {
    match crate::certs::init(dir, nodes) {
        Ok(()) => {
            println!("{}: ca.pem, ca.key and a certificate and key per node", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("relayd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `relayd generate man|completions DIR`: prints each file written.
fn generate(what: Generated, dir: &Path) -> ExitCode {
    let written = match what {
        Generated::Man => manual::write_pages(Cli::command(), dir),
        Generated::Completions => manual::write_completions(Cli::command(), dir),
    };
    match written {
        Ok(paths) => {
            for path in paths {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("relayd: writing into {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}

/// `relayd check-config`: the file, then what it points to.
fn check_config(config: &Config) -> ExitCode {
    match crate::node::check(config) {
        Ok(()) => {
            println!("{}: ok ({} node {})", config.source, config.node.role, config.node.name);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("relayd: {e}");
            ExitCode::from(2)
        }
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
