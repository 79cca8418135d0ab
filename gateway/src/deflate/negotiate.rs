//! The `Sec-WebSocket-Extensions` handshake of `permessage-deflate` (RFC 7692 §5, §7.1): the
//! client's offers in order of its preference; the first one the gateway can honour exactly is
//! accepted, the others are declined whole, never half-accepted.

/// The gateway's answer to an offer it accepts: each message compressed on its own in both
/// directions, 15-bit windows.
pub const RESPONSE: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The same, to an offer that named `server_max_window_bits=15` (a server that accepts that
/// parameter must answer with it, §7.1.2.1).
const RESPONSE_WITH_BITS: &str = "permessage-deflate; server_no_context_takeover; \
     client_no_context_takeover; server_max_window_bits=15";

/// The answer to the offers in the `Sec-WebSocket-Extensions` headers of a request (all of
/// them, in order), or `None` when none of them can be accepted as offered.
pub fn negotiate<'a>(headers: impl IntoIterator<Item = &'a str>) -> Option<&'static str> {
    headers
        .into_iter()
        .flat_map(split_outside_quotes(','))
        .find_map(|offer| accept(offer))
}

/// What the gateway answers to one offer, if it honours it.
fn accept(offer: &str) -> Option<&'static str> {
    let mut parts = split_outside_quotes(';')(offer);
    if !parts
        .next()?
        .trim()
        .eq_ignore_ascii_case("permessage-deflate")
    {
        return None;
    }
    let mut seen = [false; 4];
    let mut server_bits_named = false;
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim())?)),
            None => (param.trim(), None),
        };
        let slot = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" => 0,
            "client_no_context_takeover" => 1,
            "server_max_window_bits" => 2,
            "client_max_window_bits" => 3,
            // An extension parameter the gateway does not know: the offer is declined (§7.1).
            _ => return None,
        };
        // Each parameter at most once (§7.1).
        if std::mem::replace(&mut seen[slot], true) {
            return None;
        }
        match slot {
            // These take no value.
            0 | 1 => {
                if value.is_some() {
                    return None;
                }
            }
            // The client asks the server to compress with a window of at most 2^bits; the
            // gateway's shared segments use 15 bits, so it can honour only 15.
            2 => {
                if window_bits(value?)? != 15 {
                    return None;
                }
                server_bits_named = true;
            }
            // The client says it can limit its own window; with no value or a valid one, the
            // gateway does not use that (its inflater takes any window up to 15 bits) and does
            // not answer it (§7.1.2.2 allows leaving it out).
            _ => {
                if let Some(v) = value {
                    window_bits(v)?;
                }
            }
        }
    }
    Some(if server_bits_named {
        RESPONSE_WITH_BITS
    } else {
        RESPONSE
    })
}

/// A window-bits value: 8 to 15, decimal digits with no leading zero (§7.1.2.1).
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().filter(|b| (8..=15).contains(b))
}

/// A parameter value as a token or a quoted string (RFC 6455 §9.1); `None` for a quoted string
/// that does not end.
fn unquote(v: &str) -> Option<&str> {
    match v.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"'),
        None => Some(v),
    }
}

/// Splits on `sep` where it is not inside double quotes.
fn split_outside_quotes(sep: char) -> impl Fn(&str) -> std::vec::IntoIter<&str> {
    move |s: &str| {
        let mut parts = Vec::new();
        let mut quoted = false;
        let mut start = 0;
        for (i, c) in s.char_indices() {
            match c {
                '"' => quoted = !quoted,
                c if c == sep && !quoted => {
                    parts.push(&s[start..i]);
                    start = i + c.len_utf8();
                }
                _ => {}
            }
        }
        parts.push(&s[start..]);
        parts.into_iter()
    }
}
