//! The man pages and shell completions, made from the clap definitions of `cli` so that a
//! flag added there is documented and completed without anyone remembering to: the Debian
//! package (scripts/package-deb.sh) runs `relayd generate` at build time.
//!
//! clap_mangen renders what clap knows (synopsis, options, subcommands); the sections a man
//! page of a daemon needs beyond that (files, signals, exit status) are written here.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap_complete::Shell;
use roff::{Roff, bold, italic, roman};

/// The shells whose completions the package ships, each where Debian's packages put them.
pub const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// Writes relayd.1 and a page per visible subcommand (relayd-queue-list.1 and so on, as
/// `man relayd-queue-list` finds them) into `dir`; returns the files written.
pub fn write_pages(command: clap::Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut command = command.disable_help_subcommand(true);
    // Building fills in each subcommand's display name ("relayd-queue-list"): the page names.
    command.build();
    let mut written = Vec::new();
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        write_subcommand_pages(sub.clone(), dir, &mut written)?;
    }
    let path = dir.join("relayd.1");
    let mut page = std::fs::File::create(&path)?;
    let man = clap_mangen::Man::new(command);
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    man.render_subcommands_section(&mut page)?;
    daemon_sections().to_writer(&mut page)?;
    man.render_version_section(&mut page)?;
    page.flush()?;
    written.push(path);
    Ok(written)
}

fn write_subcommand_pages(
    command: clap::Command,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        write_subcommand_pages(sub.clone(), dir, written)?;
    }
    written.push(clap_mangen::Man::new(command).generate_to(dir)?);
    Ok(())
}

/// Writes the bash, zsh and fish completions into `dir`; returns the files written.
pub fn write_completions(mut command: clap::Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    SHELLS
        .iter()
        .map(|shell| clap_complete::generate_to(*shell, &mut command, "relayd", dir))
        .collect()
}

/// FILES, SIGNALS, EXIT STATUS and SEE ALSO: what docs/contract.md and docs/operations.md say
/// at length, in the few lines an operator looks for in a man page.
fn daemon_sections() -> Roff {
    let mut roff = Roff::new();
    let entry = |roff: &mut Roff, term: &str, text: &str| {
        roff.control("TP", []).text([bold(term)]).text([roman(text)]);
    };
    roff.control("SH", ["FILES"]);
    entry(
        &mut roff,
        "/etc/relayd/relayd.toml",
        "The config: [node].role, the listeners, relay domains, routes, the cluster peer and witness. relayd check-config names the file, line and key of an error.",
    );
    entry(
        &mut roff,
        "/var/lib/relayd",
        "[node].data_dir of the packaged config: the spool (spool.redb), the node's persisted role and epoch. Never delete it while it holds mail: it is the only copy of what was acknowledged and not yet delivered.",
    );
    entry(
        &mut roff,
        "/usr/share/doc/relayd/",
        "The operator's documentation (operations.md, configuration.md, contract.md, guarantees.md) and example configs for a primary, a standby and a witness.",
    );
    roff.control("SH", ["SIGNALS"]);
    entry(
        &mut roff,
        "SIGHUP",
        "Reload routes, relay domains, recipient lists, limits and certificates without dropping sessions; a config that does not load keeps the old one.",
    );
    entry(
        &mut roff,
        "SIGTERM, SIGINT",
        "Drain: new clients get 421, open transactions and deliveries in flight finish within [node].drain_timeout, the spool is synced, exit 0.",
    );
    roff.control("SH", ["EXIT STATUS"]);
    entry(&mut roff, "0", "Done (a node: stopped cleanly).");
    entry(
        &mut roff,
        "1",
        "Failed at run time (the node could not be reached, refused, or a step failed).",
    );
    entry(&mut roff, "2", "Bad usage or a bad config.");
    roff.control("SH", ["SEE ALSO"]);
    roff.text([
        bold("systemctl"),
        roman("(1), "),
        bold("journalctl"),
        roman("(1), "),
        italic("/usr/share/doc/relayd/operations.md"),
        roman("."),
    ]);
    roff
}
