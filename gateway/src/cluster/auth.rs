//! How a replica proves a forward is its own without sending the shared secret:
//! `x-tenzro-forward: v1.<unix seconds>.<hex nonce>.<hex HMAC-SHA256>` keyed by
//! the secret, over the method, the path and query, the time, a random nonce (two
//! identical requests forwarded in one second are two forwards), the body's
//! SHA-256 and the
//! SHA-256 of the caller's `Authorization` header and the replica id it is sent
//! to (so a MAC seen on the wire cannot carry another key, path or body, nor be
//! replayed to another replica). The holder accepts it within
//! [`WINDOW_S`] of its own clock and only once (a replay of a MAC it accepted is
//! refused). The caller's key still travels: the holder authenticates and admits
//! the request with it as any other (its scope, limits and revocation), so
//! `[cluster] advertise` belongs on a private network or behind https.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

/// The header's version tag.
const VERSION: &str = "v1";
/// Domain of the MAC (no other message of the gateway is MACed with the secret).
const DOMAIN: &[u8] = b"tenzro-forward-v1";
/// How far the forward's time may be from the holder's (seconds).
pub const WINDOW_S: u64 = 30;
/// Most MACs remembered against replays (pruned to the window when full).
const MAX_SEEN: usize = 200_000;

/// What the MAC covers.
#[derive(Debug, Clone, Copy)]
pub struct Forwarded<'a> {
    pub method: &'a str,
    pub path_and_query: &'a str,
    pub body: &'a [u8],
    /// The caller's `Authorization` header, if any.
    pub authorization: Option<&'a [u8]>,
    /// The replica id it is sent to (the lease holder's).
    pub to: &'a str,
}

/// Why a forward header was refused (the caller is told only that the header is
/// the replicas' own).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardAuthError {
    #[error("malformed forward header")]
    Malformed,
    #[error("forward header outside the time window")]
    Stale,
    #[error("forward header does not match")]
    Mismatch,
    #[error("forward header replayed")]
    Replayed,
}

/// HMAC-SHA256 (RFC 2104) of `parts` (each length-prefixed) under `key`.
fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    for p in parts {
        inner.update((p.len() as u64).to_be_bytes());
        inner.update(p);
    }
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

fn mac(secret: &str, f: &Forwarded<'_>, at: u64, nonce: &[u8; 16]) -> [u8; 32] {
    let body = Sha256::digest(f.body);
    let auth = Sha256::digest(f.authorization.unwrap_or_default());
    hmac(
        secret.as_bytes(),
        &[
            DOMAIN,
            f.method.as_bytes(),
            f.path_and_query.as_bytes(),
            &at.to_be_bytes(),
            nonce,
            &body,
            &auth,
            f.to.as_bytes(),
        ],
    )
}

/// The header value a replica sends with `f` at Unix second `at`.
pub fn sign(secret: &str, f: &Forwarded<'_>, at: u64) -> String {
    let nonce = *uuid::Uuid::new_v4().as_bytes();
    format!(
        "{VERSION}.{at}.{}.{}",
        hex::encode(nonce),
        hex::encode(mac(secret, f, at, &nonce))
    )
}

/// A parsed header: its time, nonce and MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub at: u64,
    nonce: [u8; 16],
    tag: [u8; 32],
}

/// The time and MAC of a header value, if it is well formed (checked before the
/// body is read).
pub fn parse(header: &str) -> Result<Header, ForwardAuthError> {
    let mut it = header.split('.');
    let (Some(VERSION), Some(at), Some(nonce), Some(tag), None) =
        (it.next(), it.next(), it.next(), it.next(), it.next())
    else {
        return Err(ForwardAuthError::Malformed);
    };
    let at = at.parse().map_err(|_| ForwardAuthError::Malformed)?;
    let mut h = Header {
        at,
        nonce: [0; 16],
        tag: [0; 32],
    };
    hex::decode_to_slice(nonce, &mut h.nonce).map_err(|_| ForwardAuthError::Malformed)?;
    hex::decode_to_slice(tag, &mut h.tag).map_err(|_| ForwardAuthError::Malformed)?;
    Ok(h)
}

/// Whether `at` is within the window of `now`.
pub fn fresh(at: u64, now: u64) -> Result<(), ForwardAuthError> {
    if at.abs_diff(now) > WINDOW_S {
        return Err(ForwardAuthError::Stale);
    }
    Ok(())
}

/// Checks a parsed header against the request (in constant time).
pub fn check(secret: &str, h: &Header, f: &Forwarded<'_>) -> Result<(), ForwardAuthError> {
    let want = mac(secret, f, h.at, &h.nonce);
    let diff = want
        .iter()
        .zip(h.tag.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if diff != 0 {
        return Err(ForwardAuthError::Mismatch);
    }
    Ok(())
}

/// MACs accepted within the window, so each is accepted once.
#[derive(Debug, Default)]
pub struct Replays {
    seen: HashMap<[u8; 32], u64>,
}

impl Replays {
    /// Records `tag` (made at `at`) at `now`; false when it was seen before, or
    /// when it cannot be remembered: full of MACs still in the window (over
    /// [`MAX_SEEN`] forwards a minute), a forward is refused rather than
    /// accepted unrecorded (which a replay could use).
    pub fn first_time(&mut self, h: &Header, now: u64) -> bool {
        let (tag, at) = (h.tag, h.at);
        if self.seen.contains_key(&tag) {
            return false;
        }
        if self.seen.len() >= MAX_SEEN {
            self.seen
                .retain(|_, t| t.saturating_add(2 * WINDOW_S) >= now);
        }
        if self.seen.len() >= MAX_SEEN {
            return false;
        }
        self.seen.insert(tag, at);
        true
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    /// RFC 4231 test case 2 (the parts here are length-prefixed, so the plain
    /// HMAC is checked through one raw part built by hand).
    #[test]
    fn hmac_is_rfc_2104() {
        fn raw(key: &[u8], msg: &[u8]) -> [u8; 32] {
            let mut block = [0u8; 64];
            block[..key.len()].copy_from_slice(key);
            let mut inner = Sha256::new();
            inner.update(block.map(|b| b ^ 0x36));
            inner.update(msg);
            let mut outer = Sha256::new();
            outer.update(block.map(|b| b ^ 0x5c));
            outer.update(inner.finalize());
            outer.finalize().into()
        }
        assert_eq!(
            hex::encode(raw(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // The framed MAC is that HMAC over the framed message.
        let framed: Vec<u8> = [b"a".as_slice(), b"bc"]
            .iter()
            .flat_map(|p| {
                let mut v = (p.len() as u64).to_be_bytes().to_vec();
                v.extend_from_slice(p);
                v
            })
            .collect();
        assert_eq!(hmac(b"Jefe", &[b"a", b"bc"]), raw(b"Jefe", &framed));
    }

    const SECRET: &str = "replicas-share-this-secret";

    fn req<'a>(path: &'a str, body: &'a [u8], auth: Option<&'a [u8]>) -> Forwarded<'a> {
        Forwarded {
            method: "POST",
            path_and_query: path,
            body,
            authorization: auth,
            to: "r1",
        }
    }

    #[test]
    fn a_signed_forward_checks_and_any_change_does_not() {
        let f = req("/v1/chat/completions", b"{}", Some(b"Bearer tz-a"));
        let h = sign(SECRET, &f, 1_000);
        assert!(!h.contains(SECRET), "the secret never travels");
        let parsed = parse(&h).unwrap();
        assert_eq!(parsed.at, 1_000);
        assert_eq!(check(SECRET, &parsed, &f), Ok(()));
        let again = parse(&sign(SECRET, &f, 1_000)).unwrap();
        assert_ne!(again, parsed, "the same request twice is two forwards");
        assert_eq!(check(SECRET, &again, &f), Ok(()));
        let changed = [
            req("/v1/account", b"{}", Some(b"Bearer tz-a")),
            req("/v1/chat/completions", b"{ }", Some(b"Bearer tz-a")),
            req("/v1/chat/completions", b"{}", Some(b"Bearer tz-b")),
            req("/v1/chat/completions", b"{}", None),
            Forwarded { method: "GET", ..f },
            Forwarded { to: "r2", ..f },
        ];
        for c in changed {
            assert_eq!(
                check(SECRET, &parsed, &c),
                Err(ForwardAuthError::Mismatch),
                "{c:?}"
            );
        }
        let later = Header {
            at: 1_001,
            ..parsed
        };
        assert_eq!(check(SECRET, &later, &f), Err(ForwardAuthError::Mismatch));
        assert_eq!(
            check("another-secret-of-16", &parsed, &f),
            Err(ForwardAuthError::Mismatch)
        );
    }

    #[test]
    fn headers_are_parsed_and_dated() {
        for bad in [
            "",
            SECRET,
            "v1.1",
            "v2.1.00",
            "v1.x.00",
            "v1.1.zz",
            "v1.1.00.00",
            "v1.1.00.00.00",
        ] {
            assert_eq!(parse(bad), Err(ForwardAuthError::Malformed), "{bad}");
        }
        assert_eq!(fresh(1_000, 1_000 + WINDOW_S), Ok(()));
        assert_eq!(fresh(1_000 + WINDOW_S, 1_000), Ok(()));
        assert_eq!(fresh(1_000, 1_001 + WINDOW_S), Err(ForwardAuthError::Stale));
    }

    #[test]
    fn a_mac_is_accepted_once() {
        let mut r = Replays::default();
        let h = |b: u8| Header {
            at: 100,
            nonce: [b; 16],
            tag: [b; 32],
        };
        assert!(r.first_time(&h(1), 100));
        assert!(!r.first_time(&h(1), 101));
        assert!(r.first_time(&h(2), 101));
        // Full of MACs still in the window: refused, not accepted unrecorded.
        let mut full = Replays::default();
        for i in 0..MAX_SEEN {
            let mut tag = [0u8; 32];
            tag[..8].copy_from_slice(&(i as u64).to_be_bytes());
            full.seen.insert(tag, 100);
        }
        assert!(!full.first_time(&h(3), 101));
        // Once they age out of the window, new ones are recorded again.
        assert!(full.first_time(&h(3), 100 + 2 * WINDOW_S + 1));
    }
}
