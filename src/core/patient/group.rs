//! Alarms as people see them: the conditions of one group (one vital and direction,
//! or one probe; see [`RuleSet::group_of`]) presented as ONE alarm whose priority
//! follows the highest of its rules met.
//!
//! Invariants, per chair and group:
//! - every condition of the group holding an alarm holds the same id: the group's
//!   (a condition raising while another holds the group's alarm joins it, see
//!   [`PatientState::evaluate`]);
//! - `shown` is what dashboards were last told: the id and the conditions holding
//!   it, highest priority first. After each operation on the chair, [`present`]
//!   compares it with the conditions and yields at most one change per group
//!   (a raise, an update, a clear), never a stack of alarms for one vital;
//! - an alarm whose priority rises is unacknowledged again (a higher priority
//!   breaks through an acknowledgement, IEC 60601-1-8); one whose priority stays or
//!   falls keeps its acknowledgement, and a rule joining it is acknowledged with it.
//!
//! [`RuleSet::group_of`]: crate::core::rules::RuleSet::group_of
//! [`present`]: PatientState::present

use super::{PatientState, Transition};
use crate::core::condition::{Condition, ConditionState, Step};
use crate::core::rules::{Priority, RuleSet};

/// A condition holding a group's alarm, with the value and limit it joined with.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    pub condition: usize,
    pub value: f64,
    pub limit: f64,
}

/// What dashboards were last told about one group's alarm.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(super) struct Shown {
    id: u64,
    /// Highest priority first (then rule order): the first sets the priority.
    members: Vec<Member>,
    acknowledged: bool,
    /// Device time the alarm was raised at.
    raised_ts: u64,
}

/// How a group's alarm changed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    Raised,
    /// Rules joined or left it; `previous` is its priority before.
    Updated {
        previous: Priority,
    },
    Cleared,
}

/// One change of one group's alarm, for the ward to turn into an event.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupChange {
    pub id: u64,
    pub change: Change,
    /// The alarm is acknowledged (after the change).
    pub acknowledged: bool,
    /// The conditions holding it after the change, highest priority first (empty
    /// when cleared).
    pub members: Vec<Member>,
    /// The condition whose rule and priority the event carries: the first member,
    /// or for a clear, the one that set the priority until then.
    pub top: usize,
    /// The transition the event reports (value, limit, time, reason, parts): the
    /// top condition's own, if it changed, or the group's last.
    pub cause: Transition,
    /// Device time the alarm was raised at (for a raise, the event's own).
    pub raised_ts: u64,
}

/// The id of the alarm group `g` holds in `conditions` (a chair's), if any.
pub(super) fn group_alarm(conditions: &[ConditionState], rules: &RuleSet, g: usize) -> Option<u64> {
    rules
        .group(g)
        .iter()
        .find_map(|&j| conditions[j].alarm_id())
}

/// Order `members` as an alarm lists them: highest priority first; the sort is
/// stable, so rule order breaks ties.
fn highest_first(rules: &RuleSet, members: &mut [Member]) {
    members.sort_by_key(|m| std::cmp::Reverse(rules.condition(m.condition).priority));
}

impl PatientState {
    /// Turn one operation's condition transitions into the changes of the alarms
    /// people see, one per group touched, in the order the groups were first
    /// touched.
    pub fn present(&mut self, rules: &RuleSet, transitions: Vec<Transition>) -> Vec<GroupChange> {
        let mut touched: Vec<(usize, Vec<Transition>)> = Vec::new();
        for t in transitions {
            let g = rules.group_of(t.condition);
            match touched.iter_mut().find(|(x, _)| *x == g) {
                Some((_, ts)) => ts.push(t),
                None => touched.push((g, vec![t])),
            }
        }
        let mut out = Vec::new();
        for (g, ts) in touched {
            self.present_group(rules, g, ts, &mut out);
        }
        out
    }

    fn present_group(
        &mut self,
        rules: &RuleSet,
        g: usize,
        ts: Vec<Transition>,
        out: &mut Vec<GroupChange>,
    ) {
        let before = self.shown[g].take();
        let mut now = Vec::new();
        let mut id = None;
        for &j in rules.group(g) {
            let Some(alarm_id) = self.conditions[j].alarm_id() else {
                continue;
            };
            id.get_or_insert(alarm_id);
            let raised = ts
                .iter()
                .rev()
                .find(|t| t.condition == j && matches!(t.step, Step::Raised { .. }));
            let member = match (raised, before.as_ref()) {
                (Some(t), _) => Member {
                    condition: j,
                    value: t.value,
                    limit: t.limit,
                },
                (None, Some(b)) => match b.members.iter().find(|m| m.condition == j) {
                    Some(m) => *m,
                    None => self.member_now(rules, j),
                },
                (None, None) => self.member_now(rules, j),
            };
            now.push(member);
        }
        highest_first(rules, &mut now);
        let last = ts.last().expect("a touched group has a transition").clone();
        let own = |top: usize, step_raised: bool| {
            ts.iter()
                .rev()
                .find(|t| {
                    t.condition == top && matches!(t.step, Step::Raised { .. }) == step_raised
                })
                .cloned()
                .unwrap_or_else(|| last.clone())
        };
        let clear = |b: Shown, out: &mut Vec<GroupChange>| {
            let top = b.members[0].condition;
            let cause = own(top, false);
            let raised_ts = b.raised_ts;
            out.push(GroupChange {
                id: b.id,
                change: Change::Cleared,
                acknowledged: b.acknowledged,
                members: Vec::new(),
                top,
                cause,
                raised_ts,
            });
        };
        let raise = |id: u64, now: Vec<Member>, out: &mut Vec<GroupChange>| {
            let top = now[0].condition;
            let cause = own(top, true);
            let raised_ts = cause.ts;
            out.push(GroupChange {
                id,
                change: Change::Raised,
                acknowledged: false,
                members: now.clone(),
                top,
                cause,
                raised_ts,
            });
            Shown {
                id,
                members: now,
                acknowledged: false,
                raised_ts,
            }
        };
        self.shown[g] = match (before, id) {
            (None, None) => None,
            (None, Some(id)) => Some(raise(id, now, out)),
            (Some(b), None) => {
                clear(b, out);
                None
            }
            (Some(b), Some(id)) if b.id != id => {
                clear(b, out);
                Some(raise(id, now, out))
            }
            (Some(b), Some(id)) => {
                let same = b.members.len() == now.len()
                    && b.members
                        .iter()
                        .all(|m| now.iter().any(|n| n.condition == m.condition));
                if same {
                    Some(b)
                } else {
                    let previous = rules.condition(b.members[0].condition).priority;
                    let priority = rules.condition(now[0].condition).priority;
                    let acknowledged = b.acknowledged && priority <= previous;
                    if acknowledged {
                        // Joined an acknowledged alarm without raising its priority:
                        // acknowledged with it (a latching rule will not hold it up).
                        for m in &now {
                            Condition::acknowledge_joined(&mut self.conditions[m.condition]);
                        }
                    }
                    out.push(GroupChange {
                        id,
                        change: Change::Updated { previous },
                        acknowledged,
                        members: now.clone(),
                        top: now[0].condition,
                        cause: last.clone(),
                        raised_ts: b.raised_ts,
                    });
                    Some(Shown {
                        id,
                        members: now,
                        acknowledged,
                        raised_ts: b.raised_ts,
                    })
                }
            }
        };
    }

    /// The value and limit of condition `j` as measured now (a member that joined
    /// without a transition of its own, e.g. a restored one).
    fn member_now(&self, rules: &RuleSet, j: usize) -> Member {
        let ts = self.latest.received_at;
        let (value, limit) = self.report(rules, j, ts);
        Member {
            condition: j,
            value,
            limit,
        }
    }

    /// Alarm `alarm_id` was acknowledged: the group holding it is.
    pub(super) fn group_acknowledged(&mut self, alarm_id: u64) {
        for s in self.shown.iter_mut().flatten() {
            if s.id == alarm_id {
                s.acknowledged = true;
            }
        }
    }

    /// Alarm `alarm_id` ended without an event: no group shows it.
    pub(super) fn forget_shown(&mut self, alarm_id: u64) {
        for s in self.shown.iter_mut() {
            if s.as_ref().is_some_and(|s| s.id == alarm_id) {
                *s = None;
            }
        }
    }

    /// A restored alarm (see [`PatientState::restore_alarm`]) is shown as it was.
    pub(super) fn group_restored(
        &mut self,
        rules: &RuleSet,
        g: usize,
        e: &crate::core::AlarmEvent,
        mut members: Vec<Member>,
    ) {
        highest_first(rules, &mut members);
        self.shown[g] = Some(Shown {
            id: e.id,
            members,
            acknowledged: e.acknowledged_by.is_some(),
            raised_ts: e.raised_ts,
        });
    }
}
