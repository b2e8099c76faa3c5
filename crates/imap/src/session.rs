//! One IMAP connection as a state machine over bytes: [`Session::receive`]
//! takes what the client sent, [`Session::take_output`] gives what to write
//! back, [`Session::wants`] says when the shell must start TLS or close.
//! Framing (lines and literals, with their limits) comes from imap-codec's
//! `Fragmentizer`, commands from its `CommandCodec`.

use crate::auth::{Guard, GuardLimits};
use crate::extended::{self, Lifted};
use crate::selected::Selected;
use crate::wire;
use imap_codec::decode::Decoder;
use imap_codec::fragmentizer::{FragmentInfo, Fragmentizer};
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::core::{LiteralMode, Tag};
use imap_codec::imap_types::mailbox::Mailbox;
use imap_codec::CommandCodec;
use starling_model::account::DELIMITER;
use starling_model::{MailboxId, INBOX};
use starling_net::listen::{ConnCounter, ConnLimits};
use starling_store::{Exposed, Reader, Store, StoreError};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bodies of one report an exposure waits for, at most.
pub const UNEXPOSED_BODIES_MAX: usize = 1024;

/// Limits and policies of the IMAP server (`[imap]` in the node's config;
/// `docs/configuration.md` lists the keys).
#[derive(Clone, Debug)]
pub struct Config {
    /// Longest command line once logged in (bytes, without literals).
    pub line_max: u32,
    /// Largest literal once logged in (an APPENDed message, mostly).
    pub literal_max: u32,
    /// Before login: longest command line. Small, so a client that has not
    /// logged in cannot make the server hold much.
    pub preauth_line_max: u32,
    /// Before login: largest literal. A synchronising literal over it is
    /// refused before it is sent (no `+`); a non-synchronising one closes the
    /// connection unread.
    pub preauth_literal_max: u32,
    /// Before login: the connection is closed this long after it was
    /// accepted, whatever it sends (TLS handshake included).
    pub preauth_deadline: Duration,
    /// Once logged in: the connection is closed this long after its last
    /// complete command (RFC 9051: at least 30 minutes; IDLE included).
    pub idle_timeout: Duration,
    /// Open connections in total (both listeners).
    pub connections_max: usize,
    /// Open connections from one client address (IPv6: one /64).
    pub connections_per_ip: usize,
    /// Simultaneous authenticated connections per account.
    pub connections_per_account: usize,
    /// Allow LOGIN / AUTHENTICATE PLAIN without TLS from loopback addresses.
    pub plaintext_on_loopback: bool,
    /// Login penalties, cache and Argon2 concurrency ([`crate::auth::Guard`]).
    pub auth: GuardLimits,
    /// How long a FETCH waits for bodies this replica left out, asked of a
    /// peer ([`crate::ondemand`]); zero answers `NO [UNAVAILABLE]` at once.
    pub body_wait: Duration,
    /// Exposure after k peers: output that follows a change this session
    /// made is written only once k pinned peers hold the change, or the
    /// wait is over ([`Session::take_unexposed`]). k = 0 by default.
    pub exposure: starling_store::ExposurePolicy,
    /// Threads of the store pool ([`crate::pool`]): the session steps that
    /// may call the store (a commit waiting for fsync, a SELECT reading
    /// from disk) run there, never on the async workers.
    pub store_threads: usize,
    /// Session steps waiting for a thread of the store pool at most; a
    /// connection with a step to run past it waits for room, reading no
    /// more of its socket meanwhile (its deadline still holds).
    pub store_queue: usize,
    /// Bytes the shared sort cache ([`crate::sortcache`]) holds at most,
    /// over every mailbox; 0: none (SORT reads every message each time).
    pub sort_cache_bytes: usize,
}

/// Default of [`Config::store_threads`]: 64, whatever the cores. A step
/// mostly waits (for fsync, for the store's one writer, for the disk)
/// rather than computes, and steps are taken first come, first served: with
/// 8 threads a FETCH waited behind the commits queued before it (p50 2.0 →
/// 76 ms at 50 clients), with 64 it did not (`docs/benchmarks.md`).
pub fn store_threads_default() -> usize {
    64
}

impl Default for Config {
    fn default() -> Self {
        Config {
            line_max: 64 * 1024,
            literal_max: 64 << 20,
            preauth_line_max: 8 * 1024,
            preauth_literal_max: 8 * 1024,
            preauth_deadline: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(31 * 60),
            connections_max: 1000,
            connections_per_ip: 100,
            connections_per_account: 64,
            plaintext_on_loopback: true,
            auth: GuardLimits::default(),
            body_wait: Duration::ZERO,
            exposure: Default::default(),
            store_threads: store_threads_default(),
            store_queue: 1024,
            sort_cache_bytes: crate::sortcache::SORT_CACHE_BYTES_DEFAULT,
        }
    }
}

/// What every session of a server shares.
pub struct Shared {
    /// The store.
    pub store: Arc<Store>,
    /// Limits and policies.
    pub config: Config,
    logins: Mutex<HashMap<String, usize>>,
    /// Per mailbox, the lowest UID no session has been told of yet: messages
    /// at or above it are \Recent to the next session that selects it. Per
    /// node and in memory (\Recent is per session, never replicated); it
    /// starts at the replica's announced UIDNEXT, which is persisted.
    recent: Mutex<HashMap<(String, MailboxId), u32>>,
    sessions: std::sync::atomic::AtomicUsize,
    /// Per mailbox, its UIDs as of a HIGHESTMODSEQ: a SELECT of an unchanged
    /// mailbox copies it instead of reading every row, a changed one applies
    /// only what changed since (as a session's update does).
    pub(crate) views: Mutex<HashMap<(String, MailboxId), (u64, crate::uidmap::UidMap)>>,
    /// Login penalties, the verification cache, Argon2 concurrency.
    pub(crate) guard: Guard,
    /// Open connections, in total and per address.
    pub(crate) connections: Arc<ConnCounter>,
    /// Asks the node for bodies a FETCH waits for ([`Shared::on_want_bodies`]).
    want_bodies: std::sync::RwLock<Option<WantBodies>>,
    /// Where the server runs session steps ([`Config::store_threads`]).
    store_pool: crate::pool::Pool,
    /// Per mailbox, what SORT compares and its orders ([`crate::sortcache`]).
    pub sort_cache: crate::sortcache::SortCache,
}

/// Asks peers for an account's bodies; false when no peer can be asked.
pub type WantBodies = Arc<dyn Fn(&str, &[(starling_model::BlobId, u64)]) -> bool + Send + Sync>;

impl Shared {
    /// Shared state for the sessions of one server.
    pub fn new(store: Arc<Store>, config: Config) -> Arc<Shared> {
        let guard = Guard::new(config.auth);
        let store_pool = crate::pool::Pool::new("store", config.store_threads, config.store_queue, 0);
        let connections =
            ConnCounter::new(ConnLimits { total: config.connections_max, per_ip: config.connections_per_ip });
        Arc::new(Shared {
            store_pool,
            guard,
            connections,
            store,
            logins: Mutex::default(),
            recent: Mutex::default(),
            sessions: Default::default(),
            views: Mutex::default(),
            want_bodies: Default::default(),
            sort_cache: crate::sortcache::SortCache::new(config.sort_cache_bytes),
            config,
        })
    }

    /// Sets how a FETCH waiting for bodies this replica left out asks for
    /// them (the node: of the account's connected peers). It returns false
    /// when no peer can be asked; the FETCH then answers at once. Unset, no
    /// FETCH waits. It must not block.
    pub fn on_want_bodies(&self, f: impl Fn(&str, &[(starling_model::BlobId, u64)]) -> bool + Send + Sync + 'static) {
        *self.want_bodies.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(f));
    }

    /// Asks for `account`'s bodies (see [`Self::on_want_bodies`]).
    pub fn want_bodies(&self, account: &str, wanted: &[(starling_model::BlobId, u64)]) -> bool {
        let f = self.want_bodies.read().unwrap_or_else(|p| p.into_inner()).clone();
        f.is_some_and(|f| f(account, wanted))
    }

    /// The pool the server runs session steps on (the node waits for it to
    /// be idle at shutdown).
    pub fn store_pool(&self) -> &crate::pool::Pool {
        &self.store_pool
    }

    /// Open sessions (connections).
    pub fn sessions(&self) -> usize {
        self.sessions.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Entries in the login tables: (penalised addresses, penalised account
    /// names, cached verifications).
    pub fn auth_table_sizes(&self) -> (usize, usize, usize) {
        self.guard.sizes()
    }
}

/// What the shell must do after [`Session::receive`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wants {
    /// Keep reading.
    Read,
    /// Write the output, then start TLS and call [`Session::tls_started`].
    StartTls,
    /// Write the output, then deflate everything written and inflate
    /// everything read from here on (COMPRESS=DEFLATE, RFC 4978), and call
    /// [`Session::compress_started`].
    Compress,
    /// Write the output, then close the connection.
    Close,
    /// Write the output, then wait this long (reading nothing, without
    /// holding up other connections) and call [`Session::resume`]. A login
    /// attempt waiting out its penalty.
    Pause(Duration),
    /// Write the output, then have the login in [`Session::verify_job`]
    /// verified by the guard's password pool ([`crate::auth::Guard::verify_then`],
    /// never on a thread that serves other sessions) and give the answer to
    /// [`Session::verified`]; reading nothing meanwhile.
    /// ([`Session::verify_now`] does both, blocking: for tests.)
    Verify,
    /// Write the output, ask for the bodies in [`Session::wanted_bodies`]
    /// (calling [`Session::nobody_to_ask`] if no peer can be asked), then
    /// call [`Session::resume`] when the account changes or after this long
    /// (a FETCH waiting for bodies: [`crate::ondemand`]).
    Bodies(Duration),
    /// Write the output, then call [`Session::resume`] after this long, no
    /// longer: a SELECT or EXAMINE waiting, with exposure after k peers,
    /// until this replica caught up with k connected peers. It runs again
    /// from its bytes and either goes on or parks again (without holding
    /// a thread meanwhile).
    CatchUp(Duration),
    /// Write the output, then call [`Session::resume`] at once: a long
    /// answer (a FETCH of many bodies) goes out in parts of about
    /// [`crate::FETCH_PART_BYTES`], each written before the next
    /// is built, so what a session holds stays bounded whatever the
    /// mailbox's size.
    Write,
}

/// What the next message is: a command, IDLE's DONE, or the response to
/// AUTHENTICATE's `+`.
pub(crate) enum Mode {
    Commands,
    Idle(Tag<'static>),
    Authenticate(Tag<'static>),
}

/// Extensions the client turned on.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Enabled {
    pub condstore: bool,
    pub qresync: bool,
    pub rev2: bool,
    /// UTF8=ACCEPT (RFC 6855).
    pub utf8: bool,
}

/// Why a command failed: a tagged NO or BAD with its text (and response
/// code), or no answer yet: it waits for these bodies ([`crate::ondemand`]).
pub(crate) enum Fail {
    No(String),
    Bad(String),
    Wait(Vec<(starling_model::BlobId, u64)>),
    /// No answer yet: it waits to catch up with the peers ([`Wants::CatchUp`]).
    CatchUp,
    /// No answer yet: a part of it is out, the rest follows once that part
    /// is written ([`Wants::Write`]).
    More,
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::MissingBlob(_) => Fail::No("[UNAVAILABLE] message body not stored on this replica yet".into()),
            // Internal ids stay inside: a client names messages by UID.
            StoreError::Local(starling_model::LocalError::NoSuchMessage(_)) => {
                Fail::No("[EXPUNGEISSUED] a message was expunged meanwhile".into())
            }
            StoreError::Local(starling_model::LocalError::NoSuchMailbox(_)) => {
                Fail::No("[NONEXISTENT] the mailbox was deleted meanwhile".into())
            }
            StoreError::Local(e) => Fail::No(format!("[CANNOT] {e}")),
            StoreError::OverQuota(why) => Fail::No(format!("[OVERQUOTA] {why}")),
            e => Fail::No(format!("[SERVERBUG] {e}")),
        }
    }
}

pub(crate) type Done = Result<String, Fail>;

/// Consecutive bad commands after which the connection is closed.
const ERRORS_MAX: u32 = 20;

/// A message larger than this leaves a fresh framer behind it, so a session
/// does not keep the capacity of its largest APPEND for its lifetime.
const FRAMER_SHRINK_BYTES: usize = 1 << 20;

/// A SELECT or EXAMINE waiting until this replica caught up with k
/// connected peers ([`Wants::CatchUp`]).
#[derive(Default)]
struct CatchUpWait {
    /// The probe its first attempt sent (`Store::begin_catch_up`).
    probe: u64,
    /// Until when it may wait (from its first attempt); `None` when no
    /// command is catching up.
    until: Option<Instant>,
    /// The parked command's bytes, run again on resume.
    parked: Option<Vec<u8>>,
    /// Set by a command that must wait (read after it finishes).
    park: bool,
}

/// A FETCH whose answer goes out in parts ([`Wants::Write`]).
#[derive(Default)]
pub(crate) struct FetchParts {
    /// The UID of the last message whose response is out: the command,
    /// run again, goes on after it. `None` when no FETCH is in parts.
    pub after: Option<u32>,
    /// The command's bytes, run again on resume.
    parked: Option<Vec<u8>>,
    /// Set by a FETCH that stopped after a part (read after it finishes).
    park: bool,
}

/// How often a parked SELECT checks again whether it caught up.
const CATCH_UP_POLL: Duration = Duration::from_millis(50);

/// One IMAP connection.
///
/// Calling contract: feed what the client sends to [`Session::receive_at`];
/// after each call write [`Session::take_output`], then act on
/// [`Session::wants`] (keep reading, start TLS, close, or pause and call
/// [`Session::resume`]). [`Session::deadline`] is when the connection must
/// be closed if nothing else happens first: at that time call
/// [`Session::handle_timeout`]. It moves only when a command completes or the
/// client logs in, never with single bytes. `now` is always a parameter (the
/// `receive` and `new` shorthands read the clock).
///
/// Input is handed to the framer one line or one literal at a time, so the
/// framer never holds bytes past the current message: its limits (small
/// before login, larger after) bound what a connection holds, and it can be
/// replaced between messages.
pub struct Session {
    pub(crate) shared: Arc<Shared>,
    frag: Fragmentizer,
    /// Received bytes not yet given to the framer (the rest of one read, or
    /// what arrived while a login paused).
    pub(crate) input: Vec<u8>,
    /// Bytes of the literal being framed still to come, if one is.
    literal_left: Option<u32>,
    pub(crate) out: Vec<u8>,
    pub(crate) mode: Mode,
    pub(crate) account: Option<String>,
    pub(crate) selected: Option<Selected>,
    pub(crate) enabled: Enabled,
    tls: bool,
    pub(crate) peer: IpAddr,
    loopback: bool,
    pub(crate) starttls_offered: bool,
    /// COMPRESS=DEFLATE is on (a second COMPRESS is NO).
    pub(crate) compressed: bool,
    pub(crate) wants: Wants,
    errors: u32,
    /// Why the message being read will be refused (set when a limit is hit).
    refused: Option<String>,
    /// A change was committed since the last look at the selected mailbox.
    pub(crate) changed: bool,
    /// When the connection was accepted (the pre-login deadline counts from it).
    started: Instant,
    /// When the last command completed (the idle timeout counts from it).
    last_command: Instant,
    /// The time of the input being handled.
    pub(crate) now: Instant,
    pub(crate) pending_login: Option<crate::command::login::PendingLogin>,
    /// A FETCH parked until bodies arrive ([`crate::ondemand`]).
    pub(crate) bodies: crate::ondemand::BodyWait,
    /// A SELECT parked until this replica caught up with its peers.
    caught: CatchUpWait,
    /// A FETCH answered in parts ([`Wants::Write`]).
    pub(crate) part: FetchParts,
    /// Changes this session made whose report is not written yet, with
    /// exposure after k peers on ([`Session::take_unexposed`]).
    unexposed: Option<starling_store::Exposure>,
    /// What NOTIFY asked for (RFC 5465), if it is on.
    pub(crate) notify: Option<crate::command::notify::Notify>,
    /// Part of a command has been read (a NOTIFY notification waits for
    /// its end).
    partial: bool,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shared.sessions.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(a) = &self.account {
            let mut logins = self.shared.logins.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = logins.get_mut(a) {
                *n -= 1;
                if *n == 0 {
                    logins.remove(a);
                }
            }
        }
    }
}

impl Session {
    /// A new connection, now: `tls` if it is already encrypted (implicit
    /// TLS), `loopback` if the client is on this host, `starttls` if the
    /// server can upgrade it. The greeting is in the output.
    pub fn new(shared: Arc<Shared>, tls: bool, loopback: bool, starttls: bool) -> Session {
        let peer = if loopback { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) };
        Session::accepted(shared, Instant::now(), peer, tls, starttls)
    }

    /// A new connection from `peer` accepted at `now` (see [`Session::new`]).
    pub fn accepted(shared: Arc<Shared>, now: Instant, peer: IpAddr, tls: bool, starttls: bool) -> Session {
        shared.sessions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let loopback = peer.to_canonical().is_loopback();
        let mut s = Session {
            frag: Fragmentizer::new(0),
            shared,
            input: Vec::new(),
            literal_left: None,
            out: Vec::new(),
            mode: Mode::Commands,
            account: None,
            selected: None,
            enabled: Enabled::default(),
            tls,
            peer,
            loopback,
            starttls_offered: starttls && !tls,
            compressed: false,
            wants: Wants::Read,
            errors: 0,
            refused: None,
            changed: false,
            started: now,
            last_command: now,
            now,
            pending_login: None,
            bodies: Default::default(),
            caught: Default::default(),
            part: Default::default(),
            unexposed: None,
            notify: None,
            partial: false,
        };
        s.frag = s.framer();
        let caps = s.capabilities();
        s.untagged(&format!("OK [CAPABILITY {caps}] Starling ready"));
        s
    }

    /// (line, literal) limits in the current state.
    fn limits(&self) -> (u32, u32) {
        let c = &self.shared.config;
        match self.account {
            Some(_) => (c.line_max, c.literal_max),
            None => (c.preauth_line_max, c.preauth_literal_max),
        }
    }

    /// A framer for the current state: a whole message holds at most one
    /// line's and one literal's limit.
    fn framer(&self) -> Fragmentizer {
        let (line, literal) = self.limits();
        Fragmentizer::new(line.saturating_add(literal))
    }

    /// Bytes to write to the client (taken).
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Whether output is waiting.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// What the shell must do next.
    #[must_use]
    pub fn wants(&self) -> Wants {
        self.wants
    }

    /// The account logged in, if any.
    pub fn account(&self) -> Option<&str> {
        self.account.as_deref()
    }

    /// When the connection is to be closed unless a command completes
    /// first: before login, a fixed time after it was accepted; after, the
    /// idle timeout after the last complete command.
    #[must_use]
    pub fn deadline(&self) -> Instant {
        let c = &self.shared.config;
        match self.account {
            None => self.started + c.preauth_deadline,
            Some(_) => self.last_command + c.idle_timeout,
        }
    }

    /// The deadline passed (checked against `now`): says BYE and wants to
    /// close. Does nothing if it has not.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.deadline() || matches!(self.wants, Wants::Close) {
            return;
        }
        self.pending_login = None;
        self.untagged(if self.account.is_some() {
            "BYE autologout: idle for too long"
        } else {
            "BYE autologout: log in sooner"
        });
        self.wants = Wants::Close;
    }

    /// TLS is now up (after STARTTLS): anything the client sent before the
    /// handshake is dropped, as RFC 9051 requires.
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.starttls_offered = false;
        self.input = Vec::new();
        self.literal_left = None;
        self.partial = false;
        self.refused = None;
        self.frag = self.framer();
        self.wants = Wants::Read;
    }

    /// Another session or a peer committed a change to this session's
    /// account. During IDLE the updates are written at once; otherwise at the
    /// next command that allows them. With NOTIFY on (RFC 5465) they are
    /// also written between commands, and during IDLE the selected
    /// mailbox's only if the client asked for its events.
    pub fn account_changed(&mut self) {
        self.changed = true;
        let between = matches!(self.mode, Mode::Commands)
            && self.notify.is_some()
            && self.wants == Wants::Read
            && !self.partial
            && self.input.is_empty();
        if matches!(self.mode, Mode::Idle(_)) || between {
            if self.selected_pushed() {
                let expunges = matches!(self.mode, Mode::Idle(_)) || self.expunges_immediate();
                self.updates(expunges);
            }
            self.notify_updates();
        }
    }

    /// [`Session::receive_at`] now.
    pub fn receive(&mut self, bytes: &[u8]) {
        self.receive_at(Instant::now(), bytes)
    }

    /// Takes bytes the client sent at `now` and answers every complete
    /// command in them (up to a pause: the rest waits for
    /// [`Session::resume`]).
    pub fn receive_at(&mut self, now: Instant, bytes: &[u8]) {
        if matches!(self.wants, Wants::Close | Wants::StartTls) {
            return;
        }
        self.input.extend_from_slice(bytes);
        self.now = now;
        self.process();
    }

    /// After a [`Wants::Pause`] or [`Wants::Bodies`]: finishes what paused
    /// (a login is verified now, a parked FETCH runs again) and goes on with
    /// the input received meanwhile.
    pub fn resume(&mut self, now: Instant) {
        if !matches!(self.wants, Wants::Pause(_) | Wants::Bodies(_) | Wants::CatchUp(_) | Wants::Write) {
            return;
        }
        self.wants = Wants::Read;
        self.now = now;
        if self.pending_login.is_some() {
            // The penalty is over: on to the pool.
            self.wants = Wants::Verify;
            return;
        }
        if let Some(command) = self.bodies.parked.take() {
            self.command_bytes(&command);
            if self.wants == Wants::Read {
                self.bodies.until = None;
            }
        }
        if let Some(command) = self.caught.parked.take() {
            self.command_bytes(&command);
        }
        if let Some(command) = self.part.parked.take() {
            self.command_bytes(&command);
        }
        self.process();
    }

    /// The bodies a parked FETCH waits for ([`Wants::Bodies`]).
    pub fn wanted_bodies(&self) -> &[(starling_model::BlobId, u64)] {
        &self.bodies.wanted
    }

    /// After [`Wants::Bodies`], when no peer can be asked: the FETCH answers
    /// now with what is here (`NO [UNAVAILABLE]` for the rest).
    pub fn nobody_to_ask(&mut self, now: Instant) {
        self.bodies.until = Some(now);
        self.resume(now);
    }

    /// Frames and answers buffered input while the session wants to read.
    pub(crate) fn process(&mut self) {
        let mut at = 0;
        while self.wants == Wants::Read {
            if let Some(info) = self.frag.progress() {
                self.fragment(info);
                continue;
            }
            // The framer wants bytes: give it the rest of the line or of the
            // literal, no more (so it never holds a next message's bytes).
            let avail = &self.input[at..];
            let n = match self.literal_left {
                Some(left) => avail.len().min(left as usize),
                None => avail.iter().position(|&b| b == b'\n').map_or(avail.len(), |i| i + 1),
            };
            if n == 0 {
                break;
            }
            self.frag.enqueue_bytes(&avail[..n]);
            self.partial = true;
            at += n;
            if let Some(left) = &mut self.literal_left {
                *left -= n as u32;
            }
        }
        if self.wants == Wants::Close || at == self.input.len() {
            self.input.clear();
            if self.input.capacity() > 64 * 1024 {
                self.input = Vec::new();
            }
        } else {
            self.input.drain(..at);
        }
    }

    /// One line or literal framed.
    fn fragment(&mut self, info: FragmentInfo) {
        let (line_max, literal_max) = self.limits();
        match info {
            FragmentInfo::Line { start, end, announcement, .. } => {
                if end - start > line_max as usize && self.refused.is_none() {
                    self.refused = Some("[TOOBIG] command line too long".into());
                    self.frag.poison_message();
                }
                if let Some(ann) = announcement {
                    if ann.length > literal_max && self.refused.is_none() {
                        self.refused = Some(format!("[TOOBIG] literal of {} bytes exceeds {literal_max}", ann.length));
                        self.frag.poison_message();
                    }
                    if self.refused.is_some() && ann.mode == LiteralMode::Sync {
                        // Refuse before the client sends it: it waits for
                        // our "+", so it will not.
                        self.refuse_message();
                        self.frag.skip_message();
                        self.literal_left = None;
                        return;
                    }
                    if self.refused.is_some() && self.account.is_none() {
                        // A non-synchronising literal is on its way; before
                        // login it is not worth reading.
                        self.refuse_message();
                        self.untagged("BYE literal too large before login");
                        self.wants = Wants::Close;
                        return;
                    }
                    if ann.mode == LiteralMode::Sync {
                        self.out.extend_from_slice(b"+ Ready for literal data\r\n");
                    }
                    self.literal_left = Some(ann.length);
                }
            }
            FragmentInfo::Literal { .. } => self.literal_left = None,
        }
        if !self.frag.is_message_complete() {
            return;
        }
        self.partial = false;
        if self.refused.is_none() && self.frag.is_max_message_size_exceeded() {
            self.refused = Some("[TOOBIG] command too large".into());
        }
        self.last_command = self.now;
        if self.refused.is_some() {
            self.refuse_message();
            return;
        }
        let message = self.frag.message_bytes().to_vec();
        self.message(&message);
        if message.len() > FRAMER_SHRINK_BYTES && self.frag.is_message_complete() {
            self.frag = self.framer();
        }
    }

    fn refuse_message(&mut self) {
        let why = self.refused.take().unwrap_or_default();
        // An APPEND too large is a NO [TOOBIG] (RFC 7889 §4, RFC 4469 §4):
        // the command was understood, the message refused.
        let verb = self.frag.message_bytes().splitn(3, |&b| b == b' ').nth(1).unwrap_or_default();
        if verb.eq_ignore_ascii_case(b"APPEND") && why.starts_with("[TOOBIG]") {
            if let Some(tag) = self.frag.decode_tag().map(|t| t.as_ref().to_string()) {
                return self.tagged(&tag, "NO", &why);
            }
        }
        match self.frag.decode_tag().map(|t| t.as_ref().to_string()) {
            Some(tag) => self.tagged(&tag, "BAD", &why),
            None => self.untagged(&format!("BAD {why}")),
        }
        self.error();
    }

    pub(crate) fn error(&mut self) {
        self.errors += 1;
        if self.errors >= ERRORS_MAX {
            self.untagged("BYE too many invalid commands");
            self.wants = Wants::Close;
        }
    }

    fn message(&mut self, message: &[u8]) {
        match std::mem::replace(&mut self.mode, Mode::Commands) {
            Mode::Commands => self.command_bytes(message),
            Mode::Idle(tag) => self.idle_done(&tag, message),
            Mode::Authenticate(tag) => self.authenticate_data(&tag, message),
        }
    }

    fn command_bytes(&mut self, message: &[u8]) {
        if self.compress_command(message) || self.cancel_update_command(message) || self.notify_command(message) {
            return;
        }
        let mut lifted = extended::lift(message).unwrap_or_default();
        let rewritten = std::mem::take(&mut lifted.command);
        let input = if rewritten.is_empty() { message } else { &rewritten[..] };
        match CommandCodec::default().decode(input) {
            Ok((b"", command)) => {
                self.errors = 0;
                self.command(command, std::mem::take(&mut lifted));
                if let Some(wanted) = self.bodies.park.take() {
                    // Waits for bodies: the command runs again on resume.
                    let until = *self.bodies.until.get_or_insert(self.now + self.shared.config.body_wait);
                    self.bodies.parked = Some(message.to_vec());
                    self.bodies.wanted = wanted;
                    self.wants = Wants::Bodies(until.saturating_duration_since(self.now));
                }
                if std::mem::take(&mut self.caught.park) {
                    // Catches up first: the command runs again on resume.
                    let until = self.caught.until.expect("set by catch_up_or_park");
                    self.caught.parked = Some(message.to_vec());
                    self.wants = Wants::CatchUp(until.saturating_duration_since(self.now).min(CATCH_UP_POLL));
                }
                if std::mem::take(&mut self.part.park) {
                    // A part is out: the command goes on after it on resume.
                    self.part.parked = Some(message.to_vec());
                    self.wants = Wants::Write;
                } else if self.bodies.parked.is_none() {
                    // Answered (or failed): the next FETCH starts afresh.
                    self.part.after = None;
                }
            }
            _ => {
                // Binary data belongs in a literal8 (RFC 3516); imap-codec
                // refuses a NUL in a literal without saying so.
                let why = if extended::nul_in_literal(message) {
                    "NUL in a literal: send binary data as a literal8 (~{n}, RFC 3516)"
                } else {
                    "syntax error in command"
                };
                match self.frag.decode_tag().map(|t| t.as_ref().to_string()) {
                    Some(tag) => self.tagged(&tag, "BAD", why),
                    None => self.untagged("BAD syntax error: no tag"),
                }
                self.error();
            }
        }
    }

    pub(crate) fn untagged(&mut self, line: &str) {
        self.out.extend_from_slice(b"* ");
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    pub(crate) fn tagged(&mut self, tag: &str, status: &str, text: &str) {
        self.out.extend_from_slice(format!("{tag} {status} {text}\r\n").as_bytes());
    }

    pub(crate) fn finish(&mut self, tag: &str, result: Done) {
        match result {
            Ok(text) => self.tagged(tag, "OK", &text),
            Err(Fail::No(text)) => self.tagged(tag, "NO", &text),
            Err(Fail::Bad(text)) => {
                self.tagged(tag, "BAD", &text);
                self.error();
            }
            Err(Fail::Wait(wanted)) => self.bodies.park = Some(wanted),
            Err(Fail::CatchUp) => self.caught.park = true,
            Err(Fail::More) => self.part.park = true,
        }
    }

    pub(crate) fn plaintext_allowed(&self) -> bool {
        self.tls || (self.loopback && self.shared.config.plaintext_on_loopback)
    }

    /// The largest message APPEND takes (RFC 7889): the literal limit after
    /// login, or the store's body limit if that is lower.
    pub(crate) fn append_limit(&self) -> u64 {
        (self.shared.config.literal_max as u64).min(starling_store::BODY_BYTES_MAX as u64)
    }

    pub(crate) fn capabilities(&self) -> String {
        let mut caps = String::from(
            "IMAP4rev1 IMAP4rev2 LITERAL+ SASL-IR ID ENABLE UTF8=ACCEPT IDLE NOTIFY NAMESPACE UNSELECT UIDPLUS MOVE CONDSTORE QRESYNC \
             ESEARCH SPECIAL-USE LIST-EXTENDED LIST-STATUS CHILDREN SORT SORT=DISPLAY \
             THREAD=ORDEREDSUBJECT THREAD=REFERENCES SEARCHRES ESORT STATUS=SIZE OBJECTID \
             CREATE-SPECIAL-USE BINARY MULTIAPPEND PREVIEW SAVEDATE CONTEXT=SEARCH CONTEXT=SORT PARTIAL CATENATE \
             QUOTA QUOTA=RES-STORAGE QUOTA=RES-MESSAGE",
        );
        if self.account.is_some() && !self.compressed {
            caps.push_str(" COMPRESS=DEFLATE");
        }
        caps.push_str(&format!(" APPENDLIMIT={}", self.append_limit()));
        if self.account.is_none() {
            if self.starttls_offered {
                caps.push_str(" STARTTLS");
            }
            if self.plaintext_allowed() {
                caps.push_str(" AUTH=PLAIN");
            } else {
                caps.push_str(" LOGINDISABLED");
            }
        }
        caps
    }

    /// Runs a decoded command, with the options lifted off it before
    /// decoding ([`extended::lift`]).
    fn command(&mut self, command: Command<'_>, options: Lifted) {
        let Lifted {
            search_return,
            list_selection,
            list_return,
            list_patterns,
            saved,
            fetch_extra,
            fetch_partial,
            fetch_placeholder,
            status_extra,
            status_placeholder,
            search_extra,
            create_use,
            appends,
            catenate,
            utf8_append,
            ..
        } = options;
        if let Some(sel) = &mut self.selected {
            sel.use_saved = saved;
            sel.search_extra = search_extra;
        }
        let tag = command.tag.as_ref().to_string();
        let authenticated = self.account.is_some();
        let selected = self.selected.is_some();
        // Commands during which expunges must not be reported (RFC 9051 7.5.1).
        let mut expunges_allowed = true;
        let result: Done = match command.body {
            CommandBody::Capability => self.capability(),
            CommandBody::Noop => self.noop(),
            CommandBody::Check => self.check(),
            CommandBody::Logout => {
                self.logout(&tag);
                return;
            }
            CommandBody::StartTLS => match self.starttls(&tag) {
                Ok(()) => return,
                Err(e) => Err(e),
            },
            CommandBody::Id { .. } => self.id(),
            CommandBody::Login { .. } | CommandBody::Authenticate { .. } if authenticated => {
                Err(Fail::Bad("already authenticated".into()))
            }
            CommandBody::Login { username, password } => {
                let user = String::from_utf8_lossy(username.as_ref()).into_owned();
                self.login(&tag, &user, password.declassify().as_ref());
                return;
            }
            CommandBody::Authenticate { mechanism, initial_response } => {
                match self.authenticate(&tag, mechanism, initial_response) {
                    Ok(()) => return,
                    Err(e) => Err(e),
                }
            }
            _ if !authenticated => Err(Fail::Bad("authenticate first (LOGIN or AUTHENTICATE)".into())),
            CommandBody::Enable { capabilities } => self.enable(capabilities.as_ref()),
            CommandBody::Namespace => self.namespace(),
            // Mailbox names are converted to their stored form here, as
            // they come in (`name_in`), and back as they go out (`wire_name`).
            CommandBody::Select { mailbox, parameters } => {
                self.name_in(&mailbox).and_then(|n| self.select(&n, false, &parameters))
            }
            CommandBody::Examine { mailbox, parameters } => {
                self.name_in(&mailbox).and_then(|n| self.select(&n, true, &parameters))
            }
            CommandBody::Create { mailbox } => {
                self.name_in(&mailbox).and_then(|n| self.create(&n, create_use.as_deref()))
            }
            CommandBody::Delete { mailbox } => self.name_in(&mailbox).and_then(|n| self.delete(&n)),
            CommandBody::Rename { from, to } => {
                let names = self.name_in(&from).and_then(|f| Ok((f, self.name_in(&to)?)));
                names.and_then(|(f, t)| self.rename(&f, &t))
            }
            CommandBody::Subscribe { mailbox } => self.name_in(&mailbox).and_then(|n| self.subscribe(&n, true)),
            CommandBody::Unsubscribe { mailbox } => self.name_in(&mailbox).and_then(|n| self.subscribe(&n, false)),
            CommandBody::List { reference, mailbox_wildcard } => {
                self.list_command(&reference, &mailbox_wildcard, &list_patterns, &list_selection, &list_return)
            }
            CommandBody::Lsub { reference, mailbox_wildcard } => self.lsub_command(&reference, &mailbox_wildcard),
            CommandBody::Status { mailbox, item_names } => {
                self.status(&mailbox, item_names.as_ref(), status_placeholder, &status_extra)
            }
            CommandBody::GetQuota { root } => self.getquota(&String::from_utf8_lossy(root.as_ref())),
            CommandBody::GetQuotaRoot { mailbox } => self.name_in(&mailbox).and_then(|n| self.getquotaroot(&n)),
            CommandBody::SetQuota { .. } => self.setquota(),
            CommandBody::Append { .. } if utf8_append && !self.enabled.utf8 => {
                Err(Fail::Bad("APPEND's UTF8 needs ENABLE UTF8=ACCEPT first (RFC 6855 section 4)".into()))
            }
            CommandBody::Append { mailbox, flags, date, message } => {
                self.name_in(&mailbox).and_then(|n| self.append(&n, (flags, date, message), &appends, &catenate))
            }
            CommandBody::Idle => {
                self.idle(&tag);
                return;
            }
            _ if !selected => Err(Fail::Bad("no mailbox selected".into())),
            CommandBody::Close => self.close_command(true),
            CommandBody::Unselect => self.close_command(false),
            CommandBody::Expunge => self.expunge(None),
            CommandBody::ExpungeUid { sequence_set } => self.expunge(Some(&sequence_set)),
            CommandBody::Search { charset: Some(_), .. } if self.enabled.utf8 => {
                Err(Fail::Bad("no CHARSET in SEARCH after ENABLE UTF8=ACCEPT (RFC 6855 section 3)".into()))
            }
            CommandBody::Sort { charset, .. } | CommandBody::Thread { charset, .. }
                if self.enabled.utf8 && !charset.as_ref().eq_ignore_ascii_case("UTF-8") =>
            {
                Err(Fail::Bad("the CHARSET is UTF-8 after ENABLE UTF8=ACCEPT (RFC 6855 section 3)".into()))
            }
            CommandBody::Search { charset, criteria, uid } => {
                expunges_allowed = uid;
                self.search(charset.as_ref().map(|c| c.as_ref()), criteria.as_ref(), uid, &tag, search_return)
            }
            CommandBody::Sort { sort_criteria, charset, search_criteria, uid } => {
                expunges_allowed = uid;
                let (criteria, search) = (sort_criteria.as_ref(), search_criteria.as_ref());
                self.sort(criteria, charset.as_ref(), search, uid, &tag, search_return)
            }
            CommandBody::Thread { algorithm, charset, search_criteria, uid } => {
                expunges_allowed = uid;
                self.thread(&algorithm, charset.as_ref(), search_criteria.as_ref(), uid)
            }
            CommandBody::Fetch { sequence_set, macro_or_item_names, uid, modifiers } => {
                expunges_allowed = uid;
                let extra = crate::command::fetch::FetchExtras {
                    items: fetch_extra,
                    placeholder: fetch_placeholder,
                    partial: fetch_partial,
                };
                self.fetch(&sequence_set, &macro_or_item_names, uid, &modifiers, &extra)
            }
            CommandBody::Store { sequence_set, kind, response, flags, uid, modifiers } => {
                expunges_allowed = uid;
                self.store(&sequence_set, &kind, &response, &flags, uid, &modifiers)
            }
            CommandBody::Copy { sequence_set, mailbox, uid } => {
                expunges_allowed = uid;
                self.name_in(&mailbox).and_then(|n| self.copy(&sequence_set, &n, uid, false))
            }
            CommandBody::Move { sequence_set, mailbox, uid } => {
                self.name_in(&mailbox).and_then(|n| self.copy(&sequence_set, &n, uid, true))
            }
            other => Err(Fail::Bad(format!("{} is not supported", other.name()))),
        };
        if let Some(sel) = &mut self.selected {
            sel.use_saved = false;
            sel.search_extra = Vec::new();
        }
        if self.selected.is_some() {
            self.updates(expunges_allowed || self.expunges_immediate());
        }
        // Not while the command is unfinished (a FETCH in parts, waiting
        // for bodies or to catch up): its notifications follow its end.
        if !matches!(result, Err(Fail::Wait(_) | Fail::More | Fail::CatchUp)) {
            self.notify_updates();
        }
        self.finish(&tag, result);
    }

    /// The password was right: takes a place among the account's sessions.
    pub(crate) fn logged_in(&mut self, user: &str) -> Done {
        {
            let mut logins = self.shared.logins.lock().unwrap_or_else(|p| p.into_inner());
            let n = logins.entry(user.to_string()).or_default();
            if *n >= self.shared.config.connections_per_account {
                return Err(Fail::No(format!(
                    "[LIMIT] {} connections of this account are open already",
                    self.shared.config.connections_per_account
                )));
            }
            *n += 1;
        }
        self.account = Some(user.to_string());
        // The larger limits from the next message on (the framer holds no
        // byte past this one).
        self.frag = self.framer();
        self.last_command = self.now;
        Ok(format!("[CAPABILITY {}] logged in", self.capabilities()))
    }

    pub(crate) fn account_name(&self) -> &str {
        self.account.as_deref().expect("authenticated")
    }

    pub(crate) fn reader(&self) -> Result<Reader, Fail> {
        Ok(self.shared.store.read(self.account_name())?)
    }

    /// Runs a change in one durable transaction (whose commit tells the
    /// other sessions and the peers: [`Store::on_commit`]).
    pub(crate) fn write<T>(
        &mut self,
        f: impl FnOnce(&mut starling_store::Batch<'_>) -> Result<T, StoreError>,
    ) -> Result<T, Fail> {
        let account = self.account_name().to_string();
        let before = match self.notify {
            Some(_) => Some(self.shared.store.commit_seq(&account)?),
            None => None,
        };
        let out = self.shared.store.write(&account, f)?;
        if let Some(before) = before {
            self.notify_own(before);
        }
        if self.shared.config.exposure.peers > 0 {
            let now = self.shared.store.exposure(&account, Vec::new())?;
            match &mut self.unexposed {
                Some(e) => e.upto = e.upto.max(now.upto),
                None => self.unexposed = Some(now),
            }
        }
        Ok(out)
    }

    /// A body this session stored (APPEND) must be held by the peers too
    /// before the report of its change is written. At most
    /// [`UNEXPOSED_BODIES_MAX`] are remembered per report (MULTIAPPEND):
    /// past it, the earliest are waited for no longer.
    pub(crate) fn note_body(&mut self, id: starling_model::BlobId) {
        if let Some(e) = &mut self.unexposed {
            if e.bodies.len() == UNEXPOSED_BODIES_MAX {
                e.bodies.remove(0);
            }
            e.bodies.push(id);
        }
    }

    /// The changes this session made since the last call, if exposure after
    /// k peers is on and it wrote: the driver waits for them
    /// ([`Store::expose`]) before writing the output that reports them.
    pub fn take_unexposed(&mut self) -> Option<starling_store::Exposure> {
        self.unexposed.take()
    }

    /// A visible mailbox by IMAP name (INBOX case-insensitively).
    pub(crate) fn resolve(reader: &Reader, name: &str) -> Option<MailboxId> {
        if name.eq_ignore_ascii_case("INBOX") {
            return Some(INBOX);
        }
        reader.names().tree.by_name.get(name.trim_end_matches(DELIMITER)).copied()
    }

    /// The \Recent floor of a mailbox (see [`Shared`]); `claim` moves it
    /// past `above` (this session is told of those messages first).
    pub(crate) fn recent_floor(&self, id: MailboxId, claim: Option<u32>) -> Result<u32, Fail> {
        let account = self.account_name().to_string();
        let mut map = self.shared.recent.lock().expect("recent floors");
        let floor = match map.get(&(account.clone(), id)) {
            Some(f) => *f,
            None => self.shared.store.announced_uid_next(&account, id)?,
        };
        map.insert((account, id), claim.map_or(floor, |c| floor.max(c + 1)));
        Ok(floor)
    }

    /// Records that clients were shown this mailbox's UIDNEXT (invariant U1:
    /// later arrivals must get UIDs at or above it). Writes only if it moved.
    pub(crate) fn announce(&mut self, id: MailboxId) -> Result<(), Fail> {
        self.announce_after(id, false)
    }

    /// [`Session::announce`], saying whether the session has just caught
    /// up with its peers ([`Session::catch_up`]): if not, and there are new
    /// UIDs to show, it catches up first, so that UIDs another replica
    /// showed reach this one before it shows its own.
    pub(crate) fn announce_after(&mut self, id: MailboxId, caught_up: bool) -> Result<(), Fail> {
        let account = self.account_name().to_string();
        if self.shared.store.announce_due(&account, id)? {
            if !caught_up {
                self.catch_up();
            }
            self.write(|b| Ok(b.replica().announce(id)?))?;
        }
        Ok(())
    }

    /// [`Session::catch_up`] for a command that can wait without holding
    /// a thread (SELECT, EXAMINE): the first attempt asks the peers what
    /// they have (`Store::begin_catch_up`); until this replica holds what
    /// k connected peers had then, or the wait is over (logged and
    /// counted), the command parks ([`Wants::CatchUp`]) and runs again.
    pub(crate) fn catch_up_or_park(&mut self) -> Result<(), Fail> {
        let policy = &self.shared.config.exposure;
        if policy.peers == 0 {
            return Ok(());
        }
        let account = self.account_name().to_string();
        let store = &self.shared.store;
        let until = match self.caught.until {
            Some(u) => u,
            None => {
                self.caught.probe = store.begin_catch_up(&account);
                *self.caught.until.insert(self.now + policy.wait)
            }
        };
        match store.catch_up_status(&account, policy, self.caught.probe, self.now, until) {
            None => return Err(Fail::CatchUp),
            Some(Exposed::Short { peers }) => {
                tracing::warn!(account, peers, "shown before catching up with the peers wanted")
            }
            Some(_) => {}
        }
        self.caught.until = None;
        Ok(())
    }

    /// With exposure after k peers: waits until this replica holds what k
    /// connected peers hold now (`Store::wait_caught_up`), so that a client
    /// failing over to a replica that lagged is shown what the others
    /// showed, not an older state. Past the wait, goes on (logged). This
    /// blocks its thread: for updates outside a command (NOOP's and IDLE's
    /// new UIDs, STATUS), where parking would repeat output already made.
    pub(crate) fn catch_up(&mut self) {
        let policy = &self.shared.config.exposure;
        if policy.peers == 0 {
            return;
        }
        let account = self.account_name().to_string();
        let until = Instant::now() + policy.wait;
        if let Exposed::Short { peers } = self.shared.store.wait_caught_up(&account, policy, until) {
            tracing::warn!(account, peers, "shown before catching up with the peers wanted");
        }
    }
}

/// The full name of any mailbox, deleted ones too (a deleted mailbox is
/// not in `by_name`); `None` if its parents loop or are unknown. Bounded
/// by the number of mailboxes.
pub(crate) fn full_name(tree: &starling_model::MailboxTree, id: MailboxId) -> Option<String> {
    let mut parts = Vec::new();
    let mut at = Some(id);
    while let Some(i) = at {
        if parts.len() > tree.entries.len() {
            return None;
        }
        let e = tree.entries.get(&i)?;
        parts.push(e.name.as_str());
        at = e.parent;
    }
    parts.reverse();
    Some(parts.join(&DELIMITER.to_string()))
}

/// Longest mailbox name (or LIST pattern) a command may give, in bytes,
/// as written and in the stored form: `NO [LIMIT]` past it. (Each level
/// of a stored name is held to the model's
/// [`starling_model::account::MAILBOX_NAME_LEN_MAX`] as well.)
pub const NAME_BYTES_MAX: usize = 1024;

/// Writes a stored name as the client reads it (see [`crate::mutf7`]):
/// for a UTF-8 client its text, quoted if need be.
pub(crate) fn name_wire(utf8: bool, out: &mut Vec<u8>, stored: &str) {
    let shown = crate::mutf7::shown(utf8, stored);
    if utf8 {
        wire::astring_utf8(out, &shown)
    } else {
        wire::astring(out, shown.as_bytes())
    }
}

impl Session {
    /// Mailbox names are UTF-8 to this client: it enabled UTF8=ACCEPT
    /// (RFC 6855) or IMAP4rev2 (RFC 9051 §5.1); else modified UTF-7.
    pub(crate) fn utf8_names(&self) -> bool {
        self.enabled.utf8 || self.enabled.rev2
    }

    /// A mailbox name a command gave, in its stored form.
    pub(crate) fn name_in(&self, m: &Mailbox<'_>) -> Result<String, Fail> {
        match m {
            Mailbox::Inbox => Ok("INBOX".into()),
            Mailbox::Other(o) => self.stored_name(o.as_ref(), self.utf8_names()),
        }
    }

    /// Writes a stored name as this client reads it.
    pub(crate) fn wire_name(&self, out: &mut Vec<u8>, stored: &str) {
        name_wire(self.utf8_names(), out, stored)
    }

    /// The stored form (modified UTF-7, [`crate::mutf7`]) of a name a
    /// client wrote in UTF-8 (`utf8`) or in modified UTF-7: the one place
    /// names are converted on their way in. UTF-8 must be valid, without
    /// the characters RFC 6855 §3 excludes, and is taken in NFC; modified
    /// UTF-7 must be canonical. A name stored before names were checked
    /// (not modified UTF-7) is taken as it is stored, and only if it exists.
    pub(crate) fn stored_name(&self, raw: &[u8], utf8: bool) -> Result<String, Fail> {
        use unicode_normalization::UnicodeNormalization;
        if raw.len() > NAME_BYTES_MAX {
            return Err(Fail::No(format!("[LIMIT] mailbox name longer than {NAME_BYTES_MAX} bytes")));
        }
        let exists = |name: &str| -> Result<bool, Fail> { Ok(Self::resolve(&self.reader()?, name).is_some()) };
        let stored = if utf8 {
            let text = std::str::from_utf8(raw).map_err(|_| Fail::Bad("mailbox name is not valid UTF-8".into()))?;
            if let Some(c) = crate::mutf7::forbidden(text) {
                let why = format!("mailbox name holds U+{:04X} (RFC 6855 section 3 excludes it)", c as u32);
                return Err(Fail::Bad(why));
            }
            let text: String = text.nfc().collect();
            if text.eq_ignore_ascii_case("INBOX") {
                return Ok("INBOX".into());
            }
            let stored = crate::mutf7::encode(&text);
            if stored != text && crate::mutf7::decode(&text).is_none() && !exists(&stored)? && exists(&text)? {
                return Ok(text);
            }
            stored
        } else {
            let text = String::from_utf8_lossy(raw);
            if text.eq_ignore_ascii_case("INBOX") {
                return Ok("INBOX".into());
            }
            if crate::mutf7::decode(&text).is_none() {
                if std::str::from_utf8(raw).is_ok() && exists(&text)? {
                    return Ok(text.into_owned());
                }
                return Err(Fail::Bad(if raw.is_ascii() {
                    "invalid modified UTF-7 in mailbox name (RFC 3501 section 5.1.3)".into()
                } else {
                    "8-bit mailbox name: ENABLE UTF8=ACCEPT first (RFC 6855), or write it in modified UTF-7".into()
                }));
            }
            text.into_owned()
        };
        let level_max = starling_model::account::MAILBOX_NAME_LEN_MAX;
        if stored.len() > NAME_BYTES_MAX || stored.split(DELIMITER).any(|l| l.len() > level_max) {
            return Err(Fail::No(format!(
                "[LIMIT] mailbox name too long: at most {NAME_BYTES_MAX} bytes, {level_max} a level, once stored"
            )));
        }
        Ok(stored)
    }
}
