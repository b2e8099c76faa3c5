//! COMPRESS=DEFLATE (RFC 4978) over a real TCP connection to the tokio
//! shell: raw DEFLATE both ways after the OK, responses parsed by
//! imap-codec, and a decompression bomb refused by the ordinary line limit.

mod common;
use common::serve_alice;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use imap_codec::decode::Decoder;
use imap_codec::{GreetingCodec, ResponseCodec};
use std::io::{Read, Write};
use std::net::TcpStream;

struct Client {
    tcp: TcpStream,
    /// Set once COMPRESS is on.
    z: Option<(Compress, Decompress)>,
    /// Received (inflated) bytes not yet returned.
    got: Vec<u8>,
}

impl Client {
    fn write(&mut self, bytes: &[u8]) {
        match &mut self.z {
            None => self.tcp.write_all(bytes).unwrap(),
            Some((c, _)) => {
                let mut input = bytes;
                loop {
                    let mut out = Vec::with_capacity(64 * 1024);
                    let before = c.total_in();
                    let flush = if input.is_empty() { FlushCompress::Sync } else { FlushCompress::None };
                    c.compress_vec(input, &mut out, flush).unwrap();
                    input = &input[(c.total_in() - before) as usize..];
                    self.tcp.write_all(&out).unwrap();
                    if input.is_empty() && flush == FlushCompress::Sync && out.len() < out.capacity() {
                        break;
                    }
                }
            }
        }
    }

    /// Reads until the tagged response for `tag` (or end of stream): every
    /// response in between must parse.
    fn until(&mut self, tag: &str) -> String {
        let want = format!("{tag} ");
        loop {
            let text = String::from_utf8_lossy(&self.got).into_owned();
            if let Some(at) = text.find(&format!("\r\n{want}")).map(|i| i + 2).or(text.starts_with(&want).then_some(0))
            {
                if let Some(end) = text[at..].find("\r\n") {
                    let all: Vec<u8> = self.got.drain(..at + end + 2).collect();
                    let mut rest = &all[..];
                    while !rest.is_empty() {
                        match ResponseCodec::default().decode(rest) {
                            Ok((r, _)) => rest = r,
                            Err(e) => panic!("invalid response {e:?}: {}", String::from_utf8_lossy(rest)),
                        }
                    }
                    return String::from_utf8(all).unwrap();
                }
            }
            let mut buf = [0u8; 8192];
            let n = self.tcp.read(&mut buf).unwrap();
            if n == 0 {
                return String::from_utf8_lossy(&std::mem::take(&mut self.got)).into_owned();
            }
            match &mut self.z {
                None => self.got.extend_from_slice(&buf[..n]),
                Some((_, d)) => {
                    let mut input = &buf[..n];
                    loop {
                        let mut out = Vec::with_capacity(64 * 1024);
                        let before = d.total_in();
                        d.decompress_vec(input, &mut out, FlushDecompress::Sync).unwrap();
                        input = &input[(d.total_in() - before) as usize..];
                        self.got.extend_from_slice(&out);
                        if input.is_empty() && out.len() < out.capacity() {
                            break;
                        }
                    }
                }
            }
        }
    }

    fn send(&mut self, tag: &str, command: &str) -> String {
        self.write(format!("{tag} {command}\r\n").as_bytes());
        self.until(tag)
    }
}

fn connect(addr: std::net::SocketAddr) -> Client {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(120))).unwrap();
    let mut c = Client { tcp, z: None, got: Vec::new() };
    let mut buf = [0u8; 4096];
    while !c.got.ends_with(b"\r\n") {
        let n = c.tcp.read(&mut buf).unwrap();
        assert!(n > 0);
        c.got.extend_from_slice(&buf[..n]);
    }
    GreetingCodec::default().decode(&c.got).expect("a greeting");
    c.got.clear();
    c
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn compress_deflate_login_select_fetch() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut c = connect(serve_alice(&rt, dir.path()));
    let out = c.send("a", "CAPABILITY");
    assert!(!out.contains("COMPRESS=DEFLATE"), "{out}");
    assert!(c.send("b", "COMPRESS DEFLATE").contains("b BAD"));
    assert!(c.send("c", "LOGIN alice pw").contains("c OK"));
    assert!(c.send("d", "CAPABILITY").contains(" COMPRESS=DEFLATE"));
    assert!(c.send("e", "COMPRESS GZIP").contains("e BAD"));
    assert!(c.send("f", "COMPRESS DEFLATE").contains("f OK"));
    c.z = Some((Compress::new(Compression::default(), false), Decompress::new(false)));
    let msg = "Subject: squeezed\r\n\r\nhello hello hello hello\r\n";
    let out = c.send("g", &format!("APPEND INBOX {{{}+}}\r\n{msg}", msg.len()));
    assert!(out.contains("g OK"), "{out}");
    let out = c.send("h", "SELECT INBOX");
    assert!(out.contains("* 1 EXISTS") && out.contains("h OK"), "{out}");
    let out = c.send("i", "FETCH 1 (UID BODY[])");
    assert!(out.contains("hello hello hello hello") && out.contains("i OK"), "{out}");
    let out = c.send("j", "COMPRESS DEFLATE");
    assert!(out.contains("j NO [COMPRESSIONACTIVE]"), "{out}");
    assert!(!c.send("k", "CAPABILITY").contains("COMPRESS=DEFLATE"));
    // A large response crosses many deflate buffers.
    let big = format!("Subject: big\r\n\r\n{}\r\n", "0123456789abcdef".repeat(64 * 1024));
    assert!(c.send("l", &format!("APPEND INBOX {{{}+}}\r\n{big}", big.len())).contains("l OK"));
    let out = c.send("m", "FETCH 2 BODY[]");
    assert!(out.contains(&big) && out.contains("m OK"));
    let out = c.send("n", "LOGOUT");
    assert!(out.contains("* BYE") && out.contains("n OK"), "{out}");
}

/// 64 MiB of zeros in one command line, sent compressed (about 64 KiB on
/// the wire): the inflater hands the session a read's worth at a time, so
/// the 64 KiB line limit refuses it as it would plain input, and the
/// connection goes on.
#[test]
fn compressed_bomb_meets_the_line_limit() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut c = connect(serve_alice(&rt, dir.path()));
    assert!(c.send("a", "LOGIN alice pw").contains("a OK"));
    assert!(c.send("b", "COMPRESS DEFLATE").contains("b OK"));
    c.z = Some((Compress::new(Compression::default(), false), Decompress::new(false)));
    c.write(b"x SEARCH SUBJECT ");
    let zeros = vec![b'0'; 1 << 20];
    for _ in 0..64 {
        c.write(&zeros);
    }
    c.write(b"\r\n");
    let out = c.until("x");
    assert!(out.contains("x BAD [TOOBIG]"), "{out}");
    assert!(c.send("y", "NOOP").contains("y OK"));
}
