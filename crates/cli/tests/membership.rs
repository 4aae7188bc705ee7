//! Membership changes (etcd's Cluster API) on a running cluster: adding members as
//! voters and as learners, promoting, removing followers and the leader, under write
//! load; the errors etcd gives for impossible changes; a new member that catches up
//! by snapshot; and the same workflow through `etcdctl member`.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    assert_status, bounded, host_port, local_pairs_under, poll_until, run_etcdctl, start, wait_same_revision,
};
use etcd_client::{Client, MemberAddOptions};
use testkit::{placement, Cluster, ClusterOptions, Placement};

/// etcd's answers to impossible membership changes.
const MEMBER_NOT_FOUND: &str = "etcdserver: member not found";
const NOT_A_LEARNER: &str = "etcdserver: can only promote a learner member";
const LEARNER_BEHIND: &str = "etcdserver: can only promote a learner member which is in sync with leader";
const PEER_URL_EXISTS: &str = "etcdserver: Peer URLs already exists";

/// Bound on one membership step (join, catch-up, promotion, removal).
const STEP_LIMIT: Duration = Duration::from_secs(60);
/// The longest time the cluster may go without acknowledging any write while
/// membership changes (the leader's removal included: an election takes 1–1.5 s).
const MAX_UNAVAILABLE: Duration = Duration::from_secs(10);
/// Puts one background writer makes at most.
const WRITES_PER_WRITER_MAX: usize = 20_000;
/// Pause between a writer's puts, to leave the two test CPUs to the members.
const WRITE_PACING: Duration = Duration::from_millis(5);
const LOAD_PREFIX: &str = "load/";

/// A placement for the `n`th member added to a 3-member cluster (hz-b, sh-b, ...),
/// distinct from the initial members' names.
fn extra_placement(n: usize) -> Placement {
    placement(9, 3 + n)
}

/// The members in a MemberList answer, by id.
async fn member_list(client: &mut Client) -> Result<BTreeMap<u64, etcd_client::Member>, String> {
    let response = client.member_list().await.map_err(|e| e.to_string())?;
    Ok(response.members().iter().map(|member| (member.id(), member.clone())).collect())
}

/// Member `index`'s own Status: (its id, whether it says it is a learner).
async fn self_status(client: &mut Client) -> Result<(u64, bool), String> {
    let status = client.status().await.map_err(|e| e.to_string())?;
    let id = status.header().map_or(0, |header| header.member_id());
    Ok((id, status.is_learner()))
}

/// Waits until member `index` says in its own Status that it is a voter.
async fn wait_voter(cluster: &Cluster, index: usize, what: &str) {
    let client = cluster.client(index).await;
    poll_until(STEP_LIMIT, what, || {
        let mut client = client.clone();
        async move {
            match self_status(&mut client).await? {
                (_, false) => Ok(()),
                (id, true) => Err(format!("member {id:x} still reports is_learner")),
            }
        }
    })
    .await;
}

/// Waits until MemberList (asked of member `via`) shows member `id` started — with
/// `name` and `client_url` published — and with `is_learner` as given.
async fn wait_listed_started(
    cluster: &Cluster,
    via: usize,
    id: u64,
    name: &str,
    client_url: &str,
    learner: bool,
) {
    let client = cluster.client(via).await;
    poll_until(STEP_LIMIT, &format!("MemberList shows {name} started"), || {
        let mut client = client.clone();
        async move {
            let members = member_list(&mut client).await?;
            let member = members.get(&id).ok_or_else(|| format!("{id:x} not listed: {members:?}"))?;
            let started = member.name() == name && member.client_urls() == [client_url.to_string()];
            if started && member.is_learner() == learner {
                Ok(())
            } else {
                Err(format!("{member:?}"))
            }
        }
    })
    .await;
}

/// Waits until MemberList asked of member `via` has `count` members.
async fn wait_member_count(cluster: &Cluster, via: usize, count: usize) {
    let client = cluster.client(via).await;
    poll_until(STEP_LIMIT, &format!("member {via} lists {count} members"), || {
        let mut client = client.clone();
        async move {
            let members = member_list(&mut client).await?;
            if members.len() == count {
                Ok(())
            } else {
                Err(format!("{members:?}"))
            }
        }
    })
    .await;
}

/// Waits until member `index` has applied at least `revision` (a serializable read).
async fn wait_applied_at_least(cluster: &Cluster, index: usize, revision: i64, what: &str) {
    let client = cluster.client(index).await;
    poll_until(STEP_LIMIT, what, || {
        let mut client = client.clone();
        async move {
            match common::applied_revision(&mut client).await? {
                applied if applied >= revision => Ok(()),
                applied => Err(format!("applied revision {applied} < {revision}")),
            }
        }
    })
    .await;
}

/// What one background writer got acknowledged.
struct WriterReport {
    /// Acknowledged puts: key, value and when the acknowledgement arrived.
    acked: Vec<(String, String, Instant)>,
    errors: usize,
    last_error: Option<String>,
}

/// A writer that puts unique keys through `targets` (clients of the members it may
/// use), moving on to the next target after an error, until `stop` is set or it has
/// made `WRITES_PER_WRITER_MAX` puts.
fn spawn_writer(
    writer: usize,
    targets: Vec<Client>,
    stop: Arc<AtomicBool>,
    acked_count: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<WriterReport> {
    tokio::spawn(async move {
        let mut report = WriterReport { acked: Vec::new(), errors: 0, last_error: None };
        let mut turn = writer;
        for sequence in 0..WRITES_PER_WRITER_MAX {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let key = format!("{LOAD_PREFIX}{writer}/{sequence:06}");
            let value = format!("w{writer}s{sequence}");
            let mut client = targets[turn % targets.len()].clone();
            match client.put(key.clone(), value.clone(), None).await {
                Ok(_) => {
                    report.acked.push((key, value, Instant::now()));
                    acked_count.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    report.errors += 1;
                    report.last_error = Some(error.to_string());
                    turn += 1;
                }
            }
            tokio::time::sleep(WRITE_PACING).await;
        }
        report
    })
}

/// Adds the member prepared at `index` through `via` (as a learner or a voter) and
/// returns the id the cluster gave it.
async fn member_add(cluster: &Cluster, via: usize, index: usize, learner: bool) -> u64 {
    let mut client = cluster.client(via).await;
    let options = if learner { MemberAddOptions::new().with_is_learner() } else { MemberAddOptions::new() };
    let peer_url = cluster.peer_url(index);
    let response = client
        .member_add([peer_url.as_str()], Some(options))
        .await
        .unwrap_or_else(|e| panic!("MemberAdd {peer_url} (learner: {learner}): {e}"));
    let member = response.member().expect("MemberAdd answers the new member");
    assert_ne!(member.id(), 0, "MemberAdd gave id 0");
    assert_eq!(member.peer_urls(), std::slice::from_ref(&peer_url), "the new member's peer URLs");
    assert_eq!(member.is_learner(), learner, "MemberAdd reports is_learner as asked");
    assert_eq!(member.name(), "", "a member that has not started has no name");
    let listed = response.member_list().iter().find(|m| m.id() == member.id());
    let listed =
        listed.unwrap_or_else(|| panic!("MemberAdd's member list lacks the new member: {response:?}"));
    assert_eq!(listed.is_learner(), learner, "MemberAdd's member list: is_learner of the new member");
    member.id()
}

/// The id of member `index`, learned at start or from its Status.
async fn id_of(cluster: &Cluster, index: usize) -> u64 {
    if let Some(id) = cluster.member_id(index) {
        return id;
    }
    let mut client = cluster.client(index).await;
    let (id, _) = self_status(&mut client).await.unwrap_or_else(|e| panic!("Status of member {index}: {e}"));
    id
}

/// The timestamp (first word) of the first line of a member's log that contains
/// every one of `needles`.
fn first_log_time(log: &str, needles: &[&str]) -> Option<String> {
    let line = log.lines().find(|line| needles.iter().all(|needle| line.contains(needle)))?;
    line.split_whitespace().next().map(str::to_string)
}

/// Longest stretch between `from`, consecutive acknowledgements and `to`.
fn longest_gap(mut times: Vec<Instant>, from: Instant, to: Instant) -> Duration {
    times.sort();
    let mut longest = Duration::ZERO;
    let mut previous = from;
    for at in times.into_iter().chain([to]) {
        longest = longest.max(at.saturating_duration_since(previous));
        previous = previous.max(at);
    }
    longest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_promote_and_remove_members_under_write_load() {
    bounded(Duration::from_secs(300), async {
        let mut cluster = start(ClusterOptions::default()).await;
        let original: Vec<usize> = (0..3).collect();
        let mut ids = BTreeMap::new();
        for &index in &original {
            ids.insert(index, id_of(&cluster, index).await);
        }

        // Background writers, each through the original members in turn.
        let stop = Arc::new(AtomicBool::new(false));
        let acked_count = Arc::new(AtomicUsize::new(0));
        let mut writers = Vec::new();
        for writer in 0..3 {
            let mut targets = Vec::new();
            for &index in &original {
                targets.push(cluster.client(index).await);
            }
            writers.push(spawn_writer(writer, targets, stop.clone(), acked_count.clone()));
        }
        let load_started = Instant::now();

        // (a) A fourth member, added as a voter: it joins as a learner, catches up and
        // is promoted by the leader; MemberList calls it a voter all along.
        let fourth = cluster.add_joining_member(extra_placement(0), &original).unwrap();
        let fourth_id = member_add(&cluster, 0, fourth, false).await;
        ids.insert(fourth, fourth_id);
        cluster.start_joining(fourth).await.unwrap_or_else(|e| panic!("fourth member joins: {e:#}"));
        let name = cluster.placement(fourth).name.clone();
        wait_listed_started(&cluster, 1, fourth_id, &name, &cluster.client_url(fourth), false).await;
        wait_voter(&cluster, fourth, "the fourth member becomes a voter").await;
        let mut probe = cluster.client(0).await;
        let revision = common::current_revision(&mut probe).await;
        wait_applied_at_least(&cluster, fourth, revision, "the fourth member catches up").await;

        // (b) A fifth member, added as a learner: not in sync before it even starts, so
        // it cannot be promoted; once started and caught up it stays a learner until
        // promoted explicitly.
        let fifth = cluster.add_joining_member(extra_placement(1), &[0, 1, 2, fourth]).unwrap();
        let fifth_id = member_add(&cluster, 1, fifth, true).await;
        ids.insert(fifth, fifth_id);
        let mut admin = cluster.client(2).await;
        assert_status(
            admin.member_promote(fifth_id).await,
            tonic::Code::FailedPrecondition,
            LEARNER_BEHIND,
            "promoting a learner that never started",
        );
        cluster.start_joining(fifth).await.unwrap_or_else(|e| panic!("fifth member joins: {e:#}"));
        let name = cluster.placement(fifth).name.clone();
        wait_listed_started(&cluster, 0, fifth_id, &name, &cluster.client_url(fifth), true).await;
        let revision = common::current_revision(&mut probe).await;
        wait_applied_at_least(&cluster, fifth, revision, "the learner catches up").await;
        let mut fifth_client = cluster.client(fifth).await;
        assert_eq!(
            self_status(&mut fifth_client).await.unwrap(),
            (fifth_id, true),
            "a member added as a learner stays one after catching up"
        );
        let attempts = poll_until(STEP_LIMIT, "MemberPromote of the caught-up learner", || {
            let mut admin = admin.clone();
            async move {
                match admin.member_promote(fifth_id).await {
                    Ok(_) => Ok(()),
                    Err(etcd_client::Error::GRpcStatus(status))
                        if status.code() == tonic::Code::FailedPrecondition && status.message() == LEARNER_BEHIND =>
                    {
                        Err(format!("{status:?}"))
                    }
                    Err(other) => panic!("MemberPromote: unexpected error {other:?}"),
                }
            }
        });
        attempts.await;
        wait_voter(&cluster, fifth, "the promoted learner reports itself a voter").await;
        wait_listed_started(&cluster, 1, fifth_id, &name, &cluster.client_url(fifth), false).await;

        // (c) Remove an original follower, then whoever leads at that point.
        let leader = cluster.leader().await.unwrap();
        let follower = *original.iter().find(|index| **index != leader).unwrap();
        let follower_id = ids[&follower];
        let via = fourth;
        let mut admin = cluster.client(via).await;
        let removed = admin.member_remove(follower_id).await.unwrap_or_else(|e| panic!("remove follower: {e}"));
        assert!(
            removed.members().iter().all(|member| member.id() != follower_id),
            "MemberRemove's member list still has the removed follower: {removed:?}"
        );
        cluster.stop(follower).await.unwrap_or_else(|e| panic!("stopping the removed follower: {e:#}"));
        // (That the serving member lists the change at once is checked on its own in
        // `changes_are_visible_on_the_member_that_served_them`.)
        wait_member_count(&cluster, via, 4).await;

        let leader = cluster.leader().await.unwrap();
        let leader_id = ids[&leader];
        let via = *[fourth, fifth, 0, 1, 2].iter().find(|index| **index != leader && **index != follower).unwrap();
        let mut admin = cluster.client(via).await;
        let leader_removed_at = Instant::now();
        let removed = admin.member_remove(leader_id).await.unwrap_or_else(|e| panic!("remove the leader: {e}"));
        assert!(
            removed.members().iter().all(|member| member.id() != leader_id),
            "MemberRemove's member list still has the removed leader: {removed:?}"
        );
        cluster.stop(leader).await.unwrap_or_else(|e| panic!("stopping the removed leader: {e:#}"));
        let remaining: Vec<usize> =
            [0, 1, 2, fourth, fifth].into_iter().filter(|index| *index != leader && *index != follower).collect();
        let new_leader = cluster.leader().await.unwrap();
        assert!(remaining.contains(&new_leader), "the new leader {new_leader} is a remaining member");
        let mut expected: Vec<u64> = remaining.iter().map(|index| ids[index]).collect();
        expected.sort();
        for &index in &remaining {
            let mut client = cluster.client(index).await;
            let listed = poll_until(STEP_LIMIT, "MemberList without the removed members", || {
                let mut client = client.clone();
                let expected = expected.clone();
                async move {
                    let members = member_list(&mut client).await?;
                    let listed: Vec<u64> = members.keys().copied().collect();
                    if listed == expected {
                        Ok(members)
                    } else {
                        Err(format!("listed {listed:x?}, expected {expected:x?}"))
                    }
                }
            })
            .await;
            assert!(listed.values().all(|member| !member.is_learner()), "all remaining are voters: {listed:?}");
            let (_, learner) = self_status(&mut client).await.unwrap();
            assert!(!learner, "member {index} is a voter");
        }

        // The writers must get writes acknowledged after the leader went.
        let acked_at_removal = acked_count.load(Ordering::Relaxed);
        poll_until(STEP_LIMIT, "writers get writes acknowledged after the leader's removal", || {
            let now = acked_count.load(Ordering::Relaxed);
            let finished = writers.iter().all(|writer| writer.is_finished());
            async move {
                if now >= acked_at_removal + 50 {
                    Ok(())
                } else if finished {
                    panic!("the writers stopped early (WRITES_PER_WRITER_MAX too small?)")
                } else {
                    Err(format!("{} acknowledged since", now - acked_at_removal))
                }
            }
        })
        .await;
        stop.store(true, Ordering::Relaxed);
        let load_stopped = Instant::now();
        let mut acked = Vec::new();
        let mut times = Vec::new();
        let mut errors = Vec::new();
        for writer in writers {
            let report = writer.await.expect("writer task");
            errors.push((report.errors, report.last_error));
            for (key, value, at) in report.acked {
                times.push(at);
                acked.push((key, value));
            }
        }
        assert!(!acked.is_empty(), "no write was acknowledged; writer errors: {errors:?}");
        assert!(
            times.iter().any(|at| *at > leader_removed_at),
            "no write was acknowledged after the leader's removal; writer errors: {errors:?}"
        );
        let gap = longest_gap(times, load_started, load_stopped);
        assert!(
            gap <= MAX_UNAVAILABLE,
            "the cluster acknowledged no write for {gap:?} (bound {MAX_UNAVAILABLE:?}); writer errors: {errors:?}"
        );

        // Every remaining member has applied the same revision, hashes the same and
        // holds every acknowledged write.
        let revision = wait_same_revision(&cluster, &remaining, STEP_LIMIT).await;
        let mut hashes = Vec::new();
        for &index in &remaining {
            let mut client = cluster.client(index).await;
            let hash = client.hash_kv(revision).await.unwrap_or_else(|e| panic!("HashKV on member {index}: {e}"));
            assert_eq!(hash.hash_revision(), revision, "HashKV's revision on member {index}");
            hashes.push((index, hash.hash()));
        }
        assert!(hashes.iter().all(|(_, hash)| *hash == hashes[0].1), "HashKV at revision {revision}: {hashes:?}");
        for &index in &remaining {
            let mut client = cluster.client(index).await;
            let stored = local_pairs_under(&mut client, LOAD_PREFIX)
                .await
                .unwrap_or_else(|e| panic!("reading member {index}: {e}"));
            let missing: Vec<&(String, String)> =
                acked.iter().filter(|(key, value)| stored.get(key) != Some(value)).collect();
            assert!(
                missing.is_empty(),
                "member {index} lacks {} of {} acknowledged writes, e.g. {:?}",
                missing.len(),
                acked.len(),
                &missing[..missing.len().min(5)]
            );
        }
        eprintln!(
            "membership under load: {} acknowledged writes, longest gap {gap:?}, final revision {revision}, \
             writer errors {errors:?}",
            acked.len()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_membership_changes_fail_like_etcd() {
    bounded(Duration::from_secs(120), async {
        let mut cluster = start(ClusterOptions::default()).await;
        let mut client = cluster.client(1).await;
        let unknown = 0x0bad_cafe_u64;
        assert_status(
            client.member_remove(unknown).await,
            tonic::Code::NotFound,
            MEMBER_NOT_FOUND,
            "MemberRemove of an unknown id",
        );
        assert_status(
            client.member_promote(unknown).await,
            tonic::Code::NotFound,
            MEMBER_NOT_FOUND,
            "MemberPromote of an unknown id",
        );
        assert_status(
            client.member_update(unknown, vec!["http://127.0.0.1:9".to_string()]).await,
            tonic::Code::NotFound,
            MEMBER_NOT_FOUND,
            "MemberUpdate of an unknown id",
        );
        let voter = id_of(&cluster, 2).await;
        assert_status(
            client.member_promote(voter).await,
            tonic::Code::FailedPrecondition,
            NOT_A_LEARNER,
            "MemberPromote of a voter",
        );
        let taken = cluster.peer_url(0);
        assert_status(
            client.member_add([taken.as_str()], None).await,
            tonic::Code::FailedPrecondition,
            PEER_URL_EXISTS,
            "MemberAdd with a peer URL a member has",
        );

        // MemberUpdate: a learner that has not started moves to another peer URL; every
        // member lists the new URL, and the old one is free for MemberAdd again.
        let index = cluster.add_joining_member(extra_placement(0), &[0, 1, 2]).unwrap();
        let learner = member_add(&cluster, 0, index, true).await;
        assert_status(
            client.member_add([cluster.peer_url(index).as_str()], None).await,
            tonic::Code::FailedPrecondition,
            PEER_URL_EXISTS,
            "MemberAdd with the peer URL of an added, unstarted member",
        );
        let moved = format!("http://127.0.0.1:{}", testkit::free_ports(1).unwrap()[0]);
        let updated = client
            .member_update(learner, vec![moved.clone()])
            .await
            .unwrap_or_else(|e| panic!("MemberUpdate: {e}"));
        let in_answer = updated.members().iter().find(|member| member.id() == learner);
        assert_eq!(
            in_answer.map(|member| member.peer_urls().to_vec()),
            Some(vec![moved.clone()]),
            "MemberUpdate's member list: {updated:?}"
        );
        for via in 0..3 {
            let client = cluster.client(via).await;
            poll_until(Duration::from_secs(10), &format!("member {via} lists the updated URL"), || {
                let mut client = client.clone();
                let moved = moved.clone();
                async move {
                    let members = member_list(&mut client).await?;
                    match members.get(&learner) {
                        Some(member) if member.peer_urls() == [moved] && member.is_learner() => Ok(()),
                        other => Err(format!("{other:?}")),
                    }
                }
            })
            .await;
        }
        let old_url = cluster.peer_url(index);
        let readded =
            client.member_add([old_url.as_str()], Some(MemberAddOptions::new().with_is_learner())).await;
        let readded = readded.unwrap_or_else(|e| panic!("MemberAdd of the URL the update freed: {e}"));
        let readded_id = readded.member().unwrap().id();
        assert_ne!(readded_id, learner);

        // Clean up the two never-started learners; the cluster still writes.
        for id in [learner, readded_id] {
            client.member_remove(id).await.unwrap_or_else(|e| panic!("removing {id:x}: {e}"));
        }
        wait_member_count(&cluster, 1, 3).await;
        client.put("membership/errors", "done", None).await.expect("put after the changes");
    })
    .await;
}

/// etcd answers MemberAdd and MemberRemove only once the member that served the
/// request has applied the change, so MemberList on that member reflects it at once
/// (etcdctl's `member add` relies on this). Served here by a follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_visible_on_the_member_that_served_them() {
    bounded(Duration::from_secs(120), async {
        let cluster = start(ClusterOptions::default()).await;
        let leader = cluster.leader().await.unwrap();
        let follower = (leader + 1) % cluster.len();
        let mut client = cluster.client(follower).await;
        let url = format!("http://127.0.0.1:{}", testkit::free_ports(1).unwrap()[0]);
        for round in 0..10 {
            let added = client
                .member_add([url.as_str()], Some(MemberAddOptions::new().with_is_learner()))
                .await
                .unwrap_or_else(|e| panic!("round {round}: MemberAdd: {e}"));
            let id = added.member().unwrap().id();
            let members = member_list(&mut client).await.unwrap();
            assert!(
                members.contains_key(&id),
                "round {round}: MemberList on the follower that served MemberAdd lacks {id:x}: {members:?}"
            );
            client.member_remove(id).await.unwrap_or_else(|e| panic!("round {round}: MemberRemove: {e}"));
            let members = member_list(&mut client).await.unwrap();
            assert!(
                !members.contains_key(&id),
                "round {round}: MemberList on the follower that served MemberRemove still has {id:x}: {members:?}"
            );
        }
    })
    .await;
}

/// A member added as a voter is promoted by the leader in the background. A client
/// cannot see that change coming, so its own membership requests must not fail
/// because of it (in etcd, a change the client did not ask for never runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_changes_do_not_collide_with_automatic_promotion() {
    bounded(Duration::from_secs(120), async {
        let mut cluster = start(ClusterOptions::default()).await;
        let leader = cluster.leader().await.unwrap();
        let mut client = cluster.client(leader).await;
        client.put("membership/ready", "yes", None).await.expect("a first write");
        let joining = cluster.add_joining_member(extra_placement(0), &[0, 1, 2]).unwrap();
        member_add(&cluster, leader, joining, false).await;

        // Churn: add and remove a learner that never starts, until told to stop.
        let stop = Arc::new(AtomicBool::new(false));
        let churn = {
            let mut client = client.clone();
            let stop = stop.clone();
            let url = format!("http://127.0.0.1:{}", testkit::free_ports(1).unwrap()[0]);
            tokio::spawn(async move {
                let mut failures = Vec::new();
                let mut rounds = 0;
                while !stop.load(Ordering::Relaxed) && rounds < 2_000 {
                    rounds += 1;
                    let options = Some(MemberAddOptions::new().with_is_learner());
                    match client.member_add([url.as_str()], options).await {
                        Ok(added) => {
                            let id = added.member().unwrap().id();
                            if let Err(e) = client.member_remove(id).await {
                                failures.push(format!("MemberRemove: {e}"));
                                break;
                            }
                        }
                        Err(e) => failures.push(format!("MemberAdd: {e}")),
                    }
                    // Pacing: leave the leader's promoter room to run.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (rounds, failures)
            })
        };
        cluster.start_joining(joining).await.unwrap_or_else(|e| panic!("the added member joins: {e:#}"));
        wait_voter(&cluster, joining, "the added member is promoted").await;
        // A few more rounds after the promotion, which ends with a second entry.
        let mut probe = cluster.client(joining).await;
        probe.put("membership/promoted", "yes", None).await.expect("a write after the promotion");
        stop.store(true, Ordering::Relaxed);
        let (rounds, failures) = churn.await.expect("churn task");
        assert!(
            failures.is_empty(),
            "{} of {rounds} client membership changes failed while the leader promoted a member: {failures:#?}",
            failures.len()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacement_member_catches_up_by_snapshot_before_it_votes() {
    const KEYS: usize = 300;
    bounded(Duration::from_secs(240), async {
        let options =
            ClusterOptions::default().arg("--snapshot-count", 50).arg("--snapshot-catchup-entries", 5);
        let mut cluster = start(options).await;
        let leader = cluster.leader().await.unwrap();
        let dead = (leader + 1) % 3;
        let survivor = (leader + 2) % 3;
        let dead_id = id_of(&cluster, dead).await;
        cluster.kill(dead).unwrap();

        // Far more entries than the log keeps behind a snapshot.
        let mut writer = cluster.client(leader).await;
        for key in 0..KEYS {
            let key = format!("snapjoin/{key:04}");
            writer
                .put(key.clone(), format!("value of {key}"), None)
                .await
                .unwrap_or_else(|e| panic!("put {key}: {e}"));
        }

        let removed =
            writer.member_remove(dead_id).await.unwrap_or_else(|e| panic!("removing the dead member: {e}"));
        assert!(removed.members().iter().all(|member| member.id() != dead_id), "{removed:?}");

        let new = cluster.add_joining_member(extra_placement(0), &[leader, survivor]).unwrap();
        let new_id = member_add(&cluster, survivor, new, false).await;
        cluster.start_joining(new).await.unwrap_or_else(|e| panic!("the new member joins: {e:#}"));

        // It becomes a voter, and only after it installed the snapshot: the log behind
        // the leader's snapshot is gone, so nothing else could bring it up to date, and
        // a voter that lacks the data must not count toward a quorum. The order is read
        // from the members' logs (same host clock, RFC 3339 timestamps): the new
        // member's `installed snapshot` line, the leader's promotion line.
        wait_voter(&cluster, new, "the new member becomes a voter").await;
        let installed = first_log_time(&cluster.log(new), &["installed snapshot"]);
        let installed = installed.unwrap_or_else(|| {
            panic!("the new member never installed a snapshot; its log:\n{}", cluster.log(new))
        });
        // The new member counts as a voter from the joint configuration on; the
        // leader logs the promotion once the final one is committed, a moment later.
        let member = format!("member={new_id:x}");
        let promoted = poll_until(STEP_LIMIT, "the leader logs the promotion", || {
            let logs: Vec<String> = (0..cluster.len()).map(|index| cluster.log(index)).collect();
            let member = member.clone();
            async move {
                let line = ["caught-up member promoted to voter", member.as_str()];
                logs.iter()
                    .find_map(|log| first_log_time(log, &line))
                    .ok_or_else(|| format!("no member logged {line:?}"))
            }
        })
        .await;
        assert!(
            installed < promoted,
            "the new member was promoted at {promoted} but installed the snapshot only at {installed}"
        );

        // It votes: with the other original follower down, the leader's writes need it.
        let leader = cluster.leader().await.unwrap();
        let other = [0, 1, 2].into_iter().find(|index| *index != leader && *index != dead).unwrap();
        cluster.kill(other).unwrap();
        let mut writer = cluster.client(leader).await;
        let put =
            tokio::time::timeout(Duration::from_secs(15), writer.put("snapjoin/needs-new-vote", "yes", None))
                .await;
        assert!(
            matches!(put, Ok(Ok(_))),
            "a write with only the leader and the new member up must commit: {put:?}"
        );

        let revision = wait_same_revision(&cluster, &[leader, new], STEP_LIMIT).await;
        let on_new = local_pairs_under(&mut cluster.client(new).await, "snapjoin/").await.unwrap();
        let mut on_leader_client = cluster.client(leader).await;
        let on_leader = local_pairs_under(&mut on_leader_client, "snapjoin/").await.unwrap();
        assert_eq!(on_new.len(), KEYS + 1, "the new member holds every key");
        assert_eq!(on_new, on_leader, "the new member's data equals the leader's at revision {revision}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_member_add_list_promote_remove() {
    let Some(program) = testkit::tool("etcdctl") else { return };
    bounded(Duration::from_secs(240), async {
        let mut cluster = start(ClusterOptions::default()).await;
        // One endpoint, the leader's: a member that has not yet appended a change it
        // did not serve may list the old membership, in etcd too.
        let leader = cluster.leader().await.unwrap();
        let endpoints = host_port(&cluster.client_url(leader));
        let ctl = |args: Vec<String>| {
            let program = program.clone();
            let endpoints = endpoints.clone();
            async move {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                run_etcdctl(&program, &endpoints, &args).await
            }
        };
        let mut client = cluster.client(leader).await;
        let cluster_id = client.status().await.unwrap().header().unwrap().cluster_id();

        // `member add NAME --peer-urls=URL` prints the new member and the environment
        // for starting it.
        let index = cluster.add_joining_member(extra_placement(0), &[0, 1, 2]).unwrap();
        let name = cluster.placement(index).name.clone();
        let peer = cluster.peer_url(index);
        let added =
            ctl(vec!["member".into(), "add".into(), name.clone(), format!("--peer-urls={peer}")]).await;
        assert!(added.success, "etcdctl member add: {added:?}");
        let members = member_list(&mut client).await.unwrap();
        let id = members.values().find(|m| m.peer_urls() == [peer.clone()]).map(|m| m.id());
        let id = id.unwrap_or_else(|| panic!("MemberList lacks the added member: {members:?}"));
        let lines: Vec<&str> = added.stdout.lines().collect();
        assert_eq!(
            lines.first().copied(),
            Some(format!("Member {id:16x} added to cluster {cluster_id:16x}").as_str())
        );
        assert!(lines.contains(&format!("ETCD_NAME=\"{name}\"").as_str()), "{}", added.stdout);
        assert!(
            lines.contains(&format!("ETCD_INITIAL_ADVERTISE_PEER_URLS=\"{peer}\"").as_str()),
            "{}",
            added.stdout
        );
        assert!(lines.contains(&"ETCD_INITIAL_CLUSTER_STATE=\"existing\""), "{}", added.stdout);
        let initial = lines.iter().find_map(|line| line.strip_prefix("ETCD_INITIAL_CLUSTER=\""));
        let initial = initial.unwrap_or_else(|| panic!("no ETCD_INITIAL_CLUSTER in {}", added.stdout));
        let mut entries: Vec<&str> = initial.trim_end_matches('"').split(',').collect();
        entries.sort();
        let mut expected: Vec<String> =
            (0..4).map(|i| format!("{}={}", cluster.placement(i).name, cluster.peer_url(i))).collect();
        expected.sort();
        assert_eq!(entries, expected, "ETCD_INITIAL_CLUSTER");

        // `member list` shows it unstarted, then started once it runs.
        let row = |id: u64, status: &str, name: &str, peer: &str, client: &str, learner: bool| {
            format!("{id:x}, {status}, {name}, {peer}, {client}, {learner}")
        };
        let listed = ctl(vec!["member".into(), "list".into()]).await;
        assert!(listed.success, "{listed:?}");
        assert!(listed.stdout.lines().count() == 4, "{}", listed.stdout);
        let unstarted = row(id, "unstarted", "", &peer, "", false);
        assert!(listed.stdout.lines().any(|line| line == unstarted), "{unstarted:?} in:\n{}", listed.stdout);
        cluster.start_joining(index).await.unwrap_or_else(|e| panic!("the added member joins: {e:#}"));
        let started = row(id, "started", &name, &peer, &cluster.client_url(index), false);
        poll_until(STEP_LIMIT, "etcdctl member list shows the member started", || {
            let listed = ctl(vec!["member".into(), "list".into()]);
            let started = started.clone();
            async move {
                let listed = listed.await;
                if listed.stdout.lines().any(|line| line == started) {
                    Ok(())
                } else {
                    Err(format!("{listed:?}"))
                }
            }
        })
        .await;

        // `member add --learner`, then `member promote` once it is in sync.
        let learner = cluster.add_joining_member(extra_placement(1), &[0, 1, 2, index]).unwrap();
        let learner_name = cluster.placement(learner).name.clone();
        let learner_peer = cluster.peer_url(learner);
        let added = ctl(vec![
            "member".into(),
            "add".into(),
            learner_name.clone(),
            format!("--peer-urls={learner_peer}"),
            "--learner".into(),
        ])
        .await;
        assert!(added.success, "etcdctl member add --learner: {added:?}");
        let members = member_list(&mut client).await.unwrap();
        let learner_id =
            members.values().find(|m| m.peer_urls() == [learner_peer.clone()]).map(|m| m.id()).unwrap();
        assert_eq!(
            added.stdout.lines().next(),
            // etcdctl 3.4 prints the same line for a learner (3.5 adds "as learner").
            Some(format!("Member {learner_id:16x} added to cluster {cluster_id:16x}").as_str()),
            "etcdctl member add --learner: {added:?}; MemberList: {members:?}"
        );
        assert!(members[&learner_id].is_learner(), "added with --learner: {members:?}");
        cluster.start_joining(learner).await.unwrap_or_else(|e| panic!("the learner joins: {e:#}"));
        let learner_row =
            row(learner_id, "started", &learner_name, &learner_peer, &cluster.client_url(learner), true);
        poll_until(STEP_LIMIT, "etcdctl member list shows the learner started", || {
            let listed = ctl(vec!["member".into(), "list".into()]);
            let learner_row = learner_row.clone();
            async move {
                let listed = listed.await;
                if listed.stdout.lines().any(|line| line == learner_row) {
                    Ok(())
                } else {
                    Err(format!("{listed:?}"))
                }
            }
        })
        .await;
        let promoted = poll_until(STEP_LIMIT, "etcdctl member promote", || {
            let run = ctl(vec!["member".into(), "promote".into(), format!("{learner_id:x}")]);
            async move {
                let run = run.await;
                if run.success {
                    Ok(run)
                } else if run.stderr.contains(LEARNER_BEHIND) {
                    Err(format!("{run:?}"))
                } else {
                    panic!("etcdctl member promote failed unexpectedly: {run:?}")
                }
            }
        })
        .await;
        assert_eq!(
            promoted.stdout.trim_end(),
            format!("Member {learner_id:16x} promoted in cluster {cluster_id:16x}"),
            "{promoted:?}"
        );
        let voter_row =
            row(learner_id, "started", &learner_name, &learner_peer, &cluster.client_url(learner), false);
        let listed = ctl(vec!["member".into(), "list".into()]).await;
        assert!(listed.stdout.lines().any(|line| line == voter_row), "{voter_row:?} in:\n{}", listed.stdout);

        // `member remove ID`.
        let removed = ctl(vec!["member".into(), "remove".into(), format!("{id:x}")]).await;
        assert!(removed.success, "etcdctl member remove: {removed:?}");
        assert_eq!(
            removed.stdout.trim_end(),
            format!("Member {id:16x} removed from cluster {cluster_id:16x}")
        );
        cluster.stop(index).await.unwrap_or_else(|e| panic!("stopping the removed member: {e:#}"));
        let listed = ctl(vec!["member".into(), "list".into()]).await;
        assert_eq!(listed.stdout.lines().count(), 4, "{}", listed.stdout);
        assert!(
            !listed.stdout.contains(&format!("{id:x}, ")),
            "removed member still listed:\n{}",
            listed.stdout
        );
        let unknown = ctl(vec!["member".into(), "remove".into(), format!("{id:x}")]).await;
        assert!(!unknown.success && unknown.stderr.contains(MEMBER_NOT_FOUND), "{unknown:?}");
        client.put("membership/etcdctl", "done", None).await.expect("put after the changes");
    })
    .await;
}
