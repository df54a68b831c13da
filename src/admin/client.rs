//! The CLI's HTTP client for the admin endpoint (ureq, blocking, plain HTTP: the endpoint
//! listens on loopback by default).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::Token;
use super::api::ErrorBody;
use crate::config::{Config, ConfigError};

/// The largest answer read (a long queue listing is a few hundred bytes per message).
const MAX_BODY: u64 = 512 * 1024 * 1024;

/// A client for one node's admin endpoint.
pub struct Client {
    agent: ureq::Agent,
    address: SocketAddr,
    token: Option<Token>,
}

/// Why a request failed.
#[derive(Debug)]
pub enum ClientError {
    /// No answer from the endpoint (refused, timed out, reset).
    Unreachable { address: SocketAddr, reason: String },
    /// The endpoint answered with an error status; its `{"error"}` message, or its body.
    Http { status: u16, message: String },
    /// An answer that could not be read.
    Invalid { address: SocketAddr, reason: String },
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Unreachable { address, reason } => write!(
                f,
                "cannot reach the admin endpoint at {address}: {reason} (is relayd running, with this config?)"
            ),
            ClientError::Http { status, message } => write!(f, "HTTP {status}: {message}"),
            ClientError::Invalid { address, reason } => {
                write!(f, "unreadable answer from the admin endpoint at {address}: {reason}")
            }
        }
    }
}

impl std::error::Error for ClientError {}

impl Client {
    /// A client for the endpoint `config` names (`[admin].listen`; an unspecified address such
    /// as 0.0.0.0 is reached on loopback), with its token if `[admin].token_file` is set.
    pub fn new(config: &Config) -> Result<Client, ConfigError> {
        let token = match &config.admin.token_file {
            Some(path) => Some(
                Token::read(path)
                    .map_err(|e| config.error_at("admin.token_file", e.to_string()))?,
            ),
            None => None,
        };
        let mut address = config.admin.listen;
        if address.ip().is_unspecified() {
            address.set_ip(match address.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // The endpoint is reached directly, whatever HTTP_PROXY says.
            .proxy(None)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .new_agent();
        Ok(Client { agent, address, token })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// GET `path`; the answer's body as text.
    pub fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let request = self.authorized(self.agent.get(self.url(path)));
        self.finish(request.call())
    }

    /// GET `path`, read as JSON.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let text = self.get_text(path)?;
        serde_json::from_str(&text).map_err(|e| self.invalid(e))
    }

    /// POST `path` without a body.
    pub fn post(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        let request = self.authorized(self.agent.post(self.url(path)));
        let text = self.finish(request.send_empty())?;
        serde_json::from_str(&text).map_err(|e| self.invalid(e))
    }

    /// DELETE `path`.
    pub fn delete(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        let request = self.authorized(self.agent.delete(self.url(path)));
        let text = self.finish(request.call())?;
        serde_json::from_str(&text).map_err(|e| self.invalid(e))
    }

    fn authorized<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(token) => request.header("Authorization", format!("Bearer {}", token.as_str())),
            None => request,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    fn finish(
        &self,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<String, ClientError> {
        let mut response = self.succeeded(result)?;
        response
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .map_err(|e| self.failed(e))
    }

    /// GET `path`, its body copied to `out` as it comes (a message's content, which may be
    /// larger than any JSON answer). Returns the bytes copied.
    pub fn get_to(&self, path: &str, out: &mut dyn std::io::Write) -> Result<u64, ClientError> {
        let request = self.authorized(self.agent.get(self.url(path)));
        let mut response = self.succeeded(request.call())?;
        let mut body = response.body_mut().with_config().limit(u64::MAX).reader();
        std::io::copy(&mut body, out)
            .map_err(|e| ClientError::Unreachable { address: self.address, reason: io_reason(&e) })
    }

    /// The response of a request that succeeded; otherwise the node's JSON error.
    fn succeeded(
        &self,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<ureq::http::Response<ureq::Body>, ClientError> {
        let mut response = result.map_err(|e| self.failed(e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .map_err(|e| self.failed(e))?;
        let message = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => body.error,
            Err(_) if text.trim().is_empty() => {
                status.canonical_reason().unwrap_or("error").to_string()
            }
            Err(_) => text.trim().to_string(),
        };
        Err(ClientError::Http { status: status.as_u16(), message })
    }

    fn failed(&self, e: ureq::Error) -> ClientError {
        let address = self.address;
        match e {
            ureq::Error::Io(io) => ClientError::Unreachable { address, reason: io_reason(&io) },
            ureq::Error::Timeout(_) => {
                ClientError::Unreachable { address, reason: "no answer in time".into() }
            }
            ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
                ClientError::Unreachable { address, reason: "connection failed".into() }
            }
            other => ClientError::Invalid { address, reason: other.to_string() },
        }
    }

    fn invalid(&self, e: serde_json::Error) -> ClientError {
        ClientError::Invalid { address: self.address, reason: e.to_string() }
    }
}

/// "connection refused" rather than "Connection refused (os error 111)".
fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionRefused => "connection refused".into(),
        ErrorKind::ConnectionReset => "connection reset".into(),
        ErrorKind::TimedOut => "timed out".into(),
        _ => e.to_string(),
    }
}
