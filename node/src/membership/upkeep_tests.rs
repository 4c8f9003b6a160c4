use super::*;
use pyagent_protocol::{Capacity, SwarmNamespace};

fn addr(port: u16) -> Multiaddr {
    format!("/ip4/10.0.0.1/tcp/{port}").parse().unwrap()
}

fn config(bootstrap: Vec<Multiaddr>) -> MembershipConfig {
    MembershipConfig {
        me: PeerId::random(),
        namespace_tag: SwarmNamespace::new("lab").unwrap().tag().to_owned(),
        versions: VersionRange::new(2, 3).unwrap(),
        bootstrap,
        peer_ttl: Duration::from_secs(2),
    }
}

fn advert(peer: &PeerId, seq: u64, boot_id: u64, versions: VersionRange) -> Advert {
    Advert {
        protocol_versions: versions,
        peer_id: peer.to_string(),
        node_version: "pyagent/test".into(),
        listen_addrs: vec![addr(7000).to_string()],
        agents: vec![],
        capabilities: vec![],
        capacity: Capacity::default(),
        uptime_secs: 1,
        boot_id,
        seq,
    }
}

fn identify(m: &Membership, versions: &str) -> String {
    format!("/pyagent/{}/v{versions}", m.config.namespace_tag)
}

fn dials(fx: &Effects) -> Vec<PeerId> {
    fx.iter().filter_map(|e| if let Effect::Dial { peer, .. } = e { Some(*peer) } else { None }).collect()
}

#[test]
fn a_connection_asks_hello_and_the_answer_joins_and_dials_the_members() {
    let mut m = Membership::new(config(vec![]));
    let (a, b) = (PeerId::random(), PeerId::random());
    let t0 = Instant::now();
    let mut fx = Effects::new();
    m.on_connected(a, None, true, &mut fx);
    assert_eq!(fx, vec![Effect::Hello(a)]);
    fx.clear();
    let members = vec![MemberAddrs { peer_id: b.to_string(), listen_addrs: vec![addr(7001).to_string()] }];
    let hello = HelloResponse { advert: Box::new(advert(&a, 1, 1, VersionRange::SUPPORTED)), members };
    m.on_hello(a, hello, t0, &mut fx);
    assert!(matches!(&fx[0], Effect::Emit(Event::PeerJoined { peer }) if peer.peer_id == a.to_string()), "{fx:?}");
    assert_eq!(dials(&fx), vec![b], "peer exchange dials the other member");
    assert!(m.view().contains(&a));
    // Dialing again within the backoff does nothing; after it, it dials.
    fx.clear();
    m.dial(b, vec![addr(7001)], t0 + Duration::from_secs(1), &mut fx);
    assert!(fx.is_empty());
    m.dial(b, vec![addr(7001)], t0 + REDIAL_BACKOFF, &mut fx);
    assert_eq!(dials(&fx), vec![b]);
}

#[test]
fn members_leave_on_disconnect_and_on_silence() {
    let mut m = Membership::new(config(vec![]));
    let (a, b) = (PeerId::random(), PeerId::random());
    let t0 = Instant::now();
    let mut fx = Effects::new();
    for p in [a, b] {
        m.on_connected(p, None, true, &mut fx);
        m.on_advert(p, advert(&p, 1, 1, VersionRange::SUPPORTED), t0, &mut fx);
    }
    fx.clear();
    m.on_disconnected(a, &mut fx);
    assert!(matches!(&fx[..], [Effect::Emit(Event::PeerLeft { peer_id, reason })] if *peer_id == a.to_string() && reason == "disconnected"));
    fx.clear();
    m.on_sweep(t0 + Duration::from_millis(1500), &mut fx);
    assert!(fx.is_empty(), "within the TTL: {fx:?}");
    m.on_sweep(t0 + Duration::from_secs(3), &mut fx);
    assert_eq!(fx[0], Effect::Disconnect(b));
    assert!(matches!(&fx[1], Effect::Emit(Event::PeerLeft { reason, .. }) if reason == "advert expired"));
    assert!(m.view().is_empty());
}

#[test]
fn lost_members_and_bootstrap_addresses_are_redialed() {
    let boot = addr(9000);
    let mut m = Membership::new(config(vec![boot.clone()]));
    let a = PeerId::random();
    let t0 = Instant::now();
    let mut fx = Effects::new();
    m.on_redial_tick(t0, &mut fx);
    assert_eq!(fx, vec![Effect::DialAddress { peer: None, addr: boot.clone() }]);
    // The bootstrap address answers as `a`: while connected it is not dialed again.
    fx.clear();
    m.on_connected(a, Some(&boot), true, &mut fx);
    m.on_advert(a, advert(&a, 1, 1, VersionRange::SUPPORTED), t0, &mut fx);
    fx.clear();
    m.on_redial_tick(t0, &mut fx);
    assert!(fx.is_empty(), "{fx:?}");
    // Lost: the bootstrap address is redialed as `a`, and `a` itself at its advertised addresses.
    m.on_disconnected(a, &mut fx);
    fx.clear();
    m.on_redial_tick(t0 + Duration::from_secs(5), &mut fx);
    assert!(fx.contains(&Effect::DialAddress { peer: Some(a), addr: boot }));
    assert_eq!(dials(&fx), vec![a]);
    // Ten minutes later it is forgotten.
    fx.clear();
    m.on_redial_tick(t0 + LOST_MEMBER_REDIAL_FOR + Duration::from_secs(20), &mut fx);
    assert!(dials(&fx).is_empty());
}

#[test]
fn another_swarm_is_banned_for_a_while_and_another_version_only_reported() {
    let mut m = Membership::new(config(vec![]));
    let (foreign, ahead, apart) = (PeerId::random(), PeerId::random(), PeerId::random());
    let t0 = Instant::now();
    let mut fx = Effects::new();
    m.on_identify(foreign, "/pyagent/0123456789abcdef/v2", vec![addr(1)], t0, &mut fx);
    assert_eq!(fx, vec![Effect::Disconnect(foreign)]);
    fx.clear();
    m.dial(foreign, vec![addr(1)], t0 + Duration::from_secs(60), &mut fx);
    assert!(fx.is_empty(), "banned");
    m.on_sweep(t0 + FOREIGN_BAN + Duration::from_secs(1), &mut fx);
    m.dial(foreign, vec![addr(1)], t0 + FOREIGN_BAN + Duration::from_secs(1), &mut fx);
    assert_eq!(dials(&fx), vec![foreign], "the ban ends");

    // One version ahead but overlapping: a member like any other.
    fx.clear();
    let protocol = identify(&m, "3-4");
    m.on_identify(ahead, &protocol, vec![addr(2)], t0, &mut fx);
    assert!(matches!(&fx[..], [Effect::AddAddresses { .. }, Effect::RememberPeer { .. }]), "{fx:?}");
    m.on_advert(ahead, advert(&ahead, 1, 1, VersionRange::new(3, 4).unwrap()), t0, &mut fx);
    assert_eq!(m.view().get(&ahead).unwrap().protocol_version, 3);

    // No common version: disconnected, not admitted, not banned.
    fx.clear();
    let protocol = identify(&m, "5");
    m.on_identify(apart, &protocol, vec![addr(3)], t0, &mut fx);
    assert_eq!(fx, vec![Effect::Disconnect(apart)]);
    fx.clear();
    m.on_advert(apart, advert(&apart, 1, 1, VersionRange::new(5, 5).unwrap()), t0, &mut fx);
    assert_eq!(fx, vec![Effect::Disconnect(apart)]);
    assert!(!m.view().contains(&apart));
    fx.clear();
    m.dial(apart, vec![addr(3)], t0, &mut fx);
    assert_eq!(dials(&fx), vec![apart], "not banned: it may be upgraded any time");
}

#[test]
fn adverts_go_out_periodically_and_early_for_newcomers_but_not_in_bursts() {
    let mut m = Membership::new(config(vec![]));
    let t0 = Instant::now();
    let mut fx = Effects::new();
    m.on_advert_tick(t0, &mut fx);
    assert_eq!(fx, vec![Effect::PublishAdvert]);
    fx.clear();
    m.on_subscribed(t0 + Duration::from_millis(100), &mut fx);
    assert!(fx.is_empty(), "deferred: an advert just went out");
    m.on_sweep(t0 + Duration::from_millis(200), &mut fx);
    assert!(fx.is_empty(), "still within the gap");
    m.on_sweep(t0 + EAGER_ADVERT_GAP, &mut fx);
    assert_eq!(fx, vec![Effect::PublishAdvert]);
    assert_eq!((m.next_seq(), m.next_seq()), (1, 2));
    // A capacity change (new KV blocks) is published the same way: deferred within the
    // gap, at once after it.
    fx.clear();
    let t1 = t0 + EAGER_ADVERT_GAP;
    m.on_capacity_changed(t1 + Duration::from_millis(10), &mut fx);
    m.on_capacity_changed(t1 + Duration::from_millis(20), &mut fx);
    assert!(fx.is_empty(), "deferred: an advert just went out");
    m.on_sweep(t1 + EAGER_ADVERT_GAP, &mut fx);
    assert_eq!(fx, vec![Effect::PublishAdvert], "one advert for both changes");
    fx.clear();
    m.on_capacity_changed(t1 + 3 * EAGER_ADVERT_GAP, &mut fx);
    assert_eq!(fx, vec![Effect::PublishAdvert]);
}

#[test]
fn a_restart_behind_our_back_reconnects() {
    let mut m = Membership::new(config(vec![]));
    let a = PeerId::random();
    let t0 = Instant::now();
    let mut fx = Effects::new();
    m.on_connected(a, None, true, &mut fx);
    m.on_advert(a, advert(&a, 5, 1, VersionRange::SUPPORTED), t0, &mut fx);
    fx.clear();
    m.on_advert(a, advert(&a, 1, 2, VersionRange::SUPPORTED), t0, &mut fx);
    assert_eq!(fx, vec![Effect::Disconnect(a)]);
}

#[test]
fn known_peers_are_redialed_newest_first_and_old_ones_not_at_all() {
    let mut m = Membership::new(config(vec![]));
    let (fresh, stale) = (PeerId::random(), PeerId::random());
    let now_ms = 10 * 24 * 3600 * 1000;
    let known = vec![
        (stale, KnownPeer { addrs: vec![addr(1).to_string()], last_seen_unix_ms: 1 }),
        (fresh, KnownPeer { addrs: vec![addr(2).to_string()], last_seen_unix_ms: now_ms - 1000 }),
    ];
    let mut fx = Effects::new();
    m.redial_known(known, now_ms, Instant::now(), &mut fx);
    assert_eq!(dials(&fx), vec![fresh]);
}
