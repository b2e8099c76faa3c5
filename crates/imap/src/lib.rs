//! Starling's IMAP4rev1/IMAP4rev2 server over the store.
//!
//! [`Session`] is the protocol as a state machine over bytes: it takes what a
//! client sent and produces what to answer, calling the store synchronously
//! (every change through [`starling_store::Store::write`], the same path as
//! LMTP and peers). It holds no socket and takes the time as a parameter
//! (its pre-login deadline, idle timeout and login penalties are decided
//! there, the waiting is the shell's), so tests and the fuzzer drive it
//! directly. [`auth`] holds the login defences (penalties, the cache of
//! verified logins, the dummy verification for unknown names). [`server`]
//! is the tokio shell: sockets, connection limits, TLS (STARTTLS and
//! implicit), sleeping a penalty, closing at a deadline, IDLE wake-ups from
//! the node's change broadcast.
//!
//! Command syntax is parsed by imap-codec; the extensions its 2.0 alpha
//! does not parse (ESEARCH's `RETURN`, LIST-EXTENDED options, SEARCHRES's
//! `$`) are lifted off the command first ([`extended`]). Responses are written by [`wire`] and
//! tested by decoding them with imap-codec's response parser.
//!
//! It must not touch redb or the network beyond its own listeners.

pub mod auth;
mod command;
pub mod context;
pub mod extended;
pub mod mime;
pub mod mutf7;
pub mod objectid;
pub mod ondemand;
pub mod password;
pub mod pool;
pub mod preview;
mod returns;
mod selected;
pub mod server;
pub mod session;
pub mod sortcache;
pub mod uidmap;
pub mod wire;

pub use auth::GuardLimits;
pub use command::fetch::FETCH_PART_BYTES;
pub use command::notify::{NOTIFY_GROUPS_MAX, NOTIFY_NAMES_MAX, NOTIFY_PENDING_MAX};
pub use context::AWAITING_MAX;
pub use server::{serve, tls_acceptor, Listener};
pub use session::{Config, Session, Shared, Wants};
pub use sortcache::{SortCache, SortCacheStats, SORT_CACHE_BYTES_DEFAULT};
