//! `verify_receipt`: an adapter over `POST /v1/receipts/verify` (the console's
//! receipt check), so the tool and the route give the same verdict and messages.
//! A receipt that does not verify is the route's `200 {"valid": false, "error"}`
//! and the tool's error with that message.

use axum::http::Method;
use serde_json::{Value, json};

use super::api::Api;
use super::args;
use super::tools::{Failure, request};

pub async fn verify<A: Api>(
    api: &A,
    key: &str,
    a: args::VerifyReceipt,
) -> Result<(String, Value), Failure> {
    let body = json!({ "receipt": a.receipt, "provider": a.provider });
    let r = request(api, key, Method::POST, "/v1/receipts/verify", Some(body)).await?;
    let v = r.body;
    if v.get("valid").and_then(Value::as_bool) != Some(true) {
        let message = v
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("the receipt does not verify")
            .to_owned();
        return Err(Failure {
            message,
            body: json!({ "valid": false, "error": v.get("error"), "signer": v.get("signer") }),
        });
    }
    let receipt = v.get("receipt").cloned().unwrap_or(Value::Null);
    let field = |k: &str| receipt.get(k).cloned().unwrap_or(Value::Null);
    let signer = v.get("signer").and_then(Value::as_str).unwrap_or("?");
    let text = format!(
        "valid: signed by {signer} for {} ({} prompt + {} completion tokens)",
        field("model").as_str().unwrap_or("?"),
        field("prompt_tokens"),
        field("completion_tokens"),
    );
    let structured = json!({
        "valid": true,
        "signer": signer,
        "model": field("model"),
        "prompt_tokens": field("prompt_tokens"),
        "completion_tokens": field("completion_tokens"),
        "issued_at": field("issued_at"),
        "request_sha256": field("request_sha256"),
        "response_sha256": field("response_sha256"),
        "weight_sha256": field("weight_sha256"),
    });
    Ok((text, structured))
}
