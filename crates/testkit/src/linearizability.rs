//! A linearizability checker for key-value histories, in the manner of
//! Wing & Gong's search with Lowe's memoisation (as porcupine does it).
//!
//! A history is every client operation with the time it was invoked and the
//! time its result came back. An operation whose outcome is unknown (a
//! timeout, a dropped connection) has no return time: it may have taken effect
//! at any moment after its call, or never. The checker partitions the history
//! by key — a register per key is independent of the others — and searches each
//! partition for an order of the operations that respects real time (an
//! operation that returned before another was invoked comes first) and in which
//! every operation's result is the one a single register would give.

use std::collections::HashSet;
use std::fmt;
use std::time::{Duration, Instant};

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Input {
    Get,
    Put(String),
    Delete,
    /// Compare-and-set: set `new` if the value is `expected` (`None`: absent).
    Cas {
        expected: Option<String>,
        new: String,
    },
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A read's value (`None`: absent).
    Value(Option<String>),
    /// A write that succeeded.
    Done,
    /// A compare-and-set's verdict.
    Swapped(bool),
    /// Unknown: the call failed in a way that leaves the outcome open.
    Unknown,
}

/// One operation of a history.
#[derive(Debug, Clone)]
pub struct Operation {
    pub client: u64,
    pub key: String,
    pub input: Input,
    pub output: Output,
    /// When the call was made (any monotonic unit, e.g. nanoseconds since start).
    pub call: u64,
    /// When the result came back; `None` when the outcome is unknown.
    pub returned: Option<u64>,
}

/// The checker's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No valid order exists for this key's operations.
    Violation {
        key: String,
        explanation: String,
    },
    /// The search ran out of time budget before deciding.
    Unknown {
        key: String,
    },
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable => write!(f, "linearizable"),
            Verdict::Violation { key, explanation } => {
                write!(f, "NOT linearizable on key {key:?}: {explanation}")
            }
            Verdict::Unknown { key } => write!(f, "undecided (time budget spent) on key {key:?}"),
        }
    }
}

/// Records a history as clients run: every invocation and its result, with
/// times from one monotonic clock. Shared by all clients of a test.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    operations: std::sync::Mutex<Vec<Operation>>,
}

/// An invoked operation whose result is not in yet.
#[derive(Debug)]
#[must_use = "finish the operation with its result, or mark it unknown"]
pub struct Invocation {
    client: u64,
    key: String,
    input: Input,
    call: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder { start: Instant::now(), operations: std::sync::Mutex::new(Vec::new()) }
    }
}

impl Recorder {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Notes an invocation; call it right before sending the request.
    pub fn invoke(&self, client: u64, key: &str, input: Input) -> Invocation {
        Invocation { client, key: key.to_string(), input, call: self.now() }
    }

    /// Notes the result of an invocation; call it right after the reply.
    pub fn complete(&self, invocation: Invocation, output: Output) {
        let returned = (output != Output::Unknown).then(|| self.now());
        let Invocation { client, key, input, call } = invocation;
        let op = Operation { client, key, input, output, call, returned };
        self.operations.lock().expect("history lock").push(op);
    }

    /// Every recorded operation so far.
    pub fn operations(&self) -> Vec<Operation> {
        self.operations.lock().expect("history lock").clone()
    }
}

/// One register step: whether `input` may produce `output` from `state`, and
/// the state after.
fn step(state: &Option<String>, input: &Input, output: &Output) -> Option<Option<String>> {
    let unknown = *output == Output::Unknown;
    match input {
        Input::Get => match output {
            Output::Value(v) if v == state => Some(state.clone()),
            Output::Unknown => Some(state.clone()),
            _ => None,
        },
        Input::Put(v) => (unknown || *output == Output::Done).then(|| Some(v.clone())),
        Input::Delete => (unknown || *output == Output::Done).then_some(None),
        Input::Cas { expected, new } => {
            let swaps = state == expected;
            match output {
                Output::Swapped(true) if swaps => Some(Some(new.clone())),
                Output::Swapped(false) if !swaps => Some(state.clone()),
                Output::Unknown => Some(if swaps { Some(new.clone()) } else { state.clone() }),
                _ => None,
            }
        }
    }
}

/// Checks a whole history within `budget` (spread over keys).
pub fn check(history: &[Operation], budget: Duration) -> Verdict {
    let mut keys: Vec<&str> = history.iter().map(|op| op.key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    let deadline = Instant::now() + budget;
    for key in keys {
        let ops: Vec<&Operation> = history.iter().filter(|op| op.key == key).collect();
        match check_register(&ops, deadline) {
            Search::Found => {}
            Search::Impossible(explanation) => {
                return Verdict::Violation { key: key.to_string(), explanation }
            }
            Search::OutOfTime => return Verdict::Unknown { key: key.to_string() },
        }
    }
    Verdict::Linearizable
}

enum Search {
    Found,
    Impossible(String),
    OutOfTime,
}

/// An event of the search list: the call or the return of operation `op`.
#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    /// The index of the matching return event (for a call).
    partner: usize,
    prev: usize,
    next: usize,
}

const HEAD: usize = 0;
const NONE: usize = usize::MAX;

fn check_register(ops: &[&Operation], deadline: Instant) -> Search {
    // Events: calls at `call`, returns at `returned` (unknown outcomes never return).
    let mut timeline: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        timeline.push((op.call, true, i));
        timeline.push((op.returned.unwrap_or(u64::MAX), false, i));
    }
    // At equal times, returns come first: an operation that returned at t
    // precedes one invoked at t.
    timeline.sort_by_key(|(time, is_call, op)| (*time, *is_call, *op));
    // Node 0 is the list head; event k is node k + 1.
    let mut events = vec![Event { op: NONE, is_call: false, partner: NONE, prev: NONE, next: 1 }];
    let mut return_node = vec![0usize; ops.len()];
    for (k, (_, is_call, op)) in timeline.iter().enumerate() {
        let node = k + 1;
        events.push(Event { op: *op, is_call: *is_call, partner: NONE, prev: node - 1, next: node + 1 });
        if !is_call {
            return_node[*op] = node;
        }
    }
    let last = events.len() - 1;
    events[last].next = NONE;
    for node in 1..events.len() {
        if events[node].is_call {
            events[node].partner = return_node[events[node].op];
        }
    }

    let lift = |events: &mut Vec<Event>, node: usize| {
        for n in [node, events[node].partner] {
            let (prev, next) = (events[n].prev, events[n].next);
            events[prev].next = next;
            if next != NONE {
                events[next].prev = prev;
            }
        }
    };
    let unlift = |events: &mut Vec<Event>, node: usize| {
        for n in [events[node].partner, node] {
            let (prev, next) = (events[n].prev, events[n].next);
            events[prev].next = n;
            if next != NONE {
                events[next].prev = n;
            }
        }
    };

    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, Option<String>)> = HashSet::new();
    let mut state: Option<String> = None;
    // Stack of (call node, state before it).
    let mut stack: Vec<(usize, Option<String>)> = Vec::new();
    let mut deepest = 0usize;
    let mut cursor = events[HEAD].next;
    let mut steps: u64 = 0;
    while events[HEAD].next != NONE {
        steps += 1;
        if steps.is_multiple_of(4096) && Instant::now() > deadline {
            return Search::OutOfTime;
        }
        if cursor == NONE {
            // Only returns of unknown-outcome operations are left (never reached).
            break;
        }
        let event = events[cursor];
        if event.is_call {
            let op = ops[event.op];
            if let Some(next_state) = step(&state, &op.input, &op.output) {
                let mut with = linearized.clone();
                with[event.op / 64] |= 1 << (event.op % 64);
                if seen.insert((with.clone(), next_state.clone())) {
                    stack.push((cursor, state.clone()));
                    deepest = deepest.max(stack.len());
                    state = next_state;
                    linearized = with;
                    lift(&mut events, cursor);
                    cursor = events[HEAD].next;
                    continue;
                }
            }
            cursor = event.next;
        } else {
            if event.op != NONE && ops[event.op].returned.is_none() {
                // The "return" of an unknown outcome sits at the end of time:
                // everything that remains before it may be ordered freely.
                if events[HEAD].next == cursor || only_unknown_left(&events, ops) {
                    break;
                }
            }
            // A completed operation's return reached: something before it must
            // be undone and ordered differently.
            let Some((node, previous)) = stack.pop() else {
                let op = ops[event.op];
                return Search::Impossible(format!(
                    "{} operations, at most {deepest} could be ordered; no order fits {:?} -> {:?} by client {} \
                     (called at {}, returned at {:?})",
                    ops.len(),
                    op.input,
                    op.output,
                    op.client,
                    op.call,
                    op.returned
                ));
            };
            unlift(&mut events, node);
            linearized[events[node].op / 64] &= !(1 << (events[node].op % 64));
            state = previous;
            cursor = events[node].next;
        }
    }
    Search::Found
}

/// Whether every event still in the list belongs to an operation with an
/// unknown outcome: such operations may all be placed last, or never.
fn only_unknown_left(events: &[Event], ops: &[&Operation]) -> bool {
    let mut node = events[HEAD].next;
    while node != NONE {
        if ops[events[node].op].returned.is_some() {
            return false;
        }
        node = events[node].next;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u64, input: Input, output: Output, call: u64, returned: Option<u64>) -> Operation {
        Operation { client, key: "k".into(), input, output, call, returned }
    }

    fn put(v: &str) -> Input {
        Input::Put(v.into())
    }

    fn read(v: Option<&str>) -> Output {
        Output::Value(v.map(String::from))
    }

    const BUDGET: Duration = Duration::from_secs(5);

    #[test]
    fn concurrent_writes_and_reads_in_some_order_are_fine() {
        let history = vec![
            op(1, put("a"), Output::Done, 0, Some(10)),
            op(2, put("b"), Output::Done, 5, Some(15)),
            op(3, Input::Get, read(Some("a")), 12, Some(20)),
            op(3, Input::Get, read(Some("a")), 21, Some(22)),
        ];
        assert_eq!(check(&history, BUDGET), Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_is_caught() {
        let history = vec![
            op(1, put("a"), Output::Done, 0, Some(10)),
            op(1, put("b"), Output::Done, 11, Some(20)),
            op(2, Input::Get, read(Some("a")), 21, Some(30)),
        ];
        assert!(matches!(check(&history, BUDGET), Verdict::Violation { .. }));
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught() {
        let history =
            vec![op(1, put("a"), Output::Done, 0, Some(10)), op(2, Input::Get, read(None), 11, Some(12))];
        assert!(matches!(check(&history, BUDGET), Verdict::Violation { .. }));
    }

    #[test]
    fn unknown_outcomes_may_or_may_not_have_happened() {
        let applied =
            vec![op(1, put("a"), Output::Unknown, 0, None), op(2, Input::Get, read(Some("a")), 50, Some(60))];
        assert_eq!(check(&applied, BUDGET), Verdict::Linearizable);
        let lost =
            vec![op(1, put("a"), Output::Unknown, 0, None), op(2, Input::Get, read(None), 50, Some(60))];
        assert_eq!(check(&lost, BUDGET), Verdict::Linearizable);
        // But it cannot take effect before it was called.
        let early =
            vec![op(2, Input::Get, read(Some("a")), 0, Some(5)), op(1, put("a"), Output::Unknown, 10, None)];
        assert!(matches!(check(&early, BUDGET), Verdict::Violation { .. }));
    }

    #[test]
    fn compare_and_set_follows_the_register() {
        let cas = |expected: Option<&str>, new: &str| Input::Cas {
            expected: expected.map(String::from),
            new: new.into(),
        };
        let good = vec![
            op(1, put("a"), Output::Done, 0, Some(1)),
            op(2, cas(Some("a"), "b"), Output::Swapped(true), 2, Some(3)),
            op(3, cas(Some("a"), "c"), Output::Swapped(false), 4, Some(5)),
            op(1, Input::Get, read(Some("b")), 6, Some(7)),
        ];
        assert_eq!(check(&good, BUDGET), Verdict::Linearizable);
        let double_swap = vec![
            op(1, put("a"), Output::Done, 0, Some(1)),
            op(2, cas(Some("a"), "b"), Output::Swapped(true), 2, Some(3)),
            op(3, cas(Some("a"), "c"), Output::Swapped(true), 4, Some(5)),
        ];
        assert!(matches!(check(&double_swap, BUDGET), Verdict::Violation { .. }));
    }

    #[test]
    fn the_recorder_orders_by_its_own_clock() {
        let recorder = Recorder::default();
        let write = recorder.invoke(1, "k", put("a"));
        recorder.complete(write, Output::Done);
        let lost = recorder.invoke(2, "k", put("b"));
        recorder.complete(lost, Output::Unknown);
        let read_op = recorder.invoke(1, "k", Input::Get);
        recorder.complete(read_op, read(Some("a")));
        let ops = recorder.operations();
        assert_eq!(ops.len(), 3);
        assert!(ops[0].returned.unwrap() <= ops[2].call);
        assert_eq!(ops[1].returned, None);
        assert_eq!(check(&ops, BUDGET), Verdict::Linearizable);
    }

    #[test]
    fn many_concurrent_operations_are_decided_quickly() {
        // 8 clients, 200 overlapping puts and gets each on one key, all consistent
        // with the order of the puts' return times.
        let mut history = Vec::new();
        let mut value: Option<String> = None;
        for i in 0..1600u64 {
            let client = i % 8;
            let start = i * 10;
            if i % 3 == 0 {
                history.push(op(client, Input::Get, Output::Value(value.clone()), start, Some(start + 25)));
            } else {
                let v = format!("v{i}");
                history.push(op(client, Input::Put(v.clone()), Output::Done, start, Some(start + 5)));
                value = Some(v);
            }
        }
        assert_eq!(check(&history, Duration::from_secs(20)), Verdict::Linearizable);
    }
}
