//! `spec.postgres_version`: which Postgres major version a database runs, and why it is pinned.
//!
//! A data directory belongs to the major version that made it: another version's server
//! refuses it, and moving it needs `pg_upgrade`, which berth does not run. So the version is
//! fixed when the database is created: an absent or `latest` version is stored as the
//! manifest's default at that moment (a later change of the default moves no database), an
//! update that leaves it out keeps the stored one, and an update naming another version is
//! refused.

use crate::DatabaseSpec;
use crate::check::{Errors, Obj};
use crate::manifest::{Manifest, validate_version_request};

/// Reads `postgres_version` of the spec object `o`: checked against the manifest (a version
/// it lacks is an error listing the ones it has) and pinned as the module says. `previous`
/// is the stored spec on an update. Returns the version to store: the manifest's version
/// (`"17"`), or `None` only where the stored spec has none (written before versions were
/// pinned) and the update names none either.
pub(super) fn postgres_version(
    o: &Obj<'_>,
    manifest: &Manifest,
    previous: Option<&DatabaseSpec>,
    e: &mut Errors,
) -> Option<String> {
    let path = o.at("postgres_version");
    let requested = o.str("postgres_version", e);
    let Some(previous) = previous else {
        // A create: the requested version, or the default, as the manifest names it.
        return resolve(requested.unwrap_or("latest"), &path, manifest, e);
    };
    let Some(requested) = requested else {
        return previous.postgres_version.clone();
    };
    let version = resolve(requested, &path, manifest, e)?;
    if let Some(stored) = &previous.postgres_version
        && *stored != version
    {
        e.push(
            path,
            format!(
                "cannot change: the database runs Postgres {stored}, and its data directory \
                 cannot be opened by Postgres {version} (a major version upgrade is not \
                 supported); create a new database for another version"
            ),
        );
        return None;
    }
    Some(version)
}

/// The manifest's version for `request` (`latest`, `17`), or an error at `path`.
fn resolve(request: &str, path: &str, manifest: &Manifest, e: &mut Errors) -> Option<String> {
    if let Err(msg) = validate_version_request(request) {
        e.push(path, msg);
        return None;
    }
    match manifest.resolve_postgres(Some(request)) {
        Some(image) => Some(image.version),
        None => {
            e.push(
                path,
                format!(
                    "Postgres version \"{request}\" is not available; available: latest, {}",
                    manifest.postgres_versions().join(", ")
                ),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use crate::manifest::Manifest;
    use crate::parse::{ValidationContext, parse_create_request, parse_update_request};

    const MANIFEST: &str = r#"{"postgres": [
        {"version": "15", "image": "pg:15"},
        {"version": "17", "image": "pg:17", "default": true}]}"#;

    fn spec(version: Option<&str>) -> Value {
        let mut spec =
            json!({"database_name": "app", "nodes": [{"name": "n1", "host_ids": ["h1"]}]});
        if let Some(v) = version {
            spec["postgres_version"] = json!(v);
        }
        spec
    }

    fn created(manifest: &Manifest, version: Option<&str>) -> Result<Option<String>, String> {
        let ctx = ValidationContext {
            manifest,
            known_hosts: None,
            previous: None,
        };
        parse_create_request(&json!({"spec": spec(version)}), &ctx)
            .map(|r| r.spec.postgres_version)
            .map_err(|e| format!("{:?}", e.errors))
    }

    fn updated(
        manifest: &Manifest,
        stored: Option<&str>,
        version: Option<&str>,
    ) -> Result<Option<String>, String> {
        let none = ValidationContext {
            manifest,
            known_hosts: None,
            previous: None,
        };
        let mut previous = parse_create_request(&json!({"spec": spec(Some("15"))}), &none)
            .unwrap()
            .spec;
        previous.postgres_version = stored.map(str::to_string);
        let ctx = ValidationContext {
            previous: Some(&previous),
            ..none
        };
        parse_update_request(&json!({"spec": spec(version)}), &ctx)
            .map(|s| s.postgres_version)
            .map_err(|e| format!("{:?}", e.errors))
    }

    #[test]
    fn a_create_stores_the_version_it_runs() {
        let m = Manifest::from_json(MANIFEST).unwrap();
        assert_eq!(created(&m, None), Ok(Some("17".into())));
        assert_eq!(created(&m, Some("latest")), Ok(Some("17".into())));
        assert_eq!(created(&m, Some("15")), Ok(Some("15".into())));
        let err = created(&m, Some("13")).unwrap_err();
        assert!(
            err.contains("spec.postgres_version") && err.contains("available: latest, 15, 17"),
            "{err}"
        );
        let err = created(&m, Some("v17")).unwrap_err();
        assert!(err.contains("spec.postgres_version"), "{err}");
    }

    #[test]
    fn a_new_default_moves_no_database() {
        // Created when 15 was the default, updated without a version after 17 became it.
        let old = Manifest::from_json(&MANIFEST.replace(r#", "default": true"#, "").replace(
            r#""image": "pg:15""#,
            r#""image": "pg:15", "default": true"#,
        ))
        .unwrap();
        assert_eq!(created(&old, None), Ok(Some("15".into())));
        let new = Manifest::from_json(MANIFEST).unwrap();
        assert_eq!(updated(&new, Some("15"), None), Ok(Some("15".into())));
    }

    #[test]
    fn an_update_keeps_or_repeats_the_version_and_cannot_change_it() {
        let m = Manifest::from_json(MANIFEST).unwrap();
        assert_eq!(updated(&m, Some("15"), None), Ok(Some("15".into())));
        assert_eq!(updated(&m, Some("15"), Some("15")), Ok(Some("15".into())));
        assert_eq!(
            updated(&m, Some("17"), Some("latest")),
            Ok(Some("17".into()))
        );
        for (stored, asked) in [("15", "17"), ("15", "latest"), ("17", "15")] {
            let err = updated(&m, Some(stored), Some(asked)).unwrap_err();
            assert!(
                err.contains("spec.postgres_version") && err.contains("cannot change"),
                "{stored} -> {asked}: {err}"
            );
        }
        let err = updated(&m, Some("15"), Some("13")).unwrap_err();
        assert!(err.contains("not available"), "{err}");
        // A spec stored before versions were pinned: kept as it is, or given one.
        assert_eq!(updated(&m, None, None), Ok(None));
        assert_eq!(updated(&m, None, Some("15")), Ok(Some("15".into())));
    }
}
