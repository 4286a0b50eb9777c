//! `sessync members`: a node's view of the cluster (MEMBERS on the client port).

use clap::Args;
use sessync_client::{MemberInfo, MemberState};

use crate::cli_session::{connect_with, Connection};
use crate::failure::Failure;

/// `sessync members`.
#[derive(Args, Debug)]
pub(crate) struct MembersArgs {
    #[command(flatten)]
    pub(crate) conn: Connection,
}

fn hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `sessync members`: one line per member (the node asked first), or one JSON object
/// `{"members": [{"node_id", "incarnation", "state", "peer", "client", "self"}], "alive",
/// "joining", "leaving", "dead"}`.
pub(crate) async fn run_members(args: MembersArgs) -> Result<(), Failure> {
    let members = connect_with(&args.conn)
        .await?
        .members()
        .await
        .map_err(Failure::node)?;
    let count = |s: MemberState| members.iter().filter(|m| m.state == s).count();
    if args.conn.json {
        let list: Vec<serde_json::Value> = members
            .iter()
            .enumerate()
            .map(|(i, m): (usize, &MemberInfo)| {
                serde_json::json!({
                    "node_id": hex(&m.node_id),
                    "incarnation": m.incarnation,
                    "state": m.state.name(),
                    "peer": m.peer.to_string(),
                    "client": m.client.to_string(),
                    "self": i == 0,
                })
            })
            .collect();
        let mut o = serde_json::json!({ "members": list });
        for s in [
            MemberState::Joining,
            MemberState::Alive,
            MemberState::Leaving,
            MemberState::Dead,
        ] {
            o[s.name()] = serde_json::Value::from(count(s));
        }
        println!("{o}");
    } else {
        println!(
            "{:<8} {:<32} {:<22} {:<22} incarnation",
            "state", "node id", "peer", "client"
        );
        for (i, m) in members.iter().enumerate() {
            println!(
                "{:<8} {} {:<22} {:<22} {}{}",
                m.state.name(),
                hex(&m.node_id),
                m.peer.to_string(),
                m.client.to_string(),
                m.incarnation,
                if i == 0 { "  (this node)" } else { "" }
            );
        }
        println!(
            "{} alive, {} joining, {} leaving, {} dead",
            count(MemberState::Alive),
            count(MemberState::Joining),
            count(MemberState::Leaving),
            count(MemberState::Dead)
        );
    }
    Ok(())
}
