//! Which nodes hold sessions with which, when each holds a bounded number
//! (a fan-out): a ring with chords, the same for the node and the simulator.

/// Whether the nodes at places `a` and `b` (of `n`, in an order every node
/// agrees on, e.g. by node id) hold a session with a fan-out of
/// `fanout` (0: every pair). Each node links to the nodes 1, 2, 4, 8, …
/// places after it on a ring, up to `fanout / 2` of them, and so to as many
/// before it: at most `fanout` sessions, and any node reaches any other in
/// about n / 2^(fanout/2) + fanout/2 hops (log2(n) once fanout ≥ 2 log2(n)).
pub fn linked(fanout: usize, n: usize, a: usize, b: usize) -> bool {
    if fanout == 0 || a == b {
        return fanout == 0 && a != b;
    }
    let ahead = |x: usize, y: usize| {
        let d = (y + n - x) % n;
        (0..(fanout / 2).max(1)).map(|m| 1usize << m).any(|step| step < n && step == d)
    };
    ahead(a, b) || ahead(b, a)
}

/// The places linked to place `me` of `n` (see [`linked`]).
pub fn neighbours(fanout: usize, n: usize, me: usize) -> impl Iterator<Item = usize> {
    (0..n).filter(move |&b| linked(fanout, n, me, b))
}
