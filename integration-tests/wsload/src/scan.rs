//! What a client needs from a server frame, found by scanning its bytes rather than parsing the
//! JSON: the frame's type, and in a `records` frame the produce time that the load tool wrote
//! into each record's value (under [`STAMP_KEY`]). The gateway sends `json` topics' values as
//! they were produced, so the key and its digits appear verbatim, once per record.

use memchr::memmem::Finder;

/// The key under which each produced value carries its produce time (µs since the epoch).
pub const STAMP_KEY: &str = "lw_t";

/// A server frame, as far as the load tool cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    /// A `records` frame.
    Records,
    /// `lagged`, with the number of records dropped.
    Lagged(u64),
    Subscribed,
    /// Centrifugo's ping (an empty command `{}`), to be answered with `{}`.
    Ping,
    /// A reply that needs nothing (Centrifugo's `connect` result).
    Ignore,
    /// `error`, or anything this tool does not expect.
    Other,
}

/// Scans frames; holds the precompiled searchers.
pub struct Scanner {
    stamp: Finder<'static>,
    dropped: Finder<'static>,
}

impl Default for Scanner {
    fn default() -> Self {
        Self {
            stamp: Finder::new(b"\"lw_t\":"),
            dropped: Finder::new(b"\"dropped\":"),
        }
    }
}

impl std::fmt::Debug for Scanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scanner")
    }
}

/// The unsigned integer at the start of `b` (after optional spaces), if any.
fn leading_u64(b: &[u8]) -> Option<u64> {
    let b = match b.iter().position(|c| *c != b' ') {
        Some(i) => &b[i..],
        None => return None,
    };
    let mut n: u64 = 0;
    let mut digits = 0;
    for c in b {
        if !c.is_ascii_digit() {
            break;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
        digits += 1;
    }
    (digits > 0).then_some(n)
}

impl Scanner {
    /// The frame's kind, from its leading `{"type":"..."` (the gateway writes `type` first).
    pub fn kind(&self, frame: &[u8]) -> Kind {
        const PREFIX: &[u8] = b"{\"type\":\"";
        let Some(rest) = frame.strip_prefix(PREFIX) else {
            return Kind::Other;
        };
        if rest.starts_with(b"records\"") {
            Kind::Records
        } else if rest.starts_with(b"lagged\"") {
            let n = self
                .dropped
                .find(frame)
                .and_then(|i| leading_u64(&frame[i + b"\"dropped\":".len()..]));
            Kind::Lagged(n.unwrap_or(0))
        } else if rest.starts_with(b"subscribed\"") {
            Kind::Subscribed
        } else {
            Kind::Other
        }
    }

    /// The kind of one reply of Centrifugo's JSON protocol (a frame holds one or more, separated
    /// by newlines): `{"push":{...,"pub":...}}` is a publication ([`Kind::Records`]), `{}` a
    /// ping, `{"id":2,"subscribe":...}` the answer to the load's subscribe command (id 2),
    /// `{"id":1,"connect":...}` to its connect command.
    pub fn centrifugo_kind(&self, reply: &[u8]) -> Kind {
        if reply == b"{}" {
            Kind::Ping
        } else if reply.starts_with(b"{\"push\":") && !reply.starts_with(b"{\"push\":{\"disconnect")
        {
            Kind::Records
        } else if reply.starts_with(b"{\"id\":2,\"subscribe\":") {
            Kind::Subscribed
        } else if reply.starts_with(b"{\"id\":1,\"connect\":") {
            Kind::Ignore
        } else {
            Kind::Other
        }
    }

    /// Calls `f` with the produce time of every record in a `records` frame.
    pub fn stamps(&self, frame: &[u8], mut f: impl FnMut(u64)) {
        let skip = STAMP_KEY.len() + 3;
        for i in self.stamp.find_iter(frame) {
            if let Some(t) = leading_u64(&frame[i + skip..]) {
                f(t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_stamp_in_a_records_frame() {
        let frame = br#"{"type":"records","id":"s","records":[{"partition":0,"offset":1,"timestamp":5,"key":null,"value":{"lw_t":1732690000000123,"n":1}},{"partition":0,"offset":2,"timestamp":5,"key":null,"value":{"lw_t": 1732690000000456,"n":2}}]}"#;
        let s = Scanner::default();
        assert_eq!(s.kind(frame), Kind::Records);
        let mut got = Vec::new();
        s.stamps(frame, |t| got.push(t));
        assert_eq!(got, vec![1_732_690_000_000_123, 1_732_690_000_000_456]);
    }

    #[test]
    fn tells_lagged_subscribed_and_others_apart() {
        let s = Scanner::default();
        assert_eq!(
            s.kind(br#"{"type":"lagged","id":"s","dropped":128}"#),
            Kind::Lagged(128)
        );
        assert_eq!(
            s.kind(br#"{"type":"subscribed","id":"s","topic":"t","partitions":[0]}"#),
            Kind::Subscribed
        );
        assert_eq!(
            s.kind(br#"{"type":"error","id":"s","code":"bad_filter","message":"x"}"#),
            Kind::Other
        );
        assert_eq!(s.kind(b"not json"), Kind::Other);
    }

    #[test]
    fn reads_centrifugo_replies() {
        let s = Scanner::default();
        let push = br#"{"push":{"channel":"wsload","pub":{"data":{"lw_t":1732690000000123,"n":1},"offset":7}}}"#;
        assert_eq!(s.centrifugo_kind(push), Kind::Records);
        let mut got = Vec::new();
        s.stamps(push, |t| got.push(t));
        assert_eq!(got, vec![1_732_690_000_000_123]);
        assert_eq!(s.centrifugo_kind(b"{}"), Kind::Ping);
        assert_eq!(
            s.centrifugo_kind(br#"{"id":2,"subscribe":{}}"#),
            Kind::Subscribed
        );
        assert_eq!(
            s.centrifugo_kind(br#"{"id":1,"connect":{"client":"x","version":"6.9.1"}}"#),
            Kind::Ignore
        );
        assert_eq!(
            s.centrifugo_kind(br#"{"id":2,"error":{"code":103,"message":"permission denied"}}"#),
            Kind::Other
        );
        assert_eq!(
            s.centrifugo_kind(br#"{"push":{"disconnect":{"code":3008,"reason":"slow"}}}"#),
            Kind::Other
        );
    }

    #[test]
    fn ignores_a_stamp_key_without_digits() {
        let s = Scanner::default();
        let mut n = 0;
        s.stamps(br#"{"lw_t":"x","lw_t":}"#, |_| n += 1);
        assert_eq!(n, 0);
    }
}
