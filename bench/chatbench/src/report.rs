//! The results file (a JSON array, one object per scenario run) and the table printed
//! from it: every figure of the primary server next to the reference peer's, with the
//! ratio, latency percentiles, the CPU each process used and what limited the figure.
//!
//! A result object holds `scenario`, `label` (chatd, node, nginx), `params`, `figures`
//! (`name`, `value`, `unit`, `better`), `latency_ms`, `costs` and `limited_by`, plus
//! the scenario's own details.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

/// Appends a result to the array in `path` (created if missing).
pub fn append(path: &Path, result: Value) -> Result<(), String> {
    let mut all = match std::fs::read_to_string(path) {
        Ok(text) => match serde_json::from_str::<Value>(&text) {
            Ok(Value::Array(items)) => items,
            _ => return Err(format!("{} is not a JSON array", path.display())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    all.push(result);
    let text = serde_json::to_string_pretty(&Value::Array(all)).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))
}

fn fmt_value(v: &Value, unit: &str) -> String {
    let Some(x) = v.as_f64() else {
        return "-".into();
    };
    let number = if x.abs() >= 1000.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    };
    if unit.is_empty() || unit == "/s" {
        number
    } else {
        format!("{number} {unit}")
    }
}

fn fmt_opt(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map_or_else(|| "-".into(), |x| format!("{x:.digits$}"))
}

/// Cores used by other processes (not the server, not the client) in the measured phase.
fn other_cores(r: &Value) -> String {
    match (
        r["costs"]["other_cpu_ms"].as_f64(),
        r["costs"]["wall_s"].as_f64(),
    ) {
        (Some(ms), Some(wall)) if wall > 0.0 => format!("{:.2}", ms / 1000.0 / wall),
        _ => "-".into(),
    }
}

fn figure_of<'a>(result: &'a Value, name: &str) -> Option<&'a Value> {
    result["figures"]
        .as_array()?
        .iter()
        .find(|f| f["name"] == name)
}

/// Whether a label names chatd itself (`chatd` on SQLite, `chatd-pg` on PostgreSQL):
/// chatd on one backend is not a reference peer for chatd on the other; those two are
/// set side by side by [`comparison`].
fn is_chatd(label: &str) -> bool {
    label == "chatd" || label.starts_with("chatd-")
}

/// The database server's cores, or `-` when there was none.
fn db_cores(r: &Value) -> String {
    fmt_opt(&r["costs"]["db_cores"], 2)
}

/// The table for every result whose label is `primary`, each figure beside the same
/// figure of the first reference peer (a label that is not chatd's) that ran the same
/// scenario.
pub fn table(results: &[Value], primary: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<14} {:<56} {:>14} {:>14} {:>7} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7} {:>7}  limited by",
        "scenario",
        "figure",
        primary,
        "reference",
        "ratio",
        "p50 ms",
        "p99 ms",
        "max ms",
        "srv cpu",
        "db cpu",
        "cli cpu",
        "oth cpu",
    );
    for r in results.iter().filter(|r| r["label"] == primary) {
        let scenario = r["scenario"].as_str().unwrap_or("?");
        let reference = results
            .iter()
            .find(|o| o["scenario"] == r["scenario"] && !o["label"].as_str().is_some_and(is_chatd));
        let ref_label = reference.and_then(|o| o["label"].as_str()).unwrap_or("");
        let Some(figures) = r["figures"].as_array() else {
            continue;
        };
        for (i, f) in figures.iter().enumerate() {
            let name = f["name"].as_str().unwrap_or("?");
            let unit = f["unit"].as_str().unwrap_or("");
            let other = reference.and_then(|o| figure_of(o, name));
            let ratio = match (f["value"].as_f64(), other.and_then(|o| o["value"].as_f64())) {
                (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
                _ => "-".into(),
            };
            let other_text = other.map_or_else(
                || "-".to_string(),
                |o| format!("{} {}", fmt_value(&o["value"], unit), ref_label),
            );
            let (p50, p99, max, srv, db, cli, oth, limited) = if i == 0 {
                (
                    fmt_opt(&r["latency_ms"]["p50_ms"], 2),
                    fmt_opt(&r["latency_ms"]["p99_ms"], 2),
                    fmt_opt(&r["latency_ms"]["max_ms"], 2),
                    fmt_opt(&r["costs"]["server_cores"], 2),
                    db_cores(r),
                    fmt_opt(&r["costs"]["client_cores"], 2),
                    other_cores(r),
                    r["limited_by"].as_str().unwrap_or("").to_string(),
                )
            } else {
                Default::default()
            };
            let _ = writeln!(
                out,
                "{:<14} {:<56} {:>14} {:>14} {:>7} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7} {:>7}  {}",
                if i == 0 { scenario } else { "" },
                name,
                fmt_value(&f["value"], unit),
                other_text,
                ratio,
                p50,
                p99,
                max,
                srv,
                db,
                cli,
                oth,
                limited
            );
        }
        if let Some(o) = reference {
            let _ = writeln!(
                out,
                "{:<14} {:<56} {:>14} {:>14} {:>7} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7} {:>7}  {}",
                "",
                format!("  ({ref_label}: latency, CPU, limit)"),
                "",
                "",
                "",
                fmt_opt(&o["latency_ms"]["p50_ms"], 2),
                fmt_opt(&o["latency_ms"]["p99_ms"], 2),
                fmt_opt(&o["latency_ms"]["max_ms"], 2),
                fmt_opt(&o["costs"]["server_cores"], 2),
                db_cores(o),
                fmt_opt(&o["costs"]["client_cores"], 2),
                other_cores(o),
                o["limited_by"].as_str().unwrap_or("")
            );
        }
    }
    out.push_str(
        "\nratio = primary / reference. srv cpu, db cpu, cli cpu, oth cpu: cores kept busy (CPU \
         time / wall time) by the server, by its database server (PostgreSQL's processes), by \
         the client and by every other process during the measured phase; a high oth cpu \
         means other load on the machine skewed the figures.\n",
    );
    out
}

/// Figures that must be zero in every run (`chatbench check`, the end of make bench): a
/// benchmark that lost a message or failed a connection measured a broken server. A
/// figure counts when its name starts with one of these.
const MUST_BE_ZERO: &[&str] = &[
    "lost deliveries",
    "readers' lost deliveries",
    "unexpected closes",
    "unanswered sends",
    "failed connections",
    "slow members not closed",
    "silent ones not closed",
    "non-2xx responses",
    "errors (non-2xx + socket)",
    "stuck connections not closed",
    "idle timeouts beyond one per stuck connection",
];

/// Every run in which a figure of `MUST_BE_ZERO` is not zero or a figure is above its own
/// `max` (a bound the scenario sets, e.g. the server's CPU while clients are stuck), in
/// words; also every run with no figures at all and every figure whose value is not a
/// number (a figure that could not be computed must not pass for a clean one), and an
/// empty results list.
pub fn problems(results: &[Value]) -> Vec<String> {
    let mut found = Vec::new();
    if results.is_empty() {
        found.push("no results".to_string());
    }
    for r in results {
        let run = format!(
            "{} ({})",
            r["scenario"].as_str().unwrap_or("?"),
            r["label"].as_str().unwrap_or("?")
        );
        let figures = match r["figures"].as_array() {
            Some(figures) if !figures.is_empty() => figures,
            _ => {
                found.push(format!("{run}: no figures"));
                continue;
            }
        };
        for f in figures {
            let name = f["name"].as_str().unwrap_or("");
            let Some(value) = f["value"].as_f64().filter(|v| v.is_finite()) else {
                found.push(format!("{run}: {name:?} is not a number: {}", f["value"]));
                continue;
            };
            let must_be_zero = MUST_BE_ZERO.iter().any(|z| name.starts_with(z));
            if must_be_zero && value != 0.0 {
                found.push(format!("{run}: {name} = {}", f["value"]));
            }
            if let Some(max) = f["max"].as_f64()
                && value > max
            {
                found.push(format!("{run}: {name} = {} is above {max}", f["value"]));
            }
        }
    }
    found
}

/// Builds side by side (`chatbench report --compare true`, bench/compare.sh; chatd on
/// SQLite and on PostgreSQL, bench/run.sh with `BENCH_DB=both`): a row per scenario and
/// figure, a column per label in the order the labels first ran (only those in `only`,
/// when given), each the median of that label's runs, then the ratio of the last label
/// to the first. The cores kept busy by the server, its database and the client close
/// each scenario.
pub fn comparison(results: &[Value], only: &[&str]) -> String {
    let kept: Vec<Value> = results
        .iter()
        .filter(|r| only.is_empty() || only.iter().any(|l| r["label"] == *l))
        .cloned()
        .collect();
    let medians = medians(&kept);
    let mut labels: Vec<&str> = Vec::new();
    let mut scenarios: Vec<&str> = Vec::new();
    for m in &medians {
        if let Some(label) = m["label"].as_str()
            && !labels.contains(&label)
        {
            labels.push(label);
        }
        if let Some(scenario) = m["scenario"].as_str()
            && !scenarios.contains(&scenario)
        {
            scenarios.push(scenario);
        }
    }
    let mut out = String::new();
    let _ = write!(out, "{:<14} {:<56}", "scenario", "figure");
    for label in &labels {
        let _ = write!(out, " {label:>14}");
    }
    let _ = writeln!(out, " {:>7}", "ratio");
    let find = |scenario: &str, label: &str| {
        medians
            .iter()
            .find(|m| m["scenario"] == scenario && m["label"] == label)
    };
    for scenario in &scenarios {
        // Every figure any label has, in the order they first appear (chatd on
        // PostgreSQL has its database's CPU, which chatd on SQLite has not).
        let mut rows: Vec<(String, String)> = Vec::new();
        for m in labels.iter().filter_map(|l| find(scenario, l)) {
            for f in m["figures"].as_array().into_iter().flatten() {
                let name = f["name"].as_str().unwrap_or("?").to_string();
                if !rows.iter().any(|(n, _)| *n == name) {
                    rows.push((name, f["unit"].as_str().unwrap_or("").to_string()));
                }
            }
        }
        for extra in ["p99 ms", "server cores", "database cores", "client cores"] {
            rows.push((extra.into(), String::new()));
        }
        for (i, (name, unit)) in rows.iter().enumerate() {
            let values: Vec<Option<f64>> = labels
                .iter()
                .map(|l| {
                    let m = find(scenario, l)?;
                    match name.as_str() {
                        "p99 ms" => m["latency_ms"]["p99_ms"].as_f64(),
                        "server cores" => m["costs"]["server_cores"].as_f64(),
                        "database cores" => m["costs"]["db_cores"].as_f64(),
                        "client cores" => m["costs"]["client_cores"].as_f64(),
                        _ => figure_of(m, name)?["value"].as_f64(),
                    }
                })
                .collect();
            if values.iter().all(Option::is_none) {
                continue;
            }
            let _ = write!(
                out,
                "{:<14} {:<56}",
                if i == 0 { *scenario } else { "" },
                name
            );
            for v in &values {
                let text = v.map_or_else(|| "-".into(), |x| fmt_value(&Value::from(x), unit));
                let _ = write!(out, " {text:>14}");
            }
            let ratio = match (
                values.first().copied().flatten(),
                values.last().copied().flatten(),
            ) {
                (Some(a), Some(b)) if a != 0.0 && values.len() > 1 => format!("{:.2}", b / a),
                _ => "-".into(),
            };
            let _ = writeln!(out, " {ratio:>7}");
        }
    }
    out.push_str(
        "\nmedians of each label's runs; ratio = last column / first column; cores: CPU time / \
         wall time of the measured phase.\n",
    );
    out
}

/// One result per (scenario, label), in the order they first ran: each figure, latency
/// percentile and CPU share the median of that server's runs (a noisy machine is quoted
/// by medians), `limited_by` the most frequent verdict, `runs` how many there were.
pub fn medians(results: &[Value]) -> Vec<Value> {
    let mut groups: Vec<Vec<&Value>> = Vec::new();
    for r in results {
        match groups
            .iter_mut()
            .find(|g| g[0]["scenario"] == r["scenario"] && g[0]["label"] == r["label"])
        {
            Some(group) => group.push(r),
            None => groups.push(vec![r]),
        }
    }
    groups.into_iter().map(|g| median_of(&g)).collect()
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

fn median_of(runs: &[&Value]) -> Value {
    let mut out = runs[0].clone();
    let med =
        |get: &dyn Fn(&Value) -> Option<f64>| median(runs.iter().filter_map(|r| get(r)).collect());
    if let Some(figures) = out["figures"].as_array_mut() {
        for f in figures {
            let name = f["name"].clone();
            if let Some(m) = med(&|r| figure_of(r, name.as_str()?)?["value"].as_f64()) {
                f["value"] = Value::from(m);
            }
        }
    }
    for key in ["p50_ms", "p99_ms", "max_ms"] {
        if let Some(m) = med(&|r| r["latency_ms"][key].as_f64()) {
            out["latency_ms"][key] = Value::from(m);
        }
    }
    for key in [
        "server_cores",
        "db_cores",
        "client_cores",
        "other_cpu_ms",
        "wall_s",
    ] {
        if let Some(m) = med(&|r| r["costs"][key].as_f64()) {
            out["costs"][key] = Value::from(m);
        }
    }
    let verdicts: Vec<&str> = runs
        .iter()
        .filter_map(|r| r["limited_by"].as_str())
        .collect();
    if let Some(most) = verdicts
        .iter()
        .max_by_key(|v| verdicts.iter().filter(|w| w == v).count())
    {
        out["limited_by"] = Value::from(*most);
    }
    out["runs"] = Value::from(runs.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pairs_figures_with_the_reference() {
        let results = vec![
            json!({"scenario": "idle", "label": "chatd",
                   "figures": [{"name": "connections/s", "value": 2000.0, "unit": "/s"}],
                   "latency_ms": {"p50_ms": 1.0, "p99_ms": 2.0},
                   "costs": {"server_cores": 0.95, "client_cores": 0.5},
                   "limited_by": "server CPU"}),
            json!({"scenario": "idle", "label": "node",
                   "figures": [{"name": "connections/s", "value": 1000.0, "unit": "/s"}],
                   "latency_ms": {"p50_ms": 3.0, "p99_ms": 4.0},
                   "costs": {"server_cores": 1.0, "client_cores": 0.4},
                   "limited_by": "server CPU"}),
        ];
        let t = table(&results, "chatd");
        let row = t.lines().nth(1).unwrap();
        assert!(row.contains("idle"), "{row}");
        assert!(row.contains("2000"), "{row}");
        assert!(row.contains("1000 node"), "{row}");
        assert!(row.contains("2.00"), "{row}");
        assert!(row.contains("server CPU"), "{row}");
        assert!(t.lines().nth(2).unwrap().contains("4.00"));
    }

    #[test]
    fn chatd_on_another_backend_is_not_a_reference() {
        let run = |label: &str, v: f64, db: Option<f64>| {
            json!({"scenario": "fanout", "label": label,
                   "figures": [{"name": "server CPU per delivery", "value": v, "unit": "µs"}],
                   "latency_ms": {"p99_ms": 5.0},
                   "costs": {"server_cores": 0.25, "db_cores": db, "client_cores": 0.2}})
        };
        let results = vec![
            run("chatd", 2.0, None),
            run("chatd-pg", 3.0, Some(0.125)),
            run("node", 8.0, None),
        ];
        let t = table(&results, "chatd");
        let row = t.lines().nth(1).unwrap();
        assert!(row.contains("8.000 µs node"), "{row}");
        assert!(row.contains("0.25"), "{row}");
        let t = table(&results, "chatd-pg");
        let row = t.lines().nth(1).unwrap();
        assert!(row.contains("8.000 µs node"), "{row}");
        assert!(
            row.contains("0.12") || row.contains("0.13"),
            "db cores: {row}"
        );
        let c = comparison(&results, &["chatd", "chatd-pg"]);
        let header = c.lines().next().unwrap();
        assert!(!header.contains("node"), "{header}");
        let row = c.lines().nth(1).unwrap();
        assert!(row.trim_end().ends_with("1.50"), "{row}");
        let extra = |label: &str| {
            json!({"scenario": "ingest", "label": label,
                   "figures": [{"name": "acknowledged sends/s", "value": 100.0, "unit": "/s"}]})
        };
        let mut with_db = extra("chatd-pg");
        with_db["figures"].as_array_mut().unwrap().push(
            json!({"name": "database CPU per acknowledged send", "value": 9.0, "unit": "µs"}),
        );
        let c2 = comparison(&[extra("chatd"), with_db], &[]);
        let row = c2
            .lines()
            .find(|l| l.contains("database CPU per acknowledged send"))
            .expect("a figure only the second label has");
        assert!(row.contains("9.000 µs"), "{row}");
        let db = c.lines().find(|l| l.contains("database cores")).unwrap();
        assert!(db.contains("0.125") && db.contains('-'), "{db}");
    }

    #[test]
    fn medians_per_scenario_and_label() {
        let run = |label: &str, v: f64, p99: f64, limit: &str| {
            json!({"scenario": "fanout", "label": label,
                   "figures": [{"name": "server CPU per delivery", "value": v, "unit": "µs"}],
                   "latency_ms": {"p50_ms": 1.0, "p99_ms": p99},
                   "costs": {"server_cores": v / 10.0},
                   "limited_by": limit})
        };
        let results = vec![
            run("chatd", 3.0, 9.0, "offered load"),
            run("chatd", 1.0, 30.0, "server CPU"),
            run("node", 8.0, 20.0, "offered load"),
            run("chatd", 2.0, 10.0, "offered load"),
        ];
        let m = medians(&results);
        assert_eq!(m.len(), 2, "one per scenario and label");
        assert_eq!(m[0]["label"], "chatd");
        assert_eq!(m[0]["figures"][0]["value"], 2.0);
        assert_eq!(m[0]["latency_ms"]["p99_ms"], 10.0);
        assert_eq!(m[0]["costs"]["server_cores"], 0.2);
        assert_eq!(m[0]["limited_by"], "offered load");
        assert_eq!(m[0]["runs"], 3);
        assert_eq!(m[1]["figures"][0]["value"], 8.0);
        assert_eq!(median(vec![4.0, 1.0]), Some(2.5));
        assert_eq!(median(Vec::new()), None);
    }

    #[test]
    fn compares_builds_side_by_side() {
        let run = |label: &str, v: f64| {
            json!({"scenario": "fanout", "label": label,
                   "figures": [{"name": "server CPU per delivery", "value": v, "unit": "µs"}],
                   "latency_ms": {"p99_ms": v * 2.0}})
        };
        let results = vec![
            run("old", 4.0),
            run("new", 2.0),
            run("old", 6.0),
            run("new", 3.0),
        ];
        let t = comparison(&results, &[]);
        let header = t.lines().next().unwrap();
        assert!(
            header.find("old").unwrap() < header.find("new").unwrap(),
            "{header}"
        );
        let row = t.lines().nth(1).unwrap();
        assert!(
            row.contains("5.000 µs") && row.contains("2.500 µs"),
            "{row}"
        );
        assert!(row.trim_end().ends_with("0.50"), "{row}");
        assert!(t.lines().nth(2).unwrap().contains("p99 ms"));
    }

    #[test]
    fn problems_name_every_run_that_lost_or_failed_something() {
        let results = vec![
            json!({"scenario": "fanout", "label": "chatd",
                   "figures": [{"name": "lost deliveries", "value": 0.0},
                               {"name": "server CPU per delivery", "value": 2.0}]}),
            json!({"scenario": "fanout", "label": "node",
                   "figures": [{"name": "lost deliveries", "value": 3.0}]}),
            json!({"scenario": "idle", "label": "chatd",
                   "figures": [{"name": "failed connections", "value": 1.0}]}),
        ];
        let p = problems(&results);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].contains("fanout (node): lost deliveries = 3.0"),
            "{p:?}"
        );
        assert!(p[1].contains("idle (chatd): failed connections"), "{p:?}");
        assert!(problems(&results[..1]).is_empty());
    }

    #[test]
    fn problems_name_runs_without_figures_or_with_a_value_that_is_not_a_number() {
        let results = vec![
            json!({"scenario": "fanout", "label": "chatd"}),
            json!({"scenario": "rooms", "label": "chatd", "figures": []}),
            json!({"scenario": "idle", "label": "chatd",
                   "figures": [{"name": "connections/s", "value": null}]}),
            json!({"scenario": "http", "label": "chatd",
                   "figures": [{"name": "requests/s", "value": "fast"}]}),
            json!({"scenario": "slow", "label": "chatd",
                   "figures": [{"name": "unexpected closes (readers)", "value": 2.0}]}),
        ];
        let p = problems(&results);
        assert_eq!(p.len(), 5, "{p:?}");
        assert!(p[0].contains("fanout (chatd): no figures"), "{p:?}");
        assert!(p[1].contains("rooms (chatd): no figures"), "{p:?}");
        assert!(p[2].contains("\"connections/s\" is not a number"), "{p:?}");
        assert!(p[3].contains("\"requests/s\" is not a number"), "{p:?}");
        assert!(p[4].contains("unexpected closes (readers) = 2.0"), "{p:?}");
        assert_eq!(problems(&[]), ["no results"]);
    }

    #[test]
    fn problems_name_figures_above_their_bound() {
        let run = |cores: f64| {
            json!({"scenario": "stuck", "label": "chatd",
                   "figures": [{"name": "server cores while stuck", "value": cores, "max": 0.05},
                               {"name": "stuck connections not closed", "value": 0.0}]})
        };
        assert!(problems(&[run(0.01)]).is_empty());
        assert!(problems(&[run(0.05)]).is_empty());
        let p = problems(&[run(0.9)]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("stuck (chatd): server cores while stuck = 0.9 is above 0.05"),
            "{p:?}"
        );
    }

    #[test]
    fn appends_to_a_file() {
        let dir = std::env::temp_dir().join(format!("chatbench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("r.json");
        let _ = std::fs::remove_file(&path);
        append(&path, json!({"a": 1})).unwrap();
        append(&path, json!({"b": 2})).unwrap();
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
