//! An upstream that answers every request with what it received, as JSON:
//! `{"method", "path", "headers": {name: value}, "body"}`.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Uri};
use tokio::net::TcpListener;

/// A running echo server; stops when dropped.
#[derive(Debug)]
pub struct Echo {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Echo {
    pub async fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let port = listener.local_addr().expect("echo addr").port();
        let app = axum::Router::new().fallback(echo);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Echo { port, task }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo(method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> axum::Json<serde_json::Value> {
    let headers: BTreeMap<String, String> =
        headers.iter().map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect();
    axum::Json(serde_json::json!({
        "method": method.as_str(),
        "path": uri.to_string(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    }))
}
