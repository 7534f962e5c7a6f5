//! The echo upstream on its own, for `make up`: `cargo run -p gatehouse-testkit --example echo -- 127.0.0.1:10002`

use gatehouse_testkit::echo::Echo;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:10002".into());
    let echo = Echo::bind(&addr).await?;
    eprintln!("echo upstream on {addr}");
    echo.run().await;
    Ok(())
}
