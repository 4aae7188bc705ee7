//! Which user keys a request names: one key, a half-open range, or every key from
//! a start (etcd's `range_end = "\0"`).

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Span {
    /// Exactly one key (`range_end` empty).
    Key(Vec<u8>),
    /// Every key `>= start` (`range_end == "\0"`).
    From(Vec<u8>),
    /// Keys in `[start, end)`. Empty when `end <= start`.
    Between(Vec<u8>, Vec<u8>),
}

impl Span {
    pub fn new(key: &[u8], range_end: &[u8]) -> Span {
        match range_end {
            [] => Span::Key(key.to_vec()),
            [0] => Span::From(key.to_vec()),
            end => Span::Between(key.to_vec(), end.to_vec()),
        }
    }

    pub fn start(&self) -> &[u8] {
        match self {
            Span::Key(k) | Span::From(k) | Span::Between(k, _) => k,
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            Span::Key(k) => k.as_slice() == key,
            Span::From(start) => key >= start.as_slice(),
            Span::Between(start, end) => key >= start.as_slice() && key < end.as_slice(),
        }
    }

    /// Whether two spans share a key.
    pub fn intersects(&self, other: &Span) -> bool {
        match (self, other) {
            (Span::Key(k), s) | (s, Span::Key(k)) => s.contains(k),
            _ => {
                let lo = self.start().max(other.start());
                let below = |s: &Span| match s {
                    Span::Between(_, end) => lo < end.as_slice(),
                    _ => true,
                };
                below(self) && below(other)
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, Span::Between(start, end) if end <= start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_follow_etcd_range_end_rules() {
        assert_eq!(Span::new(b"a", b""), Span::Key(b"a".to_vec()));
        assert_eq!(Span::new(b"a", b"\0"), Span::From(b"a".to_vec()));
        assert!(Span::new(b"b", b"a").is_empty());
        assert!(Span::new(b"a", b"b").contains(b"a\xff"));
        assert!(!Span::new(b"a", b"b").contains(b"b"));
    }

    #[test]
    fn intersection() {
        let ab = Span::new(b"a", b"b");
        assert!(ab.intersects(&Span::Key(b"a1".to_vec())));
        assert!(!ab.intersects(&Span::Key(b"b".to_vec())));
        assert!(ab.intersects(&Span::new(b"a5", b"c")));
        assert!(!ab.intersects(&Span::new(b"b", b"c")));
        assert!(ab.intersects(&Span::From(b"0".to_vec())));
        assert!(!ab.intersects(&Span::From(b"b".to_vec())));
    }
}
