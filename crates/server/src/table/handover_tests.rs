//! Table unit tests of the handover and backup steps: COPY, PROMOTE, REPLICATE, DROP and
//! the rules between rival claims (protocol.md 11 and 12).

use super::tests::{attrs, table};
use super::*;

fn who(port: u16) -> PeerIdentity {
    let mut node_id = [0u8; 16];
    node_id[..2].copy_from_slice(&port.to_be_bytes());
    PeerIdentity {
        node_id,
        advertised: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

fn record_of(t: &Table, id: &SessionId) -> SessionRecord {
    t.snapshot(id, 0).unwrap().record
}

#[test]
fn backups_keep_the_newest_copy_and_answer_promote_once() {
    let (a, b, c) = (who(1), who(3), who(4));
    let owner = table(10, EvictPolicy::Reject);
    let backup = table(10, EvictPolicy::Reject);
    let (id, _) = owner.create(&attrs(&[("n", "1")]), 1000, 0, 0).unwrap();
    let v1 = record_of(&owner, &id);
    assert_eq!(backup.replicate_in(a, 0, &v1, 0), Replicated::Stored(None));
    owner.set(&id, None, &attrs(&[("n", "2")]), &[], 1).unwrap();
    let v2 = record_of(&owner, &id);
    assert_eq!(backup.replicate_in(a, 0, &v2, 1), Replicated::Stored(None));
    // A delayed older copy changes nothing.
    assert_eq!(backup.replicate_in(a, 0, &v1, 2), Replicated::Ignored);
    assert_eq!(backup.stats().backups, 1);
    // Never served, and a plain COPY is sent to the owner.
    assert_eq!(backup.get(&id, &[], 2).unwrap_err(), Miss::Moved(a.advertised));
    assert_eq!(
        backup.hand_over(&id, b, 0, None, 2),
        CopyOutcome::Moved(a.advertised)
    );
    // A PROMOTE naming another node as the failed owner is sent to the owner too.
    assert_eq!(
        backup.hand_over(&id, b, 0, Some(c.advertised), 2),
        CopyOutcome::Moved(a.advertised)
    );
    // The first PROMOTE naming the owner gets the copy, under the next generation...
    match backup.hand_over(&id, b, 0, Some(a.advertised), 3) {
        CopyOutcome::Data { transfer, record, .. } => {
            assert_eq!(transfer, 1);
            // A claim continues from a version past the copy's (a random jump, so two
            // branches never share a version: `claim_version`).
            assert!(record.meta.version > 2, "{}", record.meta.version);
        }
        other => panic!("{other:?}"),
    }
    // ...a second node racing for it is sent to the first: one owner.
    assert_eq!(
        backup.hand_over(&id, c, 0, Some(a.advertised), 3),
        CopyOutcome::Moved(b.advertised)
    );
    // The winner makes the giver its backup: the pending handover becomes a copy.
    let promoted = table(10, EvictPolicy::Reject);
    promoted.install(&v2, 1, 3).unwrap();
    let r = record_of(&promoted, &id);
    assert_eq!(
        backup.replicate_in(b, 1, &r, 4),
        Replicated::Stored(Some(OldBackups {
            backups: Box::default(),
            generation: 0
        }))
    );
    // A delayed (or stale: paused) REPLICATE from the old owner is refused, never
    // reported as stored: the new owner's copy is newer (fencing).
    assert_eq!(backup.replicate_in(a, 0, &v2, 5), Replicated::Moved(b.advertised));
    // A third node claiming the same generation is refused too.
    assert_eq!(
        backup.replicate_in(who(9), 1, &r, 5),
        Replicated::Moved(b.advertised)
    );
    // The same owner's resent older state is a duplicate: still stored (OK).
    assert_eq!(backup.replicate_in(b, 1, &r, 5), Replicated::Ignored);
    assert_eq!(
        backup.drop_backup(&id, a.advertised, 0, 6),
        Dropped::Newer(b.advertised)
    );
    assert_eq!(backup.drop_backup(&id, b.advertised, 1, 6), Dropped::Fenced);
    assert_eq!(backup.stats().backups, 0);
    // The DROP leaves a fence: the dropped generation is refused, a newer one stored.
    assert_eq!(backup.replicate_in(b, 1, &r, 7), Replicated::Moved(b.advertised));
    assert!(matches!(
        backup.replicate_in(who(9), 2, &r, 8),
        Replicated::Stored(_)
    ));
}

#[test]
fn a_handover_whose_receiver_died_is_handed_on_and_stale_owners_are_told() {
    let (a, b, c) = (who(1), who(2), who(3));
    let t = table(10, EvictPolicy::Reject);
    let (id, _) = t.create(&attrs(&[("k", "v")]), 1000, 0, 0).unwrap();
    let CopyOutcome::Data { transfer: t1, .. } = t.hand_over(&id, b, 0, None, 1) else {
        panic!("no copy")
    };
    // C found B gone (B never took the session over): the kept copy goes to C.
    let CopyOutcome::Data {
        transfer: t2, record, ..
    } = t.hand_over(&id, c, 0, Some(b.advertised), 2)
    else {
        panic!("no copy for C")
    };
    assert_eq!(
        t2, t1,
        "the same generation: B's claim, if B lives, collides with C's"
    );
    assert!(record.meta.version > 1, "a re-hand is a claim: its version jumps");
    // At a backup, the first of two claims of one generation wins; the other is refused.
    let backup = table(10, EvictPolicy::Reject);
    assert!(matches!(
        backup.replicate_in(c, t2, &record, 2),
        Replicated::Stored(_)
    ));
    assert_eq!(
        backup.replicate_in(b, t1, &record, 2),
        Replicated::Moved(c.advertised)
    );
    // B (had it lived) replicating its older claim is told the session is C's.
    assert_eq!(t.replicate_in(b, t1, &record, 3), Replicated::Moved(c.advertised));
    // A node that owns the session tells a stray REPLICATE of its generation (or an
    // older one) so.
    let (own, _) = t.create(&attrs(&[]), 1000, 0, 0).unwrap();
    let r = record_of(&t, &own);
    assert_eq!(t.replicate_in(a, 0, &r, 3), Replicated::OwnedHere);
    // An owner superseded by a newer generation yields: the newer copy becomes its
    // backup, and its own holders are to be fenced.
    let y = table(10, EvictPolicy::Reject);
    let (mine, _) = y.create(&attrs(&[]), 1000, 0, 0).unwrap();
    let newer = record_of(&y, &mine);
    assert_eq!(
        y.replicate_in(a, 9, &newer, 3),
        Replicated::Stored(Some(OldBackups {
            backups: Box::default(),
            generation: 0
        }))
    );
    assert_eq!(y.get(&mine, &[], 3).unwrap_err(), Miss::Moved(a.advertised));
    // A giver whose receiver died before taking the session over takes its copy back.
    let g = table(10, EvictPolicy::Reject);
    let (back, _) = g.create(&attrs(&[("k", "v")]), 1000, 0, 0).unwrap();
    let CopyOutcome::Data { transfer: tb, .. } = g.hand_over(&back, b, 0, None, 1) else {
        panic!("no copy")
    };
    let me = who(7);
    assert!(
        g.promote_local(&back, c.advertised, me, 2).is_none(),
        "only from the node it went to"
    );
    let Claimed {
        generation: gen,
        record: rec,
        ..
    } = g.promote_local(&back, b.advertised, me, 2).unwrap();
    assert_eq!(
        gen, tb,
        "the same generation as the copy B may hold: they collide"
    );
    // Claimed, not yet served: nobody else can claim it, a COPY is pointed here.
    assert!(g.promote_local(&back, b.advertised, me, 2).is_none());
    assert!(g.get(&back, &[], 2).is_err());
    assert!(g.install(&rec, gen, 2).unwrap());
    assert_eq!(g.last_received(&back), tb);
    assert_eq!(g.get(&back, &[], 2).unwrap().attrs.unpack(), attrs(&[("k", "v")]));
    // A local backup copy of a failed owner becomes ours, one generation on.
    let u = table(10, EvictPolicy::Reject);
    u.replicate_in(a, 4, &r, 3);
    assert!(
        u.promote_local(&own, b.advertised, me, 3).is_none(),
        "only the failed owner's copy"
    );
    let Claimed {
        generation: gen,
        record: rec,
        ..
    } = u.promote_local(&own, a.advertised, me, 3).unwrap();
    assert_eq!(gen, 5);
    assert!(u
        .install_as(&rec, gen, Landing::Owner(&[b.advertised]), 3)
        .unwrap());
    assert_eq!(u.last_received(&own), 5);
    assert_eq!(&*u.get(&own, &[], 3).unwrap().backups, &[b.advertised]);
    assert!(u.get(&own, &[], 3).is_ok());
}

/// Two backups of a failed owner promote at once, each claiming the next generation: the
/// higher node id wins between the two pending claims, the lower yields and keeps the
/// winner's copy as its backup (simulation seed 190: both refused, no copy was left).
#[test]
fn two_pending_claims_of_one_generation_the_higher_node_wins() {
    let (owner, low, high) = (who(1), who(2), who(3));
    let origin = table(10, EvictPolicy::Reject);
    let (id, _) = origin.create(&attrs(&[("k", "v")]), 1000, 0, 0).unwrap();
    let r = record_of(&origin, &id);
    let (l, h) = (table(10, EvictPolicy::Reject), table(10, EvictPolicy::Reject));
    for t in [&l, &h] {
        assert_eq!(t.replicate_in(owner, 4, &r, 1), Replicated::Stored(None));
    }
    let cl = l.promote_local(&id, owner.advertised, low, 2).unwrap();
    let ch = h.promote_local(&id, owner.advertised, high, 2).unwrap();
    assert_eq!((cl.generation, ch.generation), (5, 5));
    // The lower claim is refused at the higher claimer ...
    assert_eq!(
        h.replicate_in(low, 5, &cl.record, 3),
        Replicated::Moved(high.advertised)
    );
    // ... and the higher one is taken at the lower, in place of its own claim.
    assert_eq!(l.replicate_in(high, 5, &ch.record, 3), Replicated::Stored(None));
    assert_eq!(l.get(&id, &[], 3).unwrap_err(), Miss::Moved(high.advertised));
    // The loser's superseded install leaves the winner's copy in place.
    assert!(!l
        .install_as(&cl.record, 5, Landing::Superseded(high.advertised), 3)
        .unwrap());
    assert!(h
        .install_as(&ch.record, 5, Landing::Owner(&[low.advertised]), 3)
        .unwrap());
    assert_eq!(h.get(&id, &[], 3).unwrap().attrs.unpack(), attrs(&[("k", "v")]));
    // A plain handover of that generation is never overruled by a claim.
    let g = table(10, EvictPolicy::Reject);
    let (other, _) = g.create(&attrs(&[]), 1000, 0, 0).unwrap();
    let CopyOutcome::Data { transfer, record, .. } = g.hand_over(&other, low, 0, None, 1) else {
        panic!("no copy")
    };
    assert_eq!(
        g.replicate_in(high, transfer, &record, 2),
        Replicated::Moved(low.advertised)
    );
}

/// A DROP that overtakes the REPLICATE it retires (the owner counted this node a holder
/// because the reply was lost) fences the late copy, so a rotated-away or destroyed id is
/// never stored and later promoted (simulation seed 51); the fence names no copy, so
/// requests here are not pointed anywhere by it.
#[test]
fn a_drop_before_its_replicate_fences_the_late_copy() {
    let owner = who(1);
    let origin = table(10, EvictPolicy::Reject);
    let (id, _) = origin.create(&attrs(&[("k", "v")]), 1_000_000, 0, 0).unwrap();
    let r = record_of(&origin, &id);
    let b = table(10, EvictPolicy::Reject);
    assert_eq!(b.drop_backup(&id, owner.advertised, 4, 1), Dropped::NotHeld);
    assert_eq!(
        b.replicate_in(owner, 4, &r, 2),
        Replicated::Moved(owner.advertised)
    );
    assert_eq!(b.get(&id, &[], 2).unwrap_err(), Miss::Absent);
    assert_eq!(b.hand_over(&id, who(2), 0, None, 2), CopyOutcome::NotFound);
    // It holds back that owner's copies only: a DROP for a lineage that ended names the
    // next generation, which another owner's copy (the receiver's) carries.
    let c = table(10, EvictPolicy::Reject);
    assert_eq!(c.drop_backup(&id, owner.advertised, 4, 1), Dropped::NotHeld);
    assert_eq!(c.replicate_in(who(3), 4, &r, 2), Replicated::Stored(None));
    // A newer generation of the lineage is stored as before.
    assert_eq!(b.replicate_in(owner, 5, &r, 3), Replicated::Stored(None));
    // Seed 39: the node holds another owner's older copy when the DROP comes. That copy
    // stays (its owner may be the live one), and the late copy is refused all the same.
    let d = table(10, EvictPolicy::Reject);
    assert_eq!(d.replicate_in(who(2), 3, &r, 1), Replicated::Stored(None));
    assert_eq!(d.drop_backup(&id, owner.advertised, 4, 2), Dropped::NotHeld);
    assert_eq!(
        d.replicate_in(owner, 4, &r, 3),
        Replicated::Moved(owner.advertised)
    );
    assert_eq!(d.get(&id, &[], 3).unwrap_err(), Miss::Moved(who(2).advertised));
    // The fence lasts a while, not for good.
    let later = 3 + late_fence::LATE_COPY_FENCE_MS;
    assert_eq!(d.replicate_in(owner, 4, &r, later), Replicated::Stored(None));
}

/// An owner that gives the session up to a rival owner of its generation keeps its copy
/// as a copy of the rival's, one generation below (simulation seed 47 without crashes:
/// three rivals yielding to each other at once left no copy at all). Requests are pointed
/// at the rival, the rival's copies are taken, another rival's of that generation is not,
/// and a claim from the kept copy is under the rival's generation, never past it.
#[test]
fn an_owner_that_yields_keeps_its_copy_below_the_winner() {
    let winner = who(2);
    let t = table(10, EvictPolicy::Reject);
    let (id, _) = t.create(&attrs(&[("k", "v")]), 1_000_000, 0, 0).unwrap();
    let r = record_of(&t, &id);
    // Owned here under generation 5 (as if installed by a claim).
    let claimed = table(10, EvictPolicy::Reject);
    assert_eq!(claimed.install(&r, 5, 1), Ok(true));
    assert!(claimed.lose_ownership(&id, 5, winner.advertised, 2));
    assert_eq!(
        claimed.get(&id, &[], 3).unwrap_err(),
        Miss::Moved(winner.advertised)
    );
    assert_eq!(
        claimed.replicate_in(who(3), 5, &r, 4),
        Replicated::Moved(winner.advertised),
        "another rival of generation 5 is refused"
    );
    // The copy is still here: with the winner gone, a PROMOTE naming it hands it on,
    // under the winner's generation (5), not past it.
    match claimed.hand_over(&id, who(4), 0, Some(winner.advertised), 5) {
        CopyOutcome::Data { transfer, .. } => assert_eq!(transfer, 5),
        other => panic!("the kept copy was not handed on: {other:?}"),
    }
    // The winner's DROP (it lost the session too) leaves the kept copy: it is this
    // node's state, not the winner's.
    let dropped = table(10, EvictPolicy::Reject);
    assert_eq!(dropped.install(&r, 5, 1), Ok(true));
    assert!(dropped.lose_ownership(&id, 5, winner.advertised, 2));
    assert_eq!(
        dropped.drop_backup(&id, winner.advertised, 5, 3),
        Dropped::NotHeld
    );
    assert_eq!(
        dropped.get(&id, &[], 4).unwrap_err(),
        Miss::Moved(winner.advertised)
    );
    assert!(matches!(
        dropped.hand_over(&id, who(4), 0, Some(winner.advertised), 5),
        CopyOutcome::Data { .. }
    ));
    // And the winner's own copies are taken.
    let kept = table(10, EvictPolicy::Reject);
    assert_eq!(kept.install(&r, 5, 1), Ok(true));
    assert!(kept.lose_ownership(&id, 5, winner.advertised, 2));
    assert_eq!(kept.replicate_in(winner, 5, &r, 3), Replicated::Stored(None));
}

#[test]
fn a_promoted_copy_is_handed_on_past_the_askers_fence() {
    // Simulation seed 25: the asker held a fence of an abandoned claim of generation 12
    // (its DROP said so); the backup's copy is of generation 11. Handed on as 12, the copy
    // was refused at the asker's install, which acknowledged it all the same, and the
    // session was left with no owner.
    let (owner, asker) = (who(1), who(3));
    let source = table(10, EvictPolicy::Reject);
    let (id, _) = source.create(&attrs(&[("n", "1")]), 1000, 0, 0).unwrap();
    let r = record_of(&source, &id);
    let backup = table(10, EvictPolicy::Reject);
    assert_eq!(backup.replicate_in(owner, 11, &r, 1), Replicated::Stored(None));
    let here = table(10, EvictPolicy::Reject);
    assert_eq!(here.replicate_in(owner, 11, &r, 1), Replicated::Stored(None));
    assert_eq!(here.drop_backup(&id, owner.advertised, 12, 2), Dropped::Fenced);
    let their_last = here.last_received(&id);
    assert_eq!(their_last, 12);
    let CopyOutcome::Data { transfer, record, .. } =
        backup.hand_over(&id, asker, their_last, Some(owner.advertised), 3)
    else {
        panic!("the backup did not hand its copy on");
    };
    assert_eq!(transfer, 13);
    assert_eq!(
        here.install_as(&record, transfer, Landing::Owner(&[]), 4),
        Ok(true)
    );
    assert!(here.get(&id, &[], 5).is_ok());
    // Without an asker's generation, the next one as before.
    let plain = table(10, EvictPolicy::Reject);
    assert_eq!(plain.replicate_in(owner, 11, &r, 1), Replicated::Stored(None));
    assert!(matches!(
        plain.hand_over(&id, asker, 0, Some(owner.advertised), 2),
        CopyOutcome::Data { transfer: 12, .. }
    ));
}

/// A kill during a drain (tests/elastic.rs, the message of its earlier failures): the
/// repair at B was taking over its copy of the killed owner's (a claim: replicating before
/// it installs) when a writer's GET reached B; the fetch found nothing at the owner's new
/// process, the failover nothing to promote (B's copy was already claimed), and the lookup
/// did not count B's own claim ("handed over to itself"), so the GET was answered
/// SESSION_NOT_FOUND for a session B installed a few milliseconds later. A claim under
/// way is located as owned (the lookup then waits for it, retryably), while it is still
/// not served.
#[test]
fn a_claim_under_way_is_located_as_owned() {
    let (owner, me, giver) = (who(1), who(2), who(3));
    let origin = table(10, EvictPolicy::Reject);
    let (id, _) = origin.create(&attrs(&[("list", "1")]), 100_000, 0, 0).unwrap();
    let r = record_of(&origin, &id);
    let here = table(10, EvictPolicy::Reject);
    assert_eq!(here.replicate_in(owner, 0, &r, 1), Replicated::Stored(None));
    assert_eq!(
        here.locate(&id, me.advertised, 1),
        Some((sessync_proto::Role::Backup, owner.advertised))
    );
    let claim = here.promote_local(&id, owner.advertised, me, 2).unwrap();
    assert_eq!(
        here.locate(&id, me.advertised, 2),
        Some((sessync_proto::Role::Owner, me.advertised))
    );
    assert_eq!(here.get(&id, &[], 2).unwrap_err(), Miss::Moved(me.advertised));
    assert!(here
        .install_as(&claim.record, claim.generation, Landing::Owner(&[]), 3)
        .unwrap());
    assert_eq!(
        here.locate(&id, me.advertised, 3),
        Some((sessync_proto::Role::Owner, me.advertised))
    );
    // A copy handed over: the giver points at the receiver.
    let CopyOutcome::Data { .. } = origin.hand_over(&id, me, 0, None, 4) else {
        panic!("no copy")
    };
    assert_eq!(
        origin.locate(&id, giver.advertised, 5),
        Some((sessync_proto::Role::HandedOver, me.advertised))
    );
}

/// A live copy superseded by a newer lineage that was destroyed is tombstoned by
/// `destroy_superseded`; a copy of that generation or newer is left alone.
#[test]
fn a_superseded_copy_of_a_destroyed_lineage_is_tombstoned() {
    let me = who(2);
    let t = table(10, EvictPolicy::Reject);
    let (id, _) = t.create(&attrs(&[("list", "1")]), 100_000, 0, 0).unwrap();
    let generation = t.live_generation(&id, 1).unwrap();
    assert!(!t.destroy_superseded(&id, generation, 1), "not older: kept");
    assert!(t.get(&id, &[], 1).is_ok());
    assert!(t.destroy_superseded(&id, generation + 1, 2));
    assert_eq!(
        t.locate(&id, me.advertised, 3),
        Some((sessync_proto::Role::Destroyed, me.advertised))
    );
    assert!(t.get(&id, &[], 3).is_err());
    assert!(
        !t.destroy_superseded(&id, generation + 1, 4),
        "a tombstone stays one"
    );
}

#[test]
fn a_handover_counts_for_a_write_only_once_acknowledged_and_ownership_since_an_ask_is_seen() {
    let (giver, taker) = (table(10, EvictPolicy::Reject), table(10, EvictPolicy::Reject));
    let b = who(3);
    let (id, _) = giver.create(&attrs(&[("n", "1")]), 100_000, 0, 0).unwrap();
    let generation = giver.live_generation(&id, 1).unwrap();
    assert_eq!(
        giver.handed_over_from(&id, generation),
        None,
        "live: not handed on"
    );
    let (transfer, record) = match giver.hand_over(&id, b, 0, None, 2) {
        CopyOutcome::Data { transfer, record, .. } => (transfer, record),
        other => panic!("{other:?}"),
    };
    // Handed on but not acknowledged: a write applied before must not count as placed.
    assert_eq!(giver.handed_over_from(&id, generation), Some(false));
    // The taker had nothing when it asked (0); once it owns the copy, it owns past that.
    assert!(!taker.owned_past(&id, 0, 3), "nothing here yet");
    assert!(taker.install(&record, transfer, 3).unwrap());
    assert!(taker.owned_past(&id, 0, 3));
    assert!(!taker.owned_past(&id, transfer, 3), "not past what it had then");
    assert!(giver.ack_handover(&id, b, transfer, 4).is_some());
    assert_eq!(giver.handed_over_from(&id, generation), Some(true));
    assert!(
        !giver.owned_past(&id, generation, 5),
        "handed on what it had then"
    );
    // Having owned it past `had` counts after handing it on too.
    match taker.hand_over(&id, who(4), 0, None, 6) {
        CopyOutcome::Data { .. } => {}
        other => panic!("{other:?}"),
    }
    assert!(taker.owned_past(&id, 0, 6), "handed on a state newer than it had");
    // A backup copy does not count: it says nothing of which lineage owns the session.
    let holder = table(10, EvictPolicy::Reject);
    assert_eq!(
        holder.replicate_in(b, transfer, &record, 7),
        Replicated::Stored(None)
    );
    assert!(!holder.owned_past(&id, 0, 7));
}

/// A handover the receiver refused (COPY_REFUSED) does not count for a write applied
/// before it, also for a session created here (generation 0, where "one generation
/// less" cannot be told from 0: simulation seed 8956 without crashes acknowledged an
/// append that lived only in a refused copy).
#[test]
fn a_refused_handover_counts_for_no_write_even_from_generation_0() {
    let giver = table(10, EvictPolicy::Reject);
    let b = who(3);
    let (id, _) = giver.create(&attrs(&[("n", "1")]), 100_000, 0, 0).unwrap();
    let generation = giver.live_generation(&id, 1).unwrap();
    assert_eq!(generation, 0, "created here");
    let transfer = match giver.hand_over(&id, b, 0, None, 2) {
        CopyOutcome::Data { transfer, .. } => transfer,
        other => panic!("{other:?}"),
    };
    assert_eq!(giver.handed_over_from(&id, generation), Some(false));
    assert!(giver.refuse_handover(&id, b, transfer, 3).is_some());
    assert_eq!(
        giver.handed_over_from(&id, generation),
        None,
        "refused: the copy did not live on"
    );
    assert_eq!(giver.get(&id, &[], 4).err(), Some(Miss::Moved(b.advertised)));
}

#[test]
fn a_holder_claiming_the_generation_of_an_unfinished_handover_wins_the_tie() {
    // The giver's session has one backup; it hands the session to a receiver, which
    // never confirms. The backup, finding the giver silent, claims the same generation.
    let (holder, receiver, stranger) = (who(2), who(3), who(4));
    let giver = table(10, EvictPolicy::Reject);
    let (id, _) = giver.create(&attrs(&[("n", "1")]), 100_000, 0, 0).unwrap();
    giver.set_backups(&id, 0, &[holder.advertised]);
    let (transfer, record) = match giver.hand_over(&id, receiver, 0, None, 1) {
        CopyOutcome::Data { transfer, record, .. } => (transfer, record),
        other => panic!("{other:?}"),
    };
    // Anyone else claiming that generation is pointed at the receiver, as before.
    assert_eq!(
        giver.replicate_in(stranger, transfer, &record, 2),
        Replicated::Moved(receiver.advertised)
    );
    // The holder's claim is stored: the receiver cannot install without that holder.
    assert!(matches!(
        giver.replicate_in(holder, transfer, &record, 3),
        Replicated::Stored(Some(_))
    ));
    assert_eq!(giver.get(&id, &[], 4).err(), Some(Miss::Moved(holder.advertised)));
    // A late COPY_ACK from the receiver changes nothing.
    assert!(giver.ack_handover(&id, receiver, transfer, 5).is_none());
}
