//! ENABLE (RFC 5161): CONDSTORE, QRESYNC (RFC 7162), IMAP4rev2 (RFC 9051)
//! and UTF8=ACCEPT (RFC 6855).

use crate::session::{Done, Session};
use imap_codec::imap_types::extensions::enable::CapabilityEnable;

impl Session {
    /// ENABLE: turns on what the client names of CONDSTORE, QRESYNC,
    /// IMAP4rev2 and UTF8=ACCEPT, and says which; any other is ignored.
    pub(crate) fn enable(&mut self, capabilities: &[CapabilityEnable<'_>]) -> Done {
        let mut on = Vec::new();
        for c in capabilities {
            match c {
                CapabilityEnable::CondStore => {
                    self.enabled.condstore = true;
                    on.push("CONDSTORE");
                }
                other if other.to_string().eq_ignore_ascii_case("QRESYNC") => {
                    self.enabled.qresync = true;
                    self.enabled.condstore = true;
                    on.push("QRESYNC");
                }
                other if other.to_string().eq_ignore_ascii_case("IMAP4rev2") => {
                    self.enabled.rev2 = true;
                    on.push("IMAP4rev2");
                }
                other if other.to_string().eq_ignore_ascii_case("UTF8=ACCEPT") => {
                    self.enabled.utf8 = true;
                    on.push("UTF8=ACCEPT");
                }
                _ => {}
            }
        }
        self.untagged(format!("ENABLED {}", on.join(" ")).trim_end());
        Ok("ENABLE completed".into())
    }
}
