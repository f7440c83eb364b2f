//! The instruction-count gate (`benches/instructions.py`, the pre-merge
//! check in BENCHMARKS.md) refuses a protocol whose count grew by more than
//! 5%, passes what stayed within it, refuses to compare counts from another
//! toolchain, and reads the committed baseline. The counting itself needs
//! valgrind and a build of its own (minutes), so it is run before merging,
//! not here; what is checked here is the decision it takes on counts.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn baseline() -> String {
    std::fs::read_to_string(root().join("benches/instructions.baseline")).unwrap()
}

/// The baseline with `name`'s count scaled by `factor` (and, if given, one
/// identity line replaced).
fn counted(factor: &[(&str, f64)], replace: Option<(&str, &str)>) -> PathBuf {
    let mut out = String::new();
    for line in baseline().lines() {
        let mut parts = line.split_whitespace();
        let (Some(k), Some(v), None) = (parts.next(), parts.next(), parts.next()) else {
            match replace {
                Some((key, value)) if line.starts_with(&format!("{key}: ")) => {
                    out += &format!("{key}: {value}\n")
                }
                _ => out += &format!("{line}\n"),
            }
            continue;
        };
        match (v.parse::<f64>(), factor.iter().find(|(n, _)| *n == k)) {
            (Ok(n), Some((_, f))) => out += &format!("{k} {}\n", (n * f).round() as u64),
            _ => out += &format!("{line}\n"),
        }
    }
    let path = std::env::temp_dir().join(format!(
        "h3gate-counts-{}-{}.txt",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::write(&path, out).unwrap();
    path
}

fn compare(file: &Path) -> (i32, String) {
    let out = Command::new("python3")
        .arg(root().join("benches/instructions.py"))
        .arg("--compare")
        .arg(file)
        .output()
        .expect("python3 runs benches/instructions.py (apt-get install -y python3)");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn the_committed_baseline_has_every_protocol_and_kind() {
    let text = baseline();
    for name in [
        "h1.chat",
        "h2.chat",
        "h3.chat",
        "h1.stream",
        "h2.stream",
        "h3.stream",
    ] {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} missing from the baseline"));
        let n: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(n > 10_000, "{line}");
    }
    for key in ["commit: ", "rustc: ", "gateway_deps_sha256: ", "profile: "] {
        assert!(text.lines().any(|l| l.starts_with(key)), "{key} missing");
    }
}

#[test]
fn a_protocol_grown_by_more_than_5_percent_fails_the_check() {
    let (code, text) = compare(&counted(&[("h2.chat", 1.06)], None));
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("h2.chat") && text.contains("GREW"), "{text}");
    let grew: Vec<_> = text.lines().filter(|l| l.ends_with("GREW")).collect();
    assert_eq!(grew.len(), 1, "{text}");
    // One stream figure alone is enough too.
    let (code, text) = compare(&counted(&[("h3.stream", 1.051)], None));
    assert_eq!(code, 1, "{text}");
}

#[test]
fn growth_within_5_percent_and_savings_pass() {
    let (code, text) = compare(&counted(
        &[("h1.chat", 1.04), ("h2.stream", 1.049), ("h3.chat", 0.7)],
        None,
    ));
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("OK"), "{text}");
}

#[test]
fn counts_from_another_toolchain_are_not_compared() {
    let (code, text) = compare(&counted(&[], Some(("rustc", "rustc 0.0.0 (other)"))));
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("NOT COMPARABLE"), "{text}");
}
