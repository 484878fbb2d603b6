//! The static store on a real file: reading, read-only errors, no-op leases, watching edits,
//! and a malformed file's error.

use std::time::Duration;
use twill_store::static_file::StaticStore;
use twill_store::{Event, Store, StoreError, Watch};
use twill_testkit::TempDir;

const MESH: &str = r#"{"config": {"clusterCIDR": "10.244.0.0/16", "blockSize": 24, "backend": "static"},
 "nodes": [{"name": "n1", "address": "192.0.2.11", "blocks": ["10.244.1.0/24"]},
           {"name": "n2", "address": "192.0.2.12", "blocks": ["10.244.2.0/24"]}]}
"#;

fn json(value: &[u8]) -> serde_json::Value {
    serde_json::from_slice(value).unwrap()
}

#[test]
fn reads_the_mesh_as_keys() {
    let dir = TempDir::new("static");
    let file = dir.path.join("mesh.json");
    std::fs::write(&file, MESH).unwrap();
    let store = StaticStore::open(&file).unwrap();
    assert_eq!(store.kind(), twill_store::StoreKind::Static);
    let (nodes, rev) = store.list("/twill/v1/nodes/").unwrap();
    assert_eq!(rev, 1);
    assert_eq!(nodes.len(), 2);
    let n2 = json(&nodes[1].value);
    assert_eq!(
        (n2["name"].as_str(), n2["address"].as_str()),
        (Some("n2"), Some("192.0.2.12"))
    );
    let block = store
        .get("/twill/v1/blocks/10.244.1.0-24")
        .unwrap()
        .expect("n1's block");
    assert_eq!(json(&block.value)["node"], "n1");
    assert_eq!(json(&block.value)["cidr"], "10.244.1.0/24");
    let config = store.get("/twill/v1/config").unwrap().unwrap();
    assert_eq!(json(&config.value)["clusterCIDR"], "10.244.0.0/16");
    assert_eq!(store.list("/twill/v1/").unwrap().0.len(), 5);
}

#[test]
fn writes_are_refused_and_leases_are_no_ops() {
    let dir = TempDir::new("staticro");
    let file = dir.path.join("mesh.json");
    std::fs::write(&file, MESH).unwrap();
    let store = StaticStore::open(&file).unwrap();
    let k = "/twill/v1/blocks/10.244.3.0-24";
    let ro = |r: Result<(), StoreError>| {
        assert!(
            matches!(r, Err(StoreError::ReadOnly(twill_store::StoreKind::Static))),
            "{r:?}"
        )
    };
    ro(store.put(k, b"x", None).map(drop));
    ro(store.create(k, b"x", None).map(drop));
    ro(store.update(k, 1, b"x", None).map(drop));
    ro(store.delete(k).map(drop));
    ro(store.delete_if(k, 1).map(drop));
    let msg = store.put(k, b"x", None).unwrap_err().to_string();
    assert!(
        msg.contains("read-only") && msg.contains("edit its file"),
        "{msg}"
    );
    let lease = store.grant(Duration::from_secs(10)).unwrap();
    assert_eq!(store.keep_alive(lease).unwrap(), Duration::from_secs(10));
    store.revoke(lease).unwrap();
    assert!(matches!(
        store.keep_alive(lease),
        Err(StoreError::LeaseExpired(_))
    ));
}

fn next(w: &mut Box<dyn Watch>) -> Event {
    w.next(Duration::from_secs(3))
        .unwrap()
        .expect("an event for the edit")
}

#[test]
fn watch_follows_edits_of_the_file() {
    let dir = TempDir::new("staticw");
    let file = dir.path.join("mesh.json");
    std::fs::write(&file, MESH).unwrap();
    let store = StaticStore::open(&file).unwrap();
    let mut w = store.watch("/twill/v1/", 1).unwrap();
    assert_eq!(w.next(Duration::from_millis(200)).unwrap(), None);
    // n2 moves to another block and address; n3 joins.
    let edited = MESH
        .replace("10.244.2.0/24", "10.244.5.0/24")
        .replace("192.0.2.12", "192.0.2.22")
        .replace(
            "]}]}",
            "]},\n  {\"name\": \"n3\", \"address\": \"192.0.2.13\", \"blocks\": [\"10.244.3.0/24\"]}]}",
        );
    std::fs::write(&file, edited).unwrap();
    let events: Vec<Event> = (0..5).map(|_| next(&mut w)).collect();
    let summary: Vec<(String, &str, i64)> = events
        .iter()
        .map(|e| {
            let op = if matches!(e, Event::Put(_)) {
                "put"
            } else {
                "delete"
            };
            (e.key().to_string(), op, e.revision())
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("/twill/v1/blocks/10.244.2.0-24".into(), "delete", 2),
            ("/twill/v1/blocks/10.244.3.0-24".into(), "put", 2),
            ("/twill/v1/blocks/10.244.5.0-24".into(), "put", 2),
            ("/twill/v1/nodes/n2".into(), "put", 2),
            ("/twill/v1/nodes/n3".into(), "put", 2),
        ]
    );
    let Event::Put(n2) = &events[3] else {
        unreachable!()
    };
    assert_eq!(
        (n2.create_revision, json(&n2.value)["address"].as_str()),
        (1, Some("192.0.2.22"))
    );
    assert_eq!(
        w.next(Duration::from_millis(200)).unwrap(),
        None,
        "unchanged keys are quiet"
    );
    // A watch from 0 replays the first load too.
    let mut all = store.watch("/twill/v1/nodes/", 0).unwrap();
    assert_eq!(next(&mut all).key(), "/twill/v1/nodes/n1");
    assert_eq!(store.list("/twill/v1/").unwrap().1, 2);
}

#[test]
fn a_malformed_file_is_an_error_with_file_line_and_field() {
    let dir = TempDir::new("staticbad");
    let file = dir.path.join("mesh.json");
    std::fs::write(&file, MESH.replace("\"192.0.2.12\"", "\"192.0.2.300\"")).unwrap();
    let msg = StaticStore::open(&file)
        .err()
        .expect("malformed file refused")
        .to_string();
    assert!(
        msg.contains(&file.display().to_string()) && msg.contains("line 3"),
        "{msg}"
    );
    std::fs::write(&file, MESH.replace("10.244.2.0/24", "10.244.2.0/26")).unwrap();
    let msg = StaticStore::open(&file).err().unwrap().to_string();
    assert!(
        msg.contains("line 3: nodes[1].blocks[0]") && msg.contains("/24"),
        "{msg}"
    );
    // Broken while running: every call says so until the file is fixed.
    std::fs::write(&file, MESH).unwrap();
    let store = StaticStore::open(&file).unwrap();
    std::fs::write(&file, &MESH[..40]).unwrap();
    let msg = store.get("/twill/v1/config").unwrap_err().to_string();
    assert!(msg.contains("mesh.json: line"), "{msg}");
    std::fs::write(&file, MESH).unwrap();
    assert!(store.get("/twill/v1/config").unwrap().is_some());
    let missing = StaticStore::open(&dir.path.join("none.json"))
        .err()
        .unwrap()
        .to_string();
    assert!(missing.contains("none.json"), "{missing}");
}
