//! The MCP tools: their definitions (name, description, input schema) and one
//! function per tool that calls the HTTP API through [`Api`] and shapes its answer
//! as a tool result. An API error is a tool error (`isError: true`) carrying the
//! API's own message, and its error body as the structured result.

use std::sync::Arc;

use axum::http::Method;
use rmcp::handler::server::common::schema_for_type;
use rmcp::model::{CallToolResult, ContentBlock, JsonObject, Tool, ToolAnnotations};
use rmcp::schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::api::{Api, Reply};
use super::args;

/// A tool's failure: the message the caller sees, and the structured error.
pub struct Failure {
    pub message: String,
    pub body: Value,
}

impl Failure {
    pub fn new(message: impl Into<String>) -> Self {
        let message = message.into();
        let body = json!({ "error": { "message": message, "type": "invalid_request_error", "param": null, "code": null } });
        Failure { message, body }
    }

    fn from_reply(r: &Reply) -> Self {
        let message = r.error_message();
        let body = if r.body.get("error").is_some() {
            r.body.clone()
        } else {
            json!({ "error": { "message": message, "type": "api_error", "param": null, "code": null } })
        };
        let mut body = body;
        body["status"] = r.status.into();
        Failure { message, body }
    }
}

type Outcome = Result<(String, Value), Failure>;

/// Every tool name, in the order they are listed.
pub const NAMES: [&str; 12] = [
    "list_models",
    "chat",
    "embed",
    "estimate_cost",
    "get_balance",
    "list_channels",
    "get_channel",
    "close_channel",
    "resolve_did",
    "get_provider_status",
    "verify_receipt",
    "request_faucet",
];

fn tool<T: JsonSchema + 'static>(
    name: &'static str,
    description: &'static str,
    read_only: bool,
) -> Tool {
    let mut t = Tool::new(name, description, schema_for_type::<T>());
    let mut out = JsonObject::new();
    out.insert("type".into(), "object".into());
    t = t.with_raw_output_schema(Arc::new(out));
    let mut a = ToolAnnotations::new();
    a.read_only_hint = Some(read_only);
    a.destructive_hint = Some(name == "close_channel");
    t.with_annotations(a)
}

/// The tools, `request_faucet` only when the gateway's faucet is on.
pub fn list(faucet: bool) -> Vec<Tool> {
    let mut v = vec![
        tool::<args::ListModels>(
            "list_models",
            "The models routable providers serve now, with their registry fields (category, modality, context, parameters), lowest prices per token (TNZO base units, with and without a TEE) and provider counts. Filters: category, modality, tee, max_price, provider.",
            true,
        ),
        tool::<args::Chat>(
            "chat",
            "One chat completion within the key's scope, paid from its balance. Takes the fields of /v1/chat/completions (model, messages, max_tokens, temperature, ...). Returns the answer's text, and as structured content: usage, cost (base units of the asset), asset, provider, channel, and the provider's signed receipt.",
            false,
        ),
        tool::<args::Embed>(
            "embed",
            "Embeddings of one text or a list of texts (/v1/embeddings), paid from the key's balance; returns the vectors, usage, cost and provider.",
            false,
        ),
        tool::<args::Estimate>(
            "estimate_cost",
            "The most a request may be charged at the lowest current price (TNZO base units, before congestion): the gateway's prompt bound plus max_tokens, times the price per token with the model's size multiplier (and the TEE premium when asked). Nothing is charged.",
            true,
        ),
        tool::<args::Nothing>(
            "get_balance",
            "The key's account: balances, held (reserved for requests in flight), spent today, the delegation scope, channels, bonds and earnings.",
            true,
        ),
        tool::<args::Nothing>(
            "list_channels",
            "The account's payment channels: deposit, spent, nonce, state, provider, latest voucher.",
            true,
        ),
        tool::<args::ChannelId>(
            "get_channel",
            "One payment channel of the account by id.",
            true,
        ),
        tool::<args::ChannelId>(
            "close_channel",
            "Closes a payment channel: settles at the latest state both sides signed (0.5% commission) and refunds the rest of the deposit, or opens a dispute window when the provider has not countersigned it.",
            false,
        ),
        tool::<args::Did>(
            "resolve_did",
            "Resolves a DID (did:tenzro / did:pdis) to its identity: kind, status, controller, keys; more for the identity's own account.",
            true,
        ),
        tool::<args::ProviderStatus>(
            "get_provider_status",
            "Providers' public status: Active / Degraded / Inactive / Banned, breaker state, EMA latency, failure rate, stake, TEE kind and whether its attestation is verified and fresh, served models.",
            true,
        ),
        tool::<args::VerifyReceipt>(
            "verify_receipt",
            "Checks a provider's signed receipt offline: the Ed25519 signature over model, weights digest, request and response digests and token counts; and, when `provider` is given, that the receipt is signed by that provider's key.",
            true,
        ),
    ];
    if faucet {
        v.push(tool::<args::Nothing>(
            "request_faucet",
            "Development gateways only: funds the account from the faucet (a few times per hour).",
            false,
        ));
    }
    v
}

/// Calls tool `name` for the holder of `key`.
pub async fn call<A: Api>(api: &A, key: &str, name: &str, args: JsonObject) -> CallToolResult {
    let outcome = match name {
        "list_models" => match parse(args) {
            Ok(a) => list_models(api, key, a).await,
            Err(f) => Err(f),
        },
        "chat" => match parse(args) {
            Ok(a) => chat(api, key, a).await,
            Err(f) => Err(f),
        },
        "embed" => match parse(args) {
            Ok(a) => embed(api, key, a).await,
            Err(f) => Err(f),
        },
        "estimate_cost" => match parse(args) {
            Ok(a) => super::estimate::estimate(api, key, a).await,
            Err(f) => Err(f),
        },
        "get_balance" => no_args(args, get(api, key, "/v1/account")).await,
        "list_channels" => no_args(args, get(api, key, "/v1/channels")).await,
        "get_channel" => match parse::<args::ChannelId>(args).and_then(|a| segment("id", &a.id)) {
            Ok(id) => get(api, key, &format!("/v1/channels/{id}")).await,
            Err(f) => Err(f),
        },
        "close_channel" => {
            match parse::<args::ChannelId>(args).and_then(|a| segment("id", &a.id)) {
                Ok(id) => {
                    send(
                        api,
                        key,
                        Method::POST,
                        &format!("/v1/channels/{id}/close"),
                        None,
                    )
                    .await
                }
                Err(f) => Err(f),
            }
        }
        "resolve_did" => match parse::<args::Did>(args).and_then(|a| segment("did", &a.did)) {
            Ok(did) => get(api, key, &format!("/v1/identities/{did}")).await,
            Err(f) => Err(f),
        },
        "get_provider_status" => match parse::<args::ProviderStatus>(args) {
            Ok(a) => provider_status(api, key, a).await,
            Err(f) => Err(f),
        },
        "verify_receipt" => match parse(args) {
            Ok(a) => super::receipt::verify(api, key, a).await,
            Err(f) => Err(f),
        },
        "request_faucet" => no_args(args, send(api, key, Method::POST, "/v1/faucet", None)).await,
        other => Err(Failure::new(format!(
            "unknown tool `{other}`; the tools are: {}",
            NAMES.join(", ")
        ))),
    };
    match outcome {
        Ok((text, structured)) => {
            let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
            r.structured_content = Some(structured);
            r
        }
        Err(f) => {
            let mut r = CallToolResult::error(vec![ContentBlock::text(f.message)]);
            r.structured_content = Some(f.body);
            r
        }
    }
}

fn parse<T: DeserializeOwned>(args: JsonObject) -> Result<T, Failure> {
    serde_json::from_value(Value::Object(args))
        .map_err(|e| Failure::new(format!("invalid arguments: {e}")))
}

async fn no_args(args: JsonObject, then: impl Future<Output = Outcome>) -> Outcome {
    parse::<args::Nothing>(args)?;
    then.await
}

/// An id put in a path: bounded, and nothing that changes the path or query.
fn segment(field: &str, v: &str) -> Result<String, Failure> {
    let ok = !v.is_empty()
        && v.len() <= 512
        && v.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'?' | b'#' | b'%' | b'\\'));
    if ok {
        Ok(v.to_owned())
    } else {
        Err(Failure::new(format!(
            "`{field}` must be 1 to 512 printable ASCII characters without / ? # % or \\"
        )))
    }
}

/// The API's answer, or its error as a tool failure.
pub async fn request<A: Api>(
    api: &A,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Reply, Failure> {
    let r = api
        .call(method, path, key, body)
        .await
        .map_err(Failure::new)?;
    if r.ok() {
        Ok(r)
    } else {
        Err(Failure::from_reply(&r))
    }
}

async fn send<A: Api>(
    api: &A,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Outcome {
    let r = request(api, key, method, path, body).await?;
    let text = serde_json::to_string_pretty(&r.body).unwrap_or_default();
    let structured = match r.body {
        Value::Object(_) => r.body,
        other => json!({ "result": other }),
    };
    Ok((text, structured))
}

async fn get<A: Api>(api: &A, key: &str, path: &str) -> Outcome {
    send(api, key, Method::GET, path, None).await
}

async fn list_models<A: Api>(api: &A, key: &str, f: args::ListModels) -> Outcome {
    let max_price = f
        .max_price
        .as_deref()
        .map(|p| {
            p.trim().parse::<u128>().map_err(|_| {
                Failure::new("`max_price` must be a whole number of TNZO base units per token, as a decimal string")
            })
        })
        .transpose()?;
    let served: Option<Vec<String>> = match &f.provider {
        Some(p) => {
            let id = segment("provider", p)?;
            let r = request(
                api,
                key,
                Method::GET,
                &format!("/v1/providers/status?id={id}"),
                None,
            )
            .await?;
            Some(
                r.body
                    .pointer("/data/0/models")
                    .and_then(Value::as_array)
                    .map(|m| {
                        m.iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
            )
        }
        None => None,
    };
    let r = request(api, key, Method::GET, "/v1/models", None).await?;
    let cards = r
        .body
        .get("data")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let text_eq = |card: &Value, field: &str, want: &Option<String>| match want {
        None => true,
        Some(w) => card
            .get(field)
            .and_then(Value::as_str)
            .is_some_and(|v| v.eq_ignore_ascii_case(w)),
    };
    let models: Vec<Value> = cards
        .into_iter()
        .filter(|c| text_eq(c, "category", &f.category) && text_eq(c, "modality", &f.modality))
        .filter(|c| match f.tee {
            Some(true) => c.get("tee_available").and_then(Value::as_bool) == Some(true),
            _ => true,
        })
        .filter(|c| match max_price {
            None => true,
            Some(max) => c
                .get("min_price_per_token")
                .and_then(Value::as_str)
                .and_then(|p| p.parse::<u128>().ok())
                .is_some_and(|p| p <= max),
        })
        .filter(|c| match &served {
            None => true,
            Some(ids) => c
                .get("id")
                .and_then(Value::as_str)
                .is_some_and(|id| ids.iter().any(|s| s == id)),
        })
        .collect();
    let ids: Vec<&str> = models
        .iter()
        .filter_map(|c| c.get("id").and_then(Value::as_str))
        .collect();
    let text = if ids.is_empty() {
        "no model matches these filters".to_owned()
    } else {
        format!("{} model(s): {}", ids.len(), ids.join(", "))
    };
    Ok((text, json!({ "models": models })))
}

async fn chat<A: Api>(api: &A, key: &str, a: args::Chat) -> Outcome {
    let mut body = serde_json::to_value(&a).map_err(|e| Failure::new(e.to_string()))?;
    body["stream"] = false.into();
    let r = request(api, key, Method::POST, "/v1/chat/completions", Some(body)).await?;
    let b = &r.body;
    let text = b
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let cost = r.header("cost").map(str::to_owned).or_else(|| {
        b.pointer("/usage/cost")
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    let structured = json!({
        "text": text,
        "id": b.get("id"),
        "model": b.get("model"),
        "finish_reason": b.pointer("/choices/0/finish_reason"),
        "tool_calls": b.pointer("/choices/0/message/tool_calls"),
        "usage": b.get("usage"),
        "cost": cost,
        "asset": r.header("asset"),
        "provider": r.header("provider"),
        "channel": r.header("channel"),
        "receipt": b.pointer("/tenzro/receipt"),
    });
    Ok((text, structured))
}

async fn embed<A: Api>(api: &A, key: &str, a: args::Embed) -> Outcome {
    let body = serde_json::to_value(&a).map_err(|e| Failure::new(e.to_string()))?;
    let r = request(api, key, Method::POST, "/v1/embeddings", Some(body)).await?;
    let b = &r.body;
    let data = b.get("data").cloned().unwrap_or(Value::Null);
    let n = data.as_array().map_or(0, Vec::len);
    let dims = data
        .pointer("/0/embedding")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let structured = json!({
        "model": b.get("model"),
        "data": data,
        "usage": b.get("usage"),
        "cost": r.header("cost"),
        "asset": r.header("asset"),
        "provider": r.header("provider"),
    });
    Ok((format!("{n} embedding(s) of {dims} dimensions"), structured))
}

async fn provider_status<A: Api>(api: &A, key: &str, a: args::ProviderStatus) -> Outcome {
    let path = match &a.provider {
        Some(p) => format!("/v1/providers/status?id={}", segment("provider", p)?),
        None => "/v1/providers/status".to_owned(),
    };
    let (_, structured) = get(api, key, &path).await?;
    let rows = structured
        .get("data")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    if let Some(p) = &a.provider
        && rows.is_empty()
    {
        return Err(Failure::new(format!(
            "no provider {p} is known to this gateway"
        )));
    }
    let text = rows
        .iter()
        .map(|r| {
            format!(
                "{}: {} (breaker {}, tee {})",
                r.get("id").and_then(Value::as_str).unwrap_or("?"),
                r.get("status").and_then(Value::as_str).unwrap_or("?"),
                r.get("breaker").and_then(Value::as_str).unwrap_or("?"),
                r.get("tee_verified")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    Ok((text, structured))
}
