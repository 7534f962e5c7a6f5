//! A browser-login session stored in Redis as `oidc_login` stores it, for benchmarks: the
//! session cookie's value goes to stdout.
//!
//! ```sh
//! cargo run --release -p gatehouse-extauth --example mint_session -- redis://127.0.0.1:6379 \
//!     gatehouse:session: > session-cookie
//! ```
//! The session: `sub` = bench-user with an email claim, no refresh token (so it never
//! refreshes), idle and absolute timeouts of 12 hours.

use std::process::ExitCode;
use std::time::Duration;

use gatehouse_common::redis::{RedisConn, RedisSettings};
use gatehouse_extauth::identity::jwt::now_secs;
use gatehouse_extauth::identity::oidc_login::session::{RedisSessions, Session, SessionHandle, Timeouts};
use serde_json::{Map, Value};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, prefix] = args.as_slice() else {
        eprintln!("usage: mint_session REDIS_URL KEY_PREFIX");
        return ExitCode::from(2);
    };
    match mint(url, prefix).await {
        Ok(cookie) => {
            println!("{cookie}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mint_session: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn mint(url: &str, prefix: &str) -> Result<String, String> {
    let conn = RedisConn::connect(&RedisSettings::single(url)).await.map_err(|e| e.to_string())?;
    let twelve_hours = Duration::from_secs(12 * 3600);
    let timeouts = Timeouts { idle: twelve_hours, absolute: twelve_hours };
    let sessions = RedisSessions::new(
        conn,
        prefix.to_string(),
        timeouts,
        Duration::ZERO,
        gatehouse_extauth::stats::Dependencies::detached(),
    );
    let mut claims = Map::new();
    claims.insert("sub".into(), Value::String("bench-user".into()));
    claims.insert("email".into(), Value::String("bench-user@gatehouse.test".into()));
    let session = Session {
        sub: "bench-user".into(),
        sid: None,
        claims,
        id_token: String::new(),
        access_token: "bench-access-token".into(),
        access_expires_at: None,
        refresh_token: None,
        created_at: now_secs(),
    };
    let handle = SessionHandle::generate();
    sessions.save(&handle, &session).await.map_err(|e| e.to_string())?;
    Ok(handle.encode())
}
