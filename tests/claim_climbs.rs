//! When a claim climbs a generation (protocol.md 12.3): over real sockets, a claim whose
//! holder refuses it in the name of the backup that handed the claim its copy under
//! PROMOTE climbs past that refusal only while the backup owns nothing newer. A backup
//! that has since been part of a newer lineage (it fetched the session back and handed
//! it on) answers LOCATE with that newer generation, and the claim yields to it instead
//! of climbing over the lineage and its acknowledged writes. Likewise when the newer
//! generation is at the holder itself: it was handing the backup a newer copy (the reply
//! to the backup's COPY was lost, so the backup never had it) and refuses in the
//! backup's name. The backup and the holder are fake peers that complete the real
//! handshake.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::*;
use sessync_proto::{PeerMessage, Role};
use tokio::time::timeout;

/// The generation of the lineage the backup took part in after it handed its copy over:
/// the holder keeps it, handed on to it by the backup.
const NEWER: u64 = 3;

/// The two fake members, known once both listen.
#[derive(Default)]
struct Members {
    /// Handed its backup copy (`cart` = `old`) to the node under PROMOTE (transfer 1),
    /// then fetched the session back and handed it on to `holder` at [`NEWER`].
    backup: OnceLock<SocketAddr>,
    /// Owns the session at [`NEWER`] (`cart` = `newer`), and refuses older generations
    /// naming `backup`, from which it got them.
    holder: OnceLock<SocketAddr>,
    /// A REPLICATE carrying the claim's older state was taken over the holder's lineage.
    replaced: AtomicBool,
    /// Where the newer lineage is: `false`, the backup handed it on to the holder (seed
    /// 48272); `true`, the holder was handing it to the backup, which never got it (seed
    /// 23049), and the backup's entry is only its handover to the node.
    at_holder: AtomicBool,
}

impl Members {
    fn backup_answers(&self, m: &PeerMessage) -> Option<PeerMessage> {
        let holder = *self.holder.get().expect("both members listen");
        Some(match m {
            PeerMessage::Promote { session_id, .. } => PeerMessage::CopyData {
                transfer: 1,
                holders: vec![holder],
                record: record_with_cart(*session_id, b"old"),
            },
            // Its entry now: the session handed on to the holder at the newer generation,
            // or only its handover to the node under PROMOTE.
            PeerMessage::Locate { session_id } if self.at_holder.load(Ordering::SeqCst) => {
                PeerMessage::NotFound {
                    session_id: *session_id,
                }
            }
            PeerMessage::Locate { session_id } => PeerMessage::Located {
                session_id: *session_id,
                role: Role::HandedOver,
                addr: holder,
                generation: Some(NEWER),
            },
            PeerMessage::Copy { session_id, .. } => PeerMessage::Moved {
                session_id: *session_id,
                owner: holder,
            },
            _ => PeerMessage::Ok,
        })
    }

    fn holder_answers(&self, m: &PeerMessage) -> Option<PeerMessage> {
        let backup = *self.backup.get().expect("both members listen");
        Some(match m {
            PeerMessage::Replicate { generation, record } if *generation <= NEWER => PeerMessage::Moved {
                session_id: record.id,
                owner: backup,
            },
            PeerMessage::Replicate { record, .. } => {
                if record.attributes.iter().any(|(k, v)| k == "cart" && v == b"old") {
                    self.replaced.store(true, Ordering::SeqCst);
                }
                PeerMessage::Ok
            }
            PeerMessage::Copy { session_id, .. } => {
                let mut record = record_with_cart(*session_id, b"newer");
                record.meta.version = 5;
                PeerMessage::CopyData {
                    transfer: NEWER + 1,
                    holders: Vec::new(),
                    record,
                }
            }
            PeerMessage::Locate { session_id } if self.at_holder.load(Ordering::SeqCst) => {
                PeerMessage::Located {
                    session_id: *session_id,
                    role: Role::HandedOver,
                    addr: backup,
                    generation: Some(NEWER),
                }
            }
            PeerMessage::Locate { session_id } => PeerMessage::Located {
                session_id: *session_id,
                role: Role::Owner,
                addr: *self.holder.get().expect("both members listen"),
                generation: Some(NEWER),
            },
            _ => PeerMessage::Ok,
        })
    }
}

/// A GET whose token names a dead owner and one backup: the backup hands its copy over
/// under PROMOTE (generation 1), and the holder the claim must place it on refuses,
/// naming that backup, which answers LOCATE with the newer generation it handed on. The
/// claim yields; the GET is served from the newer lineage, which no REPLICATE of the
/// claim's older state replaced. Simulation seed 48272 without crashes: the claim of 13
/// climbed to 16 over the giver's lineage of 15, and three acknowledged appends were
/// gone. Checked: without the rule, the claim climbs to 4, the holder takes the old
/// state, and the GET answers `old`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_yields_to_a_newer_lineage_of_the_backup_that_gave_it_its_copy() {
    let (members, got) = get_through_claim(false).await;
    assert!(
        !members.replaced.load(Ordering::SeqCst),
        "the claim climbed past the backup's newer lineage and replaced it"
    );
    let s = got.expect("the session is served");
    assert_served_with_cart(&s, b"newer", "the newer lineage");
}

/// The same with the newer generation at the holder, which was handing it to the backup
/// and refuses the claim in the backup's name; the backup answers LOCATE holding nothing.
/// The holder answers LOCATE that it hands the backup a generation above the claim's: the
/// claim yields, and nothing of its older state is placed over the holder's copy.
/// Simulation seed 23049 with crashes: the claim of 66 climbed to 69 past a holder
/// handing 68, which held an acknowledged append. Checked: without the rule, the claim
/// climbs to 4 and the holder takes the old state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_does_not_climb_past_a_holder_handing_on_a_newer_generation() {
    let (members, got) = get_through_claim(true).await;
    assert!(
        !members.replaced.load(Ordering::SeqCst),
        "the claim climbed past the holder's newer copy and replaced it"
    );
    if let Ok(s) = got {
        assert_ne!(cart(&s), Some(&b"old"[..]), "the claim's older state was served");
    }
}

/// A GET whose token names a dead owner and one backup, with the newer lineage where
/// `at_holder` says; the members' state at the end, and what the GET got.
async fn get_through_claim(
    at_holder: bool,
) -> (
    Arc<Members>,
    Result<sessync_client::Session, sessync_client::ClientError>,
) {
    let members = Arc::new(Members::default());
    members.at_holder.store(at_holder, Ordering::SeqCst);
    let (backup, holder) = scripted_pair(&members, Members::backup_answers, Members::holder_answers).await;
    members.backup.set(backup).unwrap();
    members.holder.set(holder).unwrap();
    let node = replicating_node_with(
        vec![backup, holder],
        Duration::from_millis(300),
        Duration::from_millis(100),
    )
    .await;
    let c = client(node.client_addr()).await;
    let id = sessync_proto::SessionId::random();
    let token = token_for(id, 0, nowhere(), vec![backup]);
    let got = timeout(WAIT, c.get(&token)).await.expect("the GET must end");
    stop(vec![node]).await;
    (members, got)
}
