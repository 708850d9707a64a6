//! The provider's configuration: a TOML file, then flags (see `main.rs`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tenzro_attest::evidence::tsm::TSM_REPORT_DIR;
use tenzro_attest::{PublicKey, TeeKind};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to serve on.
    pub listen: SocketAddr,
    /// Base directory for relative model paths.
    #[serde(default = "default_models_dir")]
    pub models_dir: PathBuf,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub engine: EngineSection,
    #[serde(default)]
    pub chat_models: Vec<ChatModelConfig>,
    #[serde(default)]
    pub embedding_models: Vec<EmbeddingModelConfig>,
    #[serde(default)]
    pub identity: IdentityConfig,
    #[serde(default)]
    pub attestation: AttestationConfig,
    #[serde(default)]
    pub channels: ChannelsConfig,
    #[serde(default)]
    pub gateway: GatewayConfig,
    #[serde(default)]
    pub operator: OperatorConfig,
    /// Stake declared to a gateway at registration, in whole TNZO. Gateways route
    /// LLM traffic only to providers staking at least 100,000.
    #[serde(default = "default_stake_tnzo")]
    pub stake_tnzo: u64,
}

fn default_stake_tnzo() -> u64 {
    100_000
}

fn default_models_dir() -> PathBuf {
    PathBuf::from(".tenzro/models")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Inputs accepted in one embeddings request.
    pub max_embedding_inputs: usize,
    /// Choices accepted in one request (`n`).
    pub max_n: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_body_bytes: 4 << 20,
            max_embedding_inputs: 2048,
            max_n: 16,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    /// Requests that may wait for a free sequence slot before we answer 503.
    pub queue_capacity: usize,
    /// Sequences decoded side by side.
    pub max_sequences: usize,
    /// MiB of KV cache kept per chat model for prompts sharing a prefix (a system
    /// prompt, earlier turns of a conversation); 0 turns the prefix cache off.
    pub prefix_cache_mib: usize,
}

/// The largest `engine.prefix_cache_mib` accepted (1 TiB).
pub const MAX_PREFIX_CACHE_MIB: usize = 1 << 20;

impl Default for EngineSection {
    fn default() -> Self {
        EngineSection {
            queue_capacity: 64,
            max_sequences: 8,
            prefix_cache_mib: 64,
        }
    }
}

/// `[identity]`: where the provider's key lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// The Ed25519 key file (hex seed), relative to the working directory unless
    /// absolute; made with mode 0600 when missing.
    pub key_path: PathBuf,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            key_path: PathBuf::from(".tenzro/provider.key"),
        }
    }
}

/// `[attestation]`: which evidence the provider hands out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttestationConfig {
    /// `none` (development, never trusted), `tdx`, `sev-snp` or `nvidia-cc`.
    pub kind: TeeKind,
    /// The configfs-tsm report directory (`tdx`, `sev-snp`).
    pub tsm_dir: PathBuf,
    /// The NVML index of the GPU whose evidence is given (`nvidia-cc`).
    pub gpu_index: u32,
    /// Documents kept per nonce: a nonce asked again is answered from this cache.
    pub cache_entries: usize,
    /// Fresh documents (cache misses) one source address may ask for per minute...
    pub fresh_per_minute: u32,
    /// ...and in one burst; past that, 429 with Retry-After.
    pub fresh_burst: u32,
}

impl Default for AttestationConfig {
    fn default() -> Self {
        AttestationConfig {
            kind: TeeKind::None,
            tsm_dir: PathBuf::from(TSM_REPORT_DIR),
            gpu_index: 0,
            cache_entries: 1024,
            fresh_per_minute: 60,
            fresh_burst: 20,
        }
    }
}

/// `[gateway]`: the gateway this provider registers with (`--gateway` overrides
/// `url`) and the bond its owner puts up before it registers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// `http(s)://host[:port]`; with a gateway the provider serves only paid requests.
    pub url: Option<String>,
    /// The environment variable holding the owner account's API key.
    pub owner_key_env: String,
    /// The owner's API key itself (prefer `owner_key_env`: a file leaks more easily).
    pub owner_key: Option<String>,
    /// Stake the owner keeps bonded for this provider's key, in whole TNZO (decimal
    /// string, e.g. "100000" or "0.5"); topped up to this at every start.
    pub bond: String,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            url: None,
            owner_key_env: "TENZRO_OWNER_KEY".to_owned(),
            owner_key: None,
            bond: "0".to_owned(),
        }
    }
}

impl GatewayConfig {
    /// The owner's API key: `owner_key`, else the `owner_key_env` variable; none when
    /// both are unset or empty.
    pub fn owner_key(&self) -> Option<String> {
        let from_env = || std::env::var(&self.owner_key_env).ok();
        self.owner_key
            .clone()
            .or_else(from_env)
            .filter(|k| !k.trim().is_empty())
    }
}

/// `[operator]`: the token that lets the operator read the channel book.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OperatorConfig {
    /// The environment variable holding the operator token; unset or empty: no
    /// operator access (only the payer's signature reads the book).
    pub token_env: String,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        OperatorConfig {
            token_env: "TENZRO_OPERATOR_TOKEN".to_owned(),
        }
    }
}

/// `[channels]`: payment-channel vouchers and the credit given before payment
/// (see `vouchers`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelsConfig {
    /// The voucher store (JSON), relative to the working directory unless absolute.
    pub path: PathBuf,
    /// Tokens a channel may be served beyond its last paying voucher before its
    /// requests get 402; 0 means no limit.
    pub credit_limit_tokens: u64,
    /// When not empty, the only payer keys (hex Ed25519) whose vouchers are
    /// accepted (and who may sign paid requests). When empty: with a gateway, the
    /// payer key it answers at registration; without one, each channel trusts the
    /// key of its first voucher.
    pub trusted_payers: Vec<PublicKey>,
    /// Most channels the store holds; vouchers opening more are refused.
    pub max_channels: usize,
    /// Largest store file, in bytes; vouchers that would grow it past this are refused.
    pub max_store_bytes: usize,
}

impl Default for ChannelsConfig {
    fn default() -> Self {
        ChannelsConfig {
            path: PathBuf::from(".tenzro/provider-vouchers.json"),
            credit_limit_tokens: 200_000,
            trusted_payers: Vec::new(),
            max_channels: 100_000,
            max_store_bytes: 64 << 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatModelConfig {
    /// The name clients put in `model`.
    pub id: String,
    /// A `.gguf` file or a directory holding a Hugging Face safetensors checkpoint
    /// (`config.json`, `*.safetensors`, `tokenizer.json`, `tokenizer_config.json`;
    /// llama or qwen2), relative to `models_dir` unless absolute; or
    /// `hf://owner/repo[@revision]/file` to download a `.gguf` (set `sha256` then).
    pub path: PathBuf,
    /// Expected SHA-256 of the weights (hex); the provider refuses to serve a
    /// mismatch. For a directory: SHA-256 of the `sha256sum` listing of its
    /// `*.safetensors` files sorted by name (`LC_ALL=C sha256sum *.safetensors | sha256sum`).
    pub sha256: Option<String>,
    /// A tokenizer.json to use instead of the one built from the GGUF metadata
    /// (or the one in the checkpoint directory).
    pub tokenizer: Option<PathBuf>,
    /// `"q8_0"` re-quantises Q4_1 tensors at load for speed (for a safetensors
    /// checkpoint: quantises its float matmul weights); `"none"` keeps them;
    /// `"auto"` keeps a GGUF's blocks where the engine's own CPU kernels run them
    /// (release builds) and re-quantises where candle's matmul does.
    #[serde(default)]
    pub requantize: RequantizeSetting,
    /// Price per token in base units (10^-18 TNZO), as a decimal string.
    #[serde(default)]
    pub price_per_token: String,
    /// Parameter count, for the gateway's pricing and the model list.
    #[serde(default)]
    pub parameters: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequantizeSetting {
    #[default]
    None,
    Q8_0,
    Auto,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingModelConfig {
    pub id: String,
    /// A directory with `model.safetensors`, `config.json`, `tokenizer.json`.
    pub path: PathBuf,
    /// Expected SHA-256 of `model.safetensors`.
    pub sha256: Option<String>,
    #[serde(default)]
    pub price_per_token: String,
    #[serde(default)]
    pub parameters: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.chat_models.is_empty() && self.embedding_models.is_empty() {
            return invalid(
                "no models configured: add [[chat_models]] or [[embedding_models]]".into(),
            );
        }
        let mut ids = std::collections::HashSet::new();
        let all = self
            .chat_models
            .iter()
            .map(|m| (&m.id, &m.price_per_token, &m.sha256))
            .chain(
                self.embedding_models
                    .iter()
                    .map(|m| (&m.id, &m.price_per_token, &m.sha256)),
            );
        for (id, price, sha) in all {
            if id.is_empty() {
                return invalid("a model has an empty id".into());
            }
            if !ids.insert(id) {
                return invalid(format!("model id `{id}` is configured twice"));
            }
            if !price.is_empty() && price.parse::<u128>().is_err() {
                return invalid(format!(
                    "model `{id}`: price_per_token `{price}` is not a whole number of base units"
                ));
            }
            if let Some(sha) = sha
                && (sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return invalid(format!("model `{id}`: sha256 must be 64 hex digits"));
            }
        }
        if self.identity.key_path.as_os_str().is_empty() {
            return invalid("identity.key_path must not be empty".into());
        }
        if self.channels.path.as_os_str().is_empty() {
            return invalid("channels.path must not be empty".into());
        }
        if self.channels.max_channels == 0 || self.channels.max_store_bytes == 0 {
            return invalid(
                "channels.max_channels and channels.max_store_bytes must be at least 1".into(),
            );
        }
        if self.attestation.cache_entries == 0
            || self.attestation.fresh_per_minute == 0
            || self.attestation.fresh_burst == 0
        {
            return invalid(
                "attestation.cache_entries, fresh_per_minute and fresh_burst must be at least 1"
                    .into(),
            );
        }
        if let Some(url) = &self.gateway.url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return invalid(format!(
                "gateway.url `{url}` must start with http:// or https://"
            ));
        }
        if let Err(e) = crate::bond::whole_tokens(&self.gateway.bond) {
            return invalid(format!("gateway.bond: {e}"));
        }
        if self.engine.max_sequences == 0 || self.engine.queue_capacity == 0 {
            return invalid(
                "engine.max_sequences and engine.queue_capacity must be at least 1".into(),
            );
        }
        if self.engine.prefix_cache_mib > MAX_PREFIX_CACHE_MIB {
            return invalid(format!(
                "engine.prefix_cache_mib {} is over the limit of {MAX_PREFIX_CACHE_MIB}",
                self.engine.prefix_cache_mib
            ));
        }
        Ok(())
    }

    /// A model path as configured, resolved against `models_dir`.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.models_dir.join(path)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn every_example_config_parses_and_validates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("provider") && name.ends_with(".toml") {
                Config::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
                seen += 1;
            }
        }
        assert!(seen >= 1);
    }

    #[test]
    fn bad_configs_are_refused_with_a_reason() {
        let check = |toml: &str, needle: &str| {
            let err = toml::from_str::<Config>(toml)
                .map_err(|e| e.to_string())
                .and_then(|c| c.validate().map_err(|e| e.to_string()))
                .unwrap_err();
            assert!(err.contains(needle), "{err}");
        };
        check("listen = \"127.0.0.1:1\"\n", "no models configured");
        check("listen = \"127.0.0.1:1\"\nbogus = 1\n", "unknown field");
        check(
            "listen = \"127.0.0.1:1\"\n[[chat_models]]\nid = \"a\"\npath = \"x\"\nprice_per_token = \"1.5\"\n",
            "not a whole number",
        );
        check(
            "listen = \"127.0.0.1:1\"\n[[chat_models]]\nid = \"a\"\npath = \"x\"\n[[embedding_models]]\nid = \"a\"\npath = \"y\"\n",
            "configured twice",
        );
        let model = "[[chat_models]]\nid = \"a\"\npath = \"x\"\n";
        check(
            &format!("listen = \"127.0.0.1:1\"\n{model}[attestation]\nkind = \"sgx\"\n"),
            "unknown variant `sgx`",
        );
        check(
            &format!("listen = \"127.0.0.1:1\"\n{model}[identity]\nkey_path = \"\"\n"),
            "key_path must not be empty",
        );
        check(
            &format!("listen = \"127.0.0.1:1\"\n{model}[identity]\nkey = \"00\"\n"),
            "unknown field `key`",
        );
        check(
            &format!("listen = \"127.0.0.1:1\"\n{model}[channels]\ntrusted_payers = [\"zz\"]\n"),
            "public key must be 32 bytes",
        );
        check(
            &format!("listen = \"127.0.0.1:1\"\n{model}[channels]\npath = \"\"\n"),
            "channels.path must not be empty",
        );
        check(
            &format!("listen = \"127.0.0.1:1\"\n{model}[channels]\nlimit = 1\n"),
            "unknown field `limit`",
        );
    }

    #[test]
    fn identity_and_attestation_default_and_parse() {
        let base = "listen = \"127.0.0.1:1\"\n[[chat_models]]\nid = \"a\"\npath = \"x\"\n";
        let c: Config = toml::from_str(base).unwrap();
        assert_eq!(c.identity.key_path, Path::new(".tenzro/provider.key"));
        assert_eq!(c.attestation.kind, TeeKind::None);
        let c: Config = toml::from_str(&format!(
            "{base}[identity]\nkey_path = \"/k\"\n[attestation]\nkind = \"sev-snp\"\ntsm_dir = \"/t\"\n"
        ))
        .unwrap();
        assert_eq!(c.identity.key_path, Path::new("/k"));
        assert_eq!(
            (c.attestation.kind, c.attestation.tsm_dir.as_path()),
            (TeeKind::SevSnp, Path::new("/t"))
        );
    }

    #[test]
    fn channels_default_and_parse() {
        let base = "listen = \"127.0.0.1:1\"\n[[chat_models]]\nid = \"a\"\npath = \"x\"\n";
        let c: Config = toml::from_str(base).unwrap();
        assert_eq!(c.channels.path, Path::new(".tenzro/provider-vouchers.json"));
        assert_eq!(
            (
                c.channels.credit_limit_tokens,
                c.channels.trusted_payers.len()
            ),
            (200_000, 0)
        );
        let key = tenzro_attest::ProviderKey::from_seed(&[1; 32]).public_key();
        let c: Config = toml::from_str(&format!(
            "{base}[channels]\npath = \"/v.json\"\ncredit_limit_tokens = 0\ntrusted_payers = [\"{}\"]\n",
            key.to_hex()
        ))
        .unwrap();
        assert_eq!(
            (c.channels.path.as_path(), c.channels.credit_limit_tokens),
            (Path::new("/v.json"), 0)
        );
        assert_eq!(c.channels.trusted_payers, [key]);
    }
}
