//! One test per transition and per timer. Time is a manual clock: `Instant`s built by adding
//! durations to one base.

use super::*;
use crate::packet::{Capability, GracefulRestartFamily, AS_TRANS, BGP_VERSION};

const LOCAL_AS: u32 = 65001;
const PEER_AS: u32 = 65002;
const OUR_ID: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const PEER_ID: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const C1: ConnId = ConnId(1);
const C2: ConnId = ConnId(2);

/// A session and its clock.
struct T {
    s: Session,
    base: Instant,
}

impl T {
    fn new(config: SessionConfig) -> T {
        let base = Instant::now();
        T {
            s: Session::new(config, base).expect("valid config"),
            base,
        }
    }

    fn at(&self, secs: f64) -> Instant {
        self.base + Duration::from_secs_f64(secs)
    }

    fn run(&mut self, secs: f64, input: Input) -> Vec<Output> {
        let now = self.at(secs);
        self.s.handle(input, now)
    }

    fn deadline(&self) -> Option<f64> {
        self.s
            .next_deadline()
            .map(|t| t.duration_since(self.base).as_secs_f64())
    }

    /// Start, connect out on C1, exchange OPENs and KEEPALIVEs; returns at `secs`.
    fn establish(&mut self, peer: Open, secs: f64) -> Box<Established> {
        self.run(secs, Input::Start);
        self.run(secs, Input::Connected(C1, Direction::Outgoing));
        let out = self.run(secs, Input::Received(C1, Message::Open(peer)));
        assert_eq!(out, vec![Output::Send(C1, Message::Keepalive)]);
        let out = self.run(secs, Input::Received(C1, Message::Keepalive));
        match out.as_slice() {
            [Output::Established(e)] => e.clone(),
            other => panic!("want Established, got {other:?}"),
        }
    }
}

fn config() -> SessionConfig {
    let mut c = SessionConfig::new(LOCAL_AS, PEER_AS, OUR_ID);
    c.connect_retry = Duration::from_secs(30);
    c.error_wait = ErrorWait {
        min: Duration::from_secs(10),
        max: Duration::from_secs(80),
        forget: Duration::from_secs(200),
    };
    c
}

fn gr_config() -> SessionConfig {
    let mut c = config();
    c.graceful_restart = Some(GracefulRestartConfig {
        restart_time: 120,
        restarting: false,
        forwarding_preserved: false,
    });
    c
}

fn peer_open(hold_time: u16) -> Open {
    Open {
        version: BGP_VERSION,
        my_as: PEER_AS as u16,
        hold_time,
        router_id: PEER_ID,
        capabilities: vec![
            Capability::Multiprotocol(Family::IPV4_UNICAST),
            Capability::RouteRefresh,
            Capability::FourOctetAs(PEER_AS),
        ],
    }
}

fn peer_gr(restart_time: u16, restarting: bool) -> Capability {
    Capability::GracefulRestart(GracefulRestart {
        restarting,
        restart_time,
        families: vec![GracefulRestartFamily {
            family: Family::IPV4_UNICAST,
            forwarding_preserved: true,
        }],
    })
}

fn notification(code: ErrorCode, subcode: u8, data: Vec<u8>) -> Notification {
    Notification {
        code,
        subcode,
        data,
    }
}

fn sent_open(out: &[Output]) -> Open {
    match out {
        [Output::Send(_, Message::Open(o))] => o.clone(),
        other => panic!("want one OPEN, got {other:?}"),
    }
}

fn down(reason: Reason) -> Output {
    Output::Down {
        reason,
        keep_stale: None,
        stale_families: Vec::new(),
    }
}

// ---- Idle, Connect, Active ----

#[test]
fn new_session_is_idle_with_no_deadline() {
    let t = T::new(config());
    assert_eq!(t.s.state(), State::Idle);
    assert_eq!(t.s.next_deadline(), None);
    assert_eq!(t.s.status().since, t.base);
}

#[test]
fn start_connects_and_arms_connect_retry() {
    let mut t = T::new(config());
    assert_eq!(t.run(1.0, Input::Start), vec![Output::Connect]);
    assert_eq!(t.s.state(), State::Connect);
    assert_eq!(t.s.status().since, t.at(1.0));
    assert_eq!(t.deadline(), Some(31.0));
    // A second Start changes nothing.
    assert_eq!(t.run(2.0, Input::Start), vec![]);
}

#[test]
fn connect_retry_expiry_in_connect_connects_again() {
    let mut t = T::new(config());
    t.run(0.0, Input::Start);
    assert_eq!(t.run(29.9, Input::Tick), vec![]);
    assert_eq!(t.run(30.0, Input::Tick), vec![Output::Connect]);
    assert_eq!(t.s.state(), State::Connect);
    assert_eq!(t.deadline(), Some(60.0));
}

#[test]
fn connect_failed_goes_active_then_retries() {
    let mut t = T::new(config());
    t.run(0.0, Input::Start);
    assert_eq!(t.run(1.0, Input::ConnectFailed), vec![]);
    assert_eq!(t.s.state(), State::Active);
    assert_eq!(t.deadline(), Some(31.0));
    assert_eq!(
        t.s.status().last_error,
        Some((t.at(1.0), Reason::ConnectFailed))
    );
    assert_eq!(t.run(31.0, Input::Tick), vec![Output::Connect]);
    assert_eq!(t.s.state(), State::Connect);
}

#[test]
fn failed_connects_retry_quickly_then_back_off_to_connect_retry() {
    let mut c = config();
    c.connect_backoff = Some(Duration::from_millis(100));
    let mut t = T::new(c);
    t.run(0.0, Input::Start);
    let mut now = 0.0;
    let mut waits = Vec::new();
    for _ in 0..QUICK_RETRIES + 10 {
        assert_eq!(t.run(now, Input::ConnectFailed), vec![]);
        let next = t.deadline().unwrap();
        waits.push(((next - now) * 1000.0).round() as u64);
        now = next;
        assert_eq!(t.run(now, Input::Tick), vec![Output::Connect]);
    }
    let quick = QUICK_RETRIES as usize;
    assert!(waits[..quick].iter().all(|w| *w == 100), "{waits:?}");
    assert_eq!(
        &waits[quick..quick + 5],
        &[200, 400, 800, 1600, 3200],
        "after {QUICK_RETRIES} quick ones, doubling: {waits:?}"
    );
    assert_eq!(
        *waits.last().unwrap(),
        30_000,
        "capped at connect retry: {waits:?}"
    );
    // A peer that accepts and closes before its OPEN (it does not know us yet) is a failed
    // connect too, and a connection resets the count: the next retry is quick again.
    t.run(now, Input::Connected(C1, Direction::Outgoing));
    assert_eq!(t.run(now, Input::Closed(C1)), vec![]);
    assert_eq!(t.s.state(), State::Active);
    assert_eq!(
        t.deadline().map(|d| ((d - now) * 1000.0).round()),
        Some(100.0)
    );
    // Without connect_backoff that close is an error: the error wait (10 s here).
    let mut t = T::new(config());
    t.run(0.0, Input::Start);
    t.run(0.0, Input::Connected(C1, Direction::Outgoing));
    t.run(0.0, Input::Closed(C1));
    assert_eq!(t.deadline(), Some(10.0));
}

#[test]
fn active_accepts_the_peers_connection() {
    let mut t = T::new(config());
    t.run(0.0, Input::Start);
    t.run(1.0, Input::ConnectFailed);
    let out = t.run(2.0, Input::Connected(C2, Direction::Incoming));
    sent_open(&out);
    assert_eq!(t.s.state(), State::OpenSent);
}

#[test]
fn passive_never_connects_and_waits_in_active() {
    let mut c = config();
    c.passive = true;
    let mut t = T::new(c);
    assert_eq!(t.run(0.0, Input::Start), vec![]);
    assert_eq!(t.s.state(), State::Active);
    assert_eq!(t.s.next_deadline(), None);
    assert_eq!(t.run(10_000.0, Input::Tick), vec![]);
    let out = t.run(10_001.0, Input::Connected(C1, Direction::Incoming));
    sent_open(&out);
    assert_eq!(t.s.state(), State::OpenSent);
}

#[test]
fn passive_after_an_error_still_never_connects() {
    let mut c = config();
    c.passive = true;
    let mut t = T::new(c);
    t.run(0.0, Input::Start);
    t.run(1.0, Input::Connected(C1, Direction::Incoming));
    t.run(2.0, Input::Closed(C1));
    assert_eq!(t.s.state(), State::Active);
    assert_eq!(t.s.next_deadline(), None);
    assert_eq!(t.run(1000.0, Input::Tick), vec![]);
}

#[test]
fn idle_refuses_connections() {
    let mut t = T::new(config());
    assert_eq!(
        t.run(0.0, Input::Connected(C1, Direction::Incoming)),
        vec![Output::Close(C1)]
    );
    assert_eq!(t.s.state(), State::Idle);
}

#[test]
fn stop_in_connect_goes_idle_and_refuses_the_late_connection() {
    let mut t = T::new(config());
    t.run(0.0, Input::Start);
    assert_eq!(t.run(1.0, Input::Stop), vec![]);
    assert_eq!(t.s.state(), State::Idle);
    assert_eq!(t.s.next_deadline(), None);
    assert_eq!(
        t.run(2.0, Input::Connected(C1, Direction::Outgoing)),
        vec![Output::Close(C1)]
    );
}

// ---- OPEN sent ----

#[test]
fn connected_sends_our_open_and_arms_the_large_hold_timer() {
    let mut t = T::new(config());
    t.run(0.0, Input::Start);
    let out = t.run(1.0, Input::Connected(C1, Direction::Outgoing));
    let open = sent_open(&out);
    assert_eq!(
        open,
        Open {
            version: 4,
            my_as: LOCAL_AS as u16,
            hold_time: 90,
            router_id: OUR_ID,
            capabilities: vec![
                Capability::Multiprotocol(Family::IPV4_UNICAST),
                Capability::RouteRefresh,
                Capability::FourOctetAs(LOCAL_AS),
            ],
        }
    );
    assert_eq!(t.s.state(), State::OpenSent);
    // The connect retry timer stopped; the hold timer runs with 240 s.
    assert_eq!(t.deadline(), Some(241.0));
}

#[test]
fn open_with_a_four_octet_as_sends_as_trans() {
    let mut c = config();
    c.local_as = 4_200_000_001;
    c.families = vec![Family::IPV4_UNICAST, Family::IPV6_UNICAST];
    c.route_refresh = false;
    let mut t = T::new(c);
    t.run(0.0, Input::Start);
    let open = sent_open(&t.run(0.0, Input::Connected(C1, Direction::Outgoing)));
    assert_eq!(open.my_as, AS_TRANS);
    assert_eq!(open.asn(), 4_200_000_001);
    assert_eq!(
        open.capabilities,
        vec![
            Capability::Multiprotocol(Family::IPV4_UNICAST),
            Capability::Multiprotocol(Family::IPV6_UNICAST),
            Capability::FourOctetAs(4_200_000_001),
        ]
    );
}

#[test]
fn open_carries_graceful_restart_with_r_and_f_bits_until_established() {
    let mut c = config();
    c.graceful_restart = Some(GracefulRestartConfig {
        restart_time: 90,
        restarting: true,
        forwarding_preserved: true,
    });
    let mut t = T::new(c);
    t.run(0.0, Input::Start);
    let open = sent_open(&t.run(0.0, Input::Connected(C1, Direction::Outgoing)));
    let want = GracefulRestart {
        restarting: true,
        restart_time: 90,
        families: vec![GracefulRestartFamily {
            family: Family::IPV4_UNICAST,
            forwarding_preserved: true,
        }],
    };
    assert_eq!(
        open.capabilities.last(),
        Some(&Capability::GracefulRestart(want.clone()))
    );
    t.run(1.0, Input::Received(C1, Message::Open(peer_open(90))));
    t.run(1.0, Input::Received(C1, Message::Keepalive));
    // After the session came up once, the R bit is no longer ours to set.
    t.run(2.0, Input::Closed(C1));
    let next = t.deadline().unwrap();
    assert_eq!(t.run(next, Input::Tick), vec![Output::Connect]);
    let open = sent_open(&t.run(next, Input::Connected(C2, Direction::Outgoing)));
    assert_eq!(
        open.capabilities.last(),
        Some(&Capability::GracefulRestart(GracefulRestart {
            restarting: false,
            ..want
        }))
    );
}

// ---- OPEN received ----

#[test]
fn valid_open_in_open_sent_sends_keepalive_and_goes_open_confirm() {
    let mut t = T::new(config());
    t.run(0.0, Input::Start);
    t.run(0.0, Input::Connected(C1, Direction::Outgoing));
    let out = t.run(1.0, Input::Received(C1, Message::Open(peer_open(30))));
    assert_eq!(out, vec![Output::Send(C1, Message::Keepalive)]);
    assert_eq!(t.s.state(), State::OpenConfirm);
    // Hold min(90, 30) = 30, keepalive 10: the keepalive is due first.
    assert_eq!(t.deadline(), Some(11.0));
}

#[test]
fn keepalive_in_open_confirm_establishes() {
    let mut t = T::new(config());
    let est = t.establish(peer_open(30), 0.0);
    assert_eq!(t.s.state(), State::Established);
    assert_eq!(est.conn, C1);
    assert_eq!(est.direction, Direction::Outgoing);
    assert_eq!(est.hold_time, 30);
    assert_eq!(est.keepalive, Some(Duration::from_secs(10)));
    assert!(!est.internal);
    assert!(est.peer_route_refresh);
    assert_eq!(est.peer_graceful_restart, None);
    assert_eq!(
        est.negotiated,
        Negotiated {
            four_octet_as: true,
            families: vec![Family::IPV4_UNICAST],
            ibgp: false,
        }
    );
    assert_eq!(est.open, peer_open(30));
    assert_eq!(t.s.established(), Some(&*est));
}

#[test]
fn negotiation_takes_the_common_families_and_two_octet_peers() {
    let mut c = config();
    c.families = vec![Family::IPV4_UNICAST, Family::IPV6_UNICAST];
    let mut t = T::new(c.clone());
    let mut open = peer_open(90);
    open.capabilities = vec![Capability::Multiprotocol(Family::IPV6_UNICAST)];
    let est = t.establish(open, 0.0);
    assert_eq!(
        est.negotiated,
        Negotiated {
            four_octet_as: false,
            families: vec![Family::IPV6_UNICAST],
            ibgp: false,
        }
    );
    assert!(!est.peer_route_refresh);

    // A peer with no multiprotocol capability speaks IPv4 unicast only.
    let mut t = T::new(c);
    let mut open = peer_open(90);
    open.capabilities.clear();
    let est = t.establish(open, 0.0);
    assert_eq!(est.negotiated.families, vec![Family::IPV4_UNICAST]);
}

fn open_error_case(mut c: SessionConfig, open: Open, want: Notification) {
    c.error_wait.min = Duration::from_secs(10);
    let mut t = T::new(c);
    t.run(0.0, Input::Start);
    t.run(0.0, Input::Connected(C1, Direction::Outgoing));
    let out = t.run(1.0, Input::Received(C1, Message::Open(open)));
    assert_eq!(
        out,
        vec![
            Output::Send(C1, Message::Notification(want.clone())),
            Output::Close(C1)
        ]
    );
    assert_eq!(t.s.state(), State::Active);
    assert_eq!(
        t.s.status().last_error,
        Some((t.at(1.0), Reason::NotificationSent(want)))
    );
    // Reconnects after the error wait, not before.
    assert_eq!(t.deadline(), Some(11.0));
}

#[test]
fn open_with_a_bad_peer_as_gets_2_2() {
    let mut open = peer_open(90);
    open.capabilities = vec![Capability::FourOctetAs(65099)];
    open_error_case(
        config(),
        open,
        notification(ErrorCode::OpenMessage, 2, vec![]),
    );
    // The two-octet field counts when there is no four-octet capability.
    let mut open = peer_open(90);
    open.capabilities.clear();
    open.my_as = 65099;
    open_error_case(
        config(),
        open,
        notification(ErrorCode::OpenMessage, 2, vec![]),
    );
}

#[test]
fn open_with_our_identifier_from_an_internal_peer_gets_2_3() {
    let mut c = config();
    c.peer_as = LOCAL_AS;
    let mut open = peer_open(90);
    open.my_as = LOCAL_AS as u16;
    open.capabilities = vec![Capability::FourOctetAs(LOCAL_AS)];
    open.router_id = OUR_ID;
    open_error_case(c, open, notification(ErrorCode::OpenMessage, 3, vec![]));
}

#[test]
fn open_with_a_zero_identifier_gets_2_3() {
    let mut open = peer_open(90);
    open.router_id = Ipv4Addr::UNSPECIFIED;
    open_error_case(
        config(),
        open,
        notification(ErrorCode::OpenMessage, 3, vec![]),
    );
}

#[test]
fn our_identifier_from_an_external_peer_is_accepted() {
    let mut t = T::new(config());
    let mut open = peer_open(90);
    open.router_id = OUR_ID;
    let est = t.establish(open, 0.0);
    assert_eq!(est.open.router_id, OUR_ID);
}

#[test]
fn open_with_hold_time_1_or_2_gets_2_6() {
    for hold in [1, 2] {
        open_error_case(
            config(),
            peer_open(hold),
            notification(ErrorCode::OpenMessage, 6, vec![]),
        );
    }
}

#[test]
fn open_with_another_version_gets_2_1_with_our_version() {
    let mut open = peer_open(90);
    open.version = 5;
    open_error_case(
        config(),
        open,
        notification(ErrorCode::OpenMessage, 1, vec![0, 4]),
    );
}

// ---- timers ----

#[test]
fn hold_timer_expiry_in_open_sent_sends_4_0() {
    let mut t = T::new(config());
    t.run(0.0, Input::Start);
    t.run(0.0, Input::Connected(C1, Direction::Outgoing));
    assert_eq!(t.run(239.0, Input::Tick), vec![]);
    let out = t.run(240.0, Input::Tick);
    assert_eq!(
        out,
        vec![
            Output::Send(
                C1,
                Message::Notification(notification(ErrorCode::HoldTimerExpired, 0, vec![]))
            ),
            Output::Close(C1),
        ]
    );
    assert_eq!(t.s.state(), State::Active);
    assert_eq!(
        t.s.status().last_error.map(|(_, r)| r.to_string()),
        Some("hold timer expired".to_string())
    );
}

#[test]
fn hold_timer_expiry_in_open_confirm_sends_4_0() {
    let mut t = T::new(config());
    t.run(0.0, Input::Start);
    t.run(0.0, Input::Connected(C1, Direction::Outgoing));
    t.run(0.0, Input::Received(C1, Message::Open(peer_open(30))));
    // Keepalives at 10 and 20 do not keep our own hold timer alive.
    assert_eq!(
        t.run(10.0, Input::Tick),
        vec![Output::Send(C1, Message::Keepalive)]
    );
    assert_eq!(
        t.run(20.0, Input::Tick),
        vec![Output::Send(C1, Message::Keepalive)]
    );
    let out = t.run(30.0, Input::Tick);
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[1], Output::Close(C1));
}

#[test]
fn hold_timer_expiry_in_established_goes_down() {
    let mut t = T::new(config());
    t.establish(peer_open(30), 0.0);
    // The keepalives at 10 s and 20 s go out; nothing comes in; at 30 s the hold timer runs
    // out.
    for at in [10.0, 20.0] {
        assert_eq!(
            t.run(at, Input::Tick),
            vec![Output::Send(C1, Message::Keepalive)]
        );
    }
    assert_eq!(t.deadline(), Some(30.0));
    // The keepalive due at 30 s too is not sent: the hold timer wins a tie.
    let out = t.run(30.0, Input::Tick);
    assert_eq!(
        out,
        vec![
            Output::Send(
                C1,
                Message::Notification(notification(ErrorCode::HoldTimerExpired, 0, vec![]))
            ),
            Output::Close(C1),
            down(Reason::HoldTimerExpired),
        ]
    );
    assert_eq!(t.s.state(), State::Active);
    assert_eq!(t.s.status().flaps, 1);
    assert_eq!(t.s.established(), None);
}

#[test]
fn received_messages_restart_the_hold_timer() {
    let mut t = T::new(config());
    t.establish(peer_open(30), 0.0);
    t.run(10.0, Input::Tick);
    t.run(25.0, Input::Received(C1, Message::Keepalive));
    t.run(50.0, Input::Received(C1, Message::Update(Box::default())));
    t.run(
        75.0,
        Input::Received(
            C1,
            Message::RouteRefresh(RouteRefresh {
                family: Family::IPV4_UNICAST,
            }),
        ),
    );
    assert_eq!(t.s.state(), State::Established);
    let out = t.run(105.0, Input::Tick);
    assert!(matches!(out.last(), Some(Output::Down { .. })), "{out:?}");
}

#[test]
fn keepalive_timer_sends_every_third_of_the_hold_time() {
    let mut t = T::new(config());
    t.establish(peer_open(90), 0.0);
    assert_eq!(t.deadline(), Some(30.0));
    assert_eq!(t.run(29.0, Input::Tick), vec![]);
    assert_eq!(
        t.run(30.0, Input::Tick),
        vec![Output::Send(C1, Message::Keepalive)]
    );
    assert_eq!(t.deadline(), Some(60.0));
}

#[test]
fn configured_keepalive_applies_when_shorter_than_a_third() {
    let mut c = config();
    c.keepalive = Some(5);
    let mut t = T::new(c.clone());
    let est = t.establish(peer_open(90), 0.0);
    assert_eq!(est.keepalive, Some(Duration::from_secs(5)));
    assert_eq!(t.deadline(), Some(5.0));

    // A peer that asks for a hold time of 9 gets keepalives every 3 s, not 5.
    let mut t = T::new(c);
    let est = t.establish(peer_open(9), 0.0);
    assert_eq!(est.keepalive, Some(Duration::from_secs(3)));
}

#[test]
fn hold_time_zero_means_no_keepalives_and_no_hold_timer() {
    let mut t = T::new(config());
    let est = t.establish(peer_open(0), 0.0);
    assert_eq!(est.hold_time, 0);
    assert_eq!(est.keepalive, None);
    assert_eq!(t.s.next_deadline(), None);
    assert_eq!(t.run(1_000_000.0, Input::Tick), vec![]);
    assert_eq!(t.s.state(), State::Established);
}

#[test]
fn updates_sent_restart_the_keepalive_timer_and_count() {
    let mut t = T::new(config());
    t.establish(peer_open(90), 0.0);
    t.run(20.0, Input::UpdatesSent(3));
    assert_eq!(t.deadline(), Some(50.0));
    assert_eq!(t.s.status().sent.update, 3);
}

#[test]
fn late_tick_fires_each_due_timer_once_in_order() {
    let mut t = T::new(config());
    t.run(0.0, Input::Start);
    t.run(0.0, Input::Connected(C1, Direction::Outgoing));
    t.run(0.0, Input::Received(C1, Message::Open(peer_open(30))));
    // The caller was late: keepalive (10 s) then hold (30 s) are due; the keepalive goes
    // once (rescheduled from now), then the hold timer ends the connection.
    let out = t.run(100.0, Input::Tick);
    assert_eq!(out[0], Output::Send(C1, Message::Keepalive));
    assert_eq!(out.len(), 3, "{out:?}");
}

// ---- messages out of place (RFC 6608) ----

fn fsm_error_case(setup: impl FnOnce(&mut T), msg: Message, sub: u8, data: u8) {
    let mut t = T::new(config());
    setup(&mut t);
    let was_established = t.s.state() == State::Established;
    let out = t.run(5.0, Input::Received(C1, msg));
    let n = notification(ErrorCode::FsmError, sub, vec![data]);
    let mut want = vec![
        Output::Send(C1, Message::Notification(n.clone())),
        Output::Close(C1),
    ];
    if was_established {
        want.push(down(Reason::NotificationSent(n)));
    }
    assert_eq!(out, want);
}

fn to_open_sent(t: &mut T) {
    t.run(0.0, Input::Start);
    t.run(0.0, Input::Connected(C1, Direction::Outgoing));
}

fn to_open_confirm(t: &mut T) {
    to_open_sent(t);
    t.run(0.0, Input::Received(C1, Message::Open(peer_open(90))));
}

fn to_established(t: &mut T) {
    t.establish(peer_open(90), 0.0);
}

#[test]
fn keepalive_update_or_refresh_in_open_sent_is_5_1() {
    fsm_error_case(to_open_sent, Message::Keepalive, 1, 4);
    fsm_error_case(to_open_sent, Message::Update(Box::default()), 1, 2);
    fsm_error_case(
        to_open_sent,
        Message::RouteRefresh(RouteRefresh {
            family: Family::IPV4_UNICAST,
        }),
        1,
        5,
    );
}

#[test]
fn open_or_update_in_open_confirm_is_5_2() {
    fsm_error_case(to_open_confirm, Message::Open(peer_open(90)), 2, 1);
    fsm_error_case(to_open_confirm, Message::Update(Box::default()), 2, 2);
}

#[test]
fn open_in_established_is_5_3() {
    fsm_error_case(to_established, Message::Open(peer_open(90)), 3, 1);
}

// ---- NOTIFICATIONs and decode errors ----

#[test]
fn notification_in_open_sent_closes_without_answer() {
    let mut t = T::new(config());
    to_open_sent(&mut t);
    let n = notification(ErrorCode::OpenMessage, 2, vec![]);
    let out = t.run(1.0, Input::Received(C1, Message::Notification(n.clone())));
    assert_eq!(out, vec![Output::Close(C1)]);
    assert_eq!(t.s.state(), State::Active);
    assert_eq!(
        t.s.status().last_error.unwrap().1.to_string(),
        "NOTIFICATION OPEN Message Error / Bad Peer AS (2/2) received"
    );
}

#[test]
fn notification_in_established_goes_down_without_stale_routes() {
    let mut t = T::new(gr_config());
    let mut open = peer_open(90);
    open.capabilities.push(peer_gr(120, false));
    to_established_with(&mut t, open);
    let n = notification(ErrorCode::Cease, 2, vec![]);
    let out = t.run(1.0, Input::Received(C1, Message::Notification(n.clone())));
    assert_eq!(
        out,
        vec![
            Output::Close(C1),
            down(Reason::NotificationReceived(n.clone()))
        ]
    );
    assert_eq!(
        Reason::NotificationReceived(n).to_string(),
        "NOTIFICATION Cease / Administrative Shutdown (6/2) received"
    );
}

fn to_established_with(t: &mut T, open: Open) -> Box<Established> {
    t.establish(open, 0.0)
}

#[test]
fn decode_error_sends_its_notification_and_goes_down() {
    let mut t = T::new(config());
    to_established(&mut t);
    let n = notification(ErrorCode::UpdateMessage, 1, vec![]);
    let out = t.run(1.0, Input::DecodeError(C1, n.clone()));
    assert_eq!(
        out,
        vec![
            Output::Send(C1, Message::Notification(n.clone())),
            Output::Close(C1),
            down(Reason::NotificationSent(n)),
        ]
    );
}

#[test]
fn decode_error_in_open_sent_closes() {
    let mut t = T::new(config());
    to_open_sent(&mut t);
    let n = notification(ErrorCode::MessageHeader, 1, vec![]);
    let out = t.run(1.0, Input::DecodeError(C1, n.clone()));
    assert_eq!(
        out,
        vec![
            Output::Send(C1, Message::Notification(n)),
            Output::Close(C1)
        ]
    );
    assert_eq!(t.s.state(), State::Active);
}

// ---- Established ----

#[test]
fn update_in_established_goes_to_the_rib() {
    let mut t = T::new(config());
    to_established(&mut t);
    let update = Box::new(Update {
        nlri: vec!["10.244.1.0/24".parse().unwrap()],
        ..Update::default()
    });
    let out = t.run(1.0, Input::Received(C1, Message::Update(update.clone())));
    assert_eq!(out, vec![Output::Routes(update)]);
    assert_eq!(t.s.status().received.update, 1);
}

#[test]
fn route_refresh_is_answered_only_for_negotiated_families() {
    let mut t = T::new(config());
    to_established(&mut t);
    let rr = |family| Input::Received(C1, Message::RouteRefresh(RouteRefresh { family }));
    assert_eq!(
        t.run(1.0, rr(Family::IPV4_UNICAST)),
        vec![Output::RefreshRequested(Family::IPV4_UNICAST)]
    );
    assert_eq!(t.run(2.0, rr(Family::IPV6_UNICAST)), vec![]);
    assert_eq!(t.s.state(), State::Established);
}

#[test]
fn send_refresh_only_to_a_peer_that_can() {
    let mut t = T::new(config());
    to_established(&mut t);
    assert_eq!(
        t.run(1.0, Input::SendRefresh(Family::IPV4_UNICAST)),
        vec![Output::Send(
            C1,
            Message::RouteRefresh(RouteRefresh {
                family: Family::IPV4_UNICAST
            })
        )]
    );
    assert_eq!(t.run(1.0, Input::SendRefresh(Family::IPV6_UNICAST)), vec![]);

    let mut t = T::new(config());
    let mut open = peer_open(90);
    open.capabilities.retain(|c| *c != Capability::RouteRefresh);
    t.establish(open, 0.0);
    assert_eq!(t.run(1.0, Input::SendRefresh(Family::IPV4_UNICAST)), vec![]);
}

#[test]
fn stop_in_established_sends_cease_and_goes_idle() {
    let mut t = T::new(gr_config());
    let mut open = peer_open(90);
    open.capabilities.push(peer_gr(120, false));
    t.establish(open, 0.0);
    let cease = notification(ErrorCode::Cease, 2, vec![]);
    assert_eq!(
        t.run(1.0, Input::Stop),
        vec![
            Output::Send(C1, Message::Notification(cease)),
            Output::Close(C1),
            down(Reason::Stopped),
        ]
    );
    assert_eq!(t.s.state(), State::Idle);
    assert_eq!(t.s.next_deadline(), None);
    assert_eq!(t.s.status().last_error, None);
    // Start again connects at once.
    assert_eq!(t.run(2.0, Input::Start), vec![Output::Connect]);
}

#[test]
fn closed_in_established_goes_down() {
    let mut t = T::new(config());
    to_established(&mut t);
    assert_eq!(
        t.run(1.0, Input::Closed(C1)),
        vec![down(Reason::ConnectionClosed)]
    );
    assert_eq!(t.s.state(), State::Active);
    assert_eq!(
        t.s.status().last_error.unwrap().1.to_string(),
        "connection closed by the peer"
    );
}

#[test]
fn inputs_for_unknown_connections_are_ignored() {
    let mut t = T::new(config());
    to_established(&mut t);
    assert_eq!(t.run(1.0, Input::Closed(C2)), vec![]);
    assert_eq!(t.run(1.0, Input::Received(C2, Message::Keepalive)), vec![]);
    let n = notification(ErrorCode::MessageHeader, 1, vec![]);
    assert_eq!(t.run(1.0, Input::DecodeError(C2, n)), vec![]);
    assert_eq!(t.s.state(), State::Established);
    assert_eq!(t.s.status().received.keepalive, 1);
}

// ---- status ----

#[test]
fn status_counts_messages_and_flaps() {
    let mut t = T::new(config());
    to_established(&mut t);
    t.run(1.0, Input::Received(C1, Message::Keepalive));
    t.run(30.0, Input::Tick);
    t.run(31.0, Input::Closed(C1));
    let s = t.s.status();
    assert_eq!(s.state, State::Active);
    assert_eq!(s.since, t.at(31.0));
    assert_eq!(
        s.received,
        MessageCounts {
            open: 1,
            keepalive: 2,
            ..MessageCounts::default()
        }
    );
    assert_eq!(
        s.sent,
        MessageCounts {
            open: 1,
            keepalive: 2,
            ..MessageCounts::default()
        }
    );
    assert_eq!(s.received.total(), 3);
    assert_eq!(s.flaps, 1);
    assert_eq!(s.established, None);
    assert_eq!(s.next_connect, Some(t.at(41.0)));
    assert_eq!(s.error_wait, Some(Duration::from_secs(10)));
}

// ---- configuration ----

#[test]
fn bad_configs_are_refused_with_their_cause() {
    type Edit = Box<dyn Fn(&mut SessionConfig)>;
    let cases: Vec<(Edit, ConfigError)> = vec![
        (Box::new(|c| c.local_as = 0), ConfigError::ZeroAs),
        (
            Box::new(|c| c.router_id = Ipv4Addr::UNSPECIFIED),
            ConfigError::ZeroRouterId,
        ),
        (Box::new(|c| c.families.clear()), ConfigError::NoFamilies),
        (
            Box::new(|c| c.hold_time = 2),
            ConfigError::HoldTime {
                what: "hold time",
                value: 2,
            },
        ),
        (
            Box::new(|c| c.open_hold_time = 0),
            ConfigError::HoldTime {
                what: "open hold time",
                value: 0,
            },
        ),
        (
            Box::new(|c| c.connect_retry = Duration::ZERO),
            ConfigError::ZeroConnectRetry,
        ),
        (
            Box::new(|c| c.error_wait.max = Duration::from_secs(1)),
            ConfigError::ErrorWait {
                min: Duration::from_secs(10),
                max: Duration::from_secs(1),
            },
        ),
        (
            Box::new(|c| {
                c.graceful_restart = Some(GracefulRestartConfig {
                    restart_time: 4096,
                    restarting: false,
                    forwarding_preserved: false,
                })
            }),
            ConfigError::RestartTime(4096),
        ),
    ];
    for (edit, want) in cases {
        let mut c = config();
        edit(&mut c);
        assert_eq!(
            Session::new(c, Instant::now()).err(),
            Some(want.clone()),
            "{want}"
        );
    }
}

// ---- collisions (RFC 4271 §6.8) ----

fn cease(sub: u8) -> Notification {
    notification(ErrorCode::Cease, sub, vec![])
}

/// Our connection C1 (outgoing) and the peer's C2 (incoming) both in OpenSent.
fn two_connections(our_id: Ipv4Addr) -> T {
    let mut c = config();
    c.router_id = our_id;
    let mut t = T::new(c);
    t.run(0.0, Input::Start);
    sent_open(&t.run(0.0, Input::Connected(C1, Direction::Outgoing)));
    sent_open(&t.run(0.1, Input::Connected(C2, Direction::Incoming)));
    assert_eq!(t.s.state(), State::OpenSent);
    t
}

/// The first OPEN, on either connection, resolves the collision (the other one is in
/// OpenSent and this OPEN tells the peer's identifier): `loser` gets Cease 6/7 at once and
/// `winner` goes on to Established, so neither side ever goes Established on a connection
/// the other closes.
fn collision_resolved_at_the_first_open(our_id: Ipv4Addr, winner: ConnId, loser: ConnId) {
    for first in [C1, C2] {
        let mut t = two_connections(our_id);
        let out = t.run(1.0, Input::Received(first, Message::Open(peer_open(90))));
        let mut want = vec![
            Output::Send(loser, Message::Notification(cease(7))),
            Output::Close(loser),
        ];
        if first == winner {
            want.push(Output::Send(winner, Message::Keepalive));
            assert_eq!(out, want, "OPEN first on {first}");
            assert_eq!(t.s.state(), State::OpenConfirm);
        } else {
            assert_eq!(out, want, "OPEN first on {first}");
            assert_eq!(
                t.s.state(),
                State::OpenSent,
                "waiting for the winner's OPEN"
            );
            assert_eq!(
                t.run(1.1, Input::Received(winner, Message::Open(peer_open(90)))),
                vec![Output::Send(winner, Message::Keepalive)]
            );
        }
        let out = t.run(1.2, Input::Received(winner, Message::Keepalive));
        assert!(
            matches!(out.as_slice(), [Output::Established(e)] if e.conn == winner),
            "{out:?}"
        );
        // A collision is no error: nothing waits, nothing is counted as a flap.
        assert_eq!(t.s.status().last_error, None);
        assert_eq!(t.s.status().flaps, 0);
    }
}

#[test]
fn collision_keeps_our_connection_when_our_identifier_is_higher() {
    // Ours 192.0.2.3 > the peer's 192.0.2.2: the connection we opened (C1) stays.
    collision_resolved_at_the_first_open(Ipv4Addr::new(192, 0, 2, 3), C1, C2);
}

#[test]
fn collision_keeps_the_peers_connection_when_its_identifier_is_higher() {
    // Ours 192.0.2.1 < the peer's 192.0.2.2: the connection the peer opened (C2) stays.
    collision_resolved_at_the_first_open(OUR_ID, C2, C1);
}

#[test]
fn collision_with_equal_identifiers_keeps_the_larger_as() {
    // RFC 6286 §2.3: same identifier (allowed between different ASes); the peer's AS
    // 65002 > ours 65001, so its connection stays.
    collision_resolved_at_the_first_open(PEER_ID, C2, C1);
}

#[test]
fn the_losing_connection_may_close_first() {
    // The peer resolved the collision first and closed C1: C2 goes on alone.
    let mut t = two_connections(OUR_ID);
    t.run(1.0, Input::Received(C1, Message::Open(peer_open(90))));
    assert_eq!(t.run(1.1, Input::Closed(C1)), vec![]);
    assert_eq!(t.s.state(), State::OpenSent);
    assert_eq!(t.s.next_deadline(), Some(t.at(240.1)));
    t.run(1.2, Input::Received(C2, Message::Open(peer_open(90))));
    let out = t.run(1.3, Input::Received(C2, Message::Keepalive));
    assert!(matches!(out.as_slice(), [Output::Established(e)] if e.conn == C2));
}

#[test]
fn a_new_connection_while_established_is_closed_with_6_7() {
    let mut t = T::new(config());
    to_established(&mut t);
    assert_eq!(
        t.run(1.0, Input::Connected(C2, Direction::Incoming)),
        vec![
            Output::Send(C2, Message::Notification(cease(7))),
            Output::Close(C2)
        ]
    );
    assert_eq!(t.s.state(), State::Established);
}

#[test]
fn a_newer_incoming_connection_replaces_an_older_one_not_established() {
    let mut c = config();
    c.passive = true;
    let mut t = T::new(c);
    t.run(0.0, Input::Start);
    t.run(0.0, Input::Connected(C1, Direction::Incoming));
    let out = t.run(1.0, Input::Connected(C2, Direction::Incoming));
    assert_eq!(out[0], Output::Close(C1));
    sent_open(&out[1..]);
    assert_eq!(t.run(1.0, Input::Received(C1, Message::Keepalive)), vec![]);
    t.run(2.0, Input::Received(C2, Message::Open(peer_open(90))));
    let out = t.run(2.0, Input::Received(C2, Message::Keepalive));
    assert!(matches!(out.as_slice(), [Output::Established(e)] if e.conn == C2));
}

#[test]
fn establishing_closes_the_other_connection_still_in_open_sent() {
    // Our connect (C1) completes only after the peer's connection (C2) had its OPEN: no
    // OPEN to resolve it by comes before C2 is Established.
    let mut t = T::new(config());
    t.run(0.0, Input::Start);
    sent_open(&t.run(0.1, Input::Connected(C2, Direction::Incoming)));
    t.run(0.5, Input::Received(C2, Message::Open(peer_open(90))));
    sent_open(&t.run(0.55, Input::Connected(C1, Direction::Outgoing)));
    let out = t.run(0.6, Input::Received(C2, Message::Keepalive));
    assert!(matches!(&out[0], Output::Established(e) if e.conn == C2));
    assert_eq!(
        out[1..],
        [
            Output::Send(C1, Message::Notification(cease(7))),
            Output::Close(C1)
        ]
    );
    assert_eq!(
        t.run(0.7, Input::Received(C1, Message::Open(peer_open(90)))),
        vec![]
    );
    assert_eq!(t.s.state(), State::Established);
}

// ---- graceful restart (RFC 4724) ----

fn gr_peer_open(restart_time: u16) -> Open {
    let mut open = peer_open(90);
    open.capabilities.push(peer_gr(restart_time, false));
    open
}

fn stale_down(reason: Reason, secs: u64) -> Output {
    Output::Down {
        reason,
        keep_stale: Some(Duration::from_secs(secs)),
        stale_families: vec![Family::IPV4_UNICAST],
    }
}

#[test]
fn connection_lost_with_graceful_restart_keeps_routes_stale() {
    let mut t = T::new(gr_config());
    let est = t.establish(gr_peer_open(120), 0.0);
    assert!(!est.peer_restarted());
    assert!(est.peer_forwarding_preserved(Family::IPV4_UNICAST));
    assert!(!est.peer_forwarding_preserved(Family::IPV6_UNICAST));
    assert_eq!(
        t.run(5.0, Input::Closed(C1)),
        vec![stale_down(Reason::ConnectionClosed, 120)]
    );
}

#[test]
fn hold_timer_expiry_with_graceful_restart_keeps_routes_stale() {
    let mut t = T::new(gr_config());
    t.establish(gr_peer_open(200), 0.0);
    let out = t.run(90.0, Input::Tick);
    assert_eq!(out.last(), Some(&stale_down(Reason::HoldTimerExpired, 200)));
}

#[test]
fn no_stale_routes_without_both_sides_advertising_graceful_restart() {
    // The peer did, we did not.
    let mut t = T::new(config());
    t.establish(gr_peer_open(120), 0.0);
    assert_eq!(
        t.run(5.0, Input::Closed(C1)),
        vec![down(Reason::ConnectionClosed)]
    );
    // We did, the peer did not.
    let mut t = T::new(gr_config());
    t.establish(peer_open(90), 0.0);
    assert_eq!(
        t.run(5.0, Input::Closed(C1)),
        vec![down(Reason::ConnectionClosed)]
    );
    // The peer's capability lists no family (it only helps others restart).
    let mut t = T::new(gr_config());
    let mut open = peer_open(90);
    open.capabilities
        .push(Capability::GracefulRestart(GracefulRestart {
            restarting: false,
            restart_time: 120,
            families: vec![],
        }));
    t.establish(open, 0.0);
    assert_eq!(
        t.run(5.0, Input::Closed(C1)),
        vec![down(Reason::ConnectionClosed)]
    );
}

#[test]
fn decode_error_with_graceful_restart_drops_routes() {
    let mut t = T::new(gr_config());
    t.establish(gr_peer_open(120), 0.0);
    let n = notification(ErrorCode::UpdateMessage, 1, vec![]);
    let out = t.run(5.0, Input::DecodeError(C1, n.clone()));
    assert_eq!(out.last(), Some(&down(Reason::NotificationSent(n))));
}

#[test]
fn a_restarted_peer_reconnecting_ends_the_old_session_keeping_routes_stale() {
    let mut t = T::new(gr_config());
    t.establish(gr_peer_open(120), 0.0);
    // The peer restarted; our side never saw C1 close. Its new connection is served.
    sent_open(&t.run(10.0, Input::Connected(C2, Direction::Incoming)));
    assert_eq!(t.s.state(), State::Established);
    let mut open = peer_open(90);
    open.capabilities.push(peer_gr(120, true));
    let out = t.run(10.5, Input::Received(C2, Message::Open(open)));
    assert_eq!(
        out,
        vec![
            // RFC 4724 §4.2: no NOTIFICATION on the old connection.
            Output::Close(C1),
            stale_down(Reason::PeerRestarted, 120),
            Output::Send(C2, Message::Keepalive),
        ]
    );
    assert_eq!(t.s.state(), State::OpenConfirm);
    let out = t.run(10.6, Input::Received(C2, Message::Keepalive));
    match out.as_slice() {
        [Output::Established(e)] => {
            assert_eq!(e.conn, C2);
            assert!(e.peer_restarted());
        }
        other => panic!("{other:?}"),
    }
    let s = t.s.status();
    assert_eq!(s.flaps, 1);
    assert_eq!(
        s.last_error.unwrap().1.to_string(),
        "peer restarted (new connection while established)"
    );
    // The old session's leftovers are ignored.
    assert_eq!(t.run(11.0, Input::Closed(C1)), vec![]);
}

#[test]
fn a_late_outgoing_connection_while_established_is_closed_even_with_graceful_restart() {
    let mut t = T::new(gr_config());
    t.run(0.0, Input::Start);
    // Our connect is in flight when the peer's connection comes up and establishes.
    t.run(0.0, Input::Connected(C2, Direction::Incoming));
    t.run(0.0, Input::Received(C2, Message::Open(gr_peer_open(120))));
    t.run(0.0, Input::Received(C2, Message::Keepalive));
    assert_eq!(
        t.run(1.0, Input::Connected(C1, Direction::Outgoing)),
        vec![
            Output::Send(C1, Message::Notification(cease(7))),
            Output::Close(C1)
        ]
    );
    assert_eq!(t.s.state(), State::Established);
}

#[test]
fn a_newer_restart_candidate_replaces_an_older_one() {
    let mut t = T::new(gr_config());
    t.establish(gr_peer_open(120), 0.0);
    let c3 = ConnId(3);
    sent_open(&t.run(1.0, Input::Connected(C2, Direction::Incoming)));
    let out = t.run(2.0, Input::Connected(c3, Direction::Incoming));
    assert_eq!(out[0], Output::Close(C2));
    sent_open(&out[1..]);
    let out = t.run(3.0, Input::Received(c3, Message::Open(gr_peer_open(120))));
    assert_eq!(out[0], Output::Close(C1));
    assert_eq!(out[1], stale_down(Reason::PeerRestarted, 120));
}

#[test]
fn a_restart_candidate_with_a_bad_open_leaves_the_session_up() {
    let mut t = T::new(gr_config());
    t.establish(gr_peer_open(120), 0.0);
    t.run(1.0, Input::Connected(C2, Direction::Incoming));
    let mut open = gr_peer_open(120);
    open.capabilities
        .retain(|c| !matches!(c, Capability::FourOctetAs(_)));
    open.my_as = 65099;
    let out = t.run(2.0, Input::Received(C2, Message::Open(open)));
    assert_eq!(
        out,
        vec![
            Output::Send(
                C2,
                Message::Notification(notification(ErrorCode::OpenMessage, 2, vec![]))
            ),
            Output::Close(C2)
        ]
    );
    assert_eq!(t.s.state(), State::Established);
    assert_eq!(t.s.established().map(|e| e.conn), Some(C1));
}

// ---- reconnect backoff (BIRD's error wait time) ----

/// Connect, get a NOTIFICATION back in OpenSent: one error.
fn fail_once(t: &mut T, secs: f64, id: u64) {
    assert_eq!(t.run(secs, Input::Tick), vec![Output::Connect], "at {secs}");
    t.run(secs, Input::Connected(ConnId(id), Direction::Outgoing));
    let n = cease(5);
    assert_eq!(
        t.run(
            secs,
            Input::Received(ConnId(id), Message::Notification(n.clone()))
        ),
        vec![Output::Close(ConnId(id))]
    );
}

#[test]
fn error_wait_doubles_up_to_its_maximum_and_resets_after_the_forget_time() {
    // min 10 s, max 80 s, forget 200 s.
    let mut t = T::new(config());
    t.run(0.0, Input::Start);
    t.run(0.0, Input::ConnectFailed); // next connect at 30 (connect retry, no error)
    let mut now = 30.0;
    let mut waits = Vec::new();
    for id in 1..=6 {
        fail_once(&mut t, now, id);
        let next = t.deadline().unwrap();
        waits.push(next - now);
        now = next;
    }
    assert_eq!(waits, vec![10.0, 20.0, 40.0, 80.0, 80.0, 80.0]);
    // Nothing connects during a wait.
    assert_eq!(t.run(now - 1.0, Input::Tick), vec![]);
    // A session that stays up past the forget time starts over at the minimum.
    assert_eq!(t.run(now, Input::Tick), vec![Output::Connect]);
    t.run(now, Input::Connected(ConnId(9), Direction::Outgoing));
    t.run(now, Input::Received(ConnId(9), Message::Open(peer_open(0))));
    t.run(now, Input::Received(ConnId(9), Message::Keepalive));
    assert_eq!(t.s.state(), State::Established);
    let later = now + 201.0;
    t.run(later, Input::Closed(ConnId(9)));
    assert_eq!(t.deadline(), Some(later + 10.0));
}

#[test]
fn the_peer_may_connect_during_the_error_wait() {
    let mut t = T::new(config());
    t.run(0.0, Input::Start);
    t.run(0.0, Input::Connected(C1, Direction::Outgoing));
    t.run(0.0, Input::Closed(C1));
    assert_eq!(t.s.state(), State::Active);
    assert_eq!(t.deadline(), Some(10.0));
    sent_open(&t.run(1.0, Input::Connected(C2, Direction::Incoming)));
    assert_eq!(t.s.state(), State::OpenSent);
}

#[test]
fn start_after_stop_forgets_the_error_wait() {
    let mut t = T::new(config());
    t.run(0.0, Input::Start);
    t.run(0.0, Input::Connected(C1, Direction::Outgoing));
    t.run(0.0, Input::Closed(C1));
    t.run(1.0, Input::Stop);
    assert_eq!(t.run(2.0, Input::Start), vec![Output::Connect]);
    t.run(2.0, Input::Connected(C2, Direction::Outgoing));
    t.run(2.0, Input::Closed(C2));
    assert_eq!(t.s.status().error_wait, Some(Duration::from_secs(10)));
}

// ---- the transition table: every state against every event ----

/// A setup that leaves the session in one state at t = 0, its connection (if any) C1.
type Setup = fn(&mut T);
/// The setup and its state's name, an input at a time, the outputs and the next state.
type Row = (Setup, &'static str, f64, Input, Vec<Output>, State);

fn in_idle(_: &mut T) {}
fn in_connect(t: &mut T) {
    t.run(0.0, Input::Start);
}
fn in_active(t: &mut T) {
    t.run(0.0, Input::Start);
    t.run(0.0, Input::ConnectFailed);
}

#[test]
fn transition_table() {
    use Input as I;
    use Output as O;
    let open = || Message::Open(peer_open(90));
    let upd = || Message::Update(Box::default());
    let notif = || notification(ErrorCode::Cease, 3, vec![]);
    let nsend = |n: Notification| O::Send(C1, Message::Notification(n));
    let fsm = |sub, ty| notification(ErrorCode::FsmError, sub, vec![ty]);
    let decode_err = || notification(ErrorCode::UpdateMessage, 1, vec![]);
    let our_open = |id| O::Send(id, Message::Open(open::ours(&config(), false)));
    let stopped = cease(2);
    #[rustfmt::skip]
    let table: Vec<Row> = vec![
        (in_idle, "Idle", 5.0, I::Start, vec![O::Connect], State::Connect),
        (in_idle, "Idle", 5.0, I::Stop, vec![], State::Idle),
        (in_idle, "Idle", 5.0, I::ConnectFailed, vec![], State::Idle),
        (in_idle, "Idle", 5.0, I::Connected(C2, Direction::Incoming), vec![O::Close(C2)], State::Idle),
        (in_idle, "Idle", 5.0, I::Closed(C1), vec![], State::Idle),
        (in_idle, "Idle", 5.0, I::Received(C1, open()), vec![], State::Idle),
        (in_idle, "Idle", 1e6, I::Tick, vec![], State::Idle),

        (in_connect, "Connect", 5.0, I::Start, vec![], State::Connect),
        (in_connect, "Connect", 5.0, I::Stop, vec![], State::Idle),
        (in_connect, "Connect", 5.0, I::ConnectFailed, vec![], State::Active),
        (in_connect, "Connect", 5.0, I::Connected(C1, Direction::Outgoing), vec![our_open(C1)], State::OpenSent),
        (in_connect, "Connect", 5.0, I::Connected(C2, Direction::Incoming), vec![our_open(C2)], State::OpenSent),
        (in_connect, "Connect", 30.0, I::Tick, vec![O::Connect], State::Connect),

        (in_active, "Active", 5.0, I::Start, vec![], State::Active),
        (in_active, "Active", 5.0, I::Stop, vec![], State::Idle),
        (in_active, "Active", 5.0, I::Connected(C2, Direction::Incoming), vec![our_open(C2)], State::OpenSent),
        (in_active, "Active", 30.0, I::Tick, vec![O::Connect], State::Connect),

        (to_open_sent, "OpenSent", 5.0, I::Start, vec![], State::OpenSent),
        (to_open_sent, "OpenSent", 5.0, I::Stop, vec![nsend(stopped.clone()), O::Close(C1)], State::Idle),
        (to_open_sent, "OpenSent", 5.0, I::Closed(C1), vec![], State::Active),
        (to_open_sent, "OpenSent", 5.0, I::Received(C1, open()), vec![O::Send(C1, Message::Keepalive)], State::OpenConfirm),
        (to_open_sent, "OpenSent", 5.0, I::Received(C1, Message::Keepalive), vec![nsend(fsm(1, 4)), O::Close(C1)], State::Active),
        (to_open_sent, "OpenSent", 5.0, I::Received(C1, upd()), vec![nsend(fsm(1, 2)), O::Close(C1)], State::Active),
        (to_open_sent, "OpenSent", 5.0, I::Received(C1, Message::Notification(notif())), vec![O::Close(C1)], State::Active),
        (to_open_sent, "OpenSent", 5.0, I::DecodeError(C1, decode_err()), vec![nsend(decode_err()), O::Close(C1)], State::Active),
        (to_open_sent, "OpenSent", 240.0, I::Tick, vec![nsend(Notification::hold_timer_expired()), O::Close(C1)], State::Active),

        (to_open_confirm, "OpenConfirm", 5.0, I::Stop, vec![nsend(stopped.clone()), O::Close(C1)], State::Idle),
        (to_open_confirm, "OpenConfirm", 5.0, I::Closed(C1), vec![], State::Active),
        (to_open_confirm, "OpenConfirm", 5.0, I::Received(C1, open()), vec![nsend(fsm(2, 1)), O::Close(C1)], State::Active),
        (to_open_confirm, "OpenConfirm", 5.0, I::Received(C1, upd()), vec![nsend(fsm(2, 2)), O::Close(C1)], State::Active),
        (to_open_confirm, "OpenConfirm", 5.0, I::Received(C1, Message::Notification(notif())), vec![O::Close(C1)], State::Active),
        (to_open_confirm, "OpenConfirm", 5.0, I::DecodeError(C1, decode_err()), vec![nsend(decode_err()), O::Close(C1)], State::Active),
        (to_open_confirm, "OpenConfirm", 30.0, I::Tick, vec![O::Send(C1, Message::Keepalive)], State::OpenConfirm),
        (to_open_confirm, "OpenConfirm", 90.0, I::Tick, vec![O::Send(C1, Message::Keepalive), nsend(Notification::hold_timer_expired()), O::Close(C1)], State::Active),

        (to_established, "Established", 5.0, I::Start, vec![], State::Established),
        (to_established, "Established", 5.0, I::Stop, vec![nsend(stopped), O::Close(C1), down(Reason::Stopped)], State::Idle),
        (to_established, "Established", 5.0, I::Closed(C1), vec![down(Reason::ConnectionClosed)], State::Active),
        (to_established, "Established", 5.0, I::Received(C1, Message::Keepalive), vec![], State::Established),
        (to_established, "Established", 5.0, I::Received(C1, upd()), vec![O::Routes(Box::default())], State::Established),
        (to_established, "Established", 5.0, I::Received(C1, Message::RouteRefresh(RouteRefresh { family: Family::IPV4_UNICAST })), vec![O::RefreshRequested(Family::IPV4_UNICAST)], State::Established),
        (to_established, "Established", 5.0, I::Received(C1, open()), vec![nsend(fsm(3, 1)), O::Close(C1), down(Reason::NotificationSent(fsm(3, 1)))], State::Active),
        (to_established, "Established", 5.0, I::Received(C1, Message::Notification(notif())), vec![O::Close(C1), down(Reason::NotificationReceived(notif()))], State::Active),
        (to_established, "Established", 5.0, I::DecodeError(C1, decode_err()), vec![nsend(decode_err()), O::Close(C1), down(Reason::NotificationSent(decode_err()))], State::Active),
        (to_established, "Established", 5.0, I::Connected(C2, Direction::Incoming), vec![O::Send(C2, Message::Notification(cease(7))), O::Close(C2)], State::Established),
        (to_established, "Established", 30.0, I::Tick, vec![O::Send(C1, Message::Keepalive)], State::Established),
        (to_established, "Established", 90.0, I::Tick, vec![O::Send(C1, Message::Keepalive), nsend(Notification::hold_timer_expired()), O::Close(C1), down(Reason::HoldTimerExpired)], State::Active),
    ];
    // OpenConfirm + KEEPALIVE -> Established is keepalive_in_open_confirm_establishes.
    for (setup, name, at, input, want, next) in table {
        let mut t = T::new(config());
        setup(&mut t);
        let label = format!("{name} + {input:?} at {at}");
        let got = t.run(at, input);
        assert_eq!(got, want, "{label}");
        assert_eq!(t.s.state(), next, "{label}");
    }
}

// ---- RFC 4271 §10 jitter ----

#[test]
fn jitter_draws_each_timer_between_three_quarters_and_all_of_it() {
    let mut c = config();
    c.jitter_seed = Some(7);
    let mut t = T::new(c.clone());
    t.run(0.0, Input::Start);
    let retry = t.deadline().unwrap();
    assert!((22.5..=30.0).contains(&retry), "connect retry {retry}");
    t.run(0.0, Input::Connected(C1, Direction::Outgoing));
    t.run(0.0, Input::Received(C1, Message::Open(peer_open(90))));
    t.run(0.0, Input::Received(C1, Message::Keepalive));
    assert_eq!(t.s.state(), State::Established);
    // Keepalives (base 30 s) come at a new random interval in [22.5, 30] each time, while
    // the hold timer is exact.
    let mut now = 0.0;
    let mut intervals = Vec::new();
    for _ in 0..20 {
        let next = t.deadline().unwrap();
        intervals.push(next - now);
        assert_eq!(
            t.run(next, Input::Tick),
            vec![Output::Send(C1, Message::Keepalive)]
        );
        t.run(next, Input::Received(C1, Message::Keepalive));
        now = next;
    }
    assert!(
        intervals.iter().all(|i| (22.5..=30.0).contains(i)),
        "{intervals:?}"
    );
    let distinct: std::collections::BTreeSet<u64> =
        intervals.iter().map(|i| (i * 1e6) as u64).collect();
    assert!(distinct.len() > 15, "{intervals:?}");

    // The same seed, the same timers; another seed, others.
    let mut again = T::new(c.clone());
    again.run(0.0, Input::Start);
    assert_eq!(again.deadline(), Some(retry));
    c.jitter_seed = Some(8);
    let mut other = T::new(c);
    other.run(0.0, Input::Start);
    assert_ne!(other.deadline(), Some(retry));
}

#[test]
fn no_seed_no_jitter() {
    let mut t = T::new(config());
    t.run(0.0, Input::Start);
    assert_eq!(t.deadline(), Some(30.0));
}

// ---- random walks: invariants under any order of events ----

/// splitmix64, so each walk is reproducible from its number.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_input(rng: &mut Rng, next_id: &mut u64) -> Input {
    // Mostly the connections of the last few ids, so messages meet live connections.
    let old = ConnId(next_id.saturating_sub(rng.below(3)).max(1));
    let mut open = peer_open([0, 3, 9, 90][rng.below(4) as usize]);
    if rng.below(4) == 0 {
        open.capabilities.push(peer_gr(120, rng.below(2) == 0));
    }
    if rng.below(10) == 0 {
        open.my_as = 65099;
        open.capabilities.clear();
    }
    if rng.below(10) == 0 {
        open.router_id = Ipv4Addr::new(192, 0, 2, 200);
    }
    match rng.below(16) {
        0 => Input::Start,
        1 => Input::Stop,
        2 | 3 => Input::Tick,
        4 => Input::ConnectFailed,
        5 | 6 => {
            *next_id += 1;
            let dir = if rng.below(2) == 0 {
                Direction::Incoming
            } else {
                Direction::Outgoing
            };
            Input::Connected(ConnId(*next_id), dir)
        }
        7 => Input::Closed(old),
        8 | 9 => Input::Received(old, Message::Open(open)),
        10 | 11 => Input::Received(old, Message::Keepalive),
        12 => Input::Received(old, Message::Update(Box::default())),
        13 => Input::Received(old, Message::Notification(cease(2))),
        14 => Input::DecodeError(old, notification(ErrorCode::UpdateMessage, 1, vec![])),
        _ => Input::Received(
            old,
            Message::RouteRefresh(RouteRefresh {
                family: Family::IPV4_UNICAST,
            }),
        ),
    }
}

#[test]
fn random_walks_keep_the_invariants() {
    for walk in 0..300u64 {
        let mut rng = Rng(walk);
        let mut c = if rng.below(2) == 0 {
            gr_config()
        } else {
            config()
        };
        c.passive = rng.below(4) == 0;
        c.router_id = [OUR_ID, Ipv4Addr::new(192, 0, 2, 9)][rng.below(2) as usize];
        let mut t = T::new(c);
        let mut now = 0.0;
        let mut next_id = 0;
        let mut up = false;
        // An `Output::Connect` not answered yet.
        let mut in_flight = false;
        // Connections the FSM was told about and has not closed, nor heard closed.
        let mut live = std::collections::BTreeSet::new();
        for step in 0..300 {
            now += [0.0, 0.5, 3.0, 40.0][rng.below(4) as usize];
            let input = random_input(&mut rng, &mut next_id);
            // The timers due now fire first (a Tick), then the input meets no due timer:
            // the outputs of each are checked against the connections of their moment.
            for input in [Input::Tick, input] {
                let at = format!("walk {walk} step {step} at {now}: {input:?}");
                match &input {
                    Input::Connected(id, dir) => {
                        live.insert(*id);
                        if *dir == Direction::Outgoing {
                            in_flight = false;
                        }
                    }
                    Input::ConnectFailed | Input::Stop => in_flight = false,
                    Input::Closed(id) => {
                        live.remove(id);
                    }
                    _ => {}
                }
                let out = t.run(now, input);
                for o in &out {
                    match o {
                        Output::Send(id, _) => assert!(live.contains(id), "{at}: send on {id}"),
                        Output::Close(id) => assert!(live.remove(id), "{at}: close of {id}"),
                        Output::Established(e) => {
                            assert!(!up, "{at}: Established twice");
                            assert!(live.contains(&e.conn), "{at}");
                            up = true;
                        }
                        Output::Down { .. } => {
                            assert!(up, "{at}: Down without Established");
                            up = false;
                        }
                        Output::Routes(_) | Output::RefreshRequested(_) => {
                            assert!(up, "{at}: {o:?} while not established")
                        }
                        Output::Connect => in_flight = true,
                        Output::CancelConnect => {
                            assert!(in_flight, "{at}: cancel with no connect in flight");
                            in_flight = false;
                        }
                    }
                }
                let s = &t.s;
                assert!(s.conns.len() <= 2, "{at}: {} connections", s.conns.len());
                assert!(
                    s.conns.iter().all(|c| live.contains(&c.id)),
                    "{at}: a connection it closed is still held"
                );
                assert_eq!(up, s.established().is_some(), "{at}");
                assert_eq!(up, s.state() == State::Established, "{at}");
                assert!(
                    s.next_deadline().is_none_or(|d| d > t.at(now)),
                    "{at}: a timer due now was left"
                );
                if !s.started {
                    assert_eq!(s.state(), State::Idle, "{at}");
                    assert!(s.conns.is_empty(), "{at}");
                }
            }
        }
    }
}

#[test]
fn open_with_no_family_in_common_gets_2_7_naming_ours() {
    // We offer IPv4 unicast; the peer only IPv6 unicast.
    let mut open = peer_open(90);
    open.capabilities = vec![Capability::Multiprotocol(Family::IPV6_UNICAST)];
    open_error_case(
        config(),
        open,
        notification(ErrorCode::OpenMessage, 7, vec![1, 4, 0, 1, 0, 1]),
    );
    // We offer IPv6 unicast only; the peer sends no multiprotocol capability (IPv4 only).
    let mut c = config();
    c.families = vec![Family::IPV6_UNICAST];
    let mut open = peer_open(90);
    open.capabilities.clear();
    open_error_case(
        c,
        open,
        notification(ErrorCode::OpenMessage, 7, vec![1, 4, 0, 2, 0, 1]),
    );
}

#[test]
fn established_on_the_peers_connection_cancels_our_connect_in_flight() {
    // Our SYN is lost and retried; the peer connects meanwhile and the session comes up on
    // its connection. Our late connection would look like our restart to a GR peer.
    let mut t = T::new(config());
    t.run(0.0, Input::Start);
    sent_open(&t.run(0.5, Input::Connected(C2, Direction::Incoming)));
    t.run(0.6, Input::Received(C2, Message::Open(peer_open(90))));
    let out = t.run(0.7, Input::Received(C2, Message::Keepalive));
    assert!(matches!(&out[0], Output::Established(e) if e.conn == C2));
    assert_eq!(out[1..], [Output::CancelConnect]);
    assert_eq!(t.s.state(), State::Established);
    // Established on our own connection: nothing in flight, nothing to cancel.
    let mut t = T::new(config());
    t.run(0.0, Input::Start);
    t.run(0.0, Input::Connected(C1, Direction::Outgoing));
    t.run(0.0, Input::Received(C1, Message::Open(peer_open(90))));
    let out = t.run(0.0, Input::Received(C1, Message::Keepalive));
    assert_eq!(out.len(), 1, "{out:?}");
}
