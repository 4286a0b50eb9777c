//! The read lease (protocol.md 12.5), over real node processes: an owner paused (SIGSTOP)
//! while its sessions are taken over elsewhere must not serve its old copies to readers
//! once it runs again and its lease has lapsed.
//! - A session destroyed at its new owner answers SESSION_NOT_FOUND at the old owner, to
//!   the token the old owner signed (before the lease, the old owner served its copy until
//!   the session expired: the simulation's seeds 27 and 271 found it).
//! - A session written at its new owner is read at the old owner with the new value.
//! - On a quiet cluster, a read (GET or TOUCH) past the lease renews it once;
//!   `--read-lease 0s` never.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod fault;

use std::time::{Duration, Instant};

use common::*;
use fault::*;
use sessync_client::{Client, ClientError, ErrorCode};
use tokio::time::timeout;

/// Longer than the read lease (2 s), so the old owner's lease has lapsed for certain.
const PAST_THE_LEASE: Duration = Duration::from_millis(2500);

/// Reads `token` through `clients` in turn until one serves it (the owner is paused, so
/// the first tries may fail while the cluster finds it gone); returns the new token.
async fn take_over(clients: &[&Client], token: &str, dir: &std::path::Path) -> String {
    let deadline = Instant::now() + WAIT * 3;
    for c in clients.iter().cycle() {
        let got = timeout(WAIT, c.get(token)).await;
        if let Ok(Ok(s)) = got {
            return s.token;
        }
        assert!(
            Instant::now() < deadline,
            "no node took over the paused owner's session: {got:?}; logs in {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!("`cycle` of a non-empty list never ends")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_does_not_serve_sessions_taken_over_meanwhile_once_its_lease_lapsed() {
    let dir = temp_dir("read-lease");
    let secret = secret_file(&dir);
    let nodes = start_nodes(3, 1, secret.to_str().unwrap(), &dir);
    let clients = connect_all(&nodes).await;
    let (c0, c1, c2) = (&clients[0], &clients[1], &clients[2]);
    let doomed = timeout(WAIT, c0.create(attrs(&[("x", "1")])))
        .await
        .unwrap()
        .unwrap()
        .token;
    let written = timeout(WAIT, c0.create(attrs(&[("x", "1")])))
        .await
        .unwrap()
        .unwrap()
        .token;

    nodes[0].pause(true);
    let doomed_now = take_over(&[c1, c2], &doomed, &dir).await;
    let written_now = take_over(&[c1, c2], &written, &dir).await;
    // Destroyed and written at their new owners (through whichever node answers).
    let deadline = Instant::now() + WAIT;
    loop {
        let destroyed = timeout(WAIT, c1.destroy(&doomed_now)).await.unwrap();
        let set = timeout(WAIT, c1.set(&written_now).put("x", "2").send())
            .await
            .unwrap();
        match (&destroyed, &set) {
            (Ok(()), Ok(_)) => break,
            // Already done by the previous try, whose reply was an error.
            (
                Err(ClientError::Server {
                    code: ErrorCode::SessionNotFound,
                    ..
                }),
                _,
            ) if set.is_ok() => break,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "destroy {destroyed:?}, set {set:?}; logs in {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nodes[0].pause(false);
    tokio::time::sleep(PAST_THE_LEASE).await;

    // The old owner, asked with the tokens it signed itself.
    match timeout(WAIT, c0.get(&doomed)).await.unwrap() {
        Err(ClientError::Server {
            code: ErrorCode::SessionNotFound,
            ..
        }) => {}
        other => panic!(
            "a session destroyed elsewhere was answered {other:?} by its old owner; logs in {}",
            dir.display()
        ),
    }
    let s = timeout(WAIT, c0.get(&written)).await.unwrap().unwrap();
    assert_eq!(
        s.attributes.get("x").map(|v| v.as_ref()),
        Some(&b"2"[..]),
        "the old owner served its own copy, not the newer owner's; logs in {}",
        dir.display()
    );
    let st = timeout(WAIT, c0.stats()).await.unwrap().unwrap();
    assert!(stat(&st, "read_lease_rounds") >= 2, "{st:?}");
}

/// Reads (GET, then TOUCH) of a session neither written nor moved for longer than the
/// lease, at its owner: with the default lease the first read past it runs one
/// replication round, and with `--read-lease 0s` none does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_past_the_lease_renews_it_unless_the_lease_is_off() {
    for (flags, renewals) in [(&[][..], true), (&["--read-lease", "0s"][..], false)] {
        let dir = temp_dir("read-lease-knob");
        let secret = secret_file(&dir);
        let nodes = start_nodes_with(2, 1, secret.to_str().unwrap(), &dir, flags);
        let c0 = connect(nodes[0].client).await;
        let token = timeout(WAIT, c0.create(attrs(&[("x", "1")])))
            .await
            .unwrap()
            .unwrap()
            .token;
        tokio::time::sleep(PAST_THE_LEASE).await;
        for _ in 0..3 {
            let s = timeout(WAIT, c0.get(&token)).await.unwrap().unwrap();
            assert_eq!(s.attributes.get("x").map(|v| v.as_ref()), Some(&b"1"[..]));
        }
        // TOUCH is a read too.
        tokio::time::sleep(PAST_THE_LEASE).await;
        for _ in 0..2 {
            timeout(WAIT, c0.touch(&token)).await.unwrap().unwrap();
        }
        let st = timeout(WAIT, c0.stats()).await.unwrap().unwrap();
        // The first GET and the first TOUCH renew the lease; the others are within it.
        let expected = 2 * u64::from(renewals);
        assert_eq!(
            stat(&st, "read_lease_rounds"),
            expected,
            "flags {flags:?}: {st:?}"
        );
    }
}
