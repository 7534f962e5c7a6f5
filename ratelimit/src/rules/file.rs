//! The YAML file format, exactly as envoyproxy/ratelimit reads it, plus Gatehouse's extensions
//! (`rate_limits`, `algorithm`, `burst`). Parsing only: [`super::RuleSet::build`] validates.

use gatehouse_common::config::Spanned;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    pub(crate) domain: Option<Spanned<String>>,
    #[serde(default)]
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
    #[serde(default)]
    pub(crate) rate_limits: Vec<Spanned<RateLimitYaml>>,
    #[serde(default)]
    pub(crate) shadow_mode: bool,
    #[serde(default)]
    pub(crate) detailed_metric: bool,
    #[serde(default)]
    pub(crate) value_to_metric: bool,
    #[serde(default)]
    pub(crate) share_threshold: Option<Spanned<bool>>,
    #[serde(default)]
    pub(crate) descriptors: Vec<DescriptorYaml>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RateLimitYaml {
    pub(crate) unit: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) requests_per_unit: Option<u32>,
    #[serde(default)]
    pub(crate) unlimited: bool,
    #[serde(default)]
    pub(crate) name: Option<String>,
    #[serde(default)]
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
    #[serde(default)]
    pub(crate) name: String,
}
