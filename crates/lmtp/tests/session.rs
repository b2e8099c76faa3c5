//! Properties of the LMTP session over any input: how the input is split
//! into reads changes nothing, a properly dot-stuffed message comes back as
//! sent (bare LF as CRLF), every reply is well formed, and what the session
//! holds stays within its limits.

use proptest::prelude::*;
use starling_lmtp::{Limits, NotDelivered, Session, Wants, OUTPUT_HIGH};

#[derive(Default, Debug, PartialEq)]
struct Log(Vec<(String, Vec<u8>)>);

impl Log {
    fn account(&mut self, address: &str) -> Option<String> {
        ["alice", "bob"].contains(&address).then(|| address.to_string())
    }
    fn deliver(&mut self, account: &str, message: &[u8]) -> Result<(), NotDelivered> {
        if message.len() % 7 == 3 {
            return Err("try later".into());
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

/// Feeds `input` in reads of the given sizes (cycled); the output and the
/// deliveries.
fn run(input: &[u8], reads: &[usize], limits: Limits) -> (Vec<u8>, Log) {
    let mut s = Session::new(limits);
    let mut log = Log::default();
    let mut out = s.take_output();
    let (mut pos, mut k) = (0, 0);
    while pos < input.len() && !s.is_closed() {
        let end = (pos + reads[k % reads.len()].max(1)).min(input.len());
        k += 1;
        while pos < end && !s.is_closed() {
            pos += s.receive(&input[pos..end]);
            log.answer(&mut s);
            assert!(s.buffered() <= limits.line_max + 1 + limits.message_max + 64, "held {}", s.buffered());
            let o = s.take_output();
            assert!(o.len() <= OUTPUT_HIGH + 1024);
            out.extend(o);
        }
    }
    (out, log)
}

fn well_formed(out: &[u8]) {
    let text = String::from_utf8_lossy(out);
    assert!(text.ends_with("\r\n"), "{text:?}");
    for line in text.split_terminator("\r\n") {
        let b = line.as_bytes();
        assert!(b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit) && (b[3] == b' ' || b[3] == b'-'), "{line:?}");
        assert!(!line.contains('\n') && !line.contains('\r'));
    }
}

/// Dot-stuffs message lines and ends them with CRLF.CRLF.
fn stuffed(lines: &[Vec<u8>], bare_lf: &[bool]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(l);
        // A bare LF only where the next line does not start with a dot
        // (there a bare LF is legal but the dot line would stay content).
        out.extend_from_slice(if bare_lf[i % bare_lf.len()] { b"\n" } else { b"\r\n" });
    }
    out.extend_from_slice(b".\r\n");
    out
}

fn limits() -> Limits {
    Limits { line_max: 64, message_max: 512, recipients_max: 3 }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn splitting_the_input_changes_nothing(
        input in proptest::collection::vec(prop_oneof![
            Just(b"LHLO x\r\n".to_vec()), Just(b"MAIL FROM:<a@x>\r\n".to_vec()), Just(b"RCPT TO:<alice>\r\n".to_vec()),
            Just(b"RCPT TO:<bob>\r\n".to_vec()), Just(b"DATA\r\n".to_vec()), Just(b".\r\n".to_vec()), Just(b"\r\n".to_vec()),
            Just(b"\n".to_vec()), Just(b".\n".to_vec()), Just(b"\r".to_vec()), Just(b"..".to_vec()), Just(b"RSET\r\n".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..80),
        ], 0..40),
        reads in proptest::collection::vec(1usize..50, 1..8),
    ) {
        let input = input.concat();
        let whole = run(&input, &[usize::MAX], limits());
        let split = run(&input, &reads, limits());
        prop_assert_eq!(&whole, &split);
        well_formed(&whole.0);
        for (_, m) in &whole.1 .0 {
            prop_assert!(m.windows(2).all(|w| w[1] != b'\n' || w[0] == b'\r'), "bare LF stored");
        }
    }

    #[test]
    fn a_stuffed_message_comes_back_as_sent(
        lines in proptest::collection::vec(proptest::collection::vec(prop_oneof![Just(b'.'), Just(b'a'), Just(b'\r'), Just(b' ')], 0..12), 0..30),
        bare_lf in proptest::collection::vec(any::<bool>(), 1..5),
        reads in proptest::collection::vec(1usize..20, 1..5),
    ) {
        // A CR at a line's end would merge with the LF that follows.
        let lines: Vec<Vec<u8>> = lines.into_iter().map(|mut l| { while l.last() == Some(&b'\r') { l.pop(); } l }).collect();
        // A bare LF before a line starting with a dot makes that line
        // content; the properly ended data must then follow a CRLF.
        let bare: Vec<bool> = (0..lines.len()).map(|i| bare_lf[i % bare_lf.len()]).collect();
        let data = stuffed(&lines, &bare);
        let mut input = b"LHLO x\r\nMAIL FROM:<a@x>\r\nRCPT TO:<alice>\r\nDATA\r\n".to_vec();
        input.extend_from_slice(&data);
        input.extend_from_slice(b"NOOP\r\n");
        let big = Limits { message_max: 1 << 20, ..limits() };
        let (out, log) = run(&input, &reads, big);
        let ends_bare = bare.last() == Some(&true);
        if ends_bare {
            // `.` CRLF after a bare-LF line is content: still in DATA.
            prop_assert!(log.0.is_empty());
        } else if log.0.is_empty() {
            // The backend refused it (451).
            prop_assert!(String::from_utf8_lossy(&out).contains("451 4.3.0"));
        } else {
            let mut want = b"Return-Path: <a@x>\r\n".to_vec();
            for l in &lines {
                want.extend_from_slice(l);
                want.extend_from_slice(b"\r\n");
            }
            prop_assert_eq!(&log.0[0].1, &want);
            prop_assert!(String::from_utf8_lossy(&out).ends_with("250 2.0.0 <alice> delivered\r\n250 2.0.0 OK\r\n"));
        }
    }
}
