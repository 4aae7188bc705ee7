//! Finding the programs a test runs: external tools on PATH and the binary under test.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Environment variable that turns a missing tool from a skipped test into a failure.
pub const REQUIRE_ALL_ENV: &str = "FIVEFOLD_REQUIRE_ALL";

/// Environment variable that replaces the binary under test (for example with a
/// wrapper around a reference etcd, to check that the tests themselves are right).
pub const TEST_BIN_ENV: &str = "FIVEFOLD_TEST_BIN";

/// Finds the executable `name` on PATH.
///
/// When it is missing: panics if `FIVEFOLD_REQUIRE_ALL=1` (CI must not silently skip
/// compatibility tests), otherwise prints a `skipped:` line to stderr and returns
/// `None`, and the caller returns early.
pub fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(found) = find_on_path(name, &path) {
        return Some(found);
    }
    let require_all = std::env::var(REQUIRE_ALL_ENV).is_ok_and(|value| value == "1");
    report_missing(name, require_all);
    None
}

/// The binary a test should run: `built` (pass `env!("CARGO_BIN_EXE_fivefold")`),
/// unless `FIVEFOLD_TEST_BIN` names another one.
pub fn binary_under_test(built: &str) -> PathBuf {
    match std::env::var_os(TEST_BIN_ENV) {
        Some(other) if !other.is_empty() => PathBuf::from(other),
        _ => PathBuf::from(built),
    }
}

/// Looks `name` up in a PATH-style list of directories. A name with a slash is taken
/// as a path and only checked for being an executable file.
pub(crate) fn find_on_path(name: &str, path: &OsStr) -> Option<PathBuf> {
    if name.contains('/') {
        let candidate = PathBuf::from(name);
        return is_executable(&candidate).then_some(candidate);
    }
    std::env::split_paths(path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    match std::fs::metadata(path) {
        Ok(metadata) => metadata.is_file() && metadata.permissions().mode() & 0o111 != 0,
        Err(_) => false,
    }
}

fn report_missing(name: &str, require_all: bool) {
    let hint = install_hint(name);
    if require_all {
        panic!("{name} is required ({REQUIRE_ALL_ENV}=1) but not found on PATH; install it with: {hint}");
    }
    eprintln!(
        "skipped: {name} not found on PATH (install it with: {hint}; \
         set {REQUIRE_ALL_ENV}=1 to fail instead)"
    );
}

fn install_hint(name: &str) -> String {
    match name {
        "etcdctl" => "apt-get install etcd-client".to_string(),
        "etcd" => "apt-get install etcd-server".to_string(),
        "setpriv" => "apt-get install util-linux".to_string(),
        other => format!("your package manager, so that `{other}` is on PATH"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system_path() -> std::ffi::OsString {
        std::env::var_os("PATH").unwrap_or_default()
    }

    #[test]
    fn finds_a_tool_every_system_has() {
        let found = find_on_path("sh", &system_path()).expect("sh is on PATH");
        assert!(found.ends_with("sh"));
        assert!(found.is_absolute(), "{found:?}");
    }

    #[test]
    fn a_missing_tool_is_none() {
        assert_eq!(find_on_path("fivefold-no-such-tool-4b1d", &system_path()), None);
    }

    #[test]
    fn a_directory_or_plain_file_is_not_a_tool() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("subdir")).unwrap();
        std::fs::write(dir.path().join("plain"), b"not executable").unwrap();
        let path = dir.path().as_os_str();
        assert_eq!(find_on_path("subdir", path), None);
        assert_eq!(find_on_path("plain", path), None);

        let script = dir.path().join("runnable");
        std::fs::write(&script, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_on_path("runnable", path), Some(script.clone()));
        assert_eq!(find_on_path(script.to_str().unwrap(), OsStr::new("")), Some(script));
    }

    #[test]
    fn a_missing_tool_only_warns_by_default() {
        report_missing("fivefold-no-such-tool-4b1d", false);
    }

    #[test]
    #[should_panic(expected = "etcdctl is required (FIVEFOLD_REQUIRE_ALL=1) but not found on PATH; \
                               install it with: apt-get install etcd-client")]
    fn a_missing_tool_panics_when_all_are_required() {
        report_missing("etcdctl", true);
    }
}
