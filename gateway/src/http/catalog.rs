//! `GET /v1/models`: the union of the models routable providers serve, with both
//! prices (without and with a TEE) and the registry's fields.

use axum::Json;
use axum::extract::State;
use tenzro_models::api::{ModelCard, ModelList};

use crate::accounts::Operation;
use crate::http::error::ApiError;
use crate::http::extract::Auth;
use crate::state::AppState;

/// The union of the models routable providers serve, with registry fields.
pub async fn models(
    State(state): State<AppState>,
    Auth(key): Auth,
) -> Result<Json<ModelList>, ApiError> {
    if let Some(ops) = &key.record.scope.allowed_operations
        && !ops.contains(&Operation::Models)
    {
        return Err(ApiError::Forbidden("this key may not list models".into()));
    }
    let mut cards: std::collections::BTreeMap<String, (ModelCard, u128, u64, Option<u128>)> =
        Default::default();
    for p in state.registry.all() {
        if !state.registry.routable(&p) {
            continue;
        }
        for m in &p.info.models {
            if let Some(allowed) = &key.record.scope.allowed_models
                && !allowed.contains(&m.info.id)
            {
                continue;
            }
            let entry = cards.entry(m.info.id.clone()).or_insert_with(|| {
                let mut meta = match serde_json::to_value(&m.info) {
                    Ok(serde_json::Value::Object(o)) => o,
                    _ => serde_json::Map::new(),
                };
                meta.remove("id");
                meta.remove("price_per_token");
                let card = ModelCard {
                    id: m.info.id.clone(),
                    object: "model".into(),
                    created: 0,
                    owned_by: "tenzro".into(),
                    meta,
                };
                (card, m.price, 0, None)
            });
            entry.1 = entry.1.min(m.price);
            entry.2 += 1;
            // Only a verdict the gateway holds (trusted, fresh) makes a TEE
            // available; the lowest base price among those providers.
            if state.registry.tee_verified(&p) {
                entry.3 = Some(entry.3.map_or(m.price, |t: u128| t.min(m.price)));
            }
        }
    }
    let tee = |base: u128| {
        crate::pricing::mul_div_floor(
            base,
            u128::from(crate::pricing::tee_ppm(true)),
            u128::from(crate::pricing::PPM),
        )
        .unwrap_or(u128::MAX)
    };
    let data = cards
        .into_values()
        .map(|(mut card, price, n, tee_base)| {
            card.meta
                .insert("min_price_per_token".into(), price.to_string().into());
            // Both prices: without a TEE, and with one (base × 1.2, charged only
            // when the request asks for a TEE and a verified provider serves it).
            card.meta.insert(
                "min_tee_price_per_token".into(),
                tee_base.map(|b| tee(b).to_string()).into(),
            );
            card.meta.insert("price_asset".into(), "TNZO".into());
            card.meta.insert("providers".into(), n.into());
            card.meta
                .insert("tee_available".into(), tee_base.is_some().into());
            card
        })
        .collect();
    Ok(Json(ModelList {
        object: "list".into(),
        data,
    }))
}
