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
