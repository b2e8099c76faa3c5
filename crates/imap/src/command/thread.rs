//! THREAD and UID THREAD (RFC 5256 §3): ORDEREDSUBJECT and REFERENCES over
//! the messages SEARCH matches ([`Session::matching`]).
//!
//! The threads live in an arena of [`Node`]s linked by index (parent,
//! first and last child, siblings both ways), so unlinking is O(1) and
//! nothing is dropped recursively. Every walk is a loop with an explicit
//! position or stack on the heap: a chain of 100,000 replies, or a tree as
//! deep, never deepens the call stack. The loop test before a link
//! (RFC 5256 §3 step 1) walks up from the would-be parent and down the
//! would-be child's subtree in turn, stopping when either ends, and has a
//! budget ([`LOOP_CHECK_STEPS_MAX`], [`LOOP_STEPS_MAX`]); past it the link
//! is not made, which keeps the result a tree.

use super::sort::{charset_ok, Facts, SortFields};
use crate::session::{Done, Fail, Session};
use imap_codec::imap_types::extensions::thread::ThreadingAlgorithm;
use imap_codec::imap_types::search::SearchKey;
use starling_store::{IdHash, MessageInfo, Reader};
use std::collections::HashMap;
use std::fmt::Write as _;

/// Steps one loop test may take (each direction), at most; a test that
/// reaches it counts as a loop and the link is not made.
pub(crate) const LOOP_CHECK_STEPS_MAX: usize = 1 << 20;

/// Steps all loop tests of one THREAD may take, at most; past it no more
/// links between existing subtrees are made.
pub(crate) const LOOP_STEPS_MAX: usize = 1 << 27;

const NONE: u32 = u32::MAX;

/// One container (RFC 5256 §3): a message, or a dummy standing for a
/// message only referenced.
#[derive(Clone, Debug)]
struct Node {
    /// Index into the facts, `None` for a dummy.
    msg: Option<u32>,
    parent: u32,
    first: u32,
    last: u32,
    prev: u32,
    next: u32,
}

/// The arena; node 0 is the root, the parent of every thread.
struct Tree {
    nodes: Vec<Node>,
}

const ROOT: u32 = 0;

impl Tree {
    fn new() -> Tree {
        let mut t = Tree { nodes: Vec::new() };
        t.add(None);
        t
    }

    fn add(&mut self, msg: Option<u32>) -> u32 {
        let id = u32::try_from(self.nodes.len()).expect("fewer nodes than u32::MAX");
        self.nodes.push(Node { msg, parent: NONE, first: NONE, last: NONE, prev: NONE, next: NONE });
        id
    }

    fn n(&self, i: u32) -> &Node {
        &self.nodes[i as usize]
    }

    fn m(&mut self, i: u32) -> &mut Node {
        &mut self.nodes[i as usize]
    }

    fn unlink(&mut self, c: u32) {
        let Node { parent, prev, next, .. } = *self.n(c);
        if parent == NONE {
            return;
        }
        if prev == NONE {
            self.m(parent).first = next;
        } else {
            self.m(prev).next = next;
        }
        if next == NONE {
            self.m(parent).last = prev;
        } else {
            self.m(next).prev = prev;
        }
        let n = self.m(c);
        (n.parent, n.prev, n.next) = (NONE, NONE, NONE);
    }

    /// Appends `c` (without a parent) to `p`'s children.
    fn append(&mut self, p: u32, c: u32) {
        debug_assert_eq!(self.n(c).parent, NONE);
        let last = self.n(p).last;
        {
            let n = self.m(c);
            (n.parent, n.prev, n.next) = (p, last, NONE);
        }
        if last == NONE {
            self.m(p).first = c;
        } else {
            self.m(last).next = c;
        }
        self.m(p).last = c;
    }

    /// Puts `c` (without a parent) just before `at` among `at`'s siblings.
    fn insert_before(&mut self, at: u32, c: u32) {
        debug_assert_eq!(self.n(c).parent, NONE);
        let Node { parent, prev, .. } = *self.n(at);
        {
            let n = self.m(c);
            (n.parent, n.prev, n.next) = (parent, prev, at);
        }
        if prev == NONE {
            self.m(parent).first = c;
        } else {
            self.m(prev).next = c;
        }
        self.m(at).prev = c;
    }

    fn children(&self, p: u32) -> Vec<u32> {
        let mut out = Vec::new();
        let mut c = self.n(p).first;
        while c != NONE {
            out.push(c);
            c = self.n(c).next;
        }
        out
    }

    /// Replaces `p`'s children with `kids` (each now without a parent or
    /// already `p`'s), in that order.
    fn set_children(&mut self, p: u32, kids: &[u32]) {
        for &k in kids {
            let n = self.m(k);
            (n.parent, n.prev, n.next) = (NONE, NONE, NONE);
        }
        let n = self.m(p);
        (n.first, n.last) = (NONE, NONE);
        for &k in kids {
            self.append(p, k);
        }
    }

    /// Whether making `a` the parent of `b` would close a loop (`a` is `b`
    /// or below it). Walks up from `a` and through `b`'s subtree by turns;
    /// `budget` is what all tests may still spend. Out of steps: `true`.
    fn would_loop(&self, a: u32, b: u32, budget: &mut usize) -> bool {
        if a == b {
            return true;
        }
        let (mut up, mut down) = (a, b);
        let mut steps = 0;
        loop {
            if steps >= LOOP_CHECK_STEPS_MAX || *budget == 0 {
                return true;
            }
            steps += 1;
            *budget -= 1;
            // Up one from `a`'s side.
            up = self.n(up).parent;
            if up == b {
                return true;
            }
            if up == NONE {
                return false;
            }
            // Next in `b`'s subtree, pre-order, without a stack.
            let first = self.n(down).first;
            down = if first != NONE {
                first
            } else {
                let mut at = down;
                loop {
                    if at == b {
                        return false;
                    }
                    let next = self.n(at).next;
                    if next != NONE {
                        break next;
                    }
                    at = self.n(at).parent;
                }
            };
            if down == a {
                return true;
            }
        }
    }

    /// Every node under the root, children before their parent.
    fn post_order(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.nodes.len());
        let mut stack = vec![ROOT];
        while let Some(n) = stack.pop() {
            out.push(n);
            let mut c = self.n(n).first;
            while c != NONE {
                stack.push(c);
                c = self.n(c).next;
            }
        }
        // Pre-order with children reversed, reversed: a post-order.
        out.reverse();
        out
    }
}

/// Sent date then sequence number (RFC 5256 §2.2): how THREAD orders.
fn when<F: SortFields>(facts: &[&F], i: u32) -> (i64, u32) {
    let f = facts[i as usize];
    (f.sent(), f.tie())
}

impl Tree {
    /// A node's place in date order: its message's, or for a dummy its
    /// first child's (children sorted first).
    fn key<F: SortFields>(&self, facts: &[&F], n: u32) -> (i64, u32) {
        let mut at = n;
        // Dummies nest only one deep after pruning; bounded anyway.
        for _ in 0..self.nodes.len() {
            match self.n(at).msg {
                Some(m) => return when(facts, m),
                None if self.n(at).first != NONE => at = self.n(at).first,
                None => break,
            }
        }
        (i64::MAX, u32::MAX)
    }

    fn sort_children<F: SortFields>(&mut self, facts: &[&F], p: u32) {
        let kids = self.children(p);
        if kids.len() > 1 {
            // Each key once; ties (dummies without children) keep their
            // places, as a stable sort would.
            let mut keyed: Vec<((i64, u32), u32, u32)> =
                kids.iter().enumerate().map(|(at, &k)| (self.key(facts, k), at as u32, k)).collect();
            keyed.sort_unstable();
            let kids: Vec<u32> = keyed.into_iter().map(|(_, _, k)| k).collect();
            self.set_children(p, &kids);
        }
    }
}

/// THREAD=ORDEREDSUBJECT: by base subject, each thread's first message
/// (by sent date) the parent of the others. The messages are taken in
/// date order, so each thread's first is met first, the threads come in
/// the order of their first messages and each one's children in theirs:
/// nothing is sorted by subject.
fn ordered_subject<F: SortFields>(facts: &[&F]) -> Tree {
    let mut order: Vec<((i64, u32), u32)> = (0..facts.len() as u32).map(|i| (when(facts, i), i)).collect();
    order.sort_unstable();
    let mut t = Tree::new();
    let mut heads: HashMap<&str, u32> = HashMap::new();
    for (_, i) in order {
        let node = t.add(Some(i));
        match heads.entry(facts[i as usize].subject()) {
            std::collections::hash_map::Entry::Occupied(h) => t.append(*h.get(), node),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(node);
                t.append(ROOT, node);
            }
        }
    }
    t
}

/// THREAD=REFERENCES (RFC 5256 §3, steps 1 to 6).
fn references<F: SortFields>(facts: &[&F]) -> Tree {
    let mut t = Tree::new();
    // Message IDs as the store keeps them (hashed; see `IdHash`). The
    // tables keep std's keyed hasher: subjects and IDs come from senders,
    // who must not be able to pick colliding keys.
    let mut by_id: HashMap<IdHash, u32> = HashMap::new();
    // Room for every ID named (at most `REFERENCES_MAX` + 1 a message), so
    // the table is not grown step by step.
    by_id.reserve(facts.iter().map(|f| 1 + f.references().len()).sum());
    let mut budget = LOOP_STEPS_MAX;
    // (1) Link each message's references, then the message to the last.
    fn container(t: &mut Tree, by_id: &mut HashMap<IdHash, u32>, id: IdHash) -> u32 {
        *by_id.entry(id).or_insert_with(|| t.add(None))
    }
    let mut refs: Vec<u32> = Vec::new();
    for (i, f) in facts.iter().enumerate() {
        let own = match f.message_id() {
            // A duplicate Message-ID: the first message keeps it.
            Some(id) => {
                let c = container(&mut t, &mut by_id, id);
                if t.n(c).msg.is_none() {
                    t.m(c).msg = Some(i as u32);
                    c
                } else {
                    t.add(Some(i as u32))
                }
            }
            None => t.add(Some(i as u32)),
        };
        refs.clear();
        refs.extend(f.references().iter().map(|r| container(&mut t, &mut by_id, *r)));
        for w in refs.windows(2) {
            let (a, b) = (w[0], w[1]);
            if t.n(b).parent == NONE && !t.would_loop(a, b, &mut budget) {
                t.append(a, b);
            }
        }
        match refs.last() {
            Some(&p) if t.n(own).parent == p => {}
            Some(&p) => {
                t.unlink(own);
                if !t.would_loop(p, own, &mut budget) {
                    t.append(p, own);
                }
            }
            None => t.unlink(own),
        }
    }
    drop(by_id);
    // (2) The parentless are the threads.
    for n in 1..t.nodes.len() as u32 {
        if t.n(n).parent == NONE {
            t.append(ROOT, n);
        }
    }
    // (3) Prune dummies, children first: one without children goes; one
    // with children gives them to its parent, except at the top where it
    // stays unless it has just one.
    for n in t.post_order() {
        if n == ROOT || t.n(n).msg.is_some() {
            continue;
        }
        let parent = t.n(n).parent;
        let kids = t.children(n);
        if kids.len() > 1 && parent == ROOT {
            continue;
        }
        // Splice the children in where the dummy was.
        for k in kids {
            t.unlink(k);
            t.insert_before(n, k);
        }
        t.unlink(n);
    }
    // (4) Order the threads: a dummy by its first child.
    for top in t.children(ROOT) {
        if t.n(top).msg.is_none() {
            t.sort_children(facts, top);
        }
    }
    t.sort_children(facts, ROOT);
    // (5) Gather threads of the same base subject.
    let subject_of = |t: &Tree, n: u32| -> Option<u32> {
        match t.n(n).msg {
            Some(m) => Some(m),
            None => t.n(n).first.ne(&NONE).then(|| t.n(t.n(n).first).msg).flatten(),
        }
    };
    let tops = t.children(ROOT);
    let mut table: HashMap<&str, u32> = HashMap::new();
    for &n in &tops {
        let Some(m) = subject_of(&t, n) else { continue };
        let subject = facts[m as usize].subject();
        if subject.is_empty() {
            continue;
        }
        let held = *table.entry(subject).or_insert(n);
        let held_dummy = t.n(held).msg.is_none();
        let replace = !held_dummy
            && (t.n(n).msg.is_none()
                || (facts[t.n(held).msg.expect("not a dummy") as usize].reply()
                    && t.n(n).msg.is_some_and(|m| !facts[m as usize].reply())));
        if replace {
            table.insert(subject, n);
        }
    }
    for &n in &tops {
        let Some(m) = subject_of(&t, n) else { continue };
        let subject = facts[m as usize].subject();
        if subject.is_empty() {
            continue;
        }
        let held = table[subject];
        if held == n {
            continue;
        }
        let (n_dummy, held_dummy) = (t.n(n).msg.is_none(), t.n(held).msg.is_none());
        let n_reply = t.n(n).msg.is_some_and(|m| facts[m as usize].reply());
        let held_reply = t.n(held).msg.is_some_and(|m| facts[m as usize].reply());
        if n_dummy && held_dummy {
            t.unlink(n);
            for k in t.children(n) {
                t.unlink(k);
                t.append(held, k);
            }
        } else if held_dummy || (n_reply && !held_reply && !n_dummy) {
            t.unlink(n);
            t.append(held, n);
        } else if n_dummy {
            // The table holds a message and this is a dummy (not reached by
            // the rules above; kept without nesting dummies).
            t.unlink(held);
            t.append(n, held);
            table.insert(subject, n);
        } else {
            // A new dummy in the held message's place, over both.
            let dummy = t.add(None);
            t.insert_before(held, dummy);
            t.unlink(n);
            t.unlink(held);
            t.append(dummy, held);
            t.append(dummy, n);
            table.insert(subject, dummy);
        }
    }
    // (6) Every set of siblings by date, the deepest first.
    for n in t.post_order() {
        t.sort_children(facts, n);
    }
    t
}

/// A thread's opening parenthesis in [`Threads`]' tokens.
const OPEN: u32 = u32::MAX - 1;
/// A thread's closing parenthesis.
const CLOSE: u32 = u32::MAX;

/// THREAD's answer over some list of messages: its parentheses and the
/// messages (indices into that list) in the order RFC 5256 §4 writes them,
/// without the numbers, so that one computed answer can be written with
/// UIDs or sequence numbers and be kept ([`crate::sortcache`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Threads(Vec<u32>);

/// The algorithms (RFC 5256 §3) this server threads by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Threading {
    OrderedSubject,
    References,
}

impl Threading {
    pub(crate) fn of(algorithm: &ThreadingAlgorithm<'_>) -> Result<Threading, Fail> {
        match algorithm {
            ThreadingAlgorithm::OrderedSubject => Ok(Threading::OrderedSubject),
            ThreadingAlgorithm::References => Ok(Threading::References),
            ThreadingAlgorithm::Other(_) => Err(Fail::Bad("unknown threading algorithm".into())),
        }
    }
}

impl Threads {
    /// The threads of `facts` (in mailbox order) by `algorithm`.
    pub(crate) fn of<F: SortFields>(algorithm: Threading, facts: &[&F]) -> Threads {
        let tree = match algorithm {
            Threading::OrderedSubject => ordered_subject(facts),
            Threading::References => references(facts),
        };
        Threads::walk(&tree)
    }

    /// Each thread as RFC 5256 §4 writes it, a single child on the same
    /// level, several each in parentheses; dummies write nothing.
    fn walk(t: &Tree) -> Threads {
        let mut out = Vec::with_capacity(t.nodes.len());
        // Tokens still to write, and nodes to walk, last first.
        enum Step {
            Node(u32),
            Token(u32),
        }
        let mut stack = Vec::new();
        for top in t.children(ROOT) {
            if t.n(top).msg.is_none() && t.n(top).first == NONE {
                continue;
            }
            stack.extend([Step::Token(CLOSE), Step::Node(top), Step::Token(OPEN)]);
            while let Some(step) = stack.pop() {
                let n = match step {
                    Step::Token(token) => {
                        out.push(token);
                        continue;
                    }
                    Step::Node(n) => n,
                };
                out.extend(t.n(n).msg);
                let kids = t.children(n);
                match kids.len() {
                    0 => {}
                    1 => stack.push(Step::Node(kids[0])),
                    _ => {
                        for &k in kids.iter().rev() {
                            stack.extend([Step::Token(CLOSE), Step::Node(k), Step::Token(OPEN)]);
                        }
                    }
                }
            }
        }
        Threads(out)
    }

    /// Its bytes (for the cache's bound).
    pub(crate) fn bytes(&self) -> usize {
        self.0.capacity() * 4
    }

    /// `THREAD (…)(…)`, message `i` written as `number(i)`.
    pub(crate) fn line(&self, number: impl Fn(u32) -> u32) -> String {
        let mut out = String::with_capacity(8 + 8 * self.0.len());
        out.push_str("THREAD");
        if !self.0.is_empty() {
            out.push(' ');
        }
        for &token in &self.0 {
            if token == CLOSE {
                out.push(')');
                continue;
            }
            if out.ends_with(|c: char| c.is_ascii_digit()) {
                out.push(' ');
            }
            if token == OPEN {
                out.push('(');
            } else {
                let _ = write!(out, "{}", number(token));
            }
        }
        out
    }
}

/// The THREAD response data for `facts` (in mailbox order).
fn thread_line(algorithm: Threading, facts: &[Facts], uid: bool) -> String {
    let refs: Vec<&Facts> = facts.iter().collect();
    Threads::of(algorithm, &refs).line(|i| {
        let f = &facts[i as usize];
        if uid {
            f.uid
        } else {
            f.seq
        }
    })
}

impl Session {
    /// THREAD / UID THREAD: from the shared sort cache's records when it
    /// can answer (no message read), else from the store's.
    pub(crate) fn thread(
        &mut self,
        algorithm: &ThreadingAlgorithm<'_>,
        charset: &str,
        search: &[SearchKey<'_>],
        uid: bool,
    ) -> Done {
        let algorithm = Threading::of(algorithm)?;
        charset_ok(charset)?;
        let reader = self.reader()?;
        // `ALL` reads nothing of the messages: the session's view says
        // which of the cache's messages it holds.
        let matched = match search {
            [SearchKey::All] => None,
            _ => Some(self.matching(&reader, search)?),
        };
        let line = match self.threads_cached(&reader, algorithm, matched.as_deref(), uid) {
            Some(line) => line,
            None => {
                let matched = match matched {
                    Some(m) => m,
                    None => self.matching(&reader, search)?,
                };
                let wanted = starling_store::sortkeys::Wanted { subject: true, addresses: false, threading: true };
                let facts = Facts::read_all(&reader, &matched, Some(wanted));
                drop(reader);
                thread_line(algorithm, &facts, uid)
            }
        };
        self.untagged(&line);
        Ok(format!("{}THREAD completed", if uid { "UID " } else { "" }))
    }

    /// [`Session::thread`] from the sort cache: the messages of this
    /// session's view that the search matched (`ALL`: every one), threaded
    /// from the cache's records. `None` when the cache cannot answer (a
    /// store error included: read without the cache, which says what failed).
    fn threads_cached(
        &self,
        reader: &Reader,
        algorithm: Threading,
        matched: Option<&[(u32, MessageInfo)]>,
        uid: bool,
    ) -> Option<String> {
        let sel = self.selected.as_ref().expect("selected");
        let seq_of = |u: u32| super::sort::answered(sel, matched, u).map(|(seq, _)| seq);
        let cache = &self.shared.sort_cache;
        let answer = cache.with_threads(self.account_name(), sel.id, reader, algorithm, seq_of, |threads, numbers| {
            threads.line(|i| {
                let (u, seq) = numbers[i as usize];
                if uid {
                    u
                } else {
                    seq
                }
            })
        });
        answer.ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u32, id: &str, refs: &[&str], subject: &str) -> Facts {
        let (subject, reply) = starling_store::sortkeys::base_subject(subject);
        Facts {
            seq,
            uid: seq,
            sent: i64::from(seq),
            subject,
            reply,
            message_id: Some(IdHash::of(id)),
            references: refs.iter().map(|r| IdHash::of(r)).collect(),
            ..Facts::default()
        }
    }

    #[test]
    fn references_that_loop_are_not_linked() {
        // Each names the other as its parent: the second link would close a loop.
        let facts = [msg(1, "x", &["y"], "a"), msg(2, "y", &["x"], "b")];
        assert_eq!(thread_line(Threading::References, &facts, false), "THREAD (2 1)");
        // A References list that loops back on itself.
        let facts = [msg(1, "p", &["q", "p", "q"], "a"), msg(2, "q", &[], "b")];
        assert_eq!(thread_line(Threading::References, &facts, false), "THREAD (2 1)");
    }

    #[test]
    fn subjects_gather_threads() {
        let facts = [msg(1, "r", &[], "Re: s"), msg(2, "o", &[], "s"), msg(3, "t", &[], "Re: s")];
        // The table ends up holding 2 (not a reply): 1 and 3 go under it.
        assert_eq!(thread_line(Threading::References, &facts, false), "THREAD (2 (1)(3))");
        let facts = [msg(1, "r", &[], "s"), msg(2, "o", &[], "s")];
        assert_eq!(thread_line(Threading::References, &facts, false), "THREAD ((1)(2))");
        assert_eq!(thread_line(Threading::OrderedSubject, &facts, true), "THREAD (1 2)");
        assert_eq!(thread_line(Threading::References, &[], false), "THREAD");
    }

    #[test]
    fn many_missing_parents_stay_linear() {
        // Each message replies to a different missing message: a dummy
        // each, pruned one by one (a splice that copied the root's children
        // would make this quadratic).
        let facts: Vec<Facts> =
            (1..=50_000u32).map(|i| msg(i, &format!("m{i}"), &[&format!("gone{i}")], &format!("s{i}"))).collect();
        let line = thread_line(Threading::References, &facts, false);
        assert!(line.starts_with("THREAD (1)(2)(3)") && line.ends_with("(50000)"));
    }
}
