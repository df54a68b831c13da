//! The bearer token: when `[admin].token_file` is set, every request but `GET /healthz` must
//! carry `Authorization: Bearer TOKEN`. The token is read once, when the endpoint binds.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::error::ApiError;

/// Paths served without the token: load balancers and supervisors probe them.
const OPEN_PATHS: &[&str] = &["/healthz"];

/// The token the endpoint expects. Its `Debug` does not show it.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// Reads a token file: its content with surrounding white space trimmed, which must be
    /// non-empty printable ASCII (it travels in an HTTP header). The error names the file.
    pub fn read(path: &Path) -> Result<Token, TokenError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| TokenError::Read { path: path.into(), source })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(TokenError::Empty { path: path.into() });
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::NotPrintable { path: path.into() });
        }
        Ok(Token(token.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether an `Authorization` header value presents this token. The comparison takes the
    /// same time wherever the two differ (only the length can be learnt from the timing).
    fn accepts(&self, authorization: &HeaderValue) -> bool {
        let Some((scheme, credential)) =
            authorization.to_str().ok().and_then(|value| value.trim().split_once(' '))
        else {
            return false;
        };
        scheme.eq_ignore_ascii_case("bearer")
            && bool::from(credential.trim().as_bytes().ct_eq(self.0.as_bytes()))
    }
}

/// A token file that cannot be used.
#[derive(Debug)]
pub enum TokenError {
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    Empty {
        path: PathBuf,
    },
    /// Not one line of printable ASCII without spaces.
    NotPrintable {
        path: PathBuf,
    },
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Read { path, source } => {
                write!(f, "cannot read the admin token from {}: {source}", path.display())
            }
            TokenError::Empty { path } => {
                write!(f, "the admin token file {} is empty", path.display())
            }
            TokenError::NotPrintable { path } => write!(
                f,
                "the admin token in {} must be one line of printable ASCII without spaces",
                path.display()
            ),
        }
    }
}

impl std::error::Error for TokenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TokenError::Read { source, .. } => Some(source),
            TokenError::Empty { .. } | TokenError::NotPrintable { .. } => None,
        }
    }
}

/// Middleware: refuses a request without the right token with 401 and logs the refusal.
pub async fn require_token(
    State(token): State<Token>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if OPEN_PATHS.contains(&path) {
        return next.run(request).await;
    }
    let reason = match request.headers().get(header::AUTHORIZATION) {
        None => "no bearer token",
        Some(value) if token.accepts(value) => return next.run(request).await,
        Some(_) => "wrong bearer token",
    };
    tracing::warn!(client = %client.ip(), path, reason, "admin request refused");
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, format!("unauthorized: {reason}")).into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(value: &str) -> HeaderValue {
        HeaderValue::from_str(value).expect("header value")
    }

    #[test]
    fn only_the_exact_token_is_accepted() {
        let token = Token("s3cret".into());
        assert!(token.accepts(&header("Bearer s3cret")));
        assert!(token.accepts(&header("bearer s3cret")));
        assert!(!token.accepts(&header("Bearer s3cre")));
        assert!(!token.accepts(&header("Bearer s3cret2")));
        assert!(!token.accepts(&header("Basic s3cret")));
        assert!(!token.accepts(&header("s3cret")));
        assert!(!token.accepts(&header("Bearer ")));
        assert_eq!(format!("{token:?}"), "Token(..)");
    }

    #[test]
    fn token_files_are_trimmed_and_checked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("token");
        std::fs::write(&path, "  abc-123\n").expect("write");
        assert_eq!(Token::read(&path).map(|t| t.as_str().to_string()).ok(), Some("abc-123".into()));
        std::fs::write(&path, "\n").expect("write");
        assert!(Token::read(&path).is_err_and(|e| e.to_string().contains("is empty")));
        std::fs::write(&path, "two\nlines").expect("write");
        assert!(Token::read(&path).is_err_and(|e| e.to_string().contains("printable ASCII")));
        let missing = dir.path().join("missing");
        let named = |e: TokenError| e.to_string().contains(&missing.display().to_string());
        assert!(Token::read(&missing).is_err_and(named));
    }
}
