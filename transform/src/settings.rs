//! Environment variables, named as the other Gatehouse services name them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use gatehouse_common::config::{ConfigError, Env};
use gatehouse_common::server::ServiceSettings;

#[derive(Clone, Debug)]
pub struct Settings {
    /// The transformation file (TRANSFORM_CONFIG).
    pub config_file: PathBuf,
    /// The shared variables: GRPC_PORT (9291), PORT (9292), TLS, logs, drain.
    pub service: ServiceSettings,
    /// What templates' `env()` reads: the variables named in TRANSFORM_TEMPLATE_ENV
    /// (comma-separated), so secrets in the environment stay out of reach of templates.
    pub template_env: BTreeMap<String, String>,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Settings, ConfigError> {
        let template_env = env
            .string("TRANSFORM_TEMPLATE_ENV", "")
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .filter_map(|n| Some((n.to_string(), env.get(n)?.to_string())))
            .collect();
        Ok(Settings {
            config_file: PathBuf::from(env.string("TRANSFORM_CONFIG", "/etc/gatehouse/transform.yaml")),
            service: ServiceSettings::from_env(env, "gatehouse-transform", 9291, 9292)?,
            template_env,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_template_env() {
        let s = Settings::from_env(&Env::default()).unwrap();
        assert_eq!((s.service.grpc_addr.port(), s.service.http_addr.port()), (9291, 9292));
        let s = Settings::from_env(&Env::from_pairs([
            ("TRANSFORM_TEMPLATE_ENV", "STAGE, MISSING"),
            ("STAGE", "prod"),
            ("SECRET", "x"),
        ]))
        .unwrap();
        assert_eq!(s.template_env, BTreeMap::from([("STAGE".to_string(), "prod".to_string())]));
        assert!(Settings::from_env(&Env::from_pairs([("PORT", "x")])).unwrap_err().to_string().contains("PORT"));
    }

    #[test]
    fn log_settings() {
        use gatehouse_common::telemetry::LogFormat;
        let s = Settings::from_env(&Env::from_pairs([("LOG_LEVEL", "debug"), ("LOG_FORMAT", "json")])).unwrap();
        assert!(s.service.log_level.directive().contains("gatehouse_transform=debug"), "{:?}", s.service.log_level);
        assert_eq!(s.service.log_format, LogFormat::Json);
        let s = Settings::from_env(&Env::from_pairs([("LOG_FILTER", "warn"), ("NO_COLOR", "1")])).unwrap();
        assert_eq!((s.service.log_level.directive(), s.service.log_format), ("warn", LogFormat::Text { color: false }));
    }
}
