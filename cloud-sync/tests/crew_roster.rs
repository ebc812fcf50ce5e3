//! The crew roster: PINs set at the hub reach the organisation's vans with the sync and
//! work there with no network; a PIN removed at the hub stops working after the next sync.

mod common;

use case_model::{OrgId, UserId};
use cloud_sync::identity::roles::Role;
use edge_agent::crew::{Crew, CrewError, CrewSettings};
use edge_agent::sync::StoreReplica;
use sync_proto::Event;
use sync_quic::identity::DeviceId;

fn now() -> i64 {
    common::now_s()
}

#[test]
fn pins_set_at_the_hub_work_on_the_van_offline_and_a_removed_one_stops_after_the_next_sync() {
    let dir = tempfile::tempdir().unwrap();
    let (_config, hub, _) = common::two_org_hub(dir.path());
    let id = &hub.identity;
    let north = OrgId::parse("org-north").unwrap();
    for (org, user, roles) in [
        ("org-north", "pat.medic", vec![Role::Paramedic]),
        ("org-north", "dr.pin", vec![Role::Doctor]),
        ("org-south", "sam.medic", vec![Role::Paramedic]),
    ] {
        common::create_and_login(id, org, user, &roles);
        id.set_pin(&OrgId::parse(org).unwrap(), &UserId::parse(user).unwrap(), "604182", now()).unwrap();
    }
    // Weak PINs are refused at the hub, with the reason.
    let weak = id.set_pin(&north, &UserId::parse("pat.medic").unwrap(), "123456", now()).unwrap_err();
    assert!(weak.to_string().contains("too easy"), "{weak}");

    let vdir = tempfile::tempdir().unwrap();
    let (store, _) = common::van_case(&hub, vdir.path());
    let key = [11u8; 32];
    let device = DeviceId::new("org-north", "van-1").unwrap();
    let sync = || {
        let mut van = StoreReplica::new(store.clone(), "hub").unwrap().with_roster_key(Some(key));
        let mut at_hub = hub.cases.replica_for(&device).with_roster(hub.identity.clone());
        common::pump(&mut van, &mut at_hub)
    };
    let (events, _) = sync();
    assert!(events.contains(&Event::RosterReceived), "{events:?}");

    // The hub is out of reach from here on: only the van's store and its PIN key.
    let crew = Crew::new(store.clone(), Some(key), CrewSettings::default());
    let (_, session) = crew.login("pat.medic", "604182", now()).unwrap();
    assert_eq!(session.roles, ["paramedic"]);
    // Another organisation's paramedic and a doctor are not crew of this van.
    assert!(matches!(crew.login("sam.medic", "604182", now()), Err(CrewError::Wrong)));
    assert!(matches!(crew.login("dr.pin", "604182", now()), Err(CrewError::Wrong)));

    // Nothing changed: the next sync sends no roster (an idle reconnect stays one round trip).
    let (events, messages) = sync();
    assert!(!events.contains(&Event::RosterReceived), "{events:?}");
    assert_eq!(messages, 2);

    // The admin removes the PIN at the hub; after the next sync it no longer works.
    id.clear_pin("adm.kim", &north, &UserId::parse("pat.medic").unwrap(), now()).unwrap();
    assert!(crew.login("pat.medic", "604182", now()).is_ok(), "until the van syncs, the van cannot know");
    let (events, _) = sync();
    assert!(events.contains(&Event::RosterReceived), "{events:?}");
    assert!(matches!(crew.login("pat.medic", "604182", now()), Err(CrewError::Wrong)));
}

/// Waits up to `limit` for `check`.
async fn eventually(what: &str, limit: std::time::Duration, mut check: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_removed_at_the_hub_stops_working_on_a_van_that_stays_connected() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let (_config, hub, _) = common::two_org_hub(dir.path());
    let north = OrgId::parse("org-north").unwrap();
    let medic = UserId::parse("pat.medic").unwrap();
    common::create_and_login(&hub.identity, "org-north", "pat.medic", &[Role::Paramedic]);
    hub.identity.set_pin(&north, &medic, "604182", now()).unwrap();

    // The hub over real QUIC, and an enrolled van syncing in the background.
    let vdir = tempfile::tempdir().unwrap();
    let (store, _) = common::van_case(&hub, vdir.path());
    let key = [11u8; 32];
    let sync = common::live_van(&hub, &store, Some(key), None).await;
    let crew = Crew::new(store.clone(), Some(key), CrewSettings::default());
    eventually("the roster reaches the van", Duration::from_secs(10), || {
        crew.login("pat.medic", "604182", now()).is_ok()
    })
    .await;
    assert_eq!(sync.status().connections, 1);

    // The admin removes the PIN while the van is connected: the open session carries the
    // new roster, and the PIN stops working without the van reconnecting.
    let removed = std::time::Instant::now();
    hub.identity.clear_pin("adm.kim", &north, &medic, now()).unwrap();
    eventually("the removed PIN stops working", Duration::from_secs(10), || {
        matches!(crew.login("pat.medic", "604182", now()), Err(CrewError::Wrong))
    })
    .await;
    println!(
        "a PIN removed at the hub stopped working on the connected van after {} ms",
        removed.elapsed().as_millis()
    );
    assert_eq!(sync.status().connections, 1, "the same connection carried it");
    // A PIN set again comes back the same way.
    hub.identity.set_pin(&north, &medic, "604183", now()).unwrap();
    eventually("the new PIN works", Duration::from_secs(10), || crew.login("pat.medic", "604183", now()).is_ok()).await;
}
