//! LMTP delivery (RFC 2033) into INBOX: what Postfix's `lmtp:` transport (or
//! any MTA) speaks to hand mail to the node. Each recipient gets its own
//! reply after DATA; `250` is sent only once that recipient's message is
//! committed (fsync) in the store. The recipient's account is the address's
//! local part, or the whole address if an account has that name.

use starling_model::INBOX;
use starling_store::Store;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

/// Longest command line accepted (RFC 5321 allows 512 with the CRLF).
const LINE_MAX: usize = 1000;
/// Largest message accepted.
pub const MESSAGE_MAX: usize = 64 << 20;
/// Most recipients per transaction.
const RECIPIENTS_MAX: usize = 1000;

/// Accepts LMTP connections until the task is dropped; `changes` hears the
/// account of every committed delivery (so peers get it at once).
pub async fn serve(listener: TcpListener, store: Arc<Store>, changes: broadcast::Sender<String>) {
    while let Ok((stream, _)) = listener.accept().await {
        let (store, changes) = (store.clone(), changes.clone());
        tokio::spawn(async move {
            let _ = session(stream, store, changes).await;
        });
    }
}

enum Line {
    Text(String),
    TooLong,
    Closed,
}

/// Reads one CRLF- (or LF-) terminated line of at most `max` bytes.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R, max: usize) -> std::io::Result<Line> {
    let mut buf = Vec::new();
    let n = tokio::io::AsyncReadExt::take(&mut *r, max as u64 + 1).read_until(b'\n', &mut buf).await?;
    if n == 0 {
        return Ok(Line::Closed);
    }
    if !buf.ends_with(b"\n") {
        if buf.len() > max {
            // Skip the rest of the over-long line.
            let mut rest = Vec::new();
            r.read_until(b'\n', &mut rest).await?;
            return Ok(Line::TooLong);
        }
        return Ok(Line::Closed);
    }
    while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        buf.pop();
    }
    Ok(Line::Text(String::from_utf8_lossy(&buf).into_owned()))
}

/// The address inside `<…>` after a `FROM:`/`TO:` prefix.
fn address(arg: &str, prefix: &str) -> Option<String> {
    let rest = arg.get(..prefix.len()).filter(|p| p.eq_ignore_ascii_case(prefix)).map(|_| &arg[prefix.len()..])?;
    let rest = rest.trim_start();
    let inner = rest.strip_prefix('<')?.split('>').next()?;
    Some(inner.to_string())
}

fn account_for(store: &Store, rcpt: &str) -> Option<String> {
    let accounts = store.accounts();
    if accounts.iter().any(|a| a == rcpt) {
        return Some(rcpt.to_string());
    }
    let local = rcpt.split('@').next()?;
    accounts.into_iter().find(|a| a == local)
}

async fn session(stream: TcpStream, store: Arc<Store>, changes: broadcast::Sender<String>) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"220 starling LMTP ready\r\n").await?;
    let mut greeted = false;
    let mut from: Option<String> = None;
    let mut rcpts: Vec<(String, String)> = Vec::new();
    loop {
        let line = match read_line(&mut r, LINE_MAX).await? {
            Line::Closed => return Ok(()),
            Line::TooLong => {
                w.write_all(b"500 5.5.2 line too long\r\n").await?;
                continue;
            }
            Line::Text(l) => l,
        };
        let (verb, arg) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        let reply: String = match verb.to_ascii_uppercase().as_str() {
            "LHLO" if arg.trim().is_empty() => "501 5.5.4 LHLO needs a host name".into(),
            "LHLO" => {
                greeted = true;
                (from, rcpts) = (None, Vec::new());
                format!("250-starling\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250 SIZE {MESSAGE_MAX}")
            }
            "HELO" | "EHLO" => "500 5.5.1 this is LMTP: use LHLO".into(),
            "MAIL" if !greeted => "503 5.5.1 LHLO first".into(),
            "MAIL" if from.is_some() => "503 5.5.1 nested MAIL".into(),
            "MAIL" => match address(arg, "FROM:") {
                Some(a) => {
                    from = Some(a);
                    "250 2.1.0 OK".into()
                }
                None => "501 5.5.4 expected MAIL FROM:<address>".into(),
            },
            "RCPT" if from.is_none() => "503 5.5.1 MAIL first".into(),
            "RCPT" if rcpts.len() >= RECIPIENTS_MAX => "452 4.5.3 too many recipients".into(),
            "RCPT" => match address(arg, "TO:") {
                None => "501 5.5.4 expected RCPT TO:<address>".into(),
                Some(a) => match account_for(&store, &a) {
                    Some(acct) => {
                        rcpts.push((a, acct));
                        "250 2.1.5 OK".into()
                    }
                    None => format!("550 5.1.1 <{a}> no such user here"),
                },
            },
            "DATA" if rcpts.is_empty() => "503 5.5.1 no valid recipients".into(),
            "DATA" => {
                w.write_all(b"354 2.0.0 send the message, end with <CRLF>.<CRLF>\r\n").await?;
                let body = match read_data(&mut r).await? {
                    Some(b) => b,
                    None => return Ok(()),
                };
                let mut out = String::new();
                match body {
                    Err(why) => {
                        for _ in &rcpts {
                            out.push_str(&format!("{why}\r\n"));
                        }
                    }
                    Ok(raw) => {
                        let mut msg = format!("Return-Path: <{}>\r\n", from.as_deref().unwrap_or("")).into_bytes();
                        msg.extend_from_slice(&raw);
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs() as i64);
                        for (addr, acct) in &rcpts {
                            let stored = tokio::task::block_in_place(|| {
                                store.write(acct, |b| b.append(INBOX, &msg, now, vec![]).map(|_| ()))
                            });
                            match stored {
                                Ok(()) => {
                                    let _ = changes.send(acct.clone());
                                    out.push_str(&format!("250 2.0.0 <{addr}> delivered\r\n"));
                                }
                                Err(e) => out.push_str(&format!("451 4.3.0 <{addr}> not delivered: {e}\r\n")),
                            }
                        }
                    }
                }
                (from, rcpts) = (None, Vec::new());
                w.write_all(out.as_bytes()).await?;
                continue;
            }
            "RSET" => {
                (from, rcpts) = (None, Vec::new());
                "250 2.0.0 OK".into()
            }
            "NOOP" => "250 2.0.0 OK".into(),
            "VRFY" => "252 2.5.0 cannot verify, send the message".into(),
            "QUIT" => {
                w.write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(());
            }
            _ => "500 5.5.1 unknown command".into(),
        };
        w.write_all(format!("{reply}\r\n").as_bytes()).await?;
    }
}

/// Reads a DATA section up to the lone dot, undoing dot-stuffing; lines end
/// in CRLF in the stored message. `Ok(Err(reply))` when it was too large
/// (read to the end anyway, so the session goes on); `None` if the
/// connection closed before the dot (nothing is delivered).
async fn read_data<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> std::io::Result<Option<Result<Vec<u8>, String>>> {
    let mut out = Vec::new();
    let mut too_large = false;
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line).await? == 0 || !line.ends_with(b"\n") {
            return Ok(None);
        }
        let content = line.strip_suffix(b"\r\n").or_else(|| line.strip_suffix(b"\n")).unwrap_or(&line);
        if content == b"." {
            break;
        }
        let content = content.strip_prefix(b".").unwrap_or(content);
        if out.len() + content.len() + 2 > MESSAGE_MAX {
            too_large = true;
            out.clear();
        }
        if !too_large {
            out.extend_from_slice(content);
            out.extend_from_slice(b"\r\n");
        }
    }
    Ok(Some(if too_large { Err(format!("552 5.3.4 message larger than {MESSAGE_MAX} bytes")) } else { Ok(out) }))
}
