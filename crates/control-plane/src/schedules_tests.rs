use chrono::{DateTime, Duration as Span, TimeZone, Utc};

use super::*;

fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 10, h, m, s).unwrap()
}

fn cron(expr: &str) -> croner::Cron {
    spec::backup::cron_schedule(expr).unwrap()
}

/// The mark after `decision` was carried out (a fire stores its due time).
fn after(mark: Option<Mark>, decision: &Decision) -> Option<Mark> {
    match decision {
        Decision::Start(m) => Some(m.clone()),
        Decision::Fire(due) => mark.map(|m| Mark {
            last_due: Some(*due),
            ..m
        }),
        Decision::Idle => mark,
    }
}

#[test]
fn latest_due_is_inclusive_and_ignores_fractions_of_a_second() {
    let every_minute = cron("* * * * *");
    assert_eq!(latest_due(&every_minute, at(12, 1, 0)), Some(at(12, 1, 0)));
    let just_after = at(12, 1, 0) + Span::milliseconds(400);
    assert_eq!(latest_due(&every_minute, just_after), Some(at(12, 1, 0)));
    let just_before = at(12, 1, 0) - Span::milliseconds(1);
    assert_eq!(latest_due(&every_minute, just_before), Some(at(12, 0, 0)));
    assert_eq!(next_due(&every_minute, at(12, 1, 0)), Some(at(12, 2, 0)));
    assert_eq!(next_due(&every_minute, just_before), Some(at(12, 1, 0)));
}

#[test]
fn a_new_schedule_counts_from_now_and_fires_nothing_before() {
    let c = cron("*/5 * * * *");
    let now = at(12, 7, 30);
    let Decision::Start(mark) = decide(&c, "*/5 * * * *", None, now) else {
        panic!("a schedule without a mark starts");
    };
    assert_eq!(mark.since, now);
    assert_eq!(
        mark.last_due,
        Some(at(12, 5, 0)),
        "12:05 came before it existed"
    );
    assert_eq!(
        decide(&c, "*/5 * * * *", Some(&mark), at(12, 9, 59)),
        Decision::Idle
    );
    assert_eq!(
        decide(&c, "*/5 * * * *", Some(&mark), at(12, 10, 0)),
        Decision::Fire(at(12, 10, 0))
    );
}

#[test]
fn a_due_time_fires_once() {
    let c = cron("* * * * *");
    let mut mark = after(None, &decide(&c, "* * * * *", None, at(12, 0, 10)));
    let mut fired = Vec::new();
    // A tick every 7 s for 5 minutes.
    let mut now = at(12, 0, 10);
    while now < at(12, 5, 10) {
        let d = decide(&c, "* * * * *", mark.as_ref(), now);
        if let Decision::Fire(due) = d {
            fired.push(due);
        }
        mark = after(mark, &d);
        now += Span::seconds(7);
    }
    let minutes: Vec<_> = (1..=5).map(|m| at(12, m, 0)).collect();
    assert_eq!(fired, minutes);
}

#[test]
fn due_times_missed_while_no_leader_ran_fire_once() {
    let c = cron("* * * * *");
    let mark = Mark {
        cron_expression: "* * * * *".into(),
        since: at(11, 0, 0),
        last_due: Some(at(12, 1, 0)),
        task_id: None,
    };
    let d = decide(&c, "* * * * *", Some(&mark), at(12, 7, 10));
    assert_eq!(d, Decision::Fire(at(12, 7, 0)), "the latest only");
    let mark = after(Some(mark), &d);
    assert_eq!(
        decide(&c, "* * * * *", mark.as_ref(), at(12, 7, 50)),
        Decision::Idle
    );

    let nightly = cron("0 3 * * *");
    let mark = Mark {
        cron_expression: "0 3 * * *".into(),
        since: at(0, 0, 0) - Span::days(10),
        last_due: Some(at(3, 0, 0) - Span::days(3)),
        task_id: None,
    };
    assert_eq!(
        decide(&nightly, "0 3 * * *", Some(&mark), at(10, 0, 0)),
        Decision::Fire(at(3, 0, 0))
    );
}

#[test]
fn a_leader_whose_clock_is_behind_fires_nothing_again() {
    let c = cron("* * * * *");
    let mark = Mark {
        cron_expression: "* * * * *".into(),
        since: at(11, 0, 0),
        last_due: Some(at(12, 2, 0)),
        task_id: None,
    };
    assert_eq!(
        decide(&c, "* * * * *", Some(&mark), at(12, 1, 58)),
        Decision::Idle
    );
}

#[test]
fn a_changed_expression_is_a_new_schedule() {
    let mark = Mark {
        cron_expression: "0 * * * *".into(),
        since: at(0, 0, 0),
        last_due: Some(at(12, 0, 0)),
        task_id: None,
    };
    // 12:30 came due under the new expression before it was written: not fired.
    let d = decide(
        &cron("30 * * * *"),
        "30 * * * *",
        Some(&mark),
        at(12, 40, 0),
    );
    let Decision::Start(new) = d else {
        panic!("{d:?}")
    };
    assert_eq!(new.cron_expression, "30 * * * *");
    assert_eq!(new.last_due, Some(at(12, 30, 0)));
}

#[test]
fn a_failover_with_a_gap_fires_each_due_time_once_and_the_gap_once() {
    // Two leaders share the mark (etcd); the first runs until 12:03:20, none runs until
    // 12:06:40, the second runs after. Ticks at uneven intervals.
    let c = cron("* * * * *");
    let mut mark = after(None, &decide(&c, "* * * * *", None, at(12, 0, 5)));
    let mut fired = Vec::new();
    let mut now = at(12, 0, 5);
    let mut step = 0;
    while now < at(12, 10, 30) {
        let leading = now < at(12, 3, 20) || now >= at(12, 6, 40);
        if leading {
            let d = decide(&c, "* * * * *", mark.as_ref(), now);
            if let Decision::Fire(due) = d {
                fired.push(due);
            }
            mark = after(mark, &d);
        }
        step += 1;
        now += Span::seconds([3, 11, 29, 17][step % 4]);
    }
    let want = vec![
        at(12, 1, 0),
        at(12, 2, 0),
        at(12, 3, 0),
        // 12:04, 12:05 and 12:06 came while no leader ran: once, as 12:06.
        at(12, 6, 0),
        at(12, 7, 0),
        at(12, 8, 0),
        at(12, 9, 0),
        at(12, 10, 0),
    ];
    assert_eq!(fired, want);
}

#[test]
fn a_due_time_waits_for_a_primary_for_a_bounded_while() {
    let due = at(3, 0, 0);
    assert!(!gives_up(due, due));
    assert!(!gives_up(due, due + Span::minutes(15)));
    assert!(gives_up(due, due + Span::minutes(15) + Span::seconds(1)));
    assert!(!gives_up(due, due - Span::seconds(5)), "a clock behind");
}

#[test]
fn the_loop_sleeps_until_the_next_due_time_capped() {
    let now = at(12, 0, 50);
    assert_eq!(
        sleep_for(now, [at(12, 1, 0), at(12, 5, 0)], false),
        Duration::from_secs(10)
    );
    assert_eq!(sleep_for(now, [at(12, 5, 0)], false), MAX_SLEEP);
    assert_eq!(sleep_for(now, [], false), MAX_SLEEP);
    assert_eq!(sleep_for(now, [at(12, 5, 0)], true), RETRY);
    assert_eq!(
        sleep_for(now, [at(12, 0, 0)], false),
        MAX_SLEEP,
        "a past instant is no wake-up"
    );
}
