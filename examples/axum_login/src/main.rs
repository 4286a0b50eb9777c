//! `cargo run -p sessync-example-axum-login -- [LISTEN_ADDR]`: the demo of the crate docs.

use std::net::SocketAddr;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listen: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into())
        .parse()?;
    let demo = sessync_example_axum_login::start(3, listen).await?;
    println!(
        "balancer on http://{} -> instances {:?}",
        demo.balancer, demo.instances
    );
    println!("  curl -c jar -b jar 'http://{}/login?user=alice'", demo.balancer);
    println!(
        "  curl -c jar -b jar http://{}/me     # repeat: each lands on the next instance",
        demo.balancer
    );
    println!("Ctrl-C stops it.");
    tokio::signal::ctrl_c().await?;
    demo.shutdown().await;
    Ok(())
}
