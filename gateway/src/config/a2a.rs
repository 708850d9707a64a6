//! `[a2a]`: the gateway as an A2A agent (issue 15): the URL its agent card gives,
//! the model a message without `metadata.model` runs on, and how long tasks are
//! kept in the store.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct A2aSection {
    /// The public URL of the JSON-RPC endpoint the agent card names
    /// (`https://gateway.example.com/a2a`, behind a proxy or TLS terminator);
    /// empty: built from each request's `Host` and `X-Forwarded-Proto`.
    pub public_url: String,
    /// The model of a message that names none (`metadata.model`); empty: the
    /// cheapest language model the caller's key may use now. A model no provider
    /// serves is not known at start (providers register at run time): a task
    /// asking for it is rejected with a message naming `[a2a] default_model`.
    pub default_model: String,
    /// Tasks are deleted this many seconds after they were made.
    pub retention_s: u64,
    /// Most ended tasks kept (all keys); the oldest beyond go first.
    pub max_tasks: u64,
    /// How often the sweep enforces the two limits above, in seconds.
    pub sweep_interval_s: u64,
    /// Most tasks of one key running at once on one replica.
    pub max_running_per_key: usize,
    /// Most ended tasks of one key kept; a key's oldest go when it makes a new
    /// one, so one key cannot push other keys' tasks out of `max_tasks`.
    pub max_tasks_per_key: u64,
}

impl Default for A2aSection {
    fn default() -> Self {
        A2aSection {
            public_url: String::new(),
            default_model: String::new(),
            retention_s: 86_400,
            max_tasks: 10_000,
            sweep_interval_s: 60,
            max_running_per_key: 16,
            max_tasks_per_key: 1_000,
        }
    }
}

impl A2aSection {
    /// Every field in bounds; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        let u = self.public_url.as_str();
        if !u.is_empty() {
            let rest = u
                .strip_prefix("https://")
                .or_else(|| u.strip_prefix("http://"))
                .ok_or_else(|| format!("a2a.public_url must be an http(s) URL, got `{u}`"))?;
            let host = rest.split('/').next().unwrap_or_default();
            if host.is_empty()
                || u.len() > 2048
                || u.bytes().any(|b| !b.is_ascii_graphic())
                || u.contains(['?', '#'])
            {
                return Err(format!(
                    "a2a.public_url must be an absolute http(s) URL with a host and no query (at most 2048 printable characters), got `{u}`"
                ));
            }
        }
        let m = self.default_model.as_str();
        if m.len() > 256 || m.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(format!(
                "a2a.default_model must be a model id (at most 256 printable characters without spaces), got `{m}`"
            ));
        }
        if self.retention_s == 0 {
            return Err("a2a.retention_s must be at least 1".into());
        }
        if self.max_tasks == 0 {
            return Err("a2a.max_tasks must be at least 1".into());
        }
        if self.sweep_interval_s == 0 {
            return Err("a2a.sweep_interval_s must be at least 1".into());
        }
        if self.max_running_per_key == 0 {
            return Err("a2a.max_running_per_key must be at least 1".into());
        }
        if self.max_tasks_per_key == 0 || self.max_tasks_per_key > self.max_tasks {
            return Err(format!(
                "a2a.max_tasks_per_key must be between 1 and a2a.max_tasks ({}), got {}",
                self.max_tasks, self.max_tasks_per_key
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_fields_are_named() {
        let ok = A2aSection::default();
        assert!(ok.validate().is_ok());
        let with = |f: fn(&mut A2aSection)| {
            let mut s = A2aSection::default();
            f(&mut s);
            s.validate().err().unwrap_or_default()
        };
        assert!(with(|s| s.public_url = "ftp://x/a2a".into()).contains("a2a.public_url"));
        assert!(with(|s| s.public_url = "https:///a2a".into()).contains("a2a.public_url"));
        assert!(with(|s| s.public_url = "https://x/a2a?q".into()).contains("a2a.public_url"));
        assert!(with(|s| s.default_model = "a model".into()).contains("a2a.default_model"));
        assert!(with(|s| s.retention_s = 0).contains("a2a.retention_s"));
        assert!(with(|s| s.max_tasks = 0).contains("a2a.max_tasks"));
        assert!(with(|s| s.max_running_per_key = 0).contains("a2a.max_running_per_key"));
        let s = A2aSection {
            public_url: "https://gw.example.com/a2a".into(),
            default_model: "smollm2-135m-instruct".into(),
            ..A2aSection::default()
        };
        assert!(s.validate().is_ok());
    }
}
