//! relayd-loadgen: SMTP load for the benchmarks where Postfix's smtp-source falls short
//! (issue 16, point 3): STARTTLS on every session, recipients spread over many domains, a
//! measured mix of message sizes (`sizes`), a new connection per message or many per
//! connection, and the time from the end of each message's data to its reply, whose
//! percentiles are the tail latency of a 250.
//!
//!     relayd-loadgen --server 127.0.0.1:2525 --messages 20000 --sessions 20 \
//!         [--starttls] [--domains 1000] [--size 4096|mix] [--per-connection 1]
//!
//! It prints what came back and the rates; `--json` prints one JSON object instead. Exit 0
//! when every message got a 2xx, 1 otherwise (the counts say what), 2 for bad usage.

mod sizes;
mod smtp;
mod tls;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;

use sizes::Sizes;
use smtp::{Message, Outcome, Session};

#[derive(Parser)]
#[command(name = "relayd-loadgen", about = "SMTP load with STARTTLS, many domains and a size mix")]
struct Args {
    /// The server to load, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:2525")]
    server: String,
    /// Messages to send in all.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Sessions at once.
    #[arg(long, default_value_t = 20)]
    sessions: usize,
    /// Messages per connection: 1 opens a connection (and a TLS handshake) for each.
    #[arg(long, default_value_t = 100)]
    per_connection: usize,
    /// STARTTLS on every connection (the server's certificate is not verified: a bench tool
    /// on loopback, against self-signed certificates).
    #[arg(long)]
    starttls: bool,
    /// The name sent as SNI with --starttls.
    #[arg(long, default_value = "mx.test")]
    tls_name: String,
    /// Spread the recipients over this many domains, d0.DOMAIN ... (1: DOMAIN itself).
    #[arg(long, default_value_t = 1)]
    domains: usize,
    /// The recipients' domain, or the parent of the --domains ones.
    #[arg(long, default_value = "example.test")]
    domain: String,
    /// Recipients per message.
    #[arg(long, default_value_t = 1)]
    recipients: usize,
    /// Each message's size in bytes, headers included, or "mix": the measured distribution of
    /// sizes/ (median about 4 KiB, a long tail to 4 MiB).
    #[arg(long, default_value = "4096")]
    size: String,
    /// No message of the mix above this many bytes.
    #[arg(long, default_value_t = 4 << 20)]
    max_size: u64,
    /// The envelope sender.
    #[arg(long, default_value = "loadgen@source.test")]
    sender: String,
    /// The seed of the size draws and the subjects' run tag: the same seed, the same load.
    #[arg(long)]
    seed: Option<u64>,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    json: bool,
}

/// What one session (or all of them) saw.
#[derive(Default)]
struct Tally {
    /// 2xx to the end of data, with the time the reply took.
    accepted: Vec<Duration>,
    deferred: usize,
    rejected: usize,
    /// Refused before the data: MAIL, every RCPT, or DATA.
    refused: usize,
    /// On a connection that failed before the message's reply: fate unknown.
    unknown: usize,
    /// Connections that failed, and the first error seen.
    failed_sessions: usize,
    first_error: Option<String>,
    /// The first reply that was not a 2xx, to say why.
    first_refusal: Option<String>,
    bytes: u64,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.accepted.extend(other.accepted);
        self.deferred += other.deferred;
        self.rejected += other.rejected;
        self.refused += other.refused;
        self.unknown += other.unknown;
        self.failed_sessions += other.failed_sessions;
        self.first_error = self.first_error.take().or(other.first_error);
        self.first_refusal = self.first_refusal.take().or(other.first_refusal);
        self.bytes += other.bytes;
    }

    /// A session's task that panicked: its messages' fate is unknown, and it says so.
    fn failed_task(&mut self, error: tokio::task::JoinError) {
        self.failed_sessions += 1;
        self.first_error.get_or_insert_with(|| format!("a session's task: {error}"));
    }

    fn refused(&mut self, reply: &smtp::Reply) {
        self.first_refusal.get_or_insert_with(|| format!("{} {}", reply.code, reply.text));
    }

    fn failed(&mut self, error: smtp::SessionError) {
        self.failed_sessions += 1;
        self.first_error.get_or_insert_with(|| error.to_string());
    }
}

/// What every session shares: the work left, and how to make each message.
struct Load {
    args: Args,
    sizes: Sizes,
    seed: u64,
    next: AtomicUsize,
    /// Lines of text the bodies are cut from, as long as the largest message.
    filler: Vec<u8>,
    tls: Option<(Arc<rustls::ClientConfig>, rustls_pki_types::ServerName<'static>)>,
}

/// The filler's line: 76 characters and CRLF, never starting with a dot.
const LINE: &[u8] =
    b"The quick brown fox jumps over the lazy dog, and relayd makes it durable first\r\n";

impl Load {
    /// Message `index`: its recipients, headers, and the body's length in filler bytes.
    fn message(&self, index: usize) -> (Vec<String>, String, usize) {
        let recipients = (0..self.args.recipients)
            .map(|j| {
                let n = index * self.args.recipients + j;
                match self.args.domains {
                    0 | 1 => format!("user{}@{}", n % 1000, self.args.domain),
                    domains => format!("user{}@d{}.{}", n % 1000, n % domains, self.args.domain),
                }
            })
            .collect::<Vec<_>>();
        let header = format!(
            "From: <{sender}>\r\nTo: <{to}>\r\nSubject: loadgen {seed:x} {index}\r\n\
             Message-ID: <{index}.{seed:x}@loadgen.test>\r\n\r\n",
            sender = self.args.sender,
            to = recipients.first().map_or("", String::as_str),
            seed = self.seed,
        );
        let draw = fastrand::Rng::with_seed(self.seed ^ index as u64).f64();
        let size = self.sizes.size(draw) as usize;
        let lines = size.saturating_sub(header.len()).div_ceil(LINE.len());
        (recipients, header, (lines * LINE.len()).min(self.filler.len()))
    }

    /// One session's work: connections one after another until no message is left.
    async fn run_session(self: Arc<Load>) -> Tally {
        let mut tally = Tally::default();
        while self.next.load(Ordering::Relaxed) < self.args.messages {
            let mut session = match Session::open(&self.args.server, self.tls.as_ref()).await {
                Ok(session) => session,
                Err(error) => {
                    tally.failed(error);
                    // A server that refuses every connection would be spun against forever.
                    if tally.failed_sessions > 100 + self.args.messages / 10 {
                        break;
                    }
                    continue;
                }
            };
            match self.send_on(&mut session, &mut tally).await {
                Ok(()) => {
                    if let Err(error) = session.quit().await {
                        tally.failed(error);
                    }
                }
                Err(error) => {
                    tally.unknown += 1;
                    tally.failed(error);
                }
            }
        }
        tally
    }

    async fn send_on(
        &self,
        session: &mut Session,
        tally: &mut Tally,
    ) -> Result<(), smtp::SessionError> {
        for _ in 0..self.args.per_connection.max(1) {
            let index = self.next.fetch_add(1, Ordering::Relaxed);
            if index >= self.args.messages {
                break;
            }
            let (recipients, header, body) = self.message(index);
            let message = Message {
                sender: &self.args.sender,
                recipients: &recipients,
                header: header.as_bytes(),
                body: &self.filler[..body],
            };
            match session.send_message(&message).await? {
                Outcome::Answered(reply, took) => match reply.code / 100 {
                    2 => {
                        tally.accepted.push(took);
                        tally.bytes += (header.len() + body) as u64;
                    }
                    class => {
                        tally.refused(&reply);
                        if class == 4 { tally.deferred += 1 } else { tally.rejected += 1 }
                    }
                },
                Outcome::Refused(reply) => {
                    tally.refused(&reply);
                    tally.refused += 1;
                }
            }
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let sizes = match Sizes::parse(&args.size, args.max_size) {
        Ok(sizes) => sizes,
        Err(e) => {
            eprintln!("relayd-loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let tls = match args.starttls.then(|| tls::unverified(&args.tls_name)).transpose() {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("relayd-loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let filler = LINE.repeat((sizes.largest() as usize).div_ceil(LINE.len()));
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    let sessions = args.sessions.max(1);
    let load = Arc::new(Load { args, sizes, seed, next: AtomicUsize::new(0), filler, tls });
    let started = Instant::now();
    let tasks: Vec<_> = (0..sessions).map(|_| tokio::spawn(load.clone().run_session())).collect();
    let mut tally = Tally::default();
    for task in tasks {
        match task.await {
            Ok(session) => tally.merge(session),
            Err(e) => tally.failed_task(e),
        }
    }
    let elapsed = started.elapsed();
    report(&load.args, &mut tally, elapsed, sessions);
    if tally.accepted.len() == load.args.messages { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// The `q` quantile of sorted latencies, in milliseconds.
fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

fn report(args: &Args, tally: &mut Tally, elapsed: Duration, sessions: usize) {
    tally.accepted.sort_unstable();
    let latencies = &tally.accepted;
    let seconds = elapsed.as_secs_f64();
    let rate = latencies.len() as f64 / seconds;
    let mib = tally.bytes as f64 / seconds / f64::from(1 << 20);
    let [p50, p99, p999, max] = [0.5, 0.99, 0.999, 1.0].map(|q| quantile_ms(latencies, q));
    let error = tally.first_error.as_deref().unwrap_or("");
    if args.json {
        println!(
            "{{\"messages\":{},\"accepted\":{},\"deferred\":{},\"rejected\":{},\"refused\":{},\
             \"unknown\":{},\"failed_sessions\":{},\"seconds\":{seconds:.3},\"msgs_per_s\":{rate:.1},\
             \"mib_per_s\":{mib:.2},\"sessions\":{sessions},\"per_connection\":{},\"starttls\":{},\
             \"domains\":{},\"size\":\"{}\",\"latency_ms\":{{\"p50\":{p50:.3},\"p99\":{p99:.3},\
             \"p999\":{p999:.3},\"max\":{max:.3}}},\"first_error\":{:?},\"first_refusal\":{:?}}}",
            args.messages,
            latencies.len(),
            tally.deferred,
            tally.rejected,
            tally.refused,
            tally.unknown,
            tally.failed_sessions,
            args.per_connection,
            args.starttls,
            args.domains,
            args.size,
            error,
            tally.first_refusal.as_deref().unwrap_or(""),
        );
        return;
    }
    println!(
        "{} messages: 2xx {}, 4xx {}, 5xx {}, refused before data {}, fate unknown {}",
        args.messages,
        latencies.len(),
        tally.deferred,
        tally.rejected,
        tally.refused,
        tally.unknown
    );
    println!(
        "{seconds:.2} s: {rate:.0} msg/s, {mib:.1} MiB/s; {sessions} sessions, {} per connection{}",
        args.per_connection,
        if args.starttls { ", STARTTLS" } else { "" }
    );
    println!(
        "end of data to reply: p50 {p50:.2} ms, p99 {p99:.2} ms, p99.9 {p999:.2} ms, max {max:.2} ms"
    );
    if let Some(reply) = &tally.first_refusal {
        println!("the first reply that was not a 2xx: {reply}");
    }
    if tally.failed_sessions > 0 {
        println!("{} connections failed; the first: {error}", tally.failed_sessions);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_ranks_of_the_sorted_latencies() {
        let sorted: Vec<_> = (1..=1000).map(Duration::from_millis).collect();
        assert_eq!(quantile_ms(&sorted, 0.5), 500.0);
        assert_eq!(quantile_ms(&sorted, 0.99), 990.0);
        assert_eq!(quantile_ms(&sorted, 0.999), 999.0);
        assert_eq!(quantile_ms(&sorted, 1.0), 1000.0);
        assert_eq!(quantile_ms(&[], 0.5), 0.0);
    }

    #[test]
    fn messages_are_their_size_and_spread_their_recipients_over_the_domains() {
        let args =
            Args::parse_from(["loadgen", "--domains", "10", "--recipients", "3", "--size", "5000"]);
        let sizes = Sizes::parse(&args.size, args.max_size).unwrap();
        let filler = LINE.repeat(100);
        let load = Load { args, sizes, seed: 7, next: AtomicUsize::new(0), filler, tls: None };
        let (recipients, header, body) = load.message(4);
        assert_eq!(
            recipients,
            ["user12@d2.example.test", "user13@d3.example.test", "user14@d4.example.test"]
        );
        let size = header.len() + body;
        assert!((5000..5000 + LINE.len()).contains(&size), "{size}");
        assert!(header.contains("Subject: loadgen 7 4\r\n"), "{header}");
        assert!(!LINE.starts_with(b"."));
    }
}
