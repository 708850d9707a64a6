//! The voucher book: the provider's side of payment channels, with no HTTP in it.
//!
//! A payer (a gateway) signs vouchers `(channel, nonce, cumulative spent, asset)`
//! and posts them in batches; [`Channels::submit`] checks each one, countersigns the
//! ones it accepts with the provider's key and stores the latest per channel
//! durably before answering. That countersigned voucher is what the provider is
//! paid with, so the rules are strict:
//!
//! - the payer's signature verifies;
//! - when the provider is closed (attached to a gateway, or payers pinned in the
//!   config; see `payer`) the payer key must be a trusted one, and none is trusted
//!   before the gateway answered its key; otherwise the key of a channel's first
//!   accepted voucher is pinned to that channel (trust on first use). Either way
//!   every later voucher on a channel must carry its first voucher's key;
//! - the nonce is strictly above the stored one, the cumulative spent is not below
//!   it, and the asset is the same;
//! - a voucher equal to the stored latest (same nonce, same content) is a resend:
//!   it is answered with the stored countersigned voucher and changes nothing, while
//!   the stored nonce with any other content is refused.
//!
//! The store is bounded: at most `max_channels` channels (vouchers opening more are
//! refused, `TooManyChannels`) and a file of at most `max_store_bytes` (vouchers
//! opening channels that would grow it past that are refused, `StoreFull`).
//!
//! The store is one JSON file, `{"version": 1, "vouchers": [Voucher, ...]}` sorted
//! by channel, replaced atomically (temporary file, fsync, rename, fsync of the
//! directory) once per batch that changes anything. A missing file is an empty
//! book; a file that does not parse, or holds a voucher whose signatures do not
//! verify, stops the provider at start.
//!
//! Credit: the provider counts the tokens it served on each channel (prompt plus
//! completion, as its usage reports them) since that channel's last payment, and
//! refuses work on a channel whose count exceeds the credit limit. A newly accepted
//! voucher that raises the channel's cumulative spent (or is its first voucher)
//! resets the count to zero: the simplification is that a voucher covers
//! everything served on the channel before it arrived. Resends and vouchers that
//! do not raise the spend reset nothing, so a payer cannot buy credit with
//! vouchers that pay nothing. Counts live in memory only: a restart forgives them.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tenzro_attest::{ProviderKey, Voucher};

use crate::payer::PayerTrust;

/// Most vouchers accepted in one batch.
pub const MAX_BATCH: usize = 1024;
/// Longest channel id, in bytes.
pub const MAX_CHANNEL_ID_BYTES: usize = 256;
/// Longest asset name, in bytes.
pub const MAX_ASSET_BYTES: usize = 64;

/// The version written into (and required of) the store file.
const STORE_VERSION: u32 = 1;

/// A channel id as it may appear in a voucher, a header and a URL path: 1 to
/// [`MAX_CHANNEL_ID_BYTES`] bytes of visible ASCII.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(String);

impl ChannelId {
    pub fn parse(text: &str) -> Result<ChannelId, Refusal> {
        let visible = text.bytes().all(|b| b.is_ascii_graphic());
        if text.is_empty() || text.len() > MAX_CHANNEL_ID_BYTES || !visible {
            return Err(Refusal::BadChannelId);
        }
        Ok(ChannelId(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ChannelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the book is told at start.
#[derive(Debug, Clone)]
pub struct BookSettings {
    /// The store file.
    pub path: PathBuf,
    /// Unpaid tokens a channel may run up; 0 means no limit.
    pub credit_limit_tokens: u64,
    /// Whose vouchers are accepted (see `payer`).
    pub trust: Arc<PayerTrust>,
    /// Most channels held; vouchers opening more are refused.
    pub max_channels: usize,
    /// Largest store file in bytes; vouchers opening channels past it are refused.
    pub max_store_bytes: usize,
}

/// Why one voucher of a batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("channel_id must be 1 to {MAX_CHANNEL_ID_BYTES} bytes of visible ASCII (no spaces)")]
    BadChannelId,
    #[error("asset must be 1 to {MAX_ASSET_BYTES} bytes")]
    BadAsset,
    #[error("the payer signature does not verify")]
    BadSignature,
    #[error(
        "payer key {0} is not this provider's trusted payer (its gateway's payer key or [channels] trusted_payers)"
    )]
    UntrustedPayer(String),
    #[error(
        "this provider trusts no payer yet: it takes vouchers from its gateway's payer key, learned when it registers"
    )]
    NoTrustedPayer,
    #[error(
        "the voucher store holds its maximum of {0} channels ([channels] max_channels); no new channel is accepted"
    )]
    TooManyChannels(usize),
    #[error(
        "the voucher store would grow past its maximum of {0} bytes ([channels] max_store_bytes); no new channel is accepted"
    )]
    StoreFull(usize),
    #[error("the channel is pinned to payer key {expected}; this voucher is signed by {got}")]
    WrongPayer { expected: String, got: String },
    #[error("the channel's asset is `{expected}`; this voucher is in `{got}`")]
    WrongAsset { expected: String, got: String },
    #[error("nonce {0} was already accepted on this channel with different content")]
    NonceReused(u64),
    #[error("nonce {got} is below the latest accepted nonce {latest}")]
    StaleNonce { got: u64, latest: u64 },
    #[error("cumulative_spent {got} is below the latest accepted {latest}")]
    SpendDecreased { got: u128, latest: u128 },
}

/// A refused voucher, named by what it claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub channel_id: String,
    pub nonce: u64,
    pub reason: Refusal,
}

/// The answer to a batch: the countersigned vouchers (new and resent) in the
/// order they came, and the refused ones.
#[derive(Debug, Default)]
pub struct Outcome {
    pub vouchers: Vec<Voucher>,
    pub rejected: Vec<Rejected>,
}

/// A channel whose unpaid tokens passed the credit limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "channel `{channel}` has {unpaid} unpaid tokens, over the credit limit of {limit}; send a voucher first"
)]
pub struct Unpaid {
    pub channel: ChannelId,
    pub unpaid: u64,
    pub limit: u64,
}

/// One channel as the operator sees it: its latest voucher (none yet when it has
/// only been served) and its unpaid tokens.
#[derive(Debug, Clone)]
pub struct ChannelSummary {
    pub channel_id: String,
    pub latest: Option<Voucher>,
    pub unpaid_tokens: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("voucher store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("voucher store {path} would be {size} bytes, over [channels] max_store_bytes = {max}")]
    Full {
        path: PathBuf,
        size: usize,
        max: usize,
    },
    #[error(
        "voucher store {path} is corrupt: {detail}. It holds the countersigned vouchers this provider is \
         paid with: repair or restore it (or point [channels] path elsewhere) rather than deleting it"
    )]
    Corrupt { path: PathBuf, detail: String },
}

/// The file's shape.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    version: u32,
    vouchers: Vec<Voucher>,
}

/// Every channel's latest voucher and unpaid tokens, shared by all handlers.
pub struct Channels {
    settings: BookSettings,
    book: Mutex<Book>,
    /// Held for a whole batch, so batches are checked and written one at a time
    /// while `book` is locked only briefly (token counting never waits on disk).
    writer: Mutex<()>,
}

#[derive(Default)]
struct Book {
    /// Channel id -> latest countersigned voucher.
    latest: BTreeMap<String, Voucher>,
    /// Channel id -> tokens served since its last paying voucher.
    unpaid: HashMap<String, u64>,
}

impl Channels {
    /// Opens the book at `settings.path`: a missing file is an empty book.
    pub fn open(settings: BookSettings) -> Result<Channels, StoreError> {
        let latest = load(&settings.path)?;
        tracing::info!(path = %settings.path.display(), channels = latest.len(), "voucher store loaded");
        if latest.len() > settings.max_channels {
            tracing::warn!(
                channels = latest.len(),
                max = settings.max_channels,
                "the voucher store holds more channels than [channels] max_channels: no new channel is accepted"
            );
        }
        Ok(Channels {
            settings,
            book: Mutex::new(Book {
                latest,
                unpaid: HashMap::new(),
            }),
            writer: Mutex::new(()),
        })
    }

    pub fn credit_limit_tokens(&self) -> u64 {
        self.settings.credit_limit_tokens
    }

    /// Checks, countersigns with `key` and durably stores a batch (at most
    /// [`MAX_BATCH`], which the caller enforces). Blocking (fsync): call it off the
    /// async runtime. Nothing is kept when the write fails.
    pub fn submit(&self, batch: Vec<Voucher>, key: &ProviderKey) -> Result<Outcome, StoreError> {
        let _writer = lock(&self.writer);
        let mut staged: BTreeMap<String, Voucher> = BTreeMap::new();
        let mut paying: Vec<String> = Vec::new();
        let mut outcome = Outcome::default();
        // Channels this batch opens, in order.
        let mut opened: Vec<String> = Vec::new();
        {
            let book = lock(&self.book);
            for mut voucher in batch {
                let previous = staged
                    .get(&voucher.channel_id)
                    .or_else(|| book.latest.get(&voucher.channel_id));
                let opens = previous.is_none();
                if opens
                    && book.latest.len().saturating_add(opened.len()) >= self.settings.max_channels
                {
                    outcome.rejected.push(rejected(
                        &voucher,
                        Refusal::TooManyChannels(self.settings.max_channels),
                    ));
                    continue;
                }
                match self.judge(&voucher, previous) {
                    Ok(Verdict::Resend) => outcome.vouchers.extend(previous.cloned()),
                    Ok(Verdict::New { pays }) => {
                        // `judge` checked the payer's signature, so this cannot fail.
                        if voucher.countersign(key).is_err() {
                            outcome
                                .rejected
                                .push(rejected(&voucher, Refusal::BadSignature));
                            continue;
                        }
                        if pays {
                            paying.push(voucher.channel_id.clone());
                        }
                        if opens {
                            opened.push(voucher.channel_id.clone());
                        }
                        outcome.vouchers.push(voucher.clone());
                        staged.insert(voucher.channel_id.clone(), voucher);
                    }
                    Err(reason) => outcome.rejected.push(rejected(&voucher, reason)),
                }
            }
        }
        if staged.is_empty() {
            return Ok(outcome);
        }
        let mut all = lock(&self.book).latest.clone();
        all.extend(staged.iter().map(|(k, v)| (k.clone(), v.clone())));
        let mut bytes = encode(all.values())?;
        if bytes.len() > self.settings.max_store_bytes {
            // Refuse the vouchers opening channels; updates of known ones still land.
            let max = self.settings.max_store_bytes;
            let opening: std::collections::HashSet<String> = opened.into_iter().collect();
            for channel in &opening {
                if let Some(v) = staged.remove(channel) {
                    outcome.rejected.push(Rejected {
                        channel_id: channel.clone(),
                        nonce: v.nonce,
                        reason: Refusal::StoreFull(max),
                    });
                }
                all.remove(channel);
            }
            paying.retain(|c| !opening.contains(c));
            outcome
                .vouchers
                .retain(|v| !opening.contains(&v.channel_id));
            bytes = encode(all.values())?;
            if bytes.len() > max {
                return Err(StoreError::Full {
                    path: self.settings.path.clone(),
                    size: bytes.len(),
                    max,
                });
            }
            if staged.is_empty() {
                return Ok(outcome);
            }
        }
        let io = |source: std::io::Error| StoreError::Io {
            path: self.settings.path.clone(),
            source,
        };
        write_atomically(&self.settings.path, &bytes).map_err(io)?;
        let mut book = lock(&self.book);
        for channel in paying {
            book.unpaid.remove(&channel);
        }
        book.latest.extend(staged);
        Ok(outcome)
    }

    /// Whether a voucher may follow the channel's latest (`previous`), and how.
    fn judge(&self, voucher: &Voucher, previous: Option<&Voucher>) -> Result<Verdict, Refusal> {
        ChannelId::parse(&voucher.channel_id)?;
        if voucher.asset.is_empty() || voucher.asset.len() > MAX_ASSET_BYTES {
            return Err(Refusal::BadAsset);
        }
        voucher
            .verify_payer(None)
            .map_err(|_| Refusal::BadSignature)?;
        let trust = &self.settings.trust;
        if trust.closed() && !trust.is_trusted(&voucher.payer_key) {
            if trust.trusted().is_empty() {
                return Err(Refusal::NoTrustedPayer);
            }
            return Err(Refusal::UntrustedPayer(voucher.payer_key.to_hex()));
        }
        let Some(previous) = previous else {
            return Ok(Verdict::New { pays: true });
        };
        if voucher.body() == previous.body() && voucher.payer_key == previous.payer_key {
            return Ok(Verdict::Resend);
        }
        if voucher.payer_key != previous.payer_key {
            let (expected, got) = (previous.payer_key.to_hex(), voucher.payer_key.to_hex());
            return Err(Refusal::WrongPayer { expected, got });
        }
        if voucher.asset != previous.asset {
            return Err(Refusal::WrongAsset {
                expected: previous.asset.clone(),
                got: voucher.asset.clone(),
            });
        }
        if voucher.nonce == previous.nonce {
            return Err(Refusal::NonceReused(voucher.nonce));
        }
        if voucher.nonce < previous.nonce {
            return Err(Refusal::StaleNonce {
                got: voucher.nonce,
                latest: previous.nonce,
            });
        }
        if voucher.cumulative_spent < previous.cumulative_spent {
            return Err(Refusal::SpendDecreased {
                got: voucher.cumulative_spent,
                latest: previous.cumulative_spent,
            });
        }
        Ok(Verdict::New {
            pays: voucher.cumulative_spent > previous.cumulative_spent,
        })
    }

    /// The latest countersigned voucher of a channel.
    pub fn latest(&self, channel: &ChannelId) -> Option<Voucher> {
        lock(&self.book).latest.get(channel.as_str()).cloned()
    }

    /// Every channel with a voucher or unpaid tokens, by channel id.
    pub fn summaries(&self) -> Vec<ChannelSummary> {
        let book = lock(&self.book);
        let mut ids: Vec<&String> = book.latest.keys().chain(book.unpaid.keys()).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .map(|id| ChannelSummary {
                channel_id: id.clone(),
                latest: book.latest.get(id).cloned(),
                unpaid_tokens: book.unpaid.get(id).copied().unwrap_or(0),
            })
            .collect()
    }

    /// Refuses new work on a channel whose unpaid tokens exceed the credit limit.
    pub fn admit(&self, channel: &ChannelId) -> Result<(), Unpaid> {
        let limit = self.settings.credit_limit_tokens;
        let unpaid = self.unpaid_tokens(channel);
        if limit != 0 && unpaid > limit {
            return Err(Unpaid {
                channel: channel.clone(),
                unpaid,
                limit,
            });
        }
        Ok(())
    }

    /// Counts `tokens` served on a channel. At most `max_channels` channels are
    /// counted: past that a new channel's tokens are not (only an open, standalone
    /// provider can get there: attached, channels come from the gateway).
    pub fn record(&self, channel: &ChannelId, tokens: u64) {
        let mut book = lock(&self.book);
        if !book.unpaid.contains_key(channel.as_str())
            && book.unpaid.len() >= self.settings.max_channels
        {
            tracing::warn!(%channel, "too many channels with unpaid tokens; this one is not counted");
            return;
        }
        let unpaid = book.unpaid.entry(channel.0.clone()).or_default();
        *unpaid = unpaid.saturating_add(tokens);
    }

    pub fn unpaid_tokens(&self, channel: &ChannelId) -> u64 {
        lock(&self.book)
            .unpaid
            .get(channel.as_str())
            .copied()
            .unwrap_or(0)
    }
}

enum Verdict {
    /// A voucher to countersign and store; `pays` when it raises the spend (or
    /// opens the channel), which clears the channel's unpaid tokens.
    New { pays: bool },
    /// The stored voucher, sent again: answer with its countersigned copy.
    Resend,
}

fn rejected(voucher: &Voucher, reason: Refusal) -> Rejected {
    Rejected {
        channel_id: voucher.channel_id.clone(),
        nonce: voucher.nonce,
        reason,
    }
}

/// Locks are `parking_lot`'s (not poisoned by a panic), as everywhere in both
/// binaries: every update here is a single insert or remove made after the
/// fallible work is done.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock()
}

fn load(path: &Path) -> Result<BTreeMap<String, Voucher>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(source) => {
            return Err(StoreError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.to_owned(),
        detail,
    };
    let file: StoreFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if file.version != STORE_VERSION {
        return Err(corrupt(format!(
            "version {} is not {STORE_VERSION}",
            file.version
        )));
    }
    let mut latest = BTreeMap::new();
    for voucher in file.vouchers {
        voucher.verify(None, None).map_err(|e| {
            corrupt(format!(
                "channel `{}` nonce {}: {e}",
                voucher.channel_id, voucher.nonce
            ))
        })?;
        let channel = voucher.channel_id.clone();
        if latest.insert(channel.clone(), voucher).is_some() {
            return Err(corrupt(format!("channel `{channel}` appears twice")));
        }
    }
    Ok(latest)
}

/// The store file's bytes for these vouchers (in channel order).
fn encode<'a>(vouchers: impl Iterator<Item = &'a Voucher>) -> Result<Vec<u8>, StoreError> {
    #[derive(Serialize)]
    struct Borrowed<'a> {
        version: u32,
        vouchers: Vec<&'a Voucher>,
    }
    let file = Borrowed {
        version: STORE_VERSION,
        vouchers: vouchers.collect(),
    };
    let mut bytes = serde_json::to_vec_pretty(&file).map_err(|e| StoreError::Io {
        path: PathBuf::new(),
        source: std::io::Error::other(e),
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Replaces `path` with `bytes` so that a crash at any instant leaves either the
/// old file or the new one: write a temporary file beside it, fsync it, rename it
/// over the old one, fsync the directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let mut name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the store path names no file"))?
        .to_owned();
    name.push(".tmp");
    let temporary = dir.join(name);
    let mut file = File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)?;
    sync_dir(dir)
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use tenzro_attest::{PublicKey, VoucherBody};

    fn payer() -> ProviderKey {
        ProviderKey::from_seed(&[7; 32])
    }

    fn provider() -> ProviderKey {
        ProviderKey::from_seed(&[9; 32])
    }

    fn voucher(channel: &str, nonce: u64, spent: u128) -> Voucher {
        signed_by(&payer(), channel, nonce, spent)
    }

    fn signed_by(key: &ProviderKey, channel: &str, nonce: u64, spent: u128) -> Voucher {
        VoucherBody {
            channel_id: channel.into(),
            nonce,
            cumulative_spent: spent,
            asset: "TNZO".into(),
        }
        .sign(key)
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        settings: BookSettings,
        channels: Channels,
    }

    fn fixture(limit: u64, trusted: Vec<PublicKey>) -> Fixture {
        fixture_with(
            limit,
            Arc::new(PayerTrust::new(false, trusted)),
            100,
            1 << 20,
        )
    }

    fn fixture_with(
        limit: u64,
        trust: Arc<PayerTrust>,
        max_channels: usize,
        max_store_bytes: usize,
    ) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let settings = BookSettings {
            path: dir.path().join("sub/vouchers.json"),
            credit_limit_tokens: limit,
            trust,
            max_channels,
            max_store_bytes,
        };
        let channels = Channels::open(settings.clone()).unwrap();
        Fixture {
            _dir: dir,
            settings,
            channels,
        }
    }

    impl Fixture {
        fn submit(&self, batch: Vec<Voucher>) -> Outcome {
            self.channels.submit(batch, &provider()).unwrap()
        }

        /// Submits one voucher and says whether it was accepted, or why not.
        fn one(&self, v: Voucher) -> Result<Voucher, Refusal> {
            let mut out = self.submit(vec![v]);
            match (out.vouchers.pop(), out.rejected.pop()) {
                (Some(v), None) => Ok(v),
                (None, Some(r)) => Err(r.reason),
                other => panic!("{other:?}"),
            }
        }

        fn reopen(&self) -> Channels {
            Channels::open(self.settings.clone()).unwrap()
        }
    }

    fn id(text: &str) -> ChannelId {
        ChannelId::parse(text).unwrap()
    }

    #[test]
    fn accepted_vouchers_are_countersigned() {
        let f = fixture(0, vec![]);
        let v = f.one(voucher("ch", 1, 10)).unwrap();
        v.verify(Some(&payer().public_key()), Some(&provider().public_key()))
            .unwrap();
        assert_eq!(f.channels.latest(&id("ch")), Some(v));
    }

    #[test]
    fn bad_vouchers_are_refused_with_the_reason() {
        let f = fixture(0, vec![]);
        f.one(voucher("ch", 5, 100)).unwrap();
        let stranger = ProviderKey::from_seed(&[8; 32]);
        let mut forged = voucher("ch", 6, 200);
        forged.cumulative_spent = 10_000;
        let mut other_asset = VoucherBody {
            channel_id: "ch".into(),
            nonce: 6,
            cumulative_spent: 200,
            asset: "USDC".into(),
        };
        let check = |v: Voucher, expect: Refusal| assert_eq!(f.one(v), Err(expect));
        check(forged, Refusal::BadSignature);
        check(
            voucher("ch", 4, 100),
            Refusal::StaleNonce { got: 4, latest: 5 },
        );
        check(voucher("ch", 5, 101), Refusal::NonceReused(5));
        check(
            voucher("ch", 6, 99),
            Refusal::SpendDecreased {
                got: 99,
                latest: 100,
            },
        );
        check(
            signed_by(&stranger, "ch", 6, 200),
            Refusal::WrongPayer {
                expected: payer().public_key().to_hex(),
                got: stranger.public_key().to_hex(),
            },
        );
        check(
            other_asset.clone().sign(&payer()),
            Refusal::WrongAsset {
                expected: "TNZO".into(),
                got: "USDC".into(),
            },
        );
        other_asset.asset = String::new();
        check(other_asset.sign(&payer()), Refusal::BadAsset);
        check(voucher("a b", 1, 1), Refusal::BadChannelId);
        check(voucher("", 1, 1), Refusal::BadChannelId);
        check(
            voucher(&"x".repeat(MAX_CHANNEL_ID_BYTES + 1), 1, 1),
            Refusal::BadChannelId,
        );
        // Nothing refused changed the channel; equal spend with a higher nonce is fine.
        assert_eq!(f.channels.latest(&id("ch")).unwrap().nonce, 5);
        assert_eq!(f.one(voucher("ch", 9, 100)).unwrap().nonce, 9);
    }

    #[test]
    fn trusted_payers_are_the_only_ones_accepted() {
        let trusted = ProviderKey::from_seed(&[1; 32]);
        let f = fixture(0, vec![trusted.public_key()]);
        assert_eq!(
            f.one(voucher("ch", 1, 1)),
            Err(Refusal::UntrustedPayer(payer().public_key().to_hex()))
        );
        f.one(signed_by(&trusted, "ch", 1, 1)).unwrap();
    }

    #[test]
    fn a_resend_is_answered_with_the_stored_voucher() {
        let f = fixture(0, vec![]);
        let first = f.one(voucher("ch", 3, 30)).unwrap();
        let modified = std::fs::metadata(&f.settings.path)
            .unwrap()
            .modified()
            .unwrap();
        let again = f.one(voucher("ch", 3, 30)).unwrap();
        assert_eq!(again, first);
        // A resend writes nothing.
        assert_eq!(
            std::fs::metadata(&f.settings.path)
                .unwrap()
                .modified()
                .unwrap(),
            modified
        );
        // A countersigned copy resent (provider fields set) is a resend too.
        assert_eq!(f.one(first.clone()).unwrap(), first);
    }

    #[test]
    fn a_batch_is_judged_in_order_and_stored_once() {
        let f = fixture(0, vec![]);
        let out = f.submit(vec![
            voucher("a", 1, 1),
            voucher("a", 2, 5),
            voucher("a", 2, 5),
            voucher("b", 1, 1),
            voucher("a", 1, 9),
        ]);
        let accepted: Vec<(String, u64)> = out
            .vouchers
            .iter()
            .map(|v| (v.channel_id.clone(), v.nonce))
            .collect();
        assert_eq!(
            accepted,
            [
                ("a".into(), 1),
                ("a".into(), 2),
                ("a".into(), 2),
                ("b".into(), 1)
            ]
        );
        assert_eq!(
            out.rejected,
            [Rejected {
                channel_id: "a".into(),
                nonce: 1,
                reason: Refusal::StaleNonce { got: 1, latest: 2 }
            }]
        );
        let reopened = f.reopen();
        assert_eq!(reopened.latest(&id("a")).unwrap().cumulative_spent, 5);
        assert_eq!(reopened.latest(&id("b")).unwrap().nonce, 1);
    }

    #[test]
    fn the_book_survives_a_reopen_and_keeps_the_pinned_payer() {
        let f = fixture(0, vec![]);
        let stored = f.one(voucher("ch", 2, 20)).unwrap();
        let reopened = f.reopen();
        assert_eq!(reopened.latest(&id("ch")), Some(stored));
        let stranger = ProviderKey::from_seed(&[8; 32]);
        let out = reopened
            .submit(
                vec![signed_by(&stranger, "ch", 3, 30), voucher("ch", 2, 25)],
                &provider(),
            )
            .unwrap();
        assert!(out.vouchers.is_empty());
        assert!(matches!(out.rejected[0].reason, Refusal::WrongPayer { .. }));
        assert_eq!(out.rejected[1].reason, Refusal::NonceReused(2));
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(f.settings.path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["vouchers.json"]);
    }

    #[test]
    fn a_missing_store_is_empty_and_a_corrupt_one_is_refused() {
        let f = fixture(0, vec![]);
        assert!(f.channels.summaries().is_empty());
        let check = |text: &str, needle: &str| {
            std::fs::create_dir_all(f.settings.path.parent().unwrap()).unwrap();
            std::fs::write(&f.settings.path, text).unwrap();
            let err = Channels::open(f.settings.clone())
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains("is corrupt") && err.contains(needle), "{err}");
        };
        check("{", "EOF");
        check(r#"{"version":2,"vouchers":[]}"#, "version 2");
        let good = {
            let mut v = voucher("ch", 1, 1);
            v.countersign(&provider()).unwrap();
            v
        };
        let mut tampered = good.clone();
        tampered.cumulative_spent = 2;
        let file = |vs: Vec<Voucher>| {
            serde_json::to_string(&StoreFile {
                version: 1,
                vouchers: vs,
            })
            .unwrap()
        };
        check(&file(vec![tampered]), "signature does not verify");
        check(&file(vec![voucher("ch", 1, 1)]), "not countersigned");
        check(&file(vec![good.clone(), good]), "appears twice");
    }

    #[test]
    fn a_failed_write_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let settings = BookSettings {
            path: dir.path().join("blocker/v.json"),
            credit_limit_tokens: 0,
            trust: Arc::new(PayerTrust::new(false, vec![])),
            max_channels: 10,
            max_store_bytes: 1 << 20,
        };
        let channels = Channels::open(settings).unwrap();
        // The store's directory is a file, so the write fails.
        std::fs::write(dir.path().join("blocker"), "").unwrap();
        assert!(
            channels
                .submit(vec![voucher("ch", 1, 1)], &provider())
                .is_err()
        );
        assert_eq!(channels.latest(&id("ch")), None);
    }

    #[test]
    fn credit_is_counted_refused_past_the_limit_and_reset_by_payment() {
        let f = fixture(100, vec![]);
        let ch = id("ch");
        f.channels.admit(&ch).unwrap();
        f.channels.record(&ch, 60);
        f.channels.record(&ch, 40);
        // At the limit is still served; past it is not.
        f.channels.admit(&ch).unwrap();
        f.channels.record(&ch, 1);
        assert_eq!(
            f.channels.admit(&ch),
            Err(Unpaid {
                channel: ch.clone(),
                unpaid: 101,
                limit: 100
            })
        );
        // Other channels are unaffected.
        f.channels.admit(&id("other")).unwrap();
        // The first voucher pays.
        f.one(voucher("ch", 1, 10)).unwrap();
        assert_eq!(f.channels.unpaid_tokens(&ch), 0);
        f.channels.record(&ch, 500);
        // A resend, or a voucher that spends nothing more, does not pay.
        f.one(voucher("ch", 1, 10)).unwrap();
        f.one(voucher("ch", 2, 10)).unwrap();
        assert_eq!(f.channels.unpaid_tokens(&ch), 500);
        assert!(f.channels.admit(&ch).is_err());
        // A refused voucher does not pay either.
        assert!(f.one(voucher("ch", 1, 99)).is_err());
        assert_eq!(f.channels.unpaid_tokens(&ch), 500);
        f.one(voucher("ch", 3, 11)).unwrap();
        f.channels.admit(&ch).unwrap();
        let summaries = f.channels.summaries();
        assert_eq!(summaries.len(), 1);
        assert_eq!(
            (
                summaries[0].unpaid_tokens,
                summaries[0].latest.as_ref().unwrap().nonce
            ),
            (0, 3)
        );
    }

    #[test]
    fn a_zero_limit_is_unlimited_and_served_channels_are_listed() {
        let f = fixture(0, vec![]);
        f.channels.record(&id("x"), u64::MAX);
        f.channels.record(&id("x"), 5);
        f.channels.admit(&id("x")).unwrap();
        let s = f.channels.summaries();
        assert_eq!(
            (
                s[0].channel_id.as_str(),
                s[0].unpaid_tokens,
                s[0].latest.is_none()
            ),
            ("x", u64::MAX, true)
        );
    }

    #[test]
    fn an_attached_book_takes_its_gateways_payer_only_and_none_before_it_is_known() {
        let trust = Arc::new(PayerTrust::new(true, vec![]));
        let f = fixture_with(0, trust.clone(), 100, 1 << 20);
        assert_eq!(f.one(voucher("ch", 1, 1)), Err(Refusal::NoTrustedPayer));
        let gateway = ProviderKey::from_seed(&[1; 32]);
        trust.learn(gateway.public_key());
        assert_eq!(
            f.one(voucher("ch", 1, 1)),
            Err(Refusal::UntrustedPayer(payer().public_key().to_hex()))
        );
        f.one(signed_by(&gateway, "ch", 1, 1)).unwrap();
        // Nothing refused was stored.
        assert_eq!(f.reopen().summaries().len(), 1);
    }

    #[test]
    fn the_store_holds_at_most_max_channels() {
        let f = fixture_with(0, Arc::new(PayerTrust::new(false, vec![])), 3, 1 << 20);
        let out = f.submit((0..5).map(|i| voucher(&format!("c{i}"), 1, 1)).collect());
        assert_eq!(out.vouchers.len(), 3);
        assert_eq!(out.rejected.len(), 2);
        assert!(
            out.rejected
                .iter()
                .all(|r| r.reason == Refusal::TooManyChannels(3))
        );
        assert!(out.rejected[0].reason.to_string().contains("max_channels"));
        // Known channels still move on; new ones are still refused.
        f.one(voucher("c0", 2, 5)).unwrap();
        assert_eq!(
            f.one(voucher("new", 1, 1)),
            Err(Refusal::TooManyChannels(3))
        );
        assert_eq!(f.reopen().summaries().len(), 3);
    }

    #[test]
    fn the_store_file_stays_under_max_store_bytes() {
        let f = fixture_with(0, Arc::new(PayerTrust::new(false, vec![])), 1000, 2_000);
        let mut accepted = 0;
        for i in 0..20 {
            match f.one(voucher(&format!("channel-{i}"), 1, 1)) {
                Ok(_) => accepted += 1,
                Err(Refusal::StoreFull(2_000)) => {}
                Err(other) => panic!("{other:?}"),
            }
        }
        assert!((1..20).contains(&accepted), "{accepted}");
        assert!(std::fs::metadata(&f.settings.path).unwrap().len() <= 2_000);
        // A known channel still takes its next voucher.
        f.one(voucher("channel-0", 2, 2)).unwrap();
        assert_eq!(f.reopen().summaries().len(), accepted);
    }

    #[test]
    fn unpaid_counts_are_kept_for_at_most_max_channels() {
        let f = fixture_with(0, Arc::new(PayerTrust::new(false, vec![])), 2, 1 << 20);
        for c in ["a", "b", "c"] {
            f.channels.record(&id(c), 1);
        }
        f.channels.record(&id("a"), 1);
        assert_eq!(
            (
                f.channels.unpaid_tokens(&id("a")),
                f.channels.unpaid_tokens(&id("c"))
            ),
            (2, 0)
        );
    }
}
