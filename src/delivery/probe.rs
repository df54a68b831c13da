//! Recipient verification's way out: one probe of a recipient at its route's next hop, with the
//! queue runner's routes, resolver and SMTP client (`smtp`'s recipient checks decide what the
//! answer means for the client's RCPT).

use tokio_rustls::TlsConnector;

use super::outcome::Outcome;
use super::{StartError, client, route};
use crate::config::Config;

/// Asks next hops about recipients; cheap to share (`Arc`) between sessions.
pub struct Prober {
    resolver: route::Resolver,
    tls: TlsConnector,
}

impl Prober {
    /// With `[delivery].resolvers` (or the system's) for the MX lookups, as deliveries do.
    pub fn new(config: &Config) -> Result<Prober, StartError> {
        Ok(Prober {
            resolver: route::Resolver::new(&config.delivery.resolvers)?,
            tls: super::tls_connector()?,
        })
    }

    /// What the next hop of `address`'s route says to RCPT TO:<address> after MAIL FROM:<>:
    /// `Delivered` for a 2xx, `Permanent` for a 5xx, `Temporary` for a 4xx or when no hop
    /// could be asked. Bounded by the client's per-stage timeouts only: the caller bounds it.
    pub async fn probe(&self, config: &Config, address: &str) -> Outcome {
        let destination = route::destination(config, address);
        let hops = match self.resolver.hops(&destination.target).await {
            Ok(hops) => hops,
            Err(outcome) => return outcome,
        };
        let helo = &config.smtp.hostname;
        let mut connection = match client::connect(&hops, destination.tls, helo, &self.tls).await {
            Ok(connection) => connection,
            Err(outcome) => return outcome,
        };
        let outcome = connection.probe(address).await;
        connection.quit().await;
        outcome.unwrap_or_else(|failure| failure)
    }
}
