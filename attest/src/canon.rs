//! The canonical byte encoding that receipts and vouchers are signed over.
//!
//! A signed message is a domain tag followed by fields, each written as:
//! - byte strings and UTF-8 text: length as u64 big-endian, then the bytes;
//! - fixed-size digests and keys (32 bytes): the raw bytes, no length;
//! - integers: big-endian, u64 as 8 bytes and u128 as 16 bytes.
//!
//! The domain tag is itself written as a length-prefixed byte string, so no message
//! of one kind can be read as a message of another. JSON text is never signed: two
//! serializers may print the same value differently, these bytes cannot differ.

pub(crate) struct Canon(Vec<u8>);

impl Canon {
    pub(crate) fn new(domain: &[u8]) -> Self {
        let mut c = Self(Vec::with_capacity(256));
        c.bytes(domain);
        c
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(&(b.len() as u64).to_be_bytes());
        self.0.extend_from_slice(b);
        self
    }

    pub(crate) fn text(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    pub(crate) fn fixed(&mut self, b: &[u8; 32]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn u128(&mut self, v: u128) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}
