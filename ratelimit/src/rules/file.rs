//! The YAML file format, exactly as envoyproxy/ratelimit reads it, plus Gatehouse's extensions
//! (`rate_limits`, `algorithm`, `burst`). Parsing only: [`super::RuleSet::load`] validates.
//!
//! A key written with no value (`descriptors:`, `shadow_mode:`) means its default, as in Go's
//! YAML decoding: envoyproxy/ratelimit loads such files, so they must load here too.

use gatehouse_common::config::Spanned;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    pub(crate) domain: Option<Spanned<String>>,
    #[serde(default, deserialize_with = "or_default")]
    pub(crate) descriptors: Vec<DescriptorYaml>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DescriptorYaml {
    pub(crate) key: Spanned<String>,
    #[serde(default)]
    pub(crate) value: Option<String>,
    pub(crate) rate_limit: Option<Spanned<RateLimitYaml>>,
    /// Gatehouse: several limits on one descriptor, all of which must admit a request.
    #[serde(default, deserialize_with = "or_default")]
    pub(crate) rate_limits: Vec<Spanned<RateLimitYaml>>,
    #[serde(default, deserialize_with = "or_default")]
    pub(crate) shadow_mode: bool,
    #[serde(default, deserialize_with = "or_default")]
    pub(crate) detailed_metric: bool,
    #[serde(default, deserialize_with = "or_default")]
    pub(crate) value_to_metric: bool,
    #[serde(default)]
    pub(crate) share_threshold: Option<Spanned<bool>>,
    /// Over its limit, this descriptor alone does not refuse the request: only all quota
    /// descriptors of a request over their limits together do.
    #[serde(default, deserialize_with = "or_default")]
    pub(crate) quota_mode: bool,
    /// Returned in the response's dynamic metadata (`metadata`) while the descriptor is within
    /// its limit. Any YAML mapping.
    #[serde(default)]
    pub(crate) metadata: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "or_default")]
    pub(crate) descriptors: Vec<DescriptorYaml>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RateLimitYaml {
    pub(crate) unit: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) requests_per_unit: Option<u32>,
    #[serde(default, deserialize_with = "or_default")]
    pub(crate) unlimited: bool,
    #[serde(default)]
    pub(crate) name: Option<String>,
    #[serde(default, deserialize_with = "or_default")]
    pub(crate) replaces: Vec<Spanned<Replace>>,
    /// Gatehouse: `fixed_window` (default), `sliding_window` or `token_bucket`.
    #[serde(default)]
    pub(crate) algorithm: Option<Spanned<String>>,
    /// Gatehouse, token bucket only: bucket size; defaults to `requests_per_unit`.
    #[serde(default)]
    pub(crate) burst: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Replace {
    /// Required; a missing or empty name is a validation error, not a parse error.
    #[serde(default)]
    pub(crate) name: Option<String>,
}

/// The value, or its default when the key is present without one.
fn or_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}
