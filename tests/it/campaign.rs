//! The black-box fault campaign (tests/it/common/campaign/): seeded schedules of kills, pauses,
//! cuts, lost disks and start orders, interleaved with the operator's actions (failover paused
//! and resumed, a promote while paused, holds and releases, a switchover, a rebuild), against a
//! trio of real relayd processes under a steady load of mail, each checked for lost mail, two
//! nodes serving at once, duplicates beyond what was in flight, the time to serve once healed,
//! held mail delivered, automatic promotions while paused, and a standby's queue unlike its
//! primary's.
//!
//! `cargo test --test it campaign::` runs the short form (4 schedules, [`SHORT_FORM`], about three
//! minutes) and the checker's and the generator's own tests. The long form: `scripts/campaign.sh` (or
//! `RELAYD_CAMPAIGN_SCHEDULES=200 cargo test --test it campaign::fault_campaign -- --nocapture`);
//! one seed again: `RELAYD_CAMPAIGN_SEED=17`. The report lands in `target/campaign/`
//! (`report.md`, `report.json`, and the nodes' logs of each failing schedule).

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::campaign::check::{
    self, Ack, DataNode, Delivery, FaultState, History, Hold, Limits, Observation, Promotion,
    StateChange, Window,
};
use common::campaign::schedule::{Action, Aim, Link, Member, Operator, Schedule};
use common::campaign::{self as campaign, Settings};

/// The short form's schedules in `cargo test`, picked from the long runs on 83bdc73
/// (docs/benchmarks.md, "Fault campaign") to cover each class of bug they found that a seed
/// reproduces: 14 and 36 (a standby started before the primary serves alone, and its mail is
/// lost when the primary starts), 25 (that, then the primary's disk replaced: its empty spool
/// wipes the standby), 65 (a deposed primary alone after its successor died never serves
/// again). Each also has failovers that go right, and between them they draw every operator's
/// action ([`the_short_form_draws_every_operator_action`]).
const SHORT_FORM: [u64; 4] = [14, 25, 36, 65];

#[test]
fn fault_campaign() {
    let settings = Settings::from_env(&SHORT_FORM);
    let runs = campaign::run_all(&settings);
    eprintln!("{}", campaign::report(&runs));
    let failures: Vec<String> = runs
        .iter()
        .filter(|run| !run.violations().is_empty())
        .map(|run| format!("{}\n  {}", run.schedule, run.violations().join("\n  ")))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} schedules broke an invariant (logs in {}):\n{}",
        runs.iter().filter(|r| !r.violations().is_empty()).count(),
        runs.len(),
        settings.out.display(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// The schedule generator.

const AIM: Aim = Aim { lease: Duration::from_secs(2), failover: Duration::from_millis(2500) };

#[test]
fn a_seed_replays_the_same_schedule() {
    assert_eq!(Schedule::generate(7, 3, AIM), Schedule::generate(7, 3, AIM));
    assert_ne!(Schedule::generate(7, 3, AIM), Schedule::generate(8, 3, AIM));
}

#[test]
fn schedules_start_every_node_before_any_fault_and_wipe_at_most_one_data_disk() {
    let mut kinds = BTreeSet::new();
    for seed in 0..500 {
        let schedule = Schedule::generate(seed, 4, AIM);
        let opening = schedule
            .steps
            .iter()
            .take_while(|s| matches!(s.action, Action::Start(_) | Action::HoldMail))
            .count();
        let starts: Vec<String> =
            schedule.steps[..opening].iter().map(|s| s.action.to_string()).collect();
        for member in ["a", "b", "w"] {
            let start = format!("start {member}");
            assert_eq!(starts.iter().filter(|s| **s == start).count(), 1, "{schedule}");
        }
        let data_wipes = schedule
            .steps
            .iter()
            .filter(|s| matches!(s.action, Action::Wipe(m) if m.name() != "w"))
            .count();
        assert!(data_wipes <= 1, "{schedule}");
        assert!(schedule.steps.windows(2).all(|w| w[0].at <= w[1].at), "in time order: {schedule}");
        for step in &schedule.steps[opening..] {
            kinds.insert(step.action.to_string().split(' ').next().unwrap_or("").to_string());
        }
    }
    // Every kind of fault of the menu is drawn.
    let menu = ["kill", "wipe", "SIGSTOP", "SIGCONT", "sever", "silence", "heal", "start"];
    for kind in menu.into_iter().chain(["release"]) {
        assert!(kinds.contains(kind), "{kind} never drawn: {kinds:?}");
    }
}

/// Every operator's action is drawn; a pause is always resumed within the schedule (so that
/// the heal's demand of service means something), a promote only within a pause.
#[test]
fn schedules_draw_every_operator_action_and_resume_every_pause() {
    let mut drawn = BTreeSet::new();
    for seed in 0..500 {
        let schedule = Schedule::generate(seed, 3, AIM);
        let mut paused = 0i32;
        for step in &schedule.steps {
            let Action::Operator(op) = step.action else { continue };
            drawn.insert(op.to_string().split(' ').next().unwrap_or("").to_string());
            match op {
                Operator::PauseFailover => paused += 1,
                Operator::ResumeFailover => paused -= 1,
                Operator::Promote => assert!(paused > 0, "{schedule}"),
                _ => {}
            }
        }
        assert_eq!(paused, 0, "{schedule}");
    }
    for kind in ["pause", "resume", "promote", "switchover", "rebuild", "hold", "release"] {
        assert!(drawn.contains(kind), "{kind} never drawn: {drawn:?}");
    }
}

/// The operator's stream is apart from the faults': a schedule's faults are what its seed drew
/// before the operator's actions were added (the seeds of past findings still replay them).
#[test]
fn operator_actions_leave_the_faults_of_a_seed_as_they_were() {
    let faults = |seed| -> Vec<String> {
        let schedule = Schedule::generate(seed, 3, AIM);
        let steps = schedule.steps.iter().filter(|s| !matches!(s.action, Action::Operator(_)));
        steps.map(|s| format!("{:?} {}", s.at, s.action)).collect()
    };
    // Seed 14 as 83bdc73 drew it: its first steps.
    let fourteen = faults(14);
    assert_eq!(fourteen[..4], ["0ns hold mail", "0ns start b", "3.5s start w", "4.5s start a"]);
    assert!(
        Schedule::generate(14, 3, AIM)
            .steps
            .iter()
            .any(|s| matches!(s.action, Action::Operator(_)))
    );
}

// ---------------------------------------------------------------------------------------------
// The checker, on fabricated histories: each invariant it guards must be seen broken.

const LIMITS: Limits = Limits {
    max_window: Duration::from_millis(100),
    rto: Duration::from_millis(3500),
    settle: Duration::from_secs(3),
    ack_grace: Duration::from_millis(2500),
    result_grace: Duration::from_secs(1),
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn window(start: u64, end: u64) -> Window {
    Window { start: ms(start), end: ms(end) }
}

fn ack(id: &str, node: DataNode, at: u64) -> Ack {
    Ack { id: id.into(), node, window: window(at, at + 5) }
}

fn delivery(id: &str, by: DataNode, at: u64) -> Delivery {
    Delivery { id: id.into(), by, window: window(at, at + 2) }
}

fn seen(node: DataNode, start: u64, end: u64, serving: bool) -> Observation {
    Observation { node, window: window(start, end), serving, epoch: None }
}

fn state(down: &[Member]) -> FaultState {
    FaultState { down: down.iter().copied().collect(), ..FaultState::default() }
}

fn paused(at: u64, down: &[Member]) -> StateChange {
    let mut change = change(at, down);
    change.state.paused = true;
    change
}

fn change(at: u64, down: &[Member]) -> StateChange {
    StateChange { at: ms(at), state: state(down), wiped: None }
}

/// a serves until 10 s, is killed; b serves from 13 s; healed at 20 s (a restarted), b seen
/// serving at once; every message delivered once; the recording ends at 30 s.
fn clean() -> History {
    use DataNode::{A, B};
    let mut h = History {
        faults: vec![ms(10_000)],
        states: vec![change(0, &[]), change(10_000, &[Member::A]), change(20_000, &[])],
        end: ms(30_000),
        ..History::default()
    };
    for n in 0..20u64 {
        h.observations.push(seen(A, n * 500, n * 500 + 3, true));
        h.observations.push(seen(B, n * 500 + 1, n * 500 + 4, false));
    }
    for n in 26..60u64 {
        h.observations.push(seen(B, n * 500, n * 500 + 3, true));
    }
    for n in 0..10u64 {
        let id = format!("m{n}");
        h.acks.push(ack(&id, A, n * 900));
        h.deliveries.push(delivery(&id, A, n * 900 + 20));
    }
    for n in 10..20u64 {
        let id = format!("m{n}");
        h.acks.push(ack(&id, B, 13_000 + n * 100));
        h.deliveries.push(delivery(&id, B, 13_000 + n * 100 + 20));
    }
    h
}

#[test]
fn the_checker_passes_a_clean_history() {
    let verdict = check::check(&clean(), &LIMITS);
    assert_eq!(verdict.violations(), Vec::<String>::new(), "{verdict:#?}");
    assert_eq!((verdict.acknowledged, verdict.delivered), (20, 20));
    // Three stretches in which a node had to serve: at the start, after a's kill, healed.
    assert_eq!(verdict.recoveries.len(), 3, "{verdict:#?}");
    assert_eq!(verdict.rto_max(), Some(ms(3_003)));
    assert_eq!(verdict.rto_final(), Some(ms(3)));
}

#[test]
fn the_checker_flags_a_lost_message_but_not_a_bounced_one() {
    let mut h = clean();
    h.acks.push(ack("lost", DataNode::B, 15_000));
    h.acks.push(ack("bounced", DataNode::B, 15_100));
    h.bounced.insert("bounced".into());
    let verdict = check::check(&h, &LIMITS);
    assert_eq!(verdict.lost, vec!["lost".to_string()]);
    assert!(verdict.violations()[0].starts_with("lost: 1 of 22"), "{:?}", verdict.violations());
}

#[test]
fn the_checker_flags_two_nodes_serving_at_once() {
    let mut h = clean();
    h.observations.push(seen(DataNode::B, 2_001, 2_010, true));
    let verdict = check::check(&h, &LIMITS);
    assert_eq!(verdict.overlaps.len(), 1, "{verdict:#?}");
    assert!(verdict.violations().iter().any(|v| v.starts_with("two serving")));
}

#[test]
fn the_checker_flags_a_delivery_while_the_other_node_serves() {
    let mut h = clean();
    // b's epoch started at 13 s; a delivers at 15 s.
    h.deliveries.push(delivery("m3", DataNode::A, 15_001));
    let verdict = check::check(&h, &LIMITS);
    assert_eq!(verdict.overlaps.len(), 1, "{verdict:#?}");
    let overlap = &verdict.overlaps[0];
    assert_eq!(
        [(overlap.first.0, overlap.first.2), (overlap.second.0, overlap.second.2)],
        [(DataNode::B, "greeting"), (DataNode::A, "delivery")]
    );
}

#[test]
fn the_checker_does_not_take_a_slow_probe_for_two_serving() {
    let mut h = clean();
    // A stopped a answered 220 when it woke, 3 s after the probe's connect: its window spans
    // b's serving probes, but the instant a served may lie anywhere in it.
    h.observations.push(seen(DataNode::A, 11_000, 14_000, true));
    // Two probes of the same node never count.
    h.observations.push(seen(DataNode::B, 14_000, 14_003, true));
    // Nor do windows that only come close (b was seen serving from 13,000 to 13,003 ms).
    h.observations.push(seen(DataNode::A, 13_004, 13_010, true));
    let verdict = check::check(&h, &LIMITS);
    assert!(verdict.overlaps.is_empty(), "{:#?}", verdict.overlaps);
}

#[test]
fn the_checker_allows_duplicates_in_flight_and_flags_the_others() {
    let mut h = clean();
    // Acknowledged and delivered by a just before the kill at 10 s, its result perhaps not
    // yet at b: in flight, and b delivers it again.
    h.acks.push(ack("late", DataNode::A, 9_800));
    h.deliveries.push(delivery("late", DataNode::A, 9_820));
    h.deliveries.push(delivery("late", DataNode::B, 16_000));
    let verdict = check::check(&h, &LIMITS);
    assert!(verdict.violations().is_empty(), "{verdict:#?}");
    assert_eq!(verdict.duplicates, 1);

    // m1 was delivered at 0.92 s, long before the fault: its second delivery is a bug.
    h.deliveries.push(delivery("m1", DataNode::B, 16_500));
    let verdict = check::check(&h, &LIMITS);
    assert_eq!(verdict.unexplained_duplicates, vec!["m1".to_string()]);
    assert!(verdict.violations().iter().any(|v| v.starts_with("duplicates")));

    // A message the client sent twice may be delivered twice.
    h.resent.insert("m1".into());
    assert!(check::check(&h, &LIMITS).violations().is_empty());
}

#[test]
fn the_checker_flags_a_late_recovery_and_none_at_all() {
    let mut h = clean();
    h.observations
        .retain(|o| !(o.serving && o.window.start >= ms(20_000) && o.window.start < ms(24_000)));
    let verdict = check::check(&h, &LIMITS);
    assert_eq!(verdict.rto_final(), Some(ms(4_003)));
    assert!(
        verdict.violations().iter().any(|v| v.starts_with("rto:") && v.contains("only 4003 ms")),
        "{:?}",
        verdict.violations()
    );

    h.observations.retain(|o| o.window.start < ms(20_000));
    let verdict = check::check(&h, &LIMITS);
    assert_eq!(verdict.rto_final(), None);
    assert!(verdict.violations().iter().any(|v| v.contains("20.0 s to 30.0 s, no node served")));
}

/// The deposed primary of issue 11: a cut off, b took over and died; a's links healed, a alone
/// with the witness: a must serve.
#[test]
fn the_checker_flags_a_lone_node_that_never_takes_over() {
    let mut h = clean();
    h.states.insert(2, change(16_000, &[Member::B]));
    h.states[3].at = ms(25_000);
    h.observations.retain(|o| !(o.window.start >= ms(16_000) && o.window.start < ms(25_000)));
    let verdict = check::check(&h, &LIMITS);
    assert!(
        verdict.violations().iter().any(|v| v.contains("16.0 s to 25.0 s, no node served")),
        "{:?}",
        verdict.violations()
    );
}

/// No demand where none is due: a stretch shorter than the bound, a node alone with the
/// witness whose disk was lost since the cluster was last whole for long, and a node alone
/// with the witness cut off.
#[test]
fn the_checker_demands_service_only_where_the_faults_allow_it() {
    let quiet = |states: Vec<StateChange>| {
        let h = History { states, end: ms(30_000), ..History::default() };
        check::recoveries(&h, &LIMITS)
    };
    // 0-10 s whole, a killed for 2 s: too short a stretch.
    let recoveries = quiet(vec![change(0, &[]), change(10_000, &[Member::A]), change(12_000, &[])]);
    assert_eq!(recoveries.iter().map(|(w, _)| w.start).collect::<Vec<_>>(), [ms(0), ms(12_000)]);
    // a's disk lost, a back for 1 s, then b killed: a alone holds nothing, nobody must serve.
    let mut wiped = change(11_000, &[Member::A]);
    wiped.wiped = Some(Member::A);
    let states = vec![
        change(0, &[]),
        change(10_000, &[Member::A]),
        wiped,
        change(12_000, &[]),
        change(13_000, &[Member::B]),
    ];
    let recoveries = quiet(states);
    assert_eq!(recoveries.iter().map(|(w, _)| w.start).collect::<Vec<_>>(), [ms(0)]);
    // b killed while a's link to the witness is cut: nobody must serve.
    let mut cut = change(10_000, &[Member::B]);
    cut.state.broken.insert(Link::Aw);
    let recoveries = quiet(vec![change(0, &[]), cut]);
    assert_eq!(recoveries.len(), 1);
    // The wipe of a node that is down starts no new stretch: b must serve after a's kill.
    let mut wiped = change(10_500, &[Member::A]);
    wiped.wiped = Some(Member::A);
    let recoveries = quiet(vec![change(0, &[]), change(10_000, &[Member::A]), wiped]);
    assert_eq!(recoveries.iter().map(|(w, _)| w.start).collect::<Vec<_>>(), [ms(0), ms(10_000)]);
}

// The operator's actions.

/// m3 held from 1 s (before its delivery at 2.72 s) and released at 5 s: its delivery is a
/// violation; a delivery after the release is not, nor one that began before the hold; one of
/// a hold a primary took alone is counted apart.
#[test]
fn the_checker_flags_a_delivery_of_a_held_message() {
    let mut h = clean();
    let hold = |id: &str, held: u64, released: Option<u64>, alone: bool| Hold {
        id: id.into(),
        held: ms(held),
        released: released.map(ms),
        alone,
    };
    h.holds.push(hold("m5", 6_000, None, false));
    h.holds.push(hold("m4", 1_000, Some(2_000), false));
    // Taken by a primary alone: counted, not a violation.
    h.holds.push(hold("m2", 1_000, None, true));
    let verdict = check::check(&h, &LIMITS);
    assert!(verdict.violations().is_empty(), "{verdict:#?}");
    assert_eq!(verdict.held_alone_delivered, vec!["m2".to_string()]);
    h.holds.push(hold("m3", 1_000, Some(5_000), false));
    let verdict = check::check(&h, &LIMITS);
    assert_eq!(verdict.held_delivered, vec!["m3".to_string()]);
    assert!(verdict.violations().iter().any(|v| v.starts_with("held: 1")), "{verdict:#?}");
}

/// b's failover at 13 s while failover was paused on both nodes from 10 s is flagged; an
/// operator's promote in the pause, or a failover after it, is not.
#[test]
fn the_checker_flags_an_automatic_promotion_while_paused() {
    let mut h = clean();
    let promotion = |epoch, at, cause: &str| Promotion {
        node: DataNode::B,
        epoch,
        at: ms(at),
        cause: cause.into(),
    };
    h.promotions.push(promotion(2, 13_000, "promote"));
    h.promotions.push(promotion(3, 16_000, "failover"));
    h.pauses.push(window(10_000, 15_000));
    assert!(check::check(&h, &LIMITS).violations().is_empty());
    h.promotions.push(promotion(4, 14_000, "failover"));
    let verdict = check::check(&h, &LIMITS);
    assert_eq!(verdict.paused_promotions.len(), 1, "{verdict:#?}");
    assert!(verdict.violations().iter().any(|v| v.starts_with("paused: 1")), "{verdict:#?}");
}

/// While paused, a standby alone with the witness is not expected to take over; the pair whole
/// still must serve.
#[test]
fn the_checker_demands_no_failover_while_paused() {
    let quiet = |states: Vec<StateChange>| {
        let h = History { states, end: ms(30_000), ..History::default() };
        check::recoveries(&h, &LIMITS).iter().map(|(w, _)| w.start).collect::<Vec<_>>()
    };
    let unpaused = quiet(vec![change(0, &[]), change(10_000, &[Member::A]), change(20_000, &[])]);
    assert_eq!(unpaused, [ms(0), ms(10_000), ms(20_000)]);
    let paused = quiet(vec![change(0, &[]), paused(10_000, &[Member::A]), paused(20_000, &[])]);
    assert_eq!(paused, [ms(0), ms(20_000)]);
}

#[test]
fn the_checker_flags_a_standby_queue_unlike_the_primary_s() {
    let mut h = clean();
    let queue = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<BTreeSet<String>>();
    h.final_queues = Some([queue(&["X held"]), queue(&["X held"])]);
    assert!(check::check(&h, &LIMITS).violations().is_empty());
    h.final_queues = Some([queue(&["X held", "Y"]), queue(&["X"])]);
    let verdict = check::check(&h, &LIMITS);
    let diverged = verdict.diverged.clone().unwrap_or_default();
    assert!(diverged.contains(r#"only a's ["X held", "Y"], only b's ["X"]"#), "{diverged}");
    assert!(verdict.violations().iter().any(|v| v.starts_with("diverged:")));
}

/// CI's short form exercises every operator's action (on top of the bug classes it keeps).
#[test]
fn the_short_form_draws_every_operator_action() {
    let mut drawn = BTreeSet::new();
    for seed in SHORT_FORM {
        for step in Schedule::generate(seed, 3, AIM).steps {
            if let Action::Operator(op) = step.action {
                drawn.insert(op.to_string().split(' ').next().unwrap_or("").to_string());
            }
        }
    }
    for kind in ["pause", "resume", "promote", "switchover", "rebuild", "hold", "release"] {
        assert!(drawn.contains(kind), "{kind} never drawn by {SHORT_FORM:?}: {drawn:?}");
    }
}
