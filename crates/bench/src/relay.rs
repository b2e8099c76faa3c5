//! A user-space delaying relay (the kernel here has no netem), for links
//! with round-trip time and loss:
//!
//! - UDP (default): datagrams between one client and the target, each
//!   held `delay` one way (so the round trip grows by twice that) and a
//!   fraction `loss` dropped, independently each way. One FIFO queue of
//!   (due time, datagrams) per direction: no reordering beyond what loss
//!   causes. Datagrams are received coalesced and sent in runs (GRO and
//!   GSO, through quinn-udp, as the nodes do), so the relay costs about
//!   as many system calls as the nodes' own sends, not two per datagram.
//! - TCP (`--tcp`): accepts connections and forwards each to the target,
//!   every chunk read held `delay` before it is written on.
//! - pipe (`--pipe -- CMD…`): runs CMD and relays standard input to it and
//!   its standard output back, with the same delay: the remote command of
//!   `doveadm sync`, whose protocol runs over a pipe.
//!
//! Timers are tokio's (millisecond resolution): a held datagram leaves up to
//! about 1 ms after its due time. When the relay itself falls behind (a
//! busy machine), datagrams leave later still; the stats report the worst
//! such lateness per direction, to judge a run by.
//!
//! A stream cannot lose bytes in user space (TCP retransmits below us), so
//! with `loss` the stream modes model it: the stream is cut into segments
//! of 1,448 bytes (an Ethernet MSS), each lost with probability `loss`; a
//! lost one arrives `loss_penalty` late (default one round trip, at least
//! 1 ms: TCP's fast retransmit) and everything behind it waits for it
//! (TCP delivers in order). Tail losses that TCP recovers only by a loss
//! probe or a retransmission timeout (10–200 ms) are not modelled, so this
//! is a lower bound on what loss costs a TCP stream.

use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on (UDP, or TCP with `--tcp`).
    #[arg(long, required_unless_present = "pipe")]
    listen: Option<SocketAddr>,
    /// Address to forward to.
    #[arg(long, required_unless_present = "pipe")]
    to: Option<SocketAddr>,
    /// Delay added one way, each direction (milliseconds).
    #[arg(long, default_value_t = 0.0)]
    delay_ms: f64,
    /// Fraction of datagrams dropped, each direction (0.01 = 1%).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Relay TCP connections instead of UDP datagrams.
    #[arg(long, conflicts_with = "pipe")]
    tcp: bool,
    /// Run the command after `--` and relay a pipe to it (stdin → its
    /// stdin, its stdout → stdout).
    #[arg(long)]
    pipe: bool,
    /// Streams only: how late a lost segment arrives (ms) [default: one
    /// round trip, at least 1 ms].
    #[arg(long)]
    loss_penalty_ms: Option<f64>,
    /// Pipe mode: write "BYTES_IN BYTES_OUT" (stdin → command, command →
    /// stdout) to this file at the end.
    #[arg(long)]
    counts: Option<PathBuf>,
    /// Seed of the loss draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The command (pipe mode).
    #[arg(last = true)]
    command: Vec<String>,
}

/// What went through, per direction (client → target is "up").
#[derive(Default)]
pub struct Stats {
    pub up_packets: AtomicU64,
    pub up_bytes: AtomicU64,
    pub up_dropped: AtomicU64,
    pub down_packets: AtomicU64,
    pub down_bytes: AtomicU64,
    pub down_dropped: AtomicU64,
    /// Longest a datagram waited past its due time (µs): the relay's own
    /// queueing, on top of the delay asked for.
    pub up_late_max_us: AtomicU64,
    pub down_late_max_us: AtomicU64,
}

impl Stats {
    pub fn line(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "up {} packets, {} bytes, {} dropped, late ≤ {:.1} ms; down {} packets, {} bytes, {} dropped, late ≤ {:.1} ms",
            g(&self.up_packets),
            g(&self.up_bytes),
            g(&self.up_dropped),
            g(&self.up_late_max_us) as f64 / 1000.0,
            g(&self.down_packets),
            g(&self.down_bytes),
            g(&self.down_dropped),
            g(&self.down_late_max_us) as f64 / 1000.0
        )
    }
}

/// Loss draws: xorshift64*, reproducible from a seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn lost(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
        (x as f64 / (1u64 << 53) as f64) < p
    }
}

/// A UDP socket with 4 MB buffers (as the nodes use: bursts on loopback
/// overflow the default ~200 KB), and quinn-udp's state for it: received
/// datagrams come coalesced (GRO) and held runs leave as one send (GSO),
/// as they do between the nodes without the relay.
fn udp_socket(addr: SocketAddr) -> std::io::Result<(UdpSocket, quinn_udp::UdpSocketState)> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    let state = quinn_udp::UdpSocketState::new((&s).into())?;
    Ok((UdpSocket::from_std(s.into())?, state))
}

/// Datagrams of one size (the last may be shorter) that travel together.
struct Run {
    due: Instant,
    bytes: Vec<u8>,
    segment: usize,
}

/// A socket with its quinn-udp state.
struct Udp {
    sock: UdpSocket,
    state: quinn_udp::UdpSocketState,
}

impl Udp {
    /// The next batch of datagrams from one sender: (sender, bytes, segment size).
    async fn recv(&self, buf: &mut [u8]) -> std::io::Result<(SocketAddr, usize, usize)> {
        loop {
            self.sock.readable().await?;
            let mut meta = [quinn_udp::RecvMeta::default()];
            let got = self.sock.try_io(tokio::io::Interest::READABLE, || {
                self.state.recv((&self.sock).into(), &mut [std::io::IoSliceMut::new(buf)], &mut meta)
            });
            match got {
                Ok(_) => return Ok((meta[0].addr, meta[0].len, meta[0].stride.max(1))),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    async fn send(&self, to: SocketAddr, bytes: &[u8], segment: usize) {
        let t = quinn_udp::Transmit {
            destination: to,
            ecn: None,
            contents: bytes,
            segment_size: (bytes.len() > segment).then_some(segment),
            src_ip: None,
        };
        loop {
            if self.sock.writable().await.is_err() {
                return;
            }
            match self.sock.try_io(tokio::io::Interest::WRITABLE, || self.state.send((&self.sock).into(), &t)) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                _ => return,
            }
        }
    }
}

/// Sends what `rx` holds, each run at its due time, to `dest` (or to the
/// current client), at most the socket's GSO segments per send.
async fn udp_sender(
    sock: Arc<Udp>,
    mut rx: mpsc::UnboundedReceiver<Run>,
    dest: Option<SocketAddr>,
    client: Arc<Mutex<Option<SocketAddr>>>,
    stats: Arc<Stats>,
    up: bool,
) {
    let late_max = if up { &stats.up_late_max_us } else { &stats.down_late_max_us };
    while let Some(run) = rx.recv().await {
        let now = Instant::now();
        if run.due > now {
            tokio::time::sleep_until(run.due).await;
        } else {
            late_max.fetch_max((now - run.due).as_micros() as u64, Ordering::Relaxed);
        }
        let Some(to) = dest.or_else(|| *client.lock().unwrap()) else { continue };
        let most = run.segment * sock.state.max_gso_segments().max(1);
        for part in run.bytes.chunks(most) {
            sock.send(to, part, run.segment).await;
        }
    }
}

/// Receives batches on `from` and queues, per batch, the runs of datagrams
/// not lost, each due `delay` later. `accept` says whether a sender is the
/// relay's peer on that side (and notes it).
async fn udp_receiver(
    from: Arc<Udp>,
    tx: mpsc::UnboundedSender<Run>,
    delay: Duration,
    loss: f64,
    mut rng: Rng,
    (packets, bytes_in, dropped): (&AtomicU64, &AtomicU64, &AtomicU64),
    accept: impl Fn(SocketAddr) -> bool,
) {
    let mut buf = vec![0u8; 1 << 17];
    loop {
        let Ok((sender, n, segment)) = from.recv(&mut buf).await else { continue };
        if !accept(sender) {
            continue;
        }
        let due = Instant::now() + delay;
        let mut run: Option<Run> = None;
        for d in buf[..n].chunks(segment) {
            packets.fetch_add(1, Ordering::Relaxed);
            bytes_in.fetch_add(d.len() as u64, Ordering::Relaxed);
            if rng.lost(loss) {
                dropped.fetch_add(1, Ordering::Relaxed);
                if let Some(r) = run.take() {
                    let _ = tx.send(r);
                }
                continue;
            }
            run.get_or_insert_with(|| Run { due, bytes: Vec::with_capacity(n), segment: d.len() })
                .bytes
                .extend_from_slice(d);
        }
        if let Some(r) = run {
            let _ = tx.send(r);
        }
    }
}

/// A running UDP relay (in this process).
pub struct UdpRelay {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    _runtime: tokio::runtime::Runtime,
}

/// Starts a UDP relay from `listen` to `to` on its own runtime.
pub fn udp(listen: SocketAddr, to: SocketAddr, delay: Duration, loss: f64, seed: u64) -> UdpRelay {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let stats = Arc::new(Stats::default());
    let (l, o) = rt.block_on(async {
        let (sock, state) = udp_socket(listen).expect("relay listen");
        let l = Arc::new(Udp { sock, state });
        let any: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().unwrap();
        let out_addr = if to.ip().is_loopback() { SocketAddr::new(to.ip(), 0) } else { any };
        let (sock, state) = udp_socket(out_addr).expect("relay socket");
        (l, Arc::new(Udp { sock, state }))
    });
    let addr = l.sock.local_addr().unwrap();
    let client = Arc::new(Mutex::new(None));
    let (up_tx, up_rx) = mpsc::unbounded_channel();
    let (down_tx, down_rx) = mpsc::unbounded_channel();
    rt.spawn(udp_sender(o.clone(), up_rx, Some(to), client.clone(), stats.clone(), true));
    rt.spawn(udp_sender(l.clone(), down_rx, None, client.clone(), stats.clone(), false));
    {
        let (client, stats) = (client.clone(), stats.clone());
        rt.spawn(async move {
            let counts = (&stats.up_packets, &stats.up_bytes, &stats.up_dropped);
            let note = |from| {
                *client.lock().unwrap() = Some(from);
                true
            };
            udp_receiver(l, up_tx, delay, loss, Rng::new(seed), counts, note).await
        });
    }
    {
        let stats = stats.clone();
        rt.spawn(async move {
            let counts = (&stats.down_packets, &stats.down_bytes, &stats.down_dropped);
            udp_receiver(o, down_tx, delay, loss, Rng::new(seed ^ 0x5555_5555), counts, |from| from == to).await
        });
    }
    UdpRelay { addr, stats, _runtime: rt }
}

/// How a stream is delayed (and, modelled, loses segments).
#[derive(Clone, Copy)]
struct StreamLink {
    delay: Duration,
    loss: f64,
    penalty: Duration,
}

const SEGMENT: usize = 1448;

/// Copies `r` to `w`, each chunk `link.delay` late, in order; counts bytes.
async fn delayed_copy<R, W>(mut r: R, mut w: W, link: StreamLink, seed: u64, count: Arc<AtomicU64>)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(4096);
    let reader = tokio::spawn(async move {
        let mut rng = Rng::new(seed);
        let mut buf = vec![0u8; 64 << 10];
        // Due time of the last byte queued: nothing overtakes it.
        let mut last_due = Instant::now();
        loop {
            let n = match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            count.fetch_add(n as u64, Ordering::Relaxed);
            let now = Instant::now();
            let mut pieces: Vec<(Instant, Vec<u8>)> = Vec::new();
            let segments: Vec<&[u8]> =
                if link.loss > 0.0 { buf[..n].chunks(SEGMENT).collect() } else { vec![&buf[..n]] };
            for seg in segments {
                let extra = if rng.lost(link.loss) { link.penalty } else { Duration::ZERO };
                let due = (now + link.delay + extra).max(last_due);
                last_due = due;
                match pieces.last_mut() {
                    Some((d, bytes)) if *d == due => bytes.extend_from_slice(seg),
                    _ => pieces.push((due, seg.to_vec())),
                }
            }
            for p in pieces {
                if tx.send(p).await.is_err() {
                    return;
                }
            }
        }
    });
    while let Some((due, bytes)) = rx.recv().await {
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        if w.write_all(&bytes).await.is_err() || w.flush().await.is_err() {
            break;
        }
    }
    let _ = w.shutdown().await;
    reader.abort();
}

fn stream_link(a: &Args) -> StreamLink {
    let delay = Duration::from_secs_f64(a.delay_ms / 1000.0);
    let penalty = match a.loss_penalty_ms {
        Some(ms) => Duration::from_secs_f64(ms / 1000.0),
        None => (2 * delay).max(Duration::from_millis(1)),
    };
    StreamLink { delay, loss: a.loss, penalty }
}

pub fn run(a: Args) {
    let delay = Duration::from_secs_f64(a.delay_ms / 1000.0);
    if a.pipe {
        std::process::exit(pipe(&a));
    }
    let (listen, to) = (a.listen.unwrap(), a.to.unwrap());
    if a.tcp {
        let link = stream_link(&a);
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind(listen).await.expect("listen");
            eprintln!("relay: TCP {} -> {to}, {:?} each way, loss {}", l.local_addr().unwrap(), delay, a.loss);
            let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
            let mut seed = a.seed;
            loop {
                tokio::select! {
                    c = l.accept() => {
                        let Ok((client, _)) = c else { continue };
                        let Ok(target) = tokio::net::TcpStream::connect(to).await else { continue };
                        let _ = client.set_nodelay(true);
                        let _ = target.set_nodelay(true);
                        let (cr, cw) = client.into_split();
                        let (tr, tw) = target.into_split();
                        seed += 2;
                        tokio::spawn(delayed_copy(cr, tw, link, seed, up.clone()));
                        tokio::spawn(delayed_copy(tr, cw, link, seed + 1, down.clone()));
                    }
                    _ = shutdown_signal() => break,
                }
            }
            eprintln!("relay: {} bytes up, {} bytes down", up.load(Ordering::Relaxed), down.load(Ordering::Relaxed));
        });
    } else {
        let r = udp(listen, to, delay, a.loss, a.seed);
        eprintln!("relay: UDP {} -> {to}, {:?} each way, loss {}", r.addr, delay, a.loss);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(shutdown_signal());
        eprintln!("relay: {}", r.stats.line());
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Pipe mode: returns the command's exit code.
fn pipe(a: &Args) -> i32 {
    let link = stream_link(a);
    let Some((prog, rest)) = a.command.split_first() else {
        eprintln!("relay --pipe: give the command after --");
        return 2;
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let code = rt.block_on(async {
        let mut child = match tokio::process::Command::new(prog)
            .args(rest)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("relay --pipe: {prog}: {e}");
                return 127;
            }
        };
        let (cin, cout) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
        tokio::spawn(delayed_copy(tokio::io::stdin(), cin, link, a.seed, up.clone()));
        let back = tokio::spawn(delayed_copy(cout, tokio::io::stdout(), link, a.seed + 1, down.clone()));
        let status = child.wait().await;
        let _ = back.await;
        status.ok().and_then(|s| s.code()).unwrap_or(1)
    });
    // The stdin reader may still block in a read: do not wait for it.
    rt.shutdown_background();
    if let Some(path) = &a.counts {
        let _ = std::fs::write(path, format!("{} {}\n", up.load(Ordering::Relaxed), down.load(Ordering::Relaxed)));
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_rate_is_close() {
        let mut r = Rng::new(7);
        let lost = (0..100_000).filter(|_| r.lost(0.01)).count();
        assert!((800..1200).contains(&lost), "{lost}");
        assert!(!Rng::new(1).lost(0.0));
    }

    #[test]
    fn udp_relay_delays_and_forwards_both_ways() {
        let target = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let r = udp("127.0.0.1:0".parse().unwrap(), target.local_addr().unwrap(), Duration::from_millis(30), 0.0, 1);
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let t = std::time::Instant::now();
        client.send_to(b"ping", r.addr).unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = target.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        assert!(t.elapsed() >= Duration::from_millis(30));
        target.send_to(b"pong", from).unwrap();
        let (n, _) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"pong");
        assert!(t.elapsed() >= Duration::from_millis(60));
    }
    /// A burst sent in one GSO send leaves the relay as its datagrams, each
    /// whole and in order, a lost one missing alone (the relay receives the
    /// burst coalesced and drops per datagram).
    #[test]
    fn a_coalesced_burst_is_relayed_datagram_by_datagram() {
        const N: usize = 40;
        const SIZE: usize = 1200;
        for loss in [0.0, 0.3] {
            let target = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            target.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
            let r = udp("127.0.0.1:0".parse().unwrap(), target.local_addr().unwrap(), Duration::ZERO, loss, 3);
            let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let state = quinn_udp::UdpSocketState::new((&client).into()).unwrap();
            let burst: Vec<u8> = (0..N).flat_map(|i| [i as u8; SIZE]).collect();
            let sent = burst.chunks(SIZE * state.max_gso_segments().max(1));
            for part in sent {
                let t = quinn_udp::Transmit {
                    destination: r.addr,
                    ecn: None,
                    contents: part,
                    segment_size: Some(SIZE),
                    src_ip: None,
                };
                state.send((&client).into(), &t).unwrap();
            }
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            while let Ok(n) = target.recv(&mut buf) {
                assert_eq!(n, SIZE, "one datagram at a time, whole");
                assert!(buf[..n].iter().all(|b| *b == buf[0]), "not mixed");
                got.push(buf[0] as usize);
            }
            let dropped = r.stats.up_dropped.load(Ordering::Relaxed) as usize;
            assert_eq!(r.stats.up_packets.load(Ordering::Relaxed) as usize, N, "counted per datagram");
            assert_eq!(got.len() + dropped, N, "loss {loss}: {got:?}");
            assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
            if loss > 0.0 {
                assert!(dropped > 0 && dropped < N, "{dropped}");
            }
        }
    }
}
