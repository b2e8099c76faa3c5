//! The `RETURN (…)` options of SEARCH and SORT (ESEARCH, RFC 4731; ESORT
//! and CONTEXT, RFC 5267; SEARCHRES, RFC 5182; PARTIAL, RFC 9394), read
//! once for both commands, and the result items of the `ESEARCH` answer.
//!
//! PARTIAL is RFC 9394's: `PARTIAL 1:100` (the first hundred results) and
//! `PARTIAL -1:-100` (the last hundred). RFC 5267 §4.4's PARTIAL is the
//! first form alone, with the same answer (`PARTIAL (range set)` or
//! `PARTIAL (range NIL)`), so a client of either is served.

use crate::session::Fail;
use std::fmt::Write;

/// A result item of the `ESEARCH` answer, as asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Item {
    Min,
    Max,
    Count,
    All,
    Partial(Partial),
}

/// `PARTIAL lo:hi` (from the first result) or `PARTIAL -lo:-hi` (from the
/// last), 1-based, `lo <= hi`, as RFC 9394 §4's `partial-range`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Partial {
    /// Counted from the last result (`-1` is the last).
    pub last: bool,
    pub lo: u32,
    pub hi: u32,
}

impl Partial {
    /// `partial-range-first = nz-number ":" nz-number` or
    /// `partial-range-last = "-" nz-number ":" "-" nz-number`; `500:400` is
    /// `400:500`.
    pub fn parse(s: &str) -> Option<Partial> {
        let (a, b) = s.split_once(':')?;
        let number = |t: &str| -> Option<(bool, u32)> {
            let (neg, digits) = match t.strip_prefix('-') {
                Some(d) => (true, d),
                None => (false, t),
            };
            // nz-number: no sign, no leading zero, 32 bits.
            if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some((neg, digits.parse::<u32>().ok()?))
        };
        let ((neg_a, a), (neg_b, b)) = (number(a)?, number(b)?);
        (neg_a == neg_b).then(|| Partial { last: neg_a, lo: a.min(b), hi: a.max(b) })
    }

    /// The indices of `n` results it names (clipped to them; maybe none).
    pub fn slice(&self, n: usize) -> std::ops::Range<usize> {
        let (lo, hi) = (self.lo as usize, self.hi as usize);
        if self.last {
            n.saturating_sub(hi)..n.saturating_sub(lo - 1)
        } else {
            (lo - 1).min(n)..hi.min(n)
        }
    }

    /// The range as the answer repeats it.
    pub fn range(&self) -> String {
        if self.last {
            format!("-{}:-{}", self.lo, self.hi)
        } else {
            format!("{}:{}", self.lo, self.hi)
        }
    }
}

/// What a `RETURN (…)` asked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Returns {
    /// The result items, in the order asked, each once.
    pub items: Vec<Item>,
    /// SEARCHRES (RFC 5182).
    pub save: bool,
    /// CONTEXT's UPDATE (RFC 5267 §4.3): keep the result up to date.
    pub update: bool,
}

impl Returns {
    /// The options (upper-cased tokens of the list, a PARTIAL's range its
    /// own token). An empty list is `ALL` (RFC 4731 §3.1). CONTEXT (RFC
    /// 5267 §4.2) is a hint, taken and ignored; an option this server
    /// does not know is ignored too. BAD: a PARTIAL without a valid range,
    /// or more than one of PARTIAL and ALL (RFC 5267 §4.4).
    pub fn parse(tokens: &[String]) -> Result<Returns, Fail> {
        let mut r = Returns::default();
        if tokens.is_empty() {
            r.items.push(Item::All);
            return Ok(r);
        }
        let mut it = tokens.iter();
        while let Some(t) = it.next() {
            let item = match t.as_str() {
                "MIN" => Item::Min,
                "MAX" => Item::Max,
                "COUNT" => Item::Count,
                "ALL" => Item::All,
                "PARTIAL" => match it.next().and_then(|r| Partial::parse(r)) {
                    Some(p) => Item::Partial(p),
                    None => return Err(Fail::Bad("PARTIAL takes a range: n:m or -n:-m (RFC 9394)".into())),
                },
                "SAVE" => {
                    r.save = true;
                    continue;
                }
                "UPDATE" => {
                    r.update = true;
                    continue;
                }
                _ => continue,
            };
            let paging = |i: &Item| matches!(i, Item::All | Item::Partial(_));
            if paging(&item) && r.items.iter().any(paging) {
                return Err(Fail::Bad("one PARTIAL or one ALL at most (RFC 5267 section 4.4)".into()));
            }
            if !r.items.contains(&item) {
                r.items.push(item);
            }
        }
        Ok(r)
    }

    /// The PARTIAL asked, if one was.
    pub fn partial(&self) -> Option<&Partial> {
        self.items.iter().find_map(|i| match i {
            Item::Partial(p) => Some(p),
            _ => None,
        })
    }

    /// Whether it asks for any of `items`.
    pub fn has(&self, item: &Item) -> bool {
        self.items.contains(item)
    }

    /// The indices of `n` results that SAVE keeps (RFC 5182 §2.4, RFC 9394
    /// §3.1): every one with ALL, with COUNT (but no PARTIAL) or with no
    /// result item; else those MIN, MAX and PARTIAL return.
    pub fn saved(&self, n: usize) -> Vec<usize> {
        let partial = self.partial();
        if self.items.is_empty() || self.has(&Item::All) || (self.has(&Item::Count) && partial.is_none()) {
            return (0..n).collect();
        }
        let mut out: Vec<usize> = partial.map(|p| p.slice(n).collect()).unwrap_or_default();
        if n > 0 {
            out.extend(self.has(&Item::Min).then_some(0));
            out.extend(self.has(&Item::Max).then_some(n - 1));
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Appends the result items to an `ESEARCH` line: `numbers` are the
    /// results in the requested order; `ascending` says they are in
    /// mailbox order (SEARCH: ALL and PARTIAL as a set with ranges) or
    /// not (SORT: each number on its own, in order).
    pub fn write_items(&self, line: &mut String, numbers: &[u32], ascending: bool) {
        let list = |line: &mut String, numbers: &[u32]| {
            if ascending {
                line.push_str(&crate::selected::set_string(numbers));
            } else {
                for (i, n) in numbers.iter().enumerate() {
                    let _ = write!(line, "{}{n}", if i == 0 { "" } else { "," });
                }
            }
        };
        for item in &self.items {
            match (item, numbers.first(), numbers.last()) {
                (Item::Min, Some(first), _) => {
                    let _ = write!(line, " MIN {first}");
                }
                (Item::Max, _, Some(last)) => {
                    let _ = write!(line, " MAX {last}");
                }
                (Item::Count, _, _) => {
                    let _ = write!(line, " COUNT {}", numbers.len());
                }
                (Item::All, Some(_), _) => {
                    line.push_str(" ALL ");
                    list(line, numbers);
                }
                (Item::Partial(p), _, _) => {
                    let _ = write!(line, " PARTIAL ({} ", p.range());
                    let part = &numbers[p.slice(numbers.len())];
                    if part.is_empty() {
                        line.push_str("NIL");
                    } else {
                        list(line, part);
                    }
                    line.push(')');
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Returns, Fail> {
        let tokens: Vec<String> = s.split_whitespace().map(|t| t.to_ascii_uppercase()).collect();
        Returns::parse(&tokens)
    }

    #[test]
    fn partial_ranges() {
        let p = |s: &str| Partial::parse(s);
        assert_eq!(p("1:100"), Some(Partial { last: false, lo: 1, hi: 100 }));
        assert_eq!(p("500:400"), Some(Partial { last: false, lo: 400, hi: 500 }));
        assert_eq!(p("-1:-100"), Some(Partial { last: true, lo: 1, hi: 100 }));
        assert_eq!(p("4294967295:1"), Some(Partial { last: false, lo: 1, hi: u32::MAX }));
        for bad in ["0:5", "1:*", "-1:5", "5", "1:4294967296", "01:5", "+1:5", "1:", ":", "-0:-1", "a:b"] {
            assert_eq!(p(bad), None, "{bad}");
        }
        let first = Partial { last: false, lo: 2, hi: 3 };
        assert_eq!((first.slice(10), first.slice(2), first.slice(0)), (1..3, 1..2, 0..0));
        let last = Partial { last: true, lo: 1, hi: 3 };
        assert_eq!((last.slice(10), last.slice(2), last.slice(0)), (7..10, 0..2, 0..0));
        let far = Partial { last: true, lo: 5, hi: u32::MAX };
        assert_eq!(far.slice(3), 0..0);
        assert_eq!(far.slice(6), 0..2);
    }

    #[test]
    fn options() {
        assert_eq!(parse("").ok().unwrap().items, vec![Item::All]);
        let r = parse("update context count save").ok().unwrap();
        assert_eq!((r.items, r.save, r.update), (vec![Item::Count], true, true));
        assert!(matches!(parse("PARTIAL 1:5 ALL"), Err(Fail::Bad(_))));
        assert!(matches!(parse("PARTIAL 1:5 PARTIAL 6:9"), Err(Fail::Bad(_))));
        assert!(matches!(parse("PARTIAL"), Err(Fail::Bad(_))));
        assert!(matches!(parse("PARTIAL 0:5"), Err(Fail::Bad(_))));
        let r = parse("MIN PARTIAL -1:-2 SAVE").ok().unwrap();
        assert_eq!(r.saved(5), vec![0, 3, 4]);
        assert_eq!(parse("COUNT SAVE").ok().unwrap().saved(3), vec![0, 1, 2]);
        let mut line = String::new();
        r.write_items(&mut line, &[2, 4, 5, 6, 9], true);
        assert_eq!(line, " MIN 2 PARTIAL (-1:-2 6,9)");
        let mut line = String::new();
        parse("PARTIAL 7:9").ok().unwrap().write_items(&mut line, &[9, 4], false);
        assert_eq!(line, " PARTIAL (7:9 NIL)");
    }
}
