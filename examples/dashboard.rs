//! A minimal terminal dashboard: connects to `GET /ws`, optionally subscribes to live
//! vitals, and prints every frame. For trying the gateway out and for debugging.
//!
//! ```text
//! cargo run --example dashboard -- ws://127.0.0.1:8080/ws [--vitals]
//! ```

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:8080/ws".into());
    let vitals = args.any(|a| a == "--vitals");
    let (mut ws, _) = match tokio_tungstenite::connect_async(url.as_str()).await {
        Ok(ok) => ok,
        Err(e) => {
            eprintln!("cannot connect to {url}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("connected to {url}; waiting for frames (Ctrl-C to quit)");
    if vitals {
        let _ = ws
            .send(Message::text(r#"{"type":"subscribe_vitals"}"#))
            .await;
    }
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Text(t)) => println!("{t}"),
            Ok(Message::Close(c)) => {
                eprintln!("closed by the gateway: {c:?}");
                break;
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("connection error: {e}");
                std::process::exit(1);
            }
        }
    }
}
