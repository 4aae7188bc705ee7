//! The architecture, checked: dependencies between fivefold's crates point
//! down only (ARCHITECTURE.md's layers), and every crate root opens with a
//! `//!` comment that says what the crate owns.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// What each crate may depend on among fivefold's own crates.
fn allowed() -> BTreeMap<&'static str, BTreeSet<&'static str>> {
    let set = |names: &[&'static str]| names.iter().copied().collect::<BTreeSet<_>>();
    BTreeMap::from([
        ("topology", set(&[])),
        ("etcd-proto", set(&[])),
        ("mvcc", set(&["etcd-proto"])),
        ("wal", set(&[])),
        ("store", set(&["etcd-proto", "mvcc", "topology", "wal"])),
        ("bench", set(&["etcd-proto"])),
        // Platform crates reach the store only through the etcd v3 API (etcd-client),
        // never through store internals.
        ("client", set(&[])),
        ("router", set(&["topology"])),
        ("registry", set(&["client", "topology"])),
        ("gateway", set(&["client", "registry", "router", "topology"])),
        ("account", set(&["client", "registry", "router"])),
        // Test tooling talks to members like any client.
        ("testkit", set(&[])),
        (
            "cli",
            set(&[
                "account",
                "bench",
                "client",
                "etcd-proto",
                "gateway",
                "mvcc",
                "registry",
                "router",
                "store",
                "testkit",
                "topology",
            ]),
        ),
    ])
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

fn metadata() -> serde_json::Value {
    let output = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(workspace_root())
        .output()
        .expect("run cargo metadata");
    assert!(output.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("cargo metadata JSON")
}

#[test]
fn dependencies_point_down_only() {
    let metadata = metadata();
    let packages = metadata["packages"].as_array().expect("packages");
    let ours: BTreeSet<String> = packages.iter().map(|p| p["name"].as_str().unwrap().to_string()).collect();
    let allowed = allowed();
    for package in packages {
        let name = package["name"].as_str().unwrap();
        let permitted = allowed.get(name).unwrap_or_else(|| {
            panic!("crate {name} is not in the architecture test; add it with the crates it may use")
        });
        for dependency in package["dependencies"].as_array().unwrap() {
            let dep = dependency["name"].as_str().unwrap();
            let dev = dependency["kind"].as_str() == Some("dev");
            if ours.contains(dep) && !dev {
                assert!(
                    permitted.contains(dep),
                    "{name} depends on {dep}, which ARCHITECTURE.md's layers forbid"
                );
            }
        }
    }
}

#[test]
fn every_crate_root_says_what_it_owns() {
    let crates = workspace_root().join("crates");
    for entry in std::fs::read_dir(&crates).unwrap() {
        let dir = entry.unwrap().path();
        for root in ["src/lib.rs", "src/main.rs"] {
            let path = dir.join(root);
            let Ok(text) = std::fs::read_to_string(&path) else { continue };
            assert!(
                text.trim_start().starts_with("//!"),
                "{} does not open with a //! comment saying what the crate owns",
                path.display()
            );
        }
    }
}
