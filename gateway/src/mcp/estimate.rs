//! `estimate_cost`: computed rather than called, from the prices `/v1/models`
//! lists, by the gateway's own pricing rules.

use axum::http::Method;
use serde_json::{Value, json};

use super::api::Api;
use super::args;
use super::tools::{Failure, request};
use crate::pricing::{self, Asset, Quote};

/// The prompt bound the gateway reserves for (`routes::chat`): one token per byte,
/// plus framing per message and per request.
pub fn prompt_bound(a: &args::Estimate) -> u64 {
    let messages: u64 = a
        .messages
        .iter()
        .flatten()
        .map(|m| m.content.len() as u64 + 16)
        .sum();
    let prompt = a.prompt.as_ref().map_or(0, |p| p.len() as u64);
    messages + prompt + 16
}

/// The most `tokens` may cost on a model at `price` (TNZO base units per token),
/// idle and at full congestion.
pub fn bounds(
    price: u128,
    parameters: Option<u64>,
    tee: bool,
    tokens: u64,
) -> Option<(u128, u128)> {
    let at = |congestion: u64| {
        Quote::new(
            price,
            pricing::complexity_ppm(parameters),
            congestion,
            pricing::tee_ppm(tee),
            Asset::Tnzo,
            pricing::ONE,
        )
        .cost(tokens)
        .ok()
    };
    Some((
        at(pricing::congestion_ppm(0, 1))?,
        at(pricing::congestion_ppm(u32::MAX, 1))?,
    ))
}

pub async fn estimate<A: Api>(
    api: &A,
    key: &str,
    a: args::Estimate,
) -> Result<(String, Value), Failure> {
    let r = request(api, key, Method::GET, "/v1/models", None).await?;
    let card = r
        .body
        .get("data")
        .and_then(Value::as_array)
        .and_then(|d| {
            d.iter()
                .find(|c| c.get("id").and_then(Value::as_str) == Some(a.model.as_str()))
        })
        .ok_or_else(|| {
            Failure::new(format!(
                "the model `{}` is not served by any provider this key may use now",
                a.model
            ))
        })?;
    let tee = a.tee.unwrap_or(false);
    if tee && card.get("tee_available").and_then(Value::as_bool) != Some(true) {
        return Err(Failure::new(format!(
            "no verified TEE provider serves `{}` now",
            a.model
        )));
    }
    let price = card
        .get("min_price_per_token")
        .and_then(Value::as_str)
        .and_then(|p| p.parse::<u128>().ok())
        .ok_or_else(|| Failure::new("the model's price is missing from /v1/models"))?;
    let parameters = card.get("parameters").and_then(Value::as_u64);
    let prompt = prompt_bound(&a);
    let completion = u64::from(a.max_tokens.unwrap_or(0));
    let tokens = prompt.saturating_add(completion);
    let (low, high) = bounds(price, parameters, tee, tokens)
        .ok_or_else(|| Failure::new("the estimate overflows; ask for fewer tokens"))?;
    let text = format!(
        "at most {low} TNZO base units on an idle provider, {high} on a congested one ({tokens} tokens: prompt bound {prompt} + max_tokens {completion})"
    );
    Ok((
        text,
        json!({
            "model": a.model,
            "asset": "TNZO",
            "price_per_token": price.to_string(),
            "prompt_tokens_bound": prompt,
            "max_tokens": completion,
            "tee": tee,
            "max_cost_idle": low.to_string(),
            "max_cost_congested": high.to_string(),
        }),
    ))
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn estimates_follow_the_pricing_rules() {
        let a = args::Estimate {
            model: "m".into(),
            messages: Some(vec![args::Message {
                role: "user".into(),
                content: "hello".into(),
                name: None,
            }]),
            prompt: None,
            max_tokens: Some(10),
            tee: None,
        };
        // 5 bytes + 16 per message + 16 per request.
        assert_eq!(prompt_bound(&a), 37);
        let (idle, busy) = bounds(1_000, None, false, 47).unwrap();
        assert_eq!((idle, busy), (23_500, 94_000));
        let (tee_idle, _) = bounds(1_000, None, true, 47).unwrap();
        assert_eq!(tee_idle, 28_200);
        assert!(bounds(u128::MAX, None, false, 2).is_none());
    }
}
