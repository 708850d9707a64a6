//! The registry's map of providers, indexed by model (issue 17): a routing
//! decision reads only the providers that declared the requested model, so its
//! cost grows with the candidates for that model, not with the whole registry.
//!
//! Every insertion and removal goes through [`ProviderMap`], which keeps the index
//! in step; an entry's declared models never change (a new registration replaces
//! the entry), so the index is exact.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::providers::entry::ProviderEntry;

/// Providers by id, and for each declared model the providers serving it.
#[derive(Debug, Default)]
pub struct ProviderMap {
    by_id: BTreeMap<String, Arc<ProviderEntry>>,
    /// Model id -> (provider id -> entry), in provider id order.
    by_model: HashMap<String, BTreeMap<String, Arc<ProviderEntry>>>,
}

impl ProviderMap {
    pub fn get(&self, id: &str) -> Option<&Arc<ProviderEntry>> {
        self.by_id.get(id)
    }

    pub fn contains_key(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    /// Adds or replaces the entry of `id`; returns the one it replaced.
    pub fn insert(&mut self, id: String, entry: Arc<ProviderEntry>) -> Option<Arc<ProviderEntry>> {
        let old = self.remove(&id);
        for m in &entry.info.models {
            self.by_model
                .entry(m.info.id.clone())
                .or_default()
                .insert(id.clone(), entry.clone());
        }
        self.by_id.insert(id, entry);
        old
    }

    /// Removes the entry of `id` from the map and the index.
    pub fn remove(&mut self, id: &str) -> Option<Arc<ProviderEntry>> {
        let old = self.by_id.remove(id)?;
        for m in &old.info.models {
            if let Some(serving) = self.by_model.get_mut(&m.info.id) {
                serving.remove(id);
                if serving.is_empty() {
                    self.by_model.remove(&m.info.id);
                }
            }
        }
        Some(old)
    }

    /// Every entry, in id order.
    pub fn values(&self) -> impl Iterator<Item = &Arc<ProviderEntry>> {
        self.by_id.values()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The providers that declared `model`, in id order (none read beyond them).
    pub fn serving(&self, model: &str) -> Vec<Arc<ProviderEntry>> {
        self.by_model
            .get(model)
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default()
    }

    /// How many providers declared `model`.
    pub fn serving_count(&self, model: &str) -> usize {
        self.by_model.get(model).map_or(0, BTreeMap::len)
    }
}

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;
