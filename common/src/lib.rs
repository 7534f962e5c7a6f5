//! Gatehouse's shared policy crate: what at least two services need, and nothing else.
//!
//! - [`config`]: typed YAML and environment loading with errors that name file, line and field;
//! - [`reload`]: all-or-nothing hot reload behind `arc-swap`;
//! - [`telemetry`] and [`metrics`]: logs and Prometheus;
//! - [`server`]: gRPC + health + TLS + graceful shutdown, and plain HTTP endpoints;
//! - [`redis`]: Redis in every topology;
//! - [`matcher`]: string matchers for request attributes and claims;
//! - [`pbjson`]: protobuf `Struct` and JSON, for Envoy metadata.

pub mod config;
pub mod matcher;
pub mod metrics;
pub mod pbjson;
pub mod redis;
pub mod reload;
pub mod server;
pub mod telemetry;
