//! LOGIN and AUTHENTICATE PLAIN (RFC 9051, RFC 4616, SASL-IR RFC 4959),
//! and the hand-off of the password check: a login waits out its penalty
//! ([`Wants::Pause`]), then the guard's password pool verifies it
//! ([`Wants::Verify`], [`Session::verify_job`], [`Session::verified`]);
//! the defences themselves are in [`crate::auth`].

use crate::session::{Fail, Mode, Session, Wants};
use imap_codec::decode::Decoder;
use imap_codec::imap_types::auth::{AuthMechanism, AuthenticateData};
use imap_codec::imap_types::core::Tag;
use imap_codec::imap_types::secret::Secret;
use imap_codec::AuthenticateDataCodec;
use std::borrow::Cow;
use std::time::Instant;

/// A login waiting out its penalty ([`Wants::Pause`]) or its verification
/// ([`Wants::Verify`]).
pub(crate) struct PendingLogin {
    tag: String,
    user: String,
    password: Vec<u8>,
    /// The stored credential handed to the pool (the cache keys on the
    /// one checked, whatever was stored meanwhile).
    credential: Option<String>,
}

impl Session {
    /// AUTHENTICATE (RFC 9051), with SASL-IR's initial response (RFC 4959):
    /// PLAIN only (RFC 4616). `Ok` when it is answered here or waits (for
    /// the client's response, or for the login's penalty or verification);
    /// an `Err` is answered as any command's.
    pub(crate) fn authenticate(
        &mut self,
        tag: &str,
        mechanism: AuthMechanism<'_>,
        initial_response: Option<Secret<Cow<'_, [u8]>>>,
    ) -> Result<(), Fail> {
        if mechanism != AuthMechanism::Plain {
            Err(Fail::No("[CANNOT] only AUTHENTICATE PLAIN is supported".into()))
        } else if let Some(ir) = initial_response {
            self.login_plain(tag, ir.declassify().as_ref());
            Ok(())
        } else {
            self.out.extend_from_slice(b"+ \r\n");
            self.mode = Mode::Authenticate(Tag::unvalidated(tag.to_string()));
            Ok(())
        }
    }

    /// The client's response to AUTHENTICATE's `+`: the PLAIN message, or
    /// `*` to cancel.
    pub(crate) fn authenticate_data(&mut self, tag: &Tag<'static>, message: &[u8]) {
        match AuthenticateDataCodec::default().decode(message) {
            Ok((b"", AuthenticateData::Continue(data))) => self.login_plain(tag.as_ref(), data.declassify()),
            Ok((b"", AuthenticateData::Cancel)) => self.tagged(tag.as_ref(), "BAD", "authentication cancelled"),
            _ => {
                self.tagged(tag.as_ref(), "BAD", "malformed authentication data");
                self.error();
            }
        }
    }

    /// LOGIN or AUTHENTICATE PLAIN: answers at once when the password is
    /// a cached verification or neither the address nor the account is
    /// penalised; otherwise pauses for the penalty first (see
    /// [`crate::auth`]).
    pub(crate) fn login(&mut self, tag: &str, user: &str, password: &[u8]) {
        if !self.plaintext_allowed() {
            let why = "[PRIVACYREQUIRED] use TLS (STARTTLS or the implicit TLS port) to log in";
            return self.finish(tag, Err(Fail::No(why.into())));
        }
        let guard = &self.shared.guard;
        if let Some(credential) = self.shared.store.credential(user).ok().flatten() {
            if guard.cached(self.now, user, &credential, password) {
                let r = self.logged_in(user);
                return self.finish(tag, r);
            }
        }
        let wait = guard.penalty(self.now, self.peer, user);
        self.pending_login = Some(PendingLogin {
            tag: tag.to_string(),
            user: user.to_string(),
            password: password.to_vec(),
            credential: None,
        });
        self.wants = if wait.is_zero() { Wants::Verify } else { Wants::Pause(wait) };
    }

    /// After [`Wants::Verify`]: what the pool is to check, the account's
    /// stored credential (none: the dummy run, an unknown name costs the
    /// same) and the password. `None` if nothing waits (the session timed
    /// out meanwhile).
    pub fn verify_job(&mut self) -> Option<(Option<String>, Vec<u8>)> {
        if self.wants != Wants::Verify {
            return None;
        }
        let p = self.pending_login.as_mut()?;
        p.credential = self.shared.store.credential(&p.user).ok().flatten();
        Some((p.credential.clone(), p.password.clone()))
    }

    /// The pool's answer for [`Session::verify_job`]: `Some(valid)`, or
    /// `None` if its queue was full (the login is refused, to try again
    /// later). Answers the login and goes on with the input received
    /// meanwhile. Does nothing if no login waits for it.
    pub fn verified(&mut self, now: Instant, valid: Option<bool>) {
        if self.wants != Wants::Verify {
            return;
        }
        self.wants = Wants::Read;
        let Some(p) = self.pending_login.take() else { return };
        self.now = now;
        let guard = &self.shared.guard;
        let r = match valid {
            None => Err(Fail::No("[UNAVAILABLE] too many logins being verified; try again shortly".into())),
            Some(true) => {
                guard.succeeded(now, self.peer, &p.user, p.credential.as_deref().unwrap_or_default(), &p.password);
                self.logged_in(&p.user)
            }
            Some(false) => {
                guard.failed(now, self.peer, &p.user);
                // For fail2ban and the like. The name is the client's: quoted
                // and escaped (Debug), and cut short.
                let shown: String = p.user.chars().take(64).collect();
                tracing::info!(client = %self.peer, user = ?shown, "IMAP login failed");
                Err(Fail::No("[AUTHENTICATIONFAILED] invalid credentials".into()))
            }
        };
        self.finish(&p.tag, r);
        self.process();
    }

    /// [`Wants::Verify`] answered on this thread, waiting for the pool: for
    /// tests and the fuzzer (the server uses [`Session::verified`] without
    /// blocking a worker).
    pub fn verify_now(&mut self) {
        if let Some((credential, password)) = self.verify_job() {
            let ok = self.shared.guard.verify(credential.as_deref(), &password);
            // At the time the login came (tests drive time by hand).
            self.verified(self.now, Some(ok));
        }
    }

    fn login_plain(&mut self, tag: &str, message: &[u8]) {
        match crate::auth::parse_plain(message) {
            Some((user, password)) => self.login(tag, &user, &password),
            None => self.finish(tag, Err(Fail::Bad("malformed PLAIN message".into()))),
        }
    }
}
