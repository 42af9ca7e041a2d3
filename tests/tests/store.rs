//! The partition store contract, checked against both stores: `SpannerStore` on a real
//! emulator (one table per scenario, in one database) and `MemoryStore`. The subscriber and
//! the runners rely on exactly these semantics: readiness of merged children, claims that
//! skip live owners and the claimer's own partitions, fencing by owner and epoch, release,
//! reset, and the load rebalancing divides.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use screamer::{
    Claim, Lease, NewPartition, PartitionState, PartitionStore, PartitionToken, SpannerStore,
    StoreError,
};
use screamer::{Dialect, MemoryStore, Timestamp};
use screamer_tests::{Emulator, EmulatorOptions};

const LEASE: Duration = Duration::from_secs(30);

/// A partition starting `second` seconds into 2026 (claims go oldest first).
fn partition(token: &str, parents: &[&str], second: i64) -> NewPartition {
    NewPartition {
        token: token.into(),
        parents: parents.iter().map(|p| PartitionToken::from(*p)).collect(),
        start: at(second),
        end: None,
        heartbeat_millis: 1000,
    }
}

fn at(second: i64) -> Timestamp {
    Timestamp::from_unix_nanos((1_767_225_600 + second as i128) * 1_000_000_000).unwrap()
}

fn tokens(claims: &[Claim]) -> Vec<&str> {
    claims.iter().map(|c| c.lease.token.as_str()).collect()
}

fn leases(claims: &[Claim]) -> Vec<Lease> {
    claims.iter().map(|c| c.lease.clone()).collect()
}

/// The owner of `token` as `status` shows it.
async fn owner(store: &dyn PartitionStore, token: &str) -> anyhow::Result<Option<String>> {
    let status = store.status(LEASE).await?;
    let p = status
        .partitions
        .iter()
        .find(|p| p.token.as_str() == token)
        .with_context(|| format!("{token} not in status"))?;
    Ok(p.owner.as_ref().map(|o| o.as_str().to_owned()))
}

/// Partitions a, b, c (oldest first) and live runners r1 and r2.
async fn three_partitions_two_runners(store: &dyn PartitionStore) -> anyhow::Result<()> {
    for (i, t) in ["a", "b", "c"].iter().enumerate() {
        store.add_children(&[partition(t, &[], i as i64)]).await?;
    }
    store.heartbeat(&"r1".into(), 10).await?;
    store.heartbeat(&"r2".into(), 10).await?;
    Ok(())
}

async fn merged_child_waits_for_every_parent(store: &dyn PartitionStore) -> anyhow::Result<()> {
    store.heartbeat(&"r".into(), 10).await?;
    ensure!(store.seed(vec![partition("a", &[], 0)]).await?);
    ensure!(
        !store.seed(vec![partition("x", &[], 0)]).await?,
        "seeded twice"
    );
    store.add_children(&[partition("b", &[], 1)]).await?;
    let child = partition("c", &["a", "b"], 2);
    // Both parents announce the merged child; it is inserted once.
    ensure!(store.add_children(std::slice::from_ref(&child)).await? == 1);
    ensure!(store.add_children(&[child]).await? == 0);
    let claims = store.claim(&"r".into(), 10, LEASE).await?;
    ensure!(
        tokens(&claims) == ["a", "b"],
        "claimed {:?}",
        tokens(&claims)
    );
    let load = store.load(LEASE).await?;
    ensure!(
        load.active_partitions == 2 && load.unowned_partitions == 0,
        "the blocked child counted: {load:?}"
    );
    store.finish(&"r".into(), &claims[0].lease, at(5)).await?;
    let early = store.claim(&"r".into(), 10, LEASE).await?;
    ensure!(early.is_empty(), "child claimed with a parent running");
    store.finish(&"r".into(), &claims[1].lease, at(5)).await?;
    let child = store.claim(&"r".into(), 10, LEASE).await?;
    ensure!(tokens(&child) == ["c"], "claimed {:?}", tokens(&child));
    ensure!(child[0].partition.parents.len() == 2);
    ensure!(store.claim(&"r".into(), 10, LEASE).await?.is_empty());
    ensure!(store.unfinished().await? == 1);
    Ok(())
}

/// Two runners seed at once, each a plan of its own (a snapshot's chunks and a root): one
/// plan is stored whole, the other not at all.
async fn concurrent_seeds_store_one_plan_whole(store: &dyn PartitionStore) -> anyhow::Result<()> {
    ensure!(!store.seeded().await?);
    let plan = |name: &str| -> Vec<NewPartition> {
        let chunks: Vec<String> = (0..20).map(|i| format!("{name}-{i}")).collect();
        let parents: Vec<&str> = chunks.iter().map(String::as_str).collect();
        let mut plan: Vec<NewPartition> = parents.iter().map(|c| partition(c, &[], 0)).collect();
        plan.push(partition(&format!("{name}-root"), &parents, 1));
        plan
    };
    let (a, b) = tokio::join!(store.seed(plan("a")), store.seed(plan("b")));
    ensure!(a? != b?, "exactly one seed wins");
    ensure!(store.seeded().await?);
    let status = store.status(LEASE).await?;
    let names: Vec<&str> = status.partitions.iter().map(|p| p.token.as_str()).collect();
    let from_a = names.iter().filter(|t| t.starts_with("a-")).count();
    ensure!(
        names.len() == 21 && (from_a == 0 || from_a == 21),
        "one whole plan: {names:?}"
    );
    Ok(())
}

async fn claims_skip_live_owners_and_own_partitions(
    store: &dyn PartitionStore,
) -> anyhow::Result<()> {
    three_partitions_two_runners(store).await?;
    // Room is respected, oldest first.
    let first = store.claim(&"r1".into(), 2, LEASE).await?;
    ensure!(tokens(&first) == ["a", "b"], "claimed {:?}", tokens(&first));
    let rest = store.claim(&"r2".into(), 10, LEASE).await?;
    ensure!(tokens(&rest) == ["c"], "r2 took a live runner's partitions");
    // Even when its own heartbeat looks expired, a runner never re-claims what it holds
    // (that would fence its own readers).
    let taken = store.claim(&"r1".into(), 10, Duration::ZERO).await?;
    ensure!(tokens(&taken) == ["c"], "claimed {:?}", tokens(&taken));
    ensure!(owner(store, "c").await?.as_deref() == Some("r1"));
    ensure!(owner(store, "a").await?.as_deref() == Some("r1"));
    let mut owned: Vec<Lease> = store.owned(&"r1".into()).await?;
    owned.sort_by(|a, b| a.token.cmp(&b.token));
    let mut expected = leases(&first);
    expected.extend(leases(&taken));
    ensure!(owned == expected, "r1 owns {owned:?}");
    Ok(())
}

async fn writes_are_fenced_by_owner_and_epoch(store: &dyn PartitionStore) -> anyhow::Result<()> {
    store.seed(vec![partition("a", &[], 0)]).await?;
    store.heartbeat(&"r1".into(), 10).await?;
    let old = store.claim(&"r1".into(), 1, LEASE).await?.remove(0).lease;
    store.mark_running(&"r1".into(), &old).await?;
    // With a zero lease duration r1 counts as dead: r2 takes the partition over.
    store.heartbeat(&"r2".into(), 10).await?;
    let new = store
        .claim(&"r2".into(), 1, Duration::ZERO)
        .await?
        .remove(0);
    ensure!(new.lease.epoch == old.epoch.next(), "epoch not bumped");
    ensure!(new.partition.state == PartitionState::Running);
    let lost = store
        .update_watermarks(&"r1".into(), &[(old.clone(), at(5))])
        .await?;
    ensure!(
        lost == [old.clone()],
        "stale watermark accepted: lost {lost:?}"
    );
    ensure!(matches!(
        store.mark_running(&"r1".into(), &old).await,
        Err(StoreError::LeaseLost { .. })
    ));
    ensure!(matches!(
        store.finish(&"r1".into(), &old, at(5)).await,
        Err(StoreError::LeaseLost { .. })
    ));
    // A stale release gives nothing up.
    store
        .release(&"r1".into(), std::slice::from_ref(&old))
        .await?;
    ensure!(owner(store, "a").await?.as_deref() == Some("r2"));
    let status = store.status(LEASE).await?;
    ensure!(
        status.partitions[0].watermark == at(0),
        "stale watermark written"
    );
    let lost = store
        .update_watermarks(&"r2".into(), &[(new.lease.clone(), at(5))])
        .await?;
    ensure!(lost.is_empty());
    let status = store.status(LEASE).await?;
    ensure!(status.partitions[0].watermark == at(5));
    ensure!(status.partitions[0].epoch == Some(new.lease.epoch));
    // r1 gets the partition back: its old lease stays dead (same owner, older epoch).
    store
        .release(&"r2".into(), std::slice::from_ref(&new.lease))
        .await?;
    let again = store.claim(&"r1".into(), 1, LEASE).await?.remove(0).lease;
    ensure!(again.epoch == old.epoch.next().next());
    let lost = store
        .update_watermarks(&"r1".into(), &[(old.clone(), at(9))])
        .await?;
    ensure!(lost == [old], "an older epoch of the same owner wrote");
    Ok(())
}

async fn released_and_reset_partitions_are_claimable_at_once(
    store: &dyn PartitionStore,
) -> anyhow::Result<()> {
    three_partitions_two_runners(store).await?;
    let held = store.claim(&"r1".into(), 3, LEASE).await?;
    ensure!(held.len() == 3);
    store.release(&"r1".into(), &leases(&held[..1])).await?;
    ensure!(owner(store, "a").await?.is_none());
    let moved = store.claim(&"r2".into(), 10, LEASE).await?;
    ensure!(tokens(&moved) == ["a"], "claimed {:?}", tokens(&moved));
    // r1 restarts under the same id: its old leases are freed for anyone.
    store.reset(&"r1".into()).await?;
    let rest = store.claim(&"r2".into(), 10, LEASE).await?;
    ensure!(tokens(&rest) == ["b", "c"], "claimed {:?}", tokens(&rest));
    Ok(())
}

async fn load_counts_live_runners_and_their_partitions(
    store: &dyn PartitionStore,
) -> anyhow::Result<()> {
    for i in 0..5 {
        store
            .add_children(&[partition(&format!("p{i}"), &[], i)])
            .await?;
    }
    store.heartbeat(&"r1".into(), 10).await?;
    store.heartbeat(&"r2".into(), 2).await?;
    store.heartbeat(&"gone".into(), 10).await?;
    store.deregister(&"gone".into()).await?;
    store.claim(&"r1".into(), 3, LEASE).await?;
    let load = store.load(LEASE).await?;
    ensure!(
        load.active_partitions == 5 && load.unowned_partitions == 2,
        "load {load:?}"
    );
    let mut runners: Vec<(usize, usize)> =
        load.runners.iter().map(|r| (r.capacity, r.held)).collect();
    runners.sort();
    ensure!(runners == [(2, 0), (10, 3)], "load {load:?}");
    ensure!(load.fair_share(10) == 3 && load.fair_share(2) == 2);
    let status = store.status(LEASE).await?;
    let held: Vec<(&str, usize, bool)> = status
        .runners
        .iter()
        .map(|r| (r.runner_id.as_str(), r.partitions, r.alive))
        .collect();
    ensure!(
        held == [("r1", 3, true), ("r2", 0, true)],
        "status {held:?}"
    );
    Ok(())
}

type Scenario = for<'a> fn(
    &'a dyn PartitionStore,
) -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + 'a>>;

/// Every scenario, by name.
fn scenarios() -> Vec<(&'static str, Scenario)> {
    vec![
        ("merged_child_waits_for_every_parent", |s| {
            Box::pin(merged_child_waits_for_every_parent(s))
        }),
        ("concurrent_seeds_store_one_plan_whole", |s| {
            Box::pin(concurrent_seeds_store_one_plan_whole(s))
        }),
        ("claims_skip_live_owners_and_own_partitions", |s| {
            Box::pin(claims_skip_live_owners_and_own_partitions(s))
        }),
        ("writes_are_fenced_by_owner_and_epoch", |s| {
            Box::pin(writes_are_fenced_by_owner_and_epoch(s))
        }),
        ("released_and_reset_partitions_are_claimable_at_once", |s| {
            Box::pin(released_and_reset_partitions_are_claimable_at_once(s))
        }),
        ("load_counts_live_runners_and_their_partitions", |s| {
            Box::pin(load_counts_live_runners_and_their_partitions(s))
        }),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn spanner_store_keeps_the_contract() -> anyhow::Result<()> {
    screamer_tests::init_tracing();
    let emulator = Emulator::start(EmulatorOptions::exact()).await?;
    let db = emulator.database(Dialect::GoogleSql, &[]).await?;
    for (i, (name, scenario)) in scenarios().into_iter().enumerate() {
        let store: Arc<dyn PartitionStore> = Arc::new(
            SpannerStore::connect(&db.endpoint(), &db.name, &format!("Contract{i}")).await?,
        );
        store.prepare().await?;
        scenario(&*store).await.context(name)?;
    }
    Ok(())
}

#[tokio::test]
async fn memory_store_keeps_the_contract() -> anyhow::Result<()> {
    for (name, scenario) in scenarios() {
        scenario(&MemoryStore::new()).await.context(name)?;
    }
    Ok(())
}
