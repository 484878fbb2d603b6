//! The conformance suite every [`Store`] that accepts writes must pass (embedded, etcd): the
//! same cases, so the implementations cannot drift apart. Each case takes a [`Subject`]
//! and writes only under its `prefix`. Lease TTLs are whole seconds of at least 2 (etcd's
//! minimum with its default timings) and waits are generous, so a real etcd passes too.
//!
//! Use: [`conformance_tests!`] (one `#[test]` per case, see `tests/conformance.rs`), or
//! [`run_all`].
//! The `compacted` case compacts the whole store: give it a store of its own.

use crate::{Event, KeyRange, LeaseId, Result, Revision, Store, StoreError, Watch};
use std::time::{Duration, Instant};

/// What a case runs against.
pub struct Subject<'a> {
    pub store: &'a dyn Store,
    /// A second handle on the same store (another client, another process's view).
    pub other: &'a dyn Store,
    /// Compacts the store's history through `revision` (etcd: the compaction call).
    pub compact: &'a dyn Fn(Revision) -> Result<()>,
    /// Unique to this run; every key a case writes starts with it.
    pub prefix: String,
}

impl Subject<'_> {
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

pub type Case = fn(&Subject);

/// The one list of cases. `conformance_tests!(run)`, in a test file, writes one `#[test]`
/// per case, named as the case, calling `run("name")`; [`CASES`] is made from the same list.
#[macro_export]
macro_rules! conformance_tests {
    (@cases) => {
        $crate::conformance_tests!(@list [@cases]);
    };
    (@list [$($how:tt)*]) => {
        $crate::conformance_tests!(@each [$($how)*]
            get_put,
            list_sorted,
            list_of_many_pages_is_one_snapshot,
            create_if_absent,
            update_with_stale_revision_refused,
            delete_and_delete_if,
            lease_expiry_deletes_keys_and_emits_delete,
            keep_alive_keeps_keys_past_ttl,
            revoke_deletes_keys_in_one_revision,
            watch_replays_from_a_past_revision,
            watch_sees_other_handles_writes,
            watch_range_sees_only_its_keys,
            watch_any_of_skips_the_gap_between_its_parts,
            watch_resumed_from_a_revision_per_part,
            compacted_revision_is_an_error,
            revision_is_monotonic,
        );
    };
    (@each [@cases] $($name:ident,)*) => {
        /// Every case, by name.
        pub const CASES: &[(&str, $crate::conformance::Case)] = &[$((stringify!($name), $name)),*];
    };
    (@each [$run:path] $($name:ident,)*) => {
        $( #[test] fn $name() { $run(stringify!($name)); } )*
    };
    ($run:path) => {
        $crate::conformance_tests!(@list [$run]);
    };
}

conformance_tests!(@cases);

/// Runs every case, each under `prefix` + its name.
pub fn run_all(
    store: &dyn Store,
    other: &dyn Store,
    compact: &dyn Fn(Revision) -> Result<()>,
    prefix: &str,
) {
    for (name, _) in CASES {
        run_one(name, store, other, compact, prefix);
    }
}

/// Runs the case called `name` under `prefix` + its name. Panics on an unknown name.
pub fn run_one(
    name: &str,
    store: &dyn Store,
    other: &dyn Store,
    compact: &dyn Fn(Revision) -> Result<()>,
    prefix: &str,
) {
    let (_, case) = CASES
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no conformance case named {name:?}"));
    case(&Subject {
        store,
        other,
        compact,
        prefix: format!("{prefix}{name}/"),
    });
}

const LEASE_TTL: Duration = Duration::from_secs(2);
/// Longest wait for a lease to expire (etcd checks every 500 ms, the embedded store on
/// access or every 50 ms while watched).
const EXPIRY_WAIT: Duration = Duration::from_secs(10);
const EVENT_WAIT: Duration = Duration::from_secs(5);

/// The next `n` events, failing the test if they do not come within `EVENT_WAIT` each.
fn take(w: &mut dyn Watch, n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            w.next(EVENT_WAIT)
                .expect("watch failed")
                .unwrap_or_else(|| panic!("event {} of {n} did not come", i + 1))
        })
        .collect()
}

fn put_value(e: &Event) -> (&str, &[u8]) {
    match e {
        Event::Put(kv) => (&kv.key, &kv.value),
        other => panic!("expected a put, got {other:?}"),
    }
}

pub fn get_put(s: &Subject) {
    let k = s.key("a");
    assert_eq!(s.store.get(&k).unwrap(), None);
    let r1 = s.store.put(&k, b"one", None).unwrap();
    let kv = s.store.get(&k).unwrap().expect("put then get");
    assert_eq!(
        (kv.value.as_slice(), kv.create_revision, kv.mod_revision),
        (&b"one"[..], r1, r1)
    );
    assert_eq!(kv.lease, None);
    let r2 = s.store.put(&k, b"two", None).unwrap();
    assert!(r2 > r1);
    let kv = s.other.get(&k).unwrap().expect("the other handle sees it");
    assert_eq!(
        (kv.value.as_slice(), kv.create_revision, kv.mod_revision),
        (&b"two"[..], r1, r2)
    );
    // Binary values survive.
    s.store.put(&k, &[0, 0xff, b'\n'], None).unwrap();
    assert_eq!(s.store.get(&k).unwrap().unwrap().value, [0, 0xff, b'\n']);
}

pub fn list_sorted(s: &Subject) {
    for name in ["dir/c", "dir/a", "dir/b", "dirx", "dir2/a"] {
        s.store.put(&s.key(name), name.as_bytes(), None).unwrap();
    }
    let last = s.store.put(&s.key("dir/d"), b"d", None).unwrap();
    let (kvs, rev) = s.other.list(&s.key("dir/")).unwrap();
    let keys: Vec<String> = kvs.iter().map(|kv| kv.key.clone()).collect();
    let want: Vec<String> = ["dir/a", "dir/b", "dir/c", "dir/d"]
        .iter()
        .map(|n| s.key(n))
        .collect();
    assert_eq!(keys, want);
    assert_eq!(kvs[0].value, b"dir/a");
    assert!(
        rev >= last,
        "list revision {rev} is older than the last write {last}"
    );
    assert!(s.store.list(&s.key("nothing/")).unwrap().0.is_empty());
}

/// A list longer than a page (etcd answers in pages of 100) has every key once, in order,
/// and is one snapshot: with another client rewriting the keys meanwhile, no key it returns
/// was written after the revision it returns (pages read at the newest revision each would
/// show later writes in the later pages).
pub fn list_of_many_pages_is_one_snapshot(s: &Subject) {
    const KEYS: usize = 250;
    // Not through `s` (its compaction hook is not Sync): the writer thread takes these.
    let (other, prefix) = (s.other, s.prefix.as_str());
    let name = |i: usize| format!("{prefix}many/{i:04}");
    for i in 0..KEYS {
        s.store.put(&name(i), b"first", None).unwrap();
    }
    // Sorts right after the prefix's range; never listed.
    s.store.put(&s.key("many0"), b"outside", None).unwrap();
    let want: Vec<String> = (0..KEYS).map(name).collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|t| {
        t.spawn(|| {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                other
                    .put(&name(KEYS - 1 - i % KEYS), b"again", None)
                    .unwrap();
                i += 1;
            }
        });
        for _ in 0..5 {
            let (kvs, rev) = s.store.list(&s.key("many/")).unwrap();
            let keys: Vec<&str> = kvs.iter().map(|kv| kv.key.as_str()).collect();
            assert_eq!(keys, want);
            let late: Vec<_> = kvs.iter().filter(|kv| kv.mod_revision > rev).collect();
            assert!(
                late.is_empty(),
                "{} keys written after the list's revision {rev}: {late:?}",
                late.len()
            );
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}

pub fn create_if_absent(s: &Subject) {
    let k = s.key("claim");
    let r = s
        .store
        .create(&k, b"first", None)
        .unwrap()
        .expect("absent: created");
    assert_eq!(s.other.create(&k, b"second", None).unwrap(), None);
    assert_eq!(s.store.create(&k, b"third", None).unwrap(), None);
    let kv = s.store.get(&k).unwrap().unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.create_revision),
        (&b"first"[..], r)
    );
    // Once deleted, it can be created again.
    s.store.delete(&k).unwrap();
    assert!(s.other.create(&k, b"again", None).unwrap().is_some());
}

pub fn update_with_stale_revision_refused(s: &Subject) {
    let k = s.key("cas");
    let r1 = s.store.put(&k, b"v1", None).unwrap();
    assert!(s.store.update(&k, r1, b"v2", None).unwrap());
    let r2 = s.store.get(&k).unwrap().unwrap().mod_revision;
    assert!(r2 > r1);
    assert!(
        !s.other.update(&k, r1, b"stale", None).unwrap(),
        "stale revision accepted"
    );
    let kv = s.store.get(&k).unwrap().unwrap();
    assert_eq!((kv.value.as_slice(), kv.create_revision), (&b"v2"[..], r1));
    assert!(!s.store.update(&s.key("missing"), r2, b"x", None).unwrap());
    assert_eq!(s.store.get(&s.key("missing")).unwrap(), None);
}

pub fn delete_and_delete_if(s: &Subject) {
    let k = s.key("d");
    s.store.put(&k, b"x", None).unwrap();
    assert!(s.store.delete(&k).unwrap());
    assert!(!s.other.delete(&k).unwrap());
    assert_eq!(s.store.get(&k).unwrap(), None);
    let r1 = s.store.put(&k, b"y", None).unwrap();
    let r2 = s.store.put(&k, b"z", None).unwrap();
    assert!(
        !s.store.delete_if(&k, r1).unwrap(),
        "stale revision deleted the key"
    );
    assert!(s.store.get(&k).unwrap().is_some());
    assert!(s.other.delete_if(&k, r2).unwrap());
    assert_eq!(s.store.get(&k).unwrap(), None);
    assert!(!s.store.delete_if(&k, r2).unwrap());
}

pub fn lease_expiry_deletes_keys_and_emits_delete(s: &Subject) {
    let lease = s.store.grant(LEASE_TTL).unwrap();
    let k = s.key("leased");
    let r = s.store.put(&k, b"x", Some(lease)).unwrap();
    assert_eq!(s.store.get(&k).unwrap().unwrap().lease, Some(lease));
    let mut w = s.other.watch(&s.prefix, r).unwrap();
    let start = Instant::now();
    let deleted = loop {
        match w.next(Duration::from_millis(500)).unwrap() {
            Some(e) => break e,
            None if start.elapsed() < EXPIRY_WAIT => continue,
            None => panic!("the lease did not expire within {EXPIRY_WAIT:?}"),
        }
    };
    assert!(
        start.elapsed() >= LEASE_TTL - Duration::from_millis(100),
        "expired early"
    );
    match deleted {
        Event::Delete { key, mod_revision } => assert!(key == k && mod_revision > r),
        other => panic!("expected the leased key's delete, got {other:?}"),
    }
    assert_eq!(s.store.get(&k).unwrap(), None);
    assert!(matches!(s.store.keep_alive(lease), Err(StoreError::LeaseExpired(l)) if l == lease));
}

pub fn keep_alive_keeps_keys_past_ttl(s: &Subject) {
    let lease = s.store.grant(LEASE_TTL).unwrap();
    let k = s.key("kept");
    s.store.put(&k, b"x", Some(lease)).unwrap();
    let start = Instant::now();
    while start.elapsed() < LEASE_TTL * 2 + Duration::from_secs(1) {
        let ttl = s
            .store
            .keep_alive(lease)
            .expect("keep-alive of a live lease");
        assert!(
            ttl >= Duration::from_secs(1),
            "keep_alive returned TTL {ttl:?}"
        );
        std::thread::sleep(Duration::from_millis(400));
    }
    assert!(
        s.other.get(&k).unwrap().is_some(),
        "kept-alive key vanished"
    );
    // Keep-alives from another handle (another process) work too.
    s.other.keep_alive(lease).unwrap();
    s.store.revoke(lease).unwrap();
    assert_eq!(s.store.get(&k).unwrap(), None);
}

pub fn revoke_deletes_keys_in_one_revision(s: &Subject) {
    let lease = s.store.grant(Duration::from_secs(60)).unwrap();
    let (a, b, c) = (s.key("a"), s.key("b"), s.key("c"));
    s.store.put(&a, b"a", Some(lease)).unwrap();
    s.store.put(&c, b"c", None).unwrap();
    let r = s.store.put(&b, b"b", Some(lease)).unwrap();
    let mut w = s.store.watch(&s.prefix, r).unwrap();
    s.other.revoke(lease).unwrap();
    let events = take(w.as_mut(), 2);
    let mut keys: Vec<&str> = events.iter().map(Event::key).collect();
    keys.sort();
    assert_eq!(keys, [a.as_str(), b.as_str()]);
    assert!(events.iter().all(|e| matches!(e, Event::Delete { .. })));
    assert_eq!(
        events[0].revision(),
        events[1].revision(),
        "one revision for the revoke"
    );
    assert!(events[0].revision() > r);
    assert_eq!(s.store.get(&a).unwrap(), None);
    assert!(
        s.store.get(&c).unwrap().is_some(),
        "a key without lease was deleted"
    );
    assert!(matches!(
        s.store.keep_alive(lease),
        Err(StoreError::LeaseExpired(_))
    ));
    assert!(matches!(
        s.store.put(&a, b"x", Some(lease)),
        Err(StoreError::LeaseExpired(_))
    ));
    assert!(matches!(
        s.store.put(&a, b"x", Some(LeaseId(0x7fff_0000_1234))),
        Err(StoreError::LeaseExpired(_))
    ));
}

pub fn watch_replays_from_a_past_revision(s: &Subject) {
    let (a, b) = (s.key("w/a"), s.key("w/b"));
    let r0 = s.store.put(&s.key("before"), b"0", None).unwrap();
    let ra = s.store.put(&a, b"1", None).unwrap();
    s.store.put(&s.key("elsewhere"), b"x", None).unwrap();
    let rb = s.store.put(&b, b"2", None).unwrap();
    s.store.delete(&a).unwrap();
    let mut w = s.store.watch(&s.key("w/"), r0).unwrap();
    let events = take(w.as_mut(), 3);
    assert_eq!(put_value(&events[0]), (a.as_str(), &b"1"[..]));
    assert_eq!(events[0].revision(), ra);
    assert_eq!(put_value(&events[1]), (b.as_str(), &b"2"[..]));
    assert_eq!(events[1].revision(), rb);
    assert!(
        matches!(&events[2], Event::Delete { key, mod_revision } if *key == a && *mod_revision > rb)
    );
    // Then it follows new changes.
    let rc = s.store.put(&a, b"3", None).unwrap();
    let e = take(w.as_mut(), 1).remove(0);
    assert_eq!((put_value(&e), e.revision()), ((a.as_str(), &b"3"[..]), rc));
    assert_eq!(w.next(Duration::from_millis(200)).unwrap(), None);
    // Exclusive start: from `ra`, the first event is b's put.
    let mut w = s.other.watch(&s.key("w/"), ra).unwrap();
    assert_eq!(take(w.as_mut(), 1)[0].revision(), rb);
}

pub fn watch_range_sees_only_its_keys(s: &Subject) {
    let (_, rev) = s.store.list(&s.prefix).unwrap();
    let range = KeyRange::Between {
        from: s.key("b"),
        to: s.key("d0"),
    };
    let mut w = s.store.watch_range(&range, rev).unwrap();
    for k in ["a/x", "b", "c/1", "d", "d/2", "e/y"] {
        s.other.put(&s.key(k), b"v", None).unwrap();
    }
    s.other.delete(&s.key("c/1")).unwrap();
    s.other.delete(&s.key("e/y")).unwrap();
    let keys: Vec<String> = take(w.as_mut(), 5)
        .iter()
        .map(|e| e.key().strip_prefix(&s.prefix).unwrap().to_string())
        .collect();
    assert_eq!(keys, ["b", "c/1", "d", "d/2", "c/1"]);
    assert_eq!(
        w.next(Duration::from_millis(200)).unwrap(),
        None,
        "a/ and e/ are outside"
    );
    assert!(range.contains(&s.key("d/9")) && !range.contains(&s.key("d0")));
}

/// Two parts with a kind between them (as the agents skip `blocks/` between `bgppeers/`
/// and `config`): the gap's writes never arrive, both parts' do, on one watch.
pub fn watch_any_of_skips_the_gap_between_its_parts(s: &Subject) {
    let (_, rev) = s.store.list(&s.prefix).unwrap();
    let range = KeyRange::AnyOf(vec![
        KeyRange::Between {
            from: s.key("a"),
            to: s.key("b/"),
        },
        KeyRange::Prefix(s.key("d/")),
    ]);
    let mut w = s.store.watch_range(&range, rev).unwrap();
    for k in ["a", "a/1", "b/1", "c", "d/1", "b/2", "e"] {
        s.other.put(&s.key(k), b"v", None).unwrap();
    }
    s.other.delete(&s.key("b/1")).unwrap();
    s.other.delete(&s.key("d/1")).unwrap();
    let mut keys: Vec<String> = take(w.as_mut(), 4)
        .iter()
        .map(|e| e.key().strip_prefix(&s.prefix).unwrap().to_string())
        .collect();
    // etcd orders events within each part only.
    keys.sort();
    assert_eq!(keys, ["a", "a/1", "d/1", "d/1"]);
    assert_eq!(
        w.next(Duration::from_millis(300)).unwrap(),
        None,
        "b/, c and e are outside both parts"
    );
    assert!(range.contains(&s.key("d/9")) && !range.contains(&s.key("b/9")));
}

/// A watch resumed with one revision per part gets every change after each part's
/// revision, and none before the oldest; the caller drops those it has seen (a store that
/// keeps one order for all parts starts them all from the oldest).
pub fn watch_resumed_from_a_revision_per_part(s: &Subject) {
    let range = KeyRange::AnyOf(vec![
        KeyRange::Between {
            from: s.key("a"),
            to: s.key("b/"),
        },
        KeyRange::Prefix(s.key("d/")),
    ]);
    let put = |k: &str| s.other.put(&s.key(k), b"v", None).unwrap();
    let (_, r0) = s.store.list(&s.prefix).unwrap();
    put("a");
    let rd = put("d/1");
    let ra = put("a/1");
    put("d/2");
    put("a/2");
    let after = [ra, rd];
    let mut w = s.store.watch_range_from(&range, &after).unwrap();
    let mut got: Vec<(String, Revision)> = Vec::new();
    while let Some(e) = w.next(Duration::from_millis(300)).unwrap() {
        got.push((
            e.key().strip_prefix(&s.prefix).unwrap().to_string(),
            e.revision(),
        ));
    }
    assert!(
        got.iter().all(|(_, r)| *r > rd),
        "nothing before the oldest: {got:?}"
    );
    let mut unseen: Vec<&str> = got
        .iter()
        .filter(|(k, r)| {
            let part = range.parts().iter().position(|p| p.contains(&s.key(k)));
            *r > after[part.expect("a key of the range")]
        })
        .map(|(k, _)| k.as_str())
        .collect();
    if s.store.kind() == crate::StoreKind::Etcd {
        assert_eq!(
            unseen.len(),
            got.len(),
            "etcd starts each part at its own: {got:?}"
        );
    }
    unseen.sort();
    assert_eq!(unseen, ["a/2", "d/2"]);
    assert!(matches!(
        s.store.watch_range_from(&range, &[r0]),
        Err(StoreError::Config(_))
    ));
}

pub fn watch_sees_other_handles_writes(s: &Subject) {
    let (_, rev) = s.store.list(&s.prefix).unwrap();
    let mut mine = s.store.watch(&s.prefix, rev).unwrap();
    let mut theirs = s.other.watch(&s.prefix, rev).unwrap();
    let r1 = s.other.put(&s.key("from-other"), b"o", None).unwrap();
    let r2 = s.store.put(&s.key("from-store"), b"s", None).unwrap();
    for w in [&mut mine, &mut theirs] {
        let events = take(w.as_mut(), 2);
        assert_eq!(
            events.iter().map(Event::revision).collect::<Vec<_>>(),
            [r1, r2]
        );
    }
}

pub fn compacted_revision_is_an_error(s: &Subject) {
    let r1 = s.store.put(&s.key("c"), b"1", None).unwrap();
    s.store.put(&s.key("c"), b"2", None).unwrap();
    let r3 = s.store.put(&s.key("c"), b"3", None).unwrap();
    (s.compact)(r3).unwrap();
    let err = match s.store.watch(&s.prefix, r1 - 1) {
        Err(e) => e,
        // etcd reports compaction on the stream, not when the watch is created.
        Ok(mut w) => w
            .next(EVENT_WAIT)
            .expect_err("watch from a compacted revision"),
    };
    assert!(matches!(err, StoreError::Compacted { .. }), "got {err:?}");
    // From the compaction point on, watching works.
    let mut w = s.other.watch(&s.prefix, r3).unwrap();
    let r4 = s.store.put(&s.key("c"), b"4", None).unwrap();
    assert_eq!(take(w.as_mut(), 1)[0].revision(), r4);
    assert_eq!(s.store.get(&s.key("c")).unwrap().unwrap().value, b"4");
}

pub fn revision_is_monotonic(s: &Subject) {
    let mut last = s.store.list(&s.prefix).unwrap().1;
    let lease = s.store.grant(Duration::from_secs(60)).unwrap();
    for i in 0..10 {
        let k = s.key(&format!("m{}", i % 3));
        let (h, o) = if i % 2 == 0 {
            (s.store, s.other)
        } else {
            (s.other, s.store)
        };
        let put = h
            .put(&k, b"x", if i % 4 == 0 { Some(lease) } else { None })
            .unwrap();
        assert!(put > last, "revision went from {last} to {put}");
        last = put;
        if let Some(r) = o.create(&s.key(&format!("n{i}")), b"y", None).unwrap() {
            assert!(r > last, "revision went from {last} to {r}");
            last = r;
        }
        let seen = o.list(&s.prefix).unwrap().1;
        assert!(
            seen >= last,
            "another handle lists revision {seen} after {last}"
        );
        let kv = o.get(&k).unwrap().unwrap();
        assert_eq!(kv.mod_revision, put);
    }
    s.store.revoke(lease).unwrap();
    assert!(
        s.store.list(&s.prefix).unwrap().1 > last,
        "the revoke deleted keys: a new revision"
    );
}
