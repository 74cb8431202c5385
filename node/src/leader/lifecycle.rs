//! Expiry and periodic traffic resets: time-driven status changes, found by
//! the leader and applied by a `Reevaluate` command that carries the leader's
//! clock (a data limit needs no clock: recording traffic settles it).

use vpn_storage::command::Command;
use vpn_storage::model::{User, UserStatus};
use vpn_storage::state::State;

/// Most users one `Reevaluate` names, so one entry stays small.
const MAX_PER_COMMAND: usize = 1000;

/// The command for the users whose status or period is due to change at
/// `now_ms`; `None` when nothing is.
pub fn due(state: &State, now_ms: i64) -> Option<Command> {
    let names: Vec<String> =
        state.users.values().filter(|u| is_due(u, now_ms)).take(MAX_PER_COMMAND).map(|u| u.name.clone()).collect();
    (!names.is_empty()).then_some(Command::Reevaluate { names, at_ms: now_ms })
}

fn is_due(user: &User, now_ms: i64) -> bool {
    let period_over = user.limits.reset.period_end_ms(user.period_start_ms).is_some_and(|end| end <= now_ms);
    let automatic = matches!(user.status, UserStatus::Active | UserStatus::Limited | UserStatus::Expired);
    period_over || (automatic && user.status_at(now_ms) != user.status)
}

#[cfg(test)]
mod tests {
    use vpn_storage::command::apply;
    use vpn_storage::model::{Limits, ResetPeriod};

    use super::*;

    const DAY: i64 = 86_400_000;

    fn with_user(limits: Limits, used: u64) -> State {
        let mut s = State::default();
        let mut u = User::new("ann".into(), 0);
        u.limits = limits;
        u.used_bytes = used;
        apply(&mut s, &Command::CreateUser(u));
        s
    }

    fn run(s: &mut State, now: i64) -> UserStatus {
        if let Some(cmd) = due(s, now) {
            apply(s, &cmd);
        }
        s.users["ann"].status
    }

    #[test]
    fn expiry_takes_effect_when_due_and_only_then() {
        let mut s = with_user(Limits { expires_at_ms: 10 * DAY, ..Limits::default() }, 0);
        assert!(due(&s, 10 * DAY - 1).is_none());
        assert_eq!(run(&mut s, 10 * DAY), UserStatus::Expired);
        assert!(due(&s, 11 * DAY).is_none(), "settled");
    }

    #[test]
    fn a_daily_reset_lifts_a_limited_user() {
        let limits = Limits { data_limit_bytes: 100, reset: ResetPeriod::Daily, ..Limits::default() };
        let mut s = with_user(limits, 150);
        assert_eq!(s.users["ann"].status, UserStatus::Active, "created as given");
        if let Some(u) = s.users.get_mut("ann") {
            u.status = UserStatus::Limited;
        }
        assert!(due(&s, DAY - 1).is_none());
        assert_eq!(run(&mut s, DAY + 5), UserStatus::Active);
        assert_eq!(s.users["ann"].used_bytes, 0);
        assert_eq!(s.users["ann"].period_start_ms, DAY, "periods follow the calendar, not the check");
    }

    #[test]
    fn a_disabled_user_stays_disabled() {
        let mut s = with_user(Limits { expires_at_ms: DAY, ..Limits::default() }, 0);
        if let Some(u) = s.users.get_mut("ann") {
            u.status = UserStatus::Disabled;
        }
        assert!(due(&s, 2 * DAY).is_none());
    }
}
