//! A linearizability checker for the user-registry histories that fault tests
//! record.
//!
//! A client sees a request only from outside: when it was sent, when (and
//! whether) an answer came, and what it said. The registry is linearizable if
//! one order of all operations, each taking effect at an instant between its
//! call and its return, explains every answer. [`check`] searches for such an
//! order as Wing & Gong with Lowe's memoization do (and porcupine):
//! - users do not affect each other, so each user name (key) is searched alone;
//! - a depth-first search places, among the operations not placed yet, one
//!   whose call precedes every pending return, and backtracks when the model
//!   cannot give the answer seen;
//! - a cache of (placed operations, model states) searched in vain cuts
//!   repeated subtrees, so the search is not exponential in practice;
//! - an operation without an answer (timeout, UNAVAILABLE, a dropped
//!   connection) returns at +infinity: it may take effect at any time after
//!   its call, or never;
//! - the search of a key stops after a step budget with
//!   [`Verdict::Inconclusive`] rather than hang.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// Search steps per key before [`check`] answers [`Verdict::Inconclusive`]
/// (about a second). Histories with a few concurrent clients per key need a
/// few steps per operation; tens of concurrent writes on one key can need
/// more. The cache grows by at most one entry per step, which bounds memory.
pub const DEFAULT_BUDGET: u64 = 1_000_000;

/// A user's status as the checked operations see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    Active,
    Disabled,
}

/// What a client asked about one user. `Create` makes an `Active` user with
/// an id the server chooses; `SetStatus` disables or enables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    Create,
    Delete,
    Get,
    SetStatus(Status),
}

/// The answer a client saw. `Unknown` is none (timeout, UNAVAILABLE, a
/// dropped connection): the operation may or may not have taken effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Created { id: String },
    AlreadyExists,
    Deleted,
    NotFound,
    Found { id: String, status: Status },
    Updated { id: String, status: Status },
    Unknown,
}

/// One operation of a history, times in nanoseconds since the test started.
/// One with `ret: None` or `output: Output::Unknown` has an unknown outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub client: u64,
    /// The user name; operations on different keys never affect each other.
    pub key: String,
    pub call: u64,
    pub ret: Option<u64>,
    pub input: Input,
    pub output: Output,
}

/// The outcome of [`check`]. `NotLinearizable` explains itself with the
/// key's operations and the longest order the search built; `Inconclusive`
/// means the search of `key` ran out of budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    NotLinearizable { key: String, explanation: String },
    Inconclusive { key: String },
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable => write!(f, "linearizable"),
            Verdict::NotLinearizable { key, explanation } => write!(f, "key {key:?} not linearizable: {explanation}"),
            Verdict::Inconclusive { key } => write!(f, "key {key:?} inconclusive: out of search budget"),
        }
    }
}

/// Checks `history` with [`DEFAULT_BUDGET`] steps per key. A key that is not
/// linearizable wins over one that ran out of budget.
pub fn check(history: &[Op]) -> Verdict {
    check_with_budget(history, DEFAULT_BUDGET)
}

/// [`check`] with another step budget per key.
pub fn check_with_budget(history: &[Op], budget: u64) -> Verdict {
    let mut per_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    // A read without an answer is explained by any state: leave it out.
    for op in history.iter().filter(|op| !(op.input == Input::Get && is_unknown(op))) {
        per_key.entry(&op.key).or_default().push(op);
    }
    let mut inconclusive = None;
    for (key, mut ops) in per_key {
        ops.sort_by_key(|op| op.call);
        match search(&ops, budget) {
            Ok(false) if inconclusive.is_none() => inconclusive = Some(key.to_string()),
            Ok(_) => {}
            Err((order, states)) => {
                return Verdict::NotLinearizable { key: key.to_string(), explanation: explain(&ops, &order, &states) }
            }
        }
    }
    inconclusive.map_or(Verdict::Linearizable, |key| Verdict::Inconclusive { key })
}

fn is_unknown(op: &Op) -> bool {
    op.ret.is_none() || op.output == Output::Unknown
}

/// One user as the registry holds it. `id: None` is a user made by a create
/// that gave no answer: the first answer that shows its id pins it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum State {
    Absent,
    Present { id: Option<String>, status: Status },
}

/// The states `input` can lead to from `state` when the client saw `output`;
/// none if the registry could not have answered so. Placing an unknown
/// operation means it took effect (leaving it unplaced means it did not).
fn step(state: &State, input: &Input, output: &Output) -> Vec<State> {
    use {Input as I, Output as O, State::*};
    let fits = |known: &Option<String>, shown: &str| known.as_ref().is_none_or(|k| k == shown);
    let pinned = |id: &str, status| Present { id: Some(id.to_string()), status };
    let next = match (state, input, output) {
        (Absent, I::Create, O::Created { id }) => Some(pinned(id, Status::Active)),
        (Absent, I::Create, O::Unknown) => Some(Present { id: None, status: Status::Active }),
        (Present { .. }, I::Create, O::AlreadyExists | O::Unknown) => Some(state.clone()),
        (Present { .. }, I::Delete, O::Deleted | O::Unknown) => Some(Absent),
        (Absent, I::Delete | I::Get | I::SetStatus(_), O::NotFound | O::Unknown) => Some(Absent),
        (Present { id, status }, I::Get, O::Found { id: shown, status: seen }) => {
            (fits(id, shown) && status == seen).then(|| pinned(shown, *status))
        }
        (Present { id, .. }, I::SetStatus(to), O::Updated { id: shown, status: seen }) => {
            (fits(id, shown) && to == seen).then(|| pinned(shown, *to))
        }
        (Present { id, .. }, I::SetStatus(to), O::Unknown) => Some(Present { id: id.clone(), status: *to }),
        (Present { .. }, I::Get, O::Unknown) => Some(state.clone()),
        _ => None,
    };
    next.into_iter().collect()
}

/// [`step`] over a set of possible states (sorted, without duplicates), so
/// that a nondeterministic model needs no branching in the search.
fn step_all(states: &[State], op: &Op) -> Vec<State> {
    let output = if is_unknown(op) { &Output::Unknown } else { &op.output };
    let mut next: Vec<State> = states.iter().flat_map(|s| step(s, &op.input, output)).collect();
    next.sort();
    next.dedup();
    next
}

#[derive(Clone, Copy)]
enum Event {
    Call(usize),
    Return(u64),
}

/// The calls and returns of one key's answered operations in time order, as a
/// doubly linked list from which placed operations are lifted and put back in
/// last-out order (dancing links). Node 0 is the head, the last the end (a
/// return at +infinity).
struct Events {
    node: Vec<Event>,
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Per operation: its call and return nodes (unused for unknown ones).
    nodes_of: Vec<[usize; 2]>,
}

impl Events {
    fn new(ops: &[&Op]) -> Self {
        let mut events: Vec<(u64, bool, usize)> = Vec::new();
        for (i, op) in ops.iter().enumerate().filter(|(_, op)| !is_unknown(op)) {
            // Calls sort before returns at the same instant: such operations
            // count as concurrent, which never rejects a valid history.
            events.push((op.call, false, i));
            events.push((op.ret.unwrap_or(op.call).max(op.call), true, i));
        }
        events.sort();
        let len = events.len() + 2;
        let (mut node, mut nodes_of) = (vec![Event::Return(u64::MAX); len], vec![[0, 0]; ops.len()]);
        for (n, &(time, is_return, i)) in events.iter().enumerate() {
            node[n + 1] = if is_return { Event::Return(time) } else { Event::Call(i) };
            nodes_of[i][usize::from(is_return)] = n + 1;
        }
        let (next, prev) = ((1..=len).collect(), (0..len).map(|n| n.saturating_sub(1)).collect());
        Events { node, next, prev, nodes_of }
    }

    /// The first operation called before the first pending return for which
    /// `fits` holds.
    fn first_call(&self, fits: impl Fn(usize) -> bool) -> Option<usize> {
        let mut n = self.next[0];
        while let Event::Call(i) = self.node[n] {
            if fits(i) {
                return Some(i);
            }
            n = self.next[n];
        }
        None
    }

    fn lift(&mut self, op: usize) {
        for n in self.nodes_of[op] {
            self.next[self.prev[n]] = self.next[n];
            self.prev[self.next[n]] = self.prev[n];
        }
    }

    fn unlift(&mut self, op: usize) {
        for n in self.nodes_of[op].into_iter().rev() {
            self.next[self.prev[n]] = n;
            self.prev[self.next[n]] = n;
        }
    }
}

/// The next choice to try at one depth of the search: at the `Start`, a read
/// that fits the state as it is (then the only choice); then each answered
/// `Event` call before the first pending return; then the next `Unknown`
/// operation of each kind, if called by that return (`bound`).
#[derive(Clone, Copy)]
enum Cursor {
    Start,
    Event(usize),
    Unknown { kind: usize, bound: u64 },
    Done,
}

/// What is placed: answered operations as a bitset, unknown ones as a count
/// per kind (they are placed in call order).
fn mark(placed: &mut [u64], used: &mut [usize], kind: Option<usize>, i: usize, on: bool) {
    match (kind, on) {
        (Some(k), true) => used[k] += 1,
        (Some(k), false) => used[k] -= 1,
        (None, true) => placed[i / 64] |= 1 << (i % 64),
        (None, false) => placed[i / 64] &= !(1 << (i % 64)),
    }
}

/// Nodes searched in vain: placed answered operations, then states, to the
/// counts of unknown operations placed.
type Failed = HashMap<Vec<u64>, HashMap<Vec<State>, Vec<Vec<usize>>>>;

/// Searches an order for one key's operations, sorted by call: `Ok(true)` if
/// found, `Ok(false)` out of budget, else the longest order and its states.
/// Besides the cache, four cuts that lose no order:
/// - a read that fits the state now goes next, alone: it sees the same state
///   here as later (where an id could only be less pinned);
/// - unknown operations with the same input are placed in call order: the
///   earliest may go wherever a later one could;
/// - an unknown operation is placed only where it changes the state;
/// - a node that failed also fails with fewer unknown operations left.
fn search(ops: &[&Op], budget: u64) -> Result<bool, (Vec<usize>, Vec<State>)> {
    let mut events = Events::new(ops);
    let mut kinds: Vec<(&Input, Vec<usize>)> = Vec::new();
    let mut kind_of = vec![None; ops.len()];
    for (i, op) in ops.iter().enumerate().filter(|(_, op)| is_unknown(op)) {
        let k = kinds.iter().position(|(input, _)| **input == op.input).unwrap_or_else(|| {
            kinds.push((&op.input, Vec::new()));
            kinds.len() - 1
        });
        kinds[k].1.push(i);
        kind_of[i] = Some(k);
    }
    let (mut placed, mut used) = (vec![0u64; ops.len().div_ceil(64)], vec![0; kinds.len()]);
    let mut states = vec![State::Absent];
    let mut failed = Failed::new();
    // Placed operations, with the choice to try next and the states before.
    let mut stack: Vec<(usize, Cursor, Vec<State>)> = Vec::new();
    let mut best = (Vec::new(), states.clone());
    let mut left = ops.iter().filter(|op| !is_unknown(op)).count();
    let mut at = Cursor::Start;
    for _ in 0..budget {
        if left == 0 {
            return Ok(true);
        }
        let (candidate, then) = match at {
            Cursor::Start => {
                let read =
                    |i: usize| matches!(ops[i].output, Output::Found { .. } | Output::NotFound | Output::AlreadyExists);
                match events.first_call(|i| read(i) && step_all(&states, ops[i]) == states) {
                    Some(i) => (Some(i), Cursor::Done),
                    None => (None, Cursor::Event(events.next[0])),
                }
            }
            Cursor::Event(n) => match events.node[n] {
                Event::Call(i) => (Some(i), Cursor::Event(events.next[n])),
                Event::Return(bound) => (None, Cursor::Unknown { kind: 0, bound }),
            },
            Cursor::Unknown { kind, bound } if kind < kinds.len() => {
                let next = kinds[kind].1.get(used[kind]).copied().filter(|&i| ops[i].call <= bound);
                (next, Cursor::Unknown { kind: kind + 1, bound })
            }
            Cursor::Unknown { .. } | Cursor::Done => {
                // Every choice at this depth failed: take back the last one.
                let Some((i, then, before)) = stack.pop() else { return Err(best) };
                let after = std::mem::replace(&mut states, before);
                failed.entry(placed.clone()).or_default().entry(after).or_default().push(used.clone());
                mark(&mut placed, &mut used, kind_of[i], i, false);
                if kind_of[i].is_none() {
                    events.unlift(i);
                    left += 1;
                }
                at = then;
                continue;
            }
        };
        at = then;
        let Some(i) = candidate else { continue };
        let next = step_all(&states, ops[i]);
        if next.is_empty() || (kind_of[i].is_some() && next == states) {
            continue;
        }
        mark(&mut placed, &mut used, kind_of[i], i, true);
        let seen = failed.get(&placed).and_then(|by_states| by_states.get(&next));
        if seen.is_some_and(|f| f.iter().any(|u| u.iter().zip(&used).all(|(a, b)| a <= b))) {
            mark(&mut placed, &mut used, kind_of[i], i, false);
            continue;
        }
        stack.push((i, then, std::mem::replace(&mut states, next)));
        if kind_of[i].is_none() {
            events.lift(i);
            left -= 1;
        }
        if stack.len() > best.0.len() {
            best = (stack.iter().map(|f| f.0).collect(), states.clone());
        }
        at = Cursor::Start;
    }
    Ok(left == 0)
}

/// A reader's account of a failed key: its operations in call order (times
/// in ms since the start) and the longest order the search built.
fn explain(ops: &[&Op], order: &[usize], states: &[State]) -> String {
    let ms = |ns: u64| format!("{}.{:03}", ns / 1_000_000, ns / 1_000 % 1_000);
    let mut lines = vec!["no order of its operations explains every answer; in call order (ms):".to_string()];
    for (i, op) in ops.iter().enumerate() {
        let (ret, output) = match op.ret {
            Some(ret) if !is_unknown(op) => (ms(ret), &op.output),
            _ => ("?".to_string(), &Output::Unknown),
        };
        lines.push(format!("  #{i} client {} [{} .. {ret}] {:?} -> {output:?}", op.client, ms(op.call), op.input));
    }
    let placed: Vec<String> = order.iter().map(|i| format!("#{i}")).collect();
    lines.push(format!("longest order found: {} of {} ops: {}", order.len(), ops.len(), placed.join(" ")));
    lines.push(format!("state after it: {states:?}"));
    lines.join("\n")
}

/// A history recorder that many tokio tasks share (clone it into each): call
/// [`History::invoke`] just before sending a request and
/// [`History::complete`] just after its answer, so that each window holds
/// the instant the operation took effect.
#[derive(Clone, Debug)]
pub struct History {
    start: Instant,
    ops: Arc<Mutex<Vec<Op>>>,
}

/// An operation sent but not answered yet. Dropped without completion, it
/// stays unknown, which is right for a task aborted mid-request.
#[must_use = "complete it, or call complete_unknown to say the outcome is unknown"]
#[derive(Debug)]
pub struct Pending(usize);

impl Default for History {
    fn default() -> Self {
        History { start: Instant::now(), ops: Arc::default() }
    }
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Op>> {
        // A task that panicked mid-record leaves a valid history behind.
        self.ops.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Records the call of `input` on `key` by `client`, now.
    pub fn invoke(&self, client: u64, key: impl Into<String>, input: Input) -> Pending {
        let mut ops = self.lock();
        let call = self.now();
        ops.push(Op { client, key: key.into(), call, ret: None, input, output: Output::Unknown });
        Pending(ops.len() - 1)
    }

    /// Records the answer of `pending`, now; `Output::Unknown` keeps it unknown.
    pub fn complete(&self, pending: Pending, output: Output) {
        let mut ops = self.lock();
        let ret = (output != Output::Unknown).then(|| self.now());
        let op = &mut ops[pending.0];
        (op.ret, op.output) = (ret, output);
    }

    /// Records that `pending` got no answer: it may or may not have taken effect.
    pub fn complete_unknown(&self, pending: Pending) {
        self.complete(pending, Output::Unknown);
    }

    /// The operations recorded so far.
    pub fn ops(&self) -> Vec<Op> {
        self.lock().clone()
    }

    /// [`check`] of the operations recorded so far.
    pub fn check(&self) -> Verdict {
        check(&self.ops())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Input::*;

    const MS: u64 = 1_000_000;

    /// An answered operation, times in ms.
    fn op(client: u64, key: &str, call: u64, ret: u64, input: Input, output: Output) -> Op {
        Op { client, key: key.into(), call: call * MS, ret: Some(ret * MS), input, output }
    }

    fn unanswered(client: u64, key: &str, call: u64, input: Input) -> Op {
        Op { client, key: key.into(), call: call * MS, ret: None, input, output: Output::Unknown }
    }

    fn created(id: &str) -> Output {
        Output::Created { id: id.into() }
    }

    fn found(id: &str, status: Status) -> Output {
        Output::Found { id: id.into(), status }
    }

    fn rejected(history: &[Op]) -> bool {
        matches!(check(history), Verdict::NotLinearizable { .. })
    }

    const ON: Status = Status::Active;

    #[test]
    fn stale_lost_and_resurrected_reads_are_rejected() {
        let (made, deleted) = (op(1, "u", 0, 1, Create, created("a")), op(1, "u", 2, 3, Delete, Output::Deleted));
        assert!(rejected(&[made.clone(), op(2, "u", 2, 3, Get, Output::NotFound)]), "stale read");
        let made_meanwhile = op(3, "u", 0, 10, Create, created("a"));
        assert!(rejected(&[made_meanwhile, deleted.clone(), op(2, "u", 11, 12, Get, found("a", ON))]), "lost delete");
        assert!(rejected(&[made, deleted, op(3, "u", 4, 5, Get, found("a", ON))]), "resurrected user");
    }

    #[test]
    fn create_refused_after_delete_then_granted_is_rejected() {
        let h = [
            op(9, "u03", 0, 1, Create, created("a")),
            op(1, "u03", 2, 3, Delete, Output::Deleted),
            op(2, "u03", 4, 5, Create, Output::AlreadyExists),
            op(3, "u03", 6, 7, Create, created("b")),
        ];
        let Verdict::NotLinearizable { key, explanation } = check(&h) else { panic!("accepted: {h:?}") };
        assert_eq!(key, "u03");
        assert!(explanation.contains("#2 client 2 [4.000 .. 5.000] Create -> AlreadyExists"), "{explanation}");
        assert!(explanation.contains("longest order found: 2 of 4"), "{explanation}");
    }

    #[test]
    fn two_creates_both_granted_are_rejected() {
        assert!(rejected(&[op(1, "u", 0, 5, Create, created("a")), op(2, "u", 1, 6, Create, created("b"))]));
    }

    #[test]
    fn concurrent_get_may_come_first() {
        let h = [op(1, "u", 0, 10, Create, created("a")), op(2, "u", 2, 8, Get, Output::NotFound)];
        assert_eq!(check(&h), Verdict::Linearizable);
    }

    #[test]
    fn unknown_create_may_or_may_not_take_effect() {
        let lost = unanswered(1, "u", 0, Create);
        let (missed, seen) = (op(2, "u", 5, 6, Get, Output::NotFound), op(2, "u", 7, 8, Get, found("x", ON)));
        assert_eq!(check(&[lost.clone(), seen.clone()]), Verdict::Linearizable, "took effect");
        assert_eq!(check(&[lost.clone(), missed.clone()]), Verdict::Linearizable, "did not");
        assert_eq!(check(&[lost.clone(), missed, seen.clone()]), Verdict::Linearizable, "took effect late");
        let other_id = op(3, "u", 9, 10, Get, found("y", ON));
        assert!(rejected(&[lost.clone(), seen.clone(), other_id]), "the first read pins the id");
        assert!(rejected(&[op(2, "u", 0, 1, Get, found("x", ON)), unanswered(1, "u", 2, Create)]), "before its call");
    }

    #[test]
    fn unknown_delete_may_or_may_not_take_effect() {
        let (made, lost) = (op(1, "u", 0, 1, Create, created("a")), unanswered(1, "u", 2, Delete));
        let refused = op(2, "u", 5, 6, Create, Output::AlreadyExists);
        let kept = [made.clone(), lost.clone(), refused, op(2, "u", 7, 8, Get, found("a", ON))];
        assert_eq!(check(&kept), Verdict::Linearizable);
        let mut gone = vec![made, lost, op(2, "u", 5, 6, Get, found("a", ON))];
        gone.extend([op(2, "u", 7, 8, Get, Output::NotFound), op(3, "u", 9, 10, Create, created("b"))]);
        assert_eq!(check(&gone), Verdict::Linearizable);
        gone.push(op(2, "u", 11, 12, Get, found("a", ON)));
        assert!(rejected(&gone), "it takes effect once");
    }

    #[test]
    fn set_status_is_seen_by_later_reads() {
        let off = Status::Disabled;
        let made = op(1, "u", 0, 1, Create, created("a"));
        let set = op(1, "u", 2, 3, SetStatus(off), Output::Updated { id: "a".into(), status: off });
        let mut h = vec![made.clone(), set, op(2, "u", 4, 5, Get, found("a", off))];
        assert_eq!(check(&h), Verdict::Linearizable);
        h.push(op(3, "u", 6, 7, Get, found("a", ON)));
        assert!(rejected(&h));
        let lost = unanswered(1, "u", 2, SetStatus(off));
        let h = [made, lost, op(2, "u", 4, 5, Get, found("a", ON)), op(2, "u", 6, 7, Get, found("a", off))];
        assert_eq!(check(&h), Verdict::Linearizable);
    }

    #[test]
    fn independent_keys_interleave() {
        let mut h = vec![
            op(1, "a", 0, 10, Create, created("1")),
            op(2, "b", 1, 2, Get, Output::NotFound),
            op(3, "b", 3, 4, Create, created("2")),
            op(2, "a", 11, 12, Get, found("1", ON)),
            op(3, "b", 13, 14, Delete, Output::Deleted),
            op(1, "a", 15, 16, Create, Output::AlreadyExists),
        ];
        assert_eq!(check(&h), Verdict::Linearizable);
        h.push(op(1, "b", 20, 21, Get, found("2", ON)));
        assert!(matches!(check(&h), Verdict::NotLinearizable { key, .. } if key == "b"));
    }

    /// A deterministic xorshift64 generator.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// A valid history: clients (one request in flight each) send random ops,
    /// each applied to a sequential registry at a random instant inside its
    /// window. `unknown_percent` of them lose their answer and take effect,
    /// or not, at random.
    fn simulate(seed: u64, clients: usize, ops: usize, keys: u64, unknown_percent: u64) -> Vec<Op> {
        let mut rng = Rng(seed);
        let mut free_at = vec![0u64; clients];
        let mut planned = Vec::new();
        for _ in 0..ops {
            let client = (0..clients).min_by_key(|&c| free_at[c]).expect("at least one client");
            let call = free_at[client] + rng.below(30);
            let ret = call + 1 + rng.below(100);
            free_at[client] = ret + 1;
            let inputs = [Create, Create, Delete, Get, Get, Get, SetStatus(Status::Disabled), SetStatus(ON)];
            let input = inputs[rng.below(8) as usize].clone();
            let (key, at) = (format!("u{}", rng.below(keys)), call + rng.below(ret - call + 1));
            let unknown = rng.below(100) < unknown_percent;
            let applies = !unknown || rng.below(2) == 0;
            let op = Op { client: client as u64, key, call, ret: Some(ret), input, output: Output::Unknown };
            planned.push((at, op, unknown, applies));
        }
        planned.sort_by_key(|p| p.0);
        let mut users: HashMap<String, (String, Status)> = HashMap::new();
        let mut history = Vec::new();
        for (n, (_, mut op, unknown, applies)) in planned.into_iter().enumerate() {
            let user = users.get(&op.key).cloned();
            op.output = match (&op.input, user) {
                _ if !applies => Output::Unknown,
                (Create, None) => {
                    users.insert(op.key.clone(), (format!("id{n}"), ON));
                    created(&format!("id{n}"))
                }
                (Create, Some(_)) => Output::AlreadyExists,
                (Delete, Some(_)) => {
                    users.remove(&op.key);
                    Output::Deleted
                }
                (Get, Some((id, status))) => Output::Found { id, status },
                (SetStatus(to), Some((id, _))) => {
                    users.insert(op.key.clone(), (id.clone(), *to));
                    Output::Updated { id, status: *to }
                }
                (_, None) => Output::NotFound,
            };
            if unknown {
                (op.ret, op.output) = (None, Output::Unknown);
            }
            history.push(op);
        }
        history
    }

    #[test]
    fn random_valid_history_is_accepted_and_a_flipped_read_rejected() {
        let history = simulate(0x9e37_79b9_7f4a_7c15, 6, 200, 3, 5);
        assert!(history.iter().any(|op| op.ret.is_none()));
        assert_eq!(check(&history), Verdict::Linearizable);

        // Without unknown outcomes, a read that overlaps no create or delete
        // of its user sees a presence fixed by the answers before it.
        let mut history = simulate(7, 6, 200, 3, 0);
        assert_eq!(check(&history), Verdict::Linearizable);
        let overlap = |a: &Op, b: &Op| a.call <= b.ret.unwrap_or(u64::MAX) && b.call <= a.ret.unwrap_or(u64::MAX);
        let write = |o: &Op, get: &Op| o.key == get.key && matches!(o.input, Create | Delete) && overlap(o, get);
        let isolated = (0..history.len())
            .find(|&i| {
                let get = &history[i];
                matches!(get.output, Output::Found { .. }) && !history.iter().any(|o| write(o, get))
            })
            .expect("an isolated read in the history");
        history[isolated].output = Output::NotFound;
        let key = history[isolated].key.clone();
        assert!(matches!(check(&history), Verdict::NotLinearizable { key: k, .. } if k == key));
    }

    #[test]
    fn large_history_finishes_and_budget_bounds_the_search() {
        let history = simulate(42, 8, 1_000, 3, 5);
        assert_eq!(check(&history), Verdict::Linearizable);
        // Each key needs one step per operation at least.
        assert!(matches!(check_with_budget(&history, 50), Verdict::Inconclusive { .. }));
    }

    #[test]
    fn history_records_from_many_threads() {
        let history = History::new();
        let threads: Vec<_> = (0..4u64)
            .map(|client| {
                let history = history.clone();
                std::thread::spawn(move || {
                    let key = format!("u{client}");
                    let p = history.invoke(client, key.as_str(), Get);
                    history.complete(p, Output::NotFound);
                    let p = history.invoke(client, key.as_str(), Create);
                    history.complete(p, created(&key));
                    history.complete_unknown(history.invoke(client, key.as_str(), Delete));
                })
            })
            .collect();
        for t in threads {
            t.join().expect("recording thread");
        }
        let ops = history.ops();
        assert_eq!(ops.len(), 12);
        assert!(ops.iter().all(|op| op.ret.is_none_or(|ret| ret >= op.call)));
        assert_eq!(history.check(), Verdict::Linearizable);
    }
}
