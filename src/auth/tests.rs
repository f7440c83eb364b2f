use super::*;

#[test]
fn create_authenticate_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let (key, rec) = create(
        &path,
        NewKey {
            name: "ci".into(),
            scopes: vec!["chat".into()],
            ..Default::default()
        },
    )
    .unwrap();
    assert!(key.starts_with("h3g_") && key.len() == 4 + 64);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(&key), "only the hash is stored");
    assert!(text.contains(&rec.sha256));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let keys = Keys::load(&path).unwrap();
    let mut h = HeaderMap::new();
    h.insert("authorization", format!("Bearer {key}").parse().unwrap());
    assert_eq!(keys.authenticate(&h).unwrap().name, "ci");
    let mut h2 = HeaderMap::new();
    h2.insert("x-api-key", key.parse().unwrap());
    assert!(keys.authenticate(&h2).is_ok());
    assert!(
        create(
            &path,
            NewKey {
                name: "ci".into(),
                ..Default::default()
            }
        )
        .is_err(),
        "names are unique"
    );
    revoke(&path, "ci").unwrap();
    // Same second, same size: force the change to be seen.
    *keys.stamp.lock().unwrap() = None;
    keys.refresh();
    assert!(matches!(
        keys.authenticate(&h),
        Err(GatewayError::Unauthorized)
    ));
}

#[test]
fn broken_file_keeps_the_last_good_set() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let (key, _) = create(
        &path,
        NewKey {
            name: "a".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let keys = Keys::load(&path).unwrap();
    std::fs::write(&path, "{ not json").unwrap();
    *keys.stamp.lock().unwrap() = None;
    keys.refresh();
    let mut h = HeaderMap::new();
    h.insert("x-api-key", key.parse().unwrap());
    assert!(keys.authenticate(&h).is_ok());
    assert!(Keys::load(&path).is_err(), "fatal at start");
}

#[test]
fn obfuscation() {
    assert_eq!(obfuscate("h3g_0123456789abcdef"), "h3g_0123****cdef");
    assert_eq!(obfuscate("short"), "h3g_****");
}

fn record(revision: u64, updated_at: u64, revoked: bool) -> KeyRecord {
    let (_, mut r) = file::new_record(NewKey {
        name: "k".into(),
        ..Default::default()
    })
    .unwrap();
    r.revision = revision;
    r.updated_at = updated_at;
    r.revoked_at = revoked.then_some(updated_at);
    r
}

#[test]
fn a_revocation_is_final_and_otherwise_the_later_revision_wins() {
    let live = record(3, 10, false);
    assert!(record(4, 5, false).supersedes(&live), "higher revision");
    assert!(
        record(3, 11, false).supersedes(&live),
        "same revision, later"
    );
    assert!(
        !record(3, 10, false).supersedes(&live),
        "the same: no change"
    );
    assert!(!record(2, 99, false).supersedes(&live), "an older revision");
    let gone = record(1, 1, true);
    assert!(
        gone.supersedes(&live),
        "a revocation wins whatever its revision"
    );
    assert!(!live.supersedes(&gone), "and is never undone");
    assert!(
        !record(9, 99, true).supersedes(&gone),
        "the first revocation stays"
    );
}

#[test]
fn edit_changes_only_what_it_names_and_clears_with_none() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let (_, rec) = create(
        &path,
        NewKey {
            name: "e".into(),
            rpm: Some(10),
            tpm: Some(100),
            models: vec!["gpt-*".into()],
            ..Default::default()
        },
    )
    .unwrap();
    let change = KeyEdit {
        rpm: Some(Some(20)),
        tpm: Some(None),
        ..Default::default()
    };
    let out = edit(&path, "e", &change).unwrap();
    assert_eq!((out.rpm, out.tpm), (Some(20), None));
    assert_eq!(out.models, rec.models, "untouched");
    assert_eq!(out.revision, rec.revision + 1);
    assert_eq!(read_file(&path).unwrap().keys[0], out);
    assert!(matches!(
        edit(&path, "e", &KeyEdit::default()),
        Err(KeysError::Invalid(_))
    ));
    assert!(matches!(
        edit(&path, "nobody", &change),
        Err(KeysError::NoSuchKey(_))
    ));
    let bad = KeyEdit {
        scopes: Some(vec!["admin".into()]),
        ..Default::default()
    };
    assert!(matches!(edit(&path, "e", &bad), Err(KeysError::Invalid(_))));
    revoke(&path, "e").unwrap();
    assert!(
        matches!(edit(&path, "e", &change), Err(KeysError::NoSuchKey(_))),
        "a revoked key is not edited"
    );
}

#[test]
fn keys_carry_a_team_and_budgets_set_and_cleared_by_edits() {
    use crate::spend::Period;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let (_, rec) = create(
        &path,
        NewKey {
            name: "spender".into(),
            team: Some("research".into()),
            budget: Some(5.0),
            budget_tokens: Some(2_000_000),
            budget_period: Some(Period::Day),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(rec.team.as_deref(), Some("research"));
    assert_eq!(
        (rec.budget, rec.budget_tokens, rec.budget_period),
        (Some(5.0), Some(2_000_000), Some(Period::Day))
    );
    assert_eq!(read_file(&path).unwrap().keys[0], rec, "stored as made");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(r#""budget_period": "1d""#), "{text}");

    let out = edit(
        &path,
        "spender",
        &KeyEdit {
            budget: Some(Some(7.5)),
            budget_period: Some(Some(Period::Rolling { hours: 720 })),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(out.budget, Some(7.5));
    assert_eq!(out.budget_period, Some(Period::Rolling { hours: 720 }));
    assert_eq!(out.team.as_deref(), Some("research"), "untouched");
    let out = edit(
        &path,
        "spender",
        &KeyEdit {
            team: Some(None),
            budget_tokens: Some(None),
            budget_period: Some(None),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        (out.team, out.budget, out.budget_tokens, out.budget_period),
        (None, Some(7.5), None, None)
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains("budget_tokens"),
        "cleared fields are left out"
    );
}

#[test]
fn budgets_and_team_names_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let new = |n: &str| NewKey {
        name: n.into(),
        ..Default::default()
    };
    for bad in [
        NewKey {
            budget: Some(0.0),
            ..new("a")
        },
        NewKey {
            budget: Some(-1.0),
            ..new("a")
        },
        NewKey {
            budget: Some(f64::NAN),
            ..new("a")
        },
        NewKey {
            budget: Some(f64::INFINITY),
            ..new("a")
        },
        NewKey {
            budget_tokens: Some(0),
            ..new("a")
        },
        NewKey {
            team: Some("re search".into()),
            ..new("a")
        },
        NewKey {
            team: Some(String::new()),
            ..new("a")
        },
        NewKey {
            team: Some("a:b".into()),
            ..new("a")
        },
        NewKey {
            budget_period: Some(crate::spend::Period::Day),
            ..new("a")
        },
    ] {
        let what = format!("{bad:?}");
        assert!(
            matches!(create(&path, bad), Err(KeysError::Invalid(_))),
            "{what}"
        );
    }
    create(&path, new("ok")).unwrap();
    for bad in [
        KeyEdit {
            budget: Some(Some(0.0)),
            ..Default::default()
        },
        KeyEdit {
            budget_tokens: Some(Some(0)),
            ..Default::default()
        },
        KeyEdit {
            team: Some(Some("../x".into())),
            ..Default::default()
        },
    ] {
        assert!(
            matches!(edit(&path, "ok", &bad), Err(KeysError::Invalid(_))),
            "{bad:?}"
        );
    }
    let known = |t: &str| t == "research";
    assert_eq!(unknown_team_warning(Some("research"), known), None);
    assert_eq!(unknown_team_warning(None, known), None);
    assert!(unknown_team_warning(Some("ops"), known).is_some_and(|w| w.contains("\"ops\"")));
}
