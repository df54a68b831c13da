//! The SMTP grammar, free of I/O: commands, addresses, replies and the body readers. Everything
//! a client can send passes through here first, which is what makes it the fuzzing surface.
//! It sits below both ends of the mail path: the listener (`smtp`) parses with it and the
//! delivery client (`delivery`) dot-stuffs with it, so neither end imports the other's grammar.

pub mod address;
pub mod body;
pub mod command;
pub mod dsn;
pub mod line;
pub mod reply;

#[cfg(test)]
mod properties;

pub use address::Address;
pub use body::{BodyDecoder, Decoded, DotStuffer};
pub use command::{Command, MailFrom, RcptTo};
pub use line::{LineReader, Pushed};
pub use reply::Reply;

/// Anything SMTP runs over, ours as a server or as the delivery client: a TCP stream, or TLS
/// over one after STARTTLS. Only a name for the bounds both ends box their connection with; the
/// grammar itself never reads or writes.
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}
