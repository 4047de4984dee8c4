//! The shipped Grafana dashboard (`etc/grafana/corral.json`) and Prometheus rules
//! (`etc/prometheus/corral-rules.yml`) against a real corral: every metric name their
//! expressions use must be one that a running instance really exports (scraped from
//! its `metrics` listener), so a renamed metric cannot leave a panel or an alert
//! silently empty. Where promtool is installed, the rules pass `promtool check rules`
//! and their unit tests (`promtool test rules`), and every dashboard query parses as
//! PromQL.

use crate::common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::metrics::curl;
use common::*;

fn shipped(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Every `corral_*` name in `text` (a PromQL expression, or a whole file).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("corral_") {
        let before = rest[..i].chars().next_back();
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // Not the tail of a longer identifier (`my_corral_x`).
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    out
}

/// Every PromQL expression of the dashboard: panel targets, the annotation and the
/// template variable's query.
fn dashboard_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_exprs(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| dashboard_exprs(x, out)),
        _ => {}
    }
}

/// The `expr:` values of a rules file (each on one line in corral's file).
fn rule_exprs(yaml: &str) -> Vec<String> {
    yaml.lines()
        .filter_map(|l| l.trim_start().strip_prefix("expr:"))
        .map(|e| e.trim().to_string())
        .collect()
}

/// Metric families a live corral exports: the `# TYPE` lines of a scrape.
fn exported(addr: SocketAddr) -> BTreeSet<String> {
    let got = curl(addr, "/metrics");
    assert_eq!(got.status, 200, "scrape: {got:?}");
    got.body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn promtool() -> Option<PathBuf> {
    let found = Command::new("promtool").arg("--version").output().is_ok();
    found.then(|| PathBuf::from("promtool"))
}

#[test]
fn dashboard_and_rules_use_only_metrics_corral_exports() {
    let mport = free_port();
    let c = Corral::start(&Conf::new(2).listen(mport, "metrics", "").render());
    let have = exported(SocketAddr::from(([127, 0, 0, 1], mport)));
    assert!(
        have.contains("corral_generation"),
        "{have:?}\n{}",
        c.log_tail(20)
    );

    let text = std::fs::read_to_string(shipped("etc/grafana/corral.json")).expect("dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    dashboard_exprs(&dash, &mut exprs);
    let panels = dash["panels"].as_array().expect("panels");
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let targets = p["targets"].as_array().map_or(0, Vec::len);
        assert!(targets > 0, "panel {} has no query", p["title"]);
    }
    let dashboard_exprs = exprs.clone();
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    // What the issue asks the dashboard to show, each through its metric.
    for m in [
        "corral_workers",
        "corral_worker_restarts_total",
        "corral_slot_last_exit_info",
        "corral_generation",
        "corral_handoff_connections_total",
        "corral_reloads_total",
        "corral_upgrades_total",
        "corral_reload_ready_seconds",
        "corral_listener_active",
        "corral_listener_accepted_total",
        "corral_listener_rejected_total",
        "corral_faults_injected_total",
        "corral_tls_handshakes_total",
        "corral_tls_failures_total",
        "corral_tls_moves_total",
        "corral_tls_certificate_expiry_timestamp_seconds",
    ] {
        assert!(used.contains(m), "the dashboard shows nothing of {m}");
    }
    let missing: Vec<&String> = used.iter().filter(|m| !have.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard uses metrics corral does not export: {missing:?}"
    );
    let unused: Vec<&String> = have.iter().filter(|m| !used.contains(*m)).collect();
    println!("exported but on no panel: {unused:?}");

    let rules = std::fs::read_to_string(shipped("etc/prometheus/corral-rules.yml")).unwrap();
    let exprs = rule_exprs(&rules);
    assert!(exprs.len() >= 6, "{exprs:?}");
    let tests = std::fs::read_to_string(shipped("etc/prometheus/corral-rules.test.yml")).unwrap();
    for (what, names) in [
        (
            "corral-rules.yml",
            exprs.iter().flat_map(|e| metric_names(e)).collect(),
        ),
        ("corral-rules.test.yml", metric_names(&tests)),
    ] {
        let names: BTreeSet<String> = names;
        assert!(!names.is_empty(), "{what}: no metric");
        let missing: Vec<&String> = names.iter().filter(|m| !have.contains(*m)).collect();
        assert!(
            missing.is_empty(),
            "{what} uses metrics corral does not export: {missing:?}"
        );
    }
    for alert in [
        "CorralCrashLoop",
        "CorralWorkerHung",
        "CorralOldGenerationLingering",
        "CorralReloadFailed",
        "CorralUpgradeFailed",
        "CorralMoveLosingConnections",
    ] {
        assert!(
            rules.contains(&format!("alert: {alert}\n")),
            "no {alert} rule"
        );
    }

    let Some(promtool) = promtool() else {
        println!(
            "SKIPPED promtool check rules / test rules: promtool is not installed \
             (Debian package `prometheus`)"
        );
        return;
    };
    // The dashboard's queries are PromQL too: with Grafana's variables given values,
    // promtool parses each of them as a recording rule.
    let tmp = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in dashboard_exprs
        .iter()
        .filter(|e| !e.starts_with("label_values("))
        .enumerate()
    {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*");
        let quoted = serde_json::to_string(&e).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard_{i}\n        expr: {quoted}\n"
        ));
    }
    std::fs::write(tmp.path().join("dashboard.yml"), rules).unwrap();
    let out = Command::new(&promtool)
        .args(["check", "rules", "dashboard.yml"])
        .current_dir(tmp.path())
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "a dashboard query is not valid PromQL: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = shipped("etc/prometheus");
    for args in [
        ["check", "rules", "corral-rules.yml"],
        ["test", "rules", "corral-rules.test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn metric_names_are_found_whole() {
    let names = metric_names("sum(rate(corral_a_total{x=\"corral_b\"}[5m])) / my_corral_c");
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["corral_a_total", "corral_b"]
    );
}
