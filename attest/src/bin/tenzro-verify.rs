//! `tenzro-verify`: verify saved attestation evidence, receipts and vouchers offline.
//!
//! Prints every check with its result; exits 0 when trusted, 1 when refused and 2
//! when the inputs cannot be read. Binary inputs may be raw, hex text or base64;
//! certificates PEM or DER.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tenzro_attest::evidence::{self, Collateral, VerifyContext, nvidia, sev_snp, tdx};
use tenzro_attest::{Policy, PublicKey, Receipt, Verdict, Voucher, input};

#[derive(Parser)]
#[command(
    name = "tenzro-verify",
    version,
    about = "Verify Tenzro attestation evidence, receipts and vouchers offline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Common {
    /// Verify at this unix time (default: now). Vendor samples need their own time.
    #[arg(long)]
    at: Option<u64>,
    /// Policy file (TOML); default: the built-in policy.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Expected 64-byte report data, hex (the binding); not checked when absent.
    #[arg(long)]
    report_data: Option<String>,
    /// Print the verdict as JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// An Intel TDX DCAP quote.
    Tdx {
        /// The quote (raw, hex or base64).
        quote: PathBuf,
        /// Intel collateral JSON (dcap-qvl's QuoteCollateralV3 with hex fields).
        #[arg(long)]
        collateral: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// An AMD SEV-SNP attestation report.
    SevSnp {
        /// The 1184-byte report (raw, hex or base64).
        report: PathBuf,
        /// The VCEK or VLEK certificate (PEM or DER).
        #[arg(long)]
        vcek: PathBuf,
        /// ASK and ARK (PEM bundle); default: AMD's built-in roots.
        #[arg(long)]
        chain: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// NVIDIA GPU SPDM evidence (request followed by response).
    Nvidia {
        /// The evidence (raw, hex or base64).
        report: PathBuf,
        /// The device certificate chain (PEM, leaf first).
        #[arg(long)]
        certs: PathBuf,
        /// The nonce the evidence must answer, 32 bytes hex.
        #[arg(long)]
        nonce: String,
        #[command(flatten)]
        common: Common,
    },
    /// A provider's signed receipt (JSON).
    Receipt {
        /// The receipt file.
        file: PathBuf,
        /// The provider's public key, hex.
        #[arg(long)]
        key: String,
    },
    /// A payment-channel voucher (JSON).
    Voucher {
        /// The voucher file.
        file: PathBuf,
        /// The payer's public key, hex.
        #[arg(long)]
        key: String,
        /// The provider's public key, hex; when given the countersignature is required.
        #[arg(long)]
        provider_key: Option<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Tdx {
            quote,
            collateral,
            common,
        } => {
            let quote = input::blob(&read(&quote)?);
            let text = String::from_utf8(read(&collateral)?).context("collateral is not UTF-8")?;
            let collateral = Collateral::from_json(&text)?;
            with_context(&common, Some(&collateral), |ctx| tdx::verify(&quote, ctx))
        }
        Command::SevSnp {
            report,
            vcek,
            chain,
            common,
        } => {
            let report = input::blob(&read(&report)?);
            let vcek = read(&vcek)?;
            let chain = chain.map(|c| read(&c)).transpose()?;
            with_context(&common, None, |ctx| {
                sev_snp::verify(&report, &vcek, chain.as_deref(), ctx)
            })
        }
        Command::Nvidia {
            report,
            certs,
            nonce,
            common,
        } => {
            let report = input::blob(&read(&report)?);
            let certs = read(&certs)?;
            let nonce_bytes =
                hex::decode(nonce.trim().trim_start_matches("0x")).context("--nonce is not hex")?;
            let nonce: [u8; 32] = nonce_bytes
                .try_into()
                .map_err(|_| anyhow::anyhow!("--nonce must be 32 bytes"))?;
            with_context(&common, None, |ctx| {
                nvidia::verify(&report, &certs, Some(&nonce), ctx)
            })
        }
        Command::Receipt { file, key } => {
            let key = PublicKey::from_hex(&key)?;
            let receipt: Receipt =
                serde_json::from_slice(&read(&file)?).context("parsing the receipt")?;
            let result = receipt.verify(Some(&key));
            print_line(
                result.is_ok(),
                "signature",
                result.as_ref().err().map(ToString::to_string),
            );
            println!(
                "  model {}  tokens {}+{}  issued_at {}",
                receipt.model, receipt.prompt_tokens, receipt.completion_tokens, receipt.issued_at
            );
            Ok(verdict_line(result.is_ok()))
        }
        Command::Voucher {
            file,
            key,
            provider_key,
        } => {
            let payer = PublicKey::from_hex(&key)?;
            let provider = provider_key.map(|k| PublicKey::from_hex(&k)).transpose()?;
            let voucher: Voucher =
                serde_json::from_slice(&read(&file)?).context("parsing the voucher")?;
            let payer_result = voucher.verify_payer(Some(&payer));
            print_line(
                payer_result.is_ok(),
                "payer-signature",
                payer_result.as_ref().err().map(ToString::to_string),
            );
            let mut ok = payer_result.is_ok();
            if provider.is_some() || voucher.provider_signature.is_some() {
                let result = voucher.verify(Some(&payer), provider.as_ref());
                print_line(
                    result.is_ok(),
                    "countersignature",
                    result.as_ref().err().map(ToString::to_string),
                );
                ok &= result.is_ok();
            }
            println!(
                "  channel {}  nonce {}  spent {} {}",
                voucher.channel_id, voucher.nonce, voucher.cumulative_spent, voucher.asset
            );
            Ok(verdict_line(ok))
        }
    }
}

fn with_context(
    common: &Common,
    collateral: Option<&Collateral>,
    verify: impl FnOnce(&VerifyContext<'_>) -> Verdict,
) -> anyhow::Result<bool> {
    let policy = match &common.policy {
        Some(path) => Policy::load(path)?,
        None => Policy::default(),
    };
    let report_data = common
        .report_data
        .as_deref()
        .map(|h| -> anyhow::Result<[u8; 64]> {
            let bytes = hex::decode(h.trim()).context("--report-data is not hex")?;
            bytes
                .try_into()
                .map_err(|_| anyhow::anyhow!("--report-data must be 64 bytes"))
        })
        .transpose()?;
    let ctx = VerifyContext {
        now: common.at.unwrap_or_else(evidence::unix_now),
        policy: &policy,
        report_data,
        tdx_collateral: collateral,
    };
    let verdict = verify(&ctx);
    if common.json {
        println!("{}", serde_json::to_string_pretty(&verdict)?);
        return Ok(verdict.trusted);
    }
    println!("{} evidence at {}", verdict.kind, ctx.now);
    for check in &verdict.checks {
        print_line(check.ok, &check.name, Some(check.detail.clone()));
    }
    for (key, value) in &verdict.claims {
        println!("  {key:<16} {value}");
    }
    for reason in &verdict.reasons {
        println!("  reason: {reason}");
    }
    Ok(verdict_line(verdict.trusted))
}

fn print_line(ok: bool, name: &str, detail: Option<String>) {
    let mark = if ok { "ok  " } else { "FAIL" };
    match detail {
        Some(d) => println!("  [{mark}] {name}: {d}"),
        None => println!("  [{mark}] {name}"),
    }
}

fn verdict_line(ok: bool) -> bool {
    println!("{}", if ok { "TRUSTED" } else { "REFUSED" });
    ok
}
