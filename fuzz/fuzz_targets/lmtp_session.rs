//! Any bytes from an LMTP client into a session (`starling-lmtp`), with small
//! limits chosen by the first byte: no panic; the same output and deliveries
//! however the input is split into reads; every reply line well formed;
//! what the session holds within its limits; every delivered message within
//! the size limit with every line ended by CRLF.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling_lmtp::{Limits, NotDelivered, Session, Wants, OUTPUT_HIGH};

#[derive(Default, PartialEq, Debug)]
struct Log(Vec<(String, Vec<u8>)>);

impl Log {
    fn account(&mut self, address: &str) -> Option<String> {
        let local = address.split('@').next()?;
        ["alice", "bob"].contains(&local).then(|| local.to_string())
    }
    fn deliver(&mut self, account: &str, message: &[u8]) -> Result<(), NotDelivered> {
        if message.len() % 5 == 0 {
            return Err("try\r\nlater".into());
        }
        self.0.push((account.to_string(), message.to_vec()));
        Ok(())
    }
    /// Answers what the session waits for, as a store would.
    fn answer(&mut self, s: &mut Session) {
        match s.wants() {
            Wants::Read => {}
            Wants::Account => {
                let to = s.recipient().expect("a recipient").to_string();
                s.found(self.account(&to));
            }
            Wants::Deliver => {
                let d = s.take_delivery().expect("a delivery");
                s.delivered(d.accounts.iter().map(|a| self.deliver(a, &d.message)).collect());
            }
        }
    }
}

/// Feeds `input` in reads whose sizes come from `seed`; checks the bounds as
/// it goes.
fn run(input: &[u8], limits: Limits, mut seed: u32) -> (Vec<u8>, Log) {
    let mut s = Session::new(limits);
    let mut log = Log::default();
    let mut out = s.take_output();
    let mut pos = 0;
    while pos < input.len() && !s.is_closed() {
        let read = if seed == 0 {
            input.len()
        } else {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            1 + (seed >> 16) as usize % 97
        };
        let end = (pos + read).min(input.len());
        while pos < end && !s.is_closed() {
            pos += s.receive(&input[pos..end]);
            log.answer(&mut s);
            assert!(s.buffered() <= limits.line_max + 1 + limits.message_max + 64, "held {}", s.buffered());
            let o = s.take_output();
            assert!(o.len() <= OUTPUT_HIGH + 1024, "output {}", o.len());
            out.extend(o);
        }
    }
    (out, log)
}

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, input)) = data.split_first() else { return };
    let limits = Limits {
        line_max: [8, 64, 1000][knobs as usize % 3],
        message_max: [0, 40, 300, 1 << 16][(knobs as usize / 3) % 4],
        recipients_max: 1 + (knobs as usize / 12) % 3,
    };
    let whole = run(input, limits, 0);
    let split = run(input, limits, 1 + u32::from(knobs));
    assert_eq!(whole, split, "splitting the input changed the session");
    let (out, log) = whole;
    assert!(out.ends_with(b"\r\n"));
    for line in out.split(|b| *b == b'\n') {
        if line.is_empty() {
            continue;
        }
        let line = line.strip_suffix(b"\r").expect("reply lines end with CRLF");
        assert!(line.len() >= 4, "{line:?}");
        assert!(line[..3].iter().all(u8::is_ascii_digit) && (line[3] == b' ' || line[3] == b'-'), "{line:?}");
        assert!(!line.contains(&b'\r'), "CR inside a reply line");
    }
    for (_, m) in &log.0 {
        let header_end = m.iter().position(|b| *b == b'\n').expect("Return-Path line") + 1;
        assert!(m.len() - header_end <= limits.message_max);
        assert!(m.windows(2).all(|w| w[1] != b'\n' || w[0] == b'\r'), "bare LF stored");
        assert!(m.len() == header_end || m.ends_with(b"\r\n"), "the last line ends with CRLF");
    }
});
