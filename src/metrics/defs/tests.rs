use super::*;

#[test]
fn names_are_unique_prefixed_and_suffixed_by_kind_and_unit() {
    let mut seen = std::collections::HashSet::new();
    for f in FAMILIES.iter().chain(RENDERED) {
        assert!(seen.insert(f.name), "{} is defined twice", f.name);
        assert!(f.name.starts_with("h3gate_"), "{}", f.name);
        assert!(
            f.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "{}",
            f.name
        );
        assert_eq!(
            f.kind == Kind::Counter,
            f.name.ends_with("_total"),
            "{}: counters, and only counters, end in _total",
            f.name
        );
        let suffix = match f.unit {
            Some(Unit::Seconds) => Some("_seconds"),
            Some(Unit::Bytes) => Some("_bytes"),
            _ => None,
        };
        if let Some(s) = suffix {
            assert!(f.name.trim_end_matches("_total").ends_with(s), "{}", f.name);
        }
        if f.kind == Kind::Histogram {
            // The exporter's buckets match on these suffixes; without
            // them a histogram would be rendered as a summary.
            assert!(suffix.is_some(), "{}: a histogram has a unit", f.name);
        }
        assert!(f.help.ends_with('.') && f.help.len() > 10, "{}", f.name);
        let labels: std::collections::HashSet<_> = f.labels.iter().collect();
        assert_eq!(labels.len(), f.labels.len(), "{}: a label twice", f.name);
    }
}

/// Every family, registered through the table into a fresh recorder,
/// renders with `# HELP` and the `# TYPE` of its kind.
#[test]
fn every_family_renders_with_help_and_type() {
    let recorder = super::super::recorder();
    metrics::with_local_recorder(&recorder, || {
        describe();
        for f in FAMILIES {
            let labels: Vec<Label> = f.labels.iter().map(|k| Label::new(*k, "x")).collect();
            match f.kind {
                Kind::Counter => Counter::register(f.name, labels).increment(1),
                Kind::Gauge => Gauge::register(f.name, labels).set(1.0),
                Kind::Histogram => Histogram::register(f.name, labels).record(1.0),
            }
        }
    });
    let text = recorder.handle().render();
    for f in FAMILIES {
        let kind = match f.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let help = format!("# HELP {} ", f.name);
        assert!(
            text.lines().any(|l| l.starts_with(&help)),
            "{}: no # HELP",
            f.name
        );
        let ty = format!("# TYPE {} {kind}", f.name);
        assert!(text.lines().any(|l| l == ty), "{}: no `{ty}`", f.name);
    }
}

#[test]
fn a_def_registers_its_labels_in_order() {
    let recorder = super::super::recorder();
    metrics::with_local_recorder(&recorder, || {
        ADMISSION_SHED.with(["client", "client_limit"]).increment(2);
    });
    let text = recorder.handle().render();
    assert!(
        text.contains(r#"h3gate_admission_shed_total{scope="client",reason="client_limit"} 2"#),
        "{text}"
    );
}
