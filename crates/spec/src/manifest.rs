//! The version manifest: which image runs a given `(service type, version)` and which Postgres
//! image runs a given major version.
//!
//! JSON shape:
//! ```json
//! {"image_pull_policy": "never",
//!  "postgres": [{"version": "15", "image": "berth/postgres:15"},
//!               {"version": "17", "image": "berth/postgres:17", "default": true}],
//!  "services": {"mcp": [{"version": "1.0.0", "image": "ghcr.io/pgedge/postgres-mcp:1.0.0",
//!                        "default": true, "image_pull_policy": "if_not_present"}]}}
//! ```
//! `image_pull_policy` (Kubernetes' terms) says what an agent does when the image is not on its
//! engine: `never` (the default) fails the step naming the image, `if_not_present` pulls it from
//! the registry its reference names. Set at the top it is every entry's default; an entry may
//! set its own. Postgres images must be berth's (`deploy/images/postgres`): they read the
//! `berth.conf` the agents write (passwords, replication, TLS), which a stock image ignores.
//! A Postgres version is a major version (`15`, `17`): berth builds one image per major, from
//! the Debian release that packages it (deploy/images/README.md).
//! Versions are 1 to 3 dot-separated numbers. A request resolves as follows: `latest` is the
//! entry marked default; a version equal to an entry's is that entry; a shorter version is
//! the highest entry it prefixes (`1.0` is the highest `1.0.x`, `1` the highest `1.x.y`).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::ServiceType;

/// The production manifest, built into the binaries so a deployment works without one.
pub const BUILTIN_MANIFEST: &str = include_str!("../../../specs/service-versions.json");

/// The manifest of the local test fleet: images built offline by deploy/.
pub const LOCAL_MANIFEST: &str = include_str!("../../../specs/service-versions.local.json");

/// What a version request resolved to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResolvedImage {
    /// The manifest's version (`1.0.0` for a request of `latest` or `1.0`).
    pub version: String,
    pub image: String,
    /// Docker health check for the image (`["CMD", ...]`), `{port}` standing for the port the
    /// service listens on. None: the instance counts as ready once it runs.
    pub health_check: Option<Vec<String>>,
    /// Plain settings the image reads from its environment (never secrets: those go in files).
    pub env: BTreeMap<String, String>,
    /// What an agent does when the image is not on its engine.
    pub pull_policy: PullPolicy,
}

/// What an agent does when an instance's image is not on its engine (Kubernetes'
/// `imagePullPolicy`, without `Always`: a tag that moves would make one spec run different code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PullPolicy {
    /// Fail the step, naming the image: it must be built or loaded on the host.
    #[default]
    Never,
    /// Pull it from the registry its reference names, then run it.
    IfNotPresent,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest is not valid JSON of the expected shape: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unknown service type \"{0}\" in the manifest")]
    UnknownServiceType(String),
    #[error("{kind}: version \"{version}\" is not 1 to 3 dot-separated numbers")]
    InvalidVersion { kind: String, version: String },
    #[error("{kind}: version \"{version}\" is listed twice")]
    DuplicateVersion { kind: String, version: String },
    #[error("{kind}: version \"{version}\" has an empty or malformed image reference")]
    InvalidImage { kind: String, version: String },
    #[error("{kind}: no version is listed")]
    Empty { kind: String },
    #[error("{kind}: exactly one version must be marked default, found {count}")]
    Defaults { kind: String, count: usize },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(default)]
    image_pull_policy: PullPolicy,
    postgres: Vec<RawEntry>,
    #[serde(default)]
    services: BTreeMap<String, Vec<RawEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    version: String,
    image: String,
    #[serde(default)]
    default: bool,
    #[serde(default)]
    health_check: Option<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    image_pull_policy: Option<PullPolicy>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    version: String,
    parts: Vec<u64>,
    image: String,
    health_check: Option<Vec<String>>,
    env: BTreeMap<String, String>,
    pull_policy: PullPolicy,
}

/// One kind's entries, sorted by ascending version, plus the default's index.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Versions {
    entries: Vec<Entry>,
    default: usize,
}

impl Versions {
    fn load(
        kind: &str,
        raw: Vec<RawEntry>,
        pull_policy: PullPolicy,
    ) -> Result<Self, ManifestError> {
        if raw.is_empty() {
            return Err(ManifestError::Empty {
                kind: kind.to_string(),
            });
        }
        let defaults = raw.iter().filter(|e| e.default).count();
        if defaults != 1 {
            return Err(ManifestError::Defaults {
                kind: kind.to_string(),
                count: defaults,
            });
        }
        let mut entries = Vec::with_capacity(raw.len());
        let mut default_version = String::new();
        for e in raw {
            let parts = version_parts(&e.version).ok_or_else(|| ManifestError::InvalidVersion {
                kind: kind.to_string(),
                version: e.version.clone(),
            })?;
            if e.image.is_empty() || e.image.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(ManifestError::InvalidImage {
                    kind: kind.to_string(),
                    version: e.version,
                });
            }
            if entries.iter().any(|x: &Entry| x.version == e.version) {
                return Err(ManifestError::DuplicateVersion {
                    kind: kind.to_string(),
                    version: e.version,
                });
            }
            if e.default {
                default_version = e.version.clone();
            }
            entries.push(Entry {
                version: e.version,
                parts,
                image: e.image,
                health_check: e.health_check,
                env: e.env,
                pull_policy: e.image_pull_policy.unwrap_or(pull_policy),
            });
        }
        entries.sort_by(|a, b| a.parts.cmp(&b.parts));
        let default = entries
            .iter()
            .position(|e| e.version == default_version)
            .unwrap_or_default();
        Ok(Versions { entries, default })
    }

    fn resolve(&self, request: &str) -> Option<ResolvedImage> {
        let entry = if request == "latest" {
            &self.entries[self.default]
        } else if let Some(exact) = self.entries.iter().find(|e| e.version == request) {
            exact
        } else {
            let want = version_parts(request)?;
            self.entries
                .iter()
                .rev()
                .find(|e| e.parts.len() > want.len() && e.parts.starts_with(&want))?
        };
        Some(ResolvedImage {
            version: entry.version.clone(),
            image: entry.image.clone(),
            health_check: entry.health_check.clone(),
            env: entry.env.clone(),
            pull_policy: entry.pull_policy,
        })
    }

    fn list(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.version.clone()).collect()
    }
}

/// The parsed, checked version manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    postgres: Versions,
    services: BTreeMap<ServiceType, Versions>,
}

impl Manifest {
    /// Parses and checks a manifest: known service types, valid unique versions, non-empty
    /// images, and exactly one default for Postgres and for each listed service type. A
    /// service type may be left out, in which case no version of it resolves.
    pub fn from_json(text: &str) -> Result<Manifest, ManifestError> {
        let raw: RawManifest = serde_json::from_str(text)?;
        let postgres = Versions::load("postgres", raw.postgres, raw.image_pull_policy)?;
        let mut services = BTreeMap::new();
        for (name, entries) in raw.services {
            let t = ServiceType::parse(&name).ok_or(ManifestError::UnknownServiceType(name))?;
            services.insert(
                t,
                Versions::load(t.as_str(), entries, raw.image_pull_policy)?,
            );
        }
        Ok(Manifest { postgres, services })
    }

    /// The manifest built into the binary ([`BUILTIN_MANIFEST`]).
    pub fn builtin() -> Manifest {
        // A unit test parses BUILTIN_MANIFEST, so this cannot fail in a tested build.
        Manifest::from_json(BUILTIN_MANIFEST).expect("the built-in manifest is valid")
    }

    /// The image for `version` (`latest`, `1`, `1.0`, `1.0.0`) of a service type.
    pub fn resolve_service(
        &self,
        service_type: ServiceType,
        version: &str,
    ) -> Option<ResolvedImage> {
        self.services.get(&service_type)?.resolve(version)
    }

    /// The Postgres image for a major version; `None` or `latest` means the default.
    pub fn resolve_postgres(&self, version: Option<&str>) -> Option<ResolvedImage> {
        self.postgres.resolve(version.unwrap_or("latest"))
    }

    /// Every version listed for a service type, ascending (empty when the type is not listed).
    pub fn service_versions(&self, service_type: ServiceType) -> Vec<String> {
        self.services
            .get(&service_type)
            .map(Versions::list)
            .unwrap_or_default()
    }

    /// Every Postgres version listed, ascending.
    pub fn postgres_versions(&self) -> Vec<String> {
        self.postgres.list()
    }

    /// The version `latest` stands for, for a service type.
    pub fn default_service_version(&self, service_type: ServiceType) -> Option<String> {
        self.services
            .get(&service_type)
            .map(|v| v.entries[v.default].version.clone())
    }

    /// The Postgres version used when a spec names none.
    pub fn default_postgres_version(&self) -> String {
        self.postgres.entries[self.postgres.default].version.clone()
    }
}

/// Checks the syntax of a version request: `latest`, or 1 to 3 dot-separated numbers without
/// leading zeros (`1`, `1.0`, `1.0.0`).
pub fn validate_version_request(s: &str) -> Result<(), String> {
    if s == "latest" || version_parts(s).is_some() {
        Ok(())
    } else {
        Err("expected \"latest\" or a version like \"1\", \"1.0\" or \"1.0.0\"".to_string())
    }
}

fn version_parts(s: &str) -> Option<Vec<u64>> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.is_empty() || parts.len() > 3 {
        return None;
    }
    parts
        .into_iter()
        .map(|p| {
            let numeric = !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
            let leading_zero = p.len() > 1 && p.starts_with('0');
            if numeric && !leading_zero {
                p.parse().ok()
            } else {
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST: &str = r#"{
      "postgres": [
        {"version": "16", "image": "pg:16"},
        {"version": "17", "image": "pg:17", "default": true}
      ],
      "services": {
        "mcp": [
          {"version": "1.0.0", "image": "mcp:1.0.0"},
          {"version": "1.0.2", "image": "mcp:1.0.2", "default": true},
          {"version": "1.0.10", "image": "mcp:1.0.10"},
          {"version": "1.1.0", "image": "mcp:1.1.0"},
          {"version": "2.0.0", "image": "mcp:2.0.0"}
        ]
      }
    }"#;

    fn resolved(version: &str, image: &str) -> Option<ResolvedImage> {
        Some(ResolvedImage {
            version: version.into(),
            image: image.into(),
            health_check: None,
            env: BTreeMap::new(),
            pull_policy: PullPolicy::Never,
        })
    }

    fn pulled(r: Option<ResolvedImage>) -> Option<ResolvedImage> {
        r.map(|r| ResolvedImage {
            pull_policy: PullPolicy::IfNotPresent,
            ..r
        })
    }

    #[test]
    fn pull_policy_defaults_to_never_and_entries_override_the_manifest() {
        let m = Manifest::from_json(TEST).unwrap();
        assert_eq!(
            m.resolve_postgres(None).unwrap().pull_policy,
            PullPolicy::Never
        );
        let text = r#"{"image_pull_policy": "if_not_present",
            "postgres": [{"version": "15", "image": "p", "default": true, "image_pull_policy": "never"}],
            "services": {"mcp": [{"version": "1.0.0", "image": "m", "default": true}]}}"#;
        let m = Manifest::from_json(text).unwrap();
        assert_eq!(
            m.resolve_postgres(None).unwrap().pull_policy,
            PullPolicy::Never
        );
        assert_eq!(
            m.resolve_service(ServiceType::Mcp, "latest")
                .unwrap()
                .pull_policy,
            PullPolicy::IfNotPresent
        );
        let bad = r#"{"image_pull_policy": "always", "postgres": [{"version": "15", "image": "p", "default": true}]}"#;
        assert!(Manifest::from_json(bad).is_err());
    }

    #[test]
    fn resolution() {
        let m = Manifest::from_json(TEST).unwrap();
        let mcp = |v| m.resolve_service(ServiceType::Mcp, v);
        // `latest` is the entry marked default, not the highest.
        assert_eq!(mcp("latest"), resolved("1.0.2", "mcp:1.0.2"));
        assert_eq!(mcp("1.0.0"), resolved("1.0.0", "mcp:1.0.0"));
        // Numeric, not lexical, ordering: 1.0.10 > 1.0.2.
        assert_eq!(mcp("1.0"), resolved("1.0.10", "mcp:1.0.10"));
        assert_eq!(mcp("1"), resolved("1.1.0", "mcp:1.1.0"));
        assert_eq!(mcp("2"), resolved("2.0.0", "mcp:2.0.0"));
        assert_eq!(mcp("1.0.1"), None);
        assert_eq!(mcp("1.2"), None);
        assert_eq!(mcp("3"), None);
        assert_eq!(mcp("v1"), None);
        assert_eq!(mcp(""), None);
        assert_eq!(m.resolve_service(ServiceType::Rag, "latest"), None);
        assert_eq!(
            m.service_versions(ServiceType::Mcp),
            ["1.0.0", "1.0.2", "1.0.10", "1.1.0", "2.0.0"]
        );
        assert!(m.service_versions(ServiceType::Rag).is_empty());
        assert_eq!(
            m.default_service_version(ServiceType::Mcp).as_deref(),
            Some("1.0.2")
        );
    }

    #[test]
    fn postgres_resolution() {
        let m = Manifest::from_json(TEST).unwrap();
        assert_eq!(m.resolve_postgres(None), resolved("17", "pg:17"));
        assert_eq!(m.resolve_postgres(Some("latest")), resolved("17", "pg:17"));
        assert_eq!(m.resolve_postgres(Some("16")), resolved("16", "pg:16"));
        assert_eq!(m.resolve_postgres(Some("15")), None);
        assert_eq!(m.resolve_postgres(Some("16.4")), None);
        assert_eq!(m.postgres_versions(), ["16", "17"]);
        assert_eq!(m.default_postgres_version(), "17");
    }

    #[test]
    fn shipped_manifests_load() {
        let prod = Manifest::builtin();
        assert_eq!(
            prod.resolve_service(ServiceType::Mcp, "latest"),
            pulled(resolved("1.0.0", "ghcr.io/pgedge/postgres-mcp:1.0.0"))
        );
        assert_eq!(
            prod.resolve_service(ServiceType::Postgrest, "12"),
            pulled(resolved("12.2.3", "postgrest/postgrest:v12.2.3"))
        );
        assert!(prod.resolve_service(ServiceType::Rag, "1.0").is_some());
        // Postgres is berth's own image (it reads berth.conf), built by deploy/images, one
        // per major version, named by it.
        assert_eq!(prod.postgres_versions(), ["15", "17"]);
        let local = Manifest::from_json(LOCAL_MANIFEST).unwrap();
        assert_eq!(local.postgres_versions(), ["15", "17"]);
        for m in [&prod, &local] {
            for v in ["15", "17"] {
                let postgres = m.resolve_postgres(Some(v)).unwrap();
                assert_eq!(postgres.image, format!("berth/postgres:{v}"));
                assert_eq!(postgres.pull_policy, PullPolicy::Never);
                assert!(postgres.health_check.is_some());
            }
            assert_eq!(m.resolve_postgres(Some("13")), None);
            assert_eq!(
                m.resolve_postgres(None).unwrap().version,
                m.default_postgres_version()
            );
        }
        assert_eq!(
            prod.default_postgres_version(),
            local.default_postgres_version()
        );
        for t in ServiceType::ALL {
            let service = local.resolve_service(t, "1.0").unwrap();
            assert_eq!(
                (service.version.as_str(), service.image.as_str()),
                ("1.0.1", "berth/fixture-service:local")
            );
            assert_eq!(service.env["BERTH_SERVICE_TYPE"], t.as_str());
            assert!(
                service
                    .health_check
                    .as_ref()
                    .unwrap()
                    .iter()
                    .any(|a| a.contains("{port}"))
            );
            assert_eq!(local.resolve_service(t, "latest").unwrap().version, "1.1.0");
            assert!(local.service_versions(t).len() >= 2);
        }
    }

    /// deploy/images/build makes one image per Postgres version of the manifests and points
    /// `berth/postgres:local` at the default one: its `postgres_suites` table and
    /// `postgres_default` must say what the shipped manifests say.
    #[test]
    fn the_image_build_makes_every_postgres_version_of_the_manifests() {
        let build = include_str!("../../../deploy/images/build");
        let line = |prefix: &str| {
            build
                .lines()
                .find_map(|l| l.strip_prefix(prefix))
                .unwrap_or_else(|| panic!("deploy/images/build has no line {prefix}..."))
        };
        // declare -A postgres_suites=([15]=bookworm [17]=trixie)
        let mut built: Vec<u64> = line("declare -A postgres_suites=(")
            .trim_end_matches(')')
            .split_whitespace()
            .map(|kv| {
                let major = kv.trim_start_matches('[').split(']').next().unwrap();
                major.parse().unwrap()
            })
            .collect();
        built.sort_unstable();
        let default = line("postgres_default=").trim();
        for text in [BUILTIN_MANIFEST, LOCAL_MANIFEST] {
            let m = Manifest::from_json(text).unwrap();
            let listed: Vec<u64> = m
                .postgres_versions()
                .iter()
                .map(|v| v.parse().unwrap())
                .collect();
            assert_eq!(listed, built);
            assert_eq!(m.default_postgres_version(), default);
        }
    }

    #[test]
    fn load_errors() {
        let cases: &[(&str, &str)] = &[
            ("not json", "not valid JSON"),
            (r#"{"services": {}}"#, "not valid JSON"),
            (
                r#"{"postgres": [{"version": "17", "image": "x", "default": true, "extra": 1}]}"#,
                "not valid JSON",
            ),
            (r#"{"postgres": []}"#, "postgres: no version"),
            (
                r#"{"postgres": [{"version": "17", "image": "x"}]}"#,
                "found 0",
            ),
            (
                r#"{"postgres": [{"version": "16", "image": "x", "default": true}, {"version": "17", "image": "y", "default": true}]}"#,
                "found 2",
            ),
            (
                r#"{"postgres": [{"version": "17", "image": "x", "default": true}, {"version": "17", "image": "y"}]}"#,
                "listed twice",
            ),
            (
                r#"{"postgres": [{"version": "17.x", "image": "x", "default": true}]}"#,
                "dot-separated",
            ),
            (
                r#"{"postgres": [{"version": "1.2.3.4", "image": "x", "default": true}]}"#,
                "dot-separated",
            ),
            (
                r#"{"postgres": [{"version": "17", "image": "", "default": true}]}"#,
                "image",
            ),
            (
                r#"{"postgres": [{"version": "17", "image": "a b", "default": true}]}"#,
                "image",
            ),
            (
                r#"{"postgres": [{"version": "17", "image": "x", "default": true}], "services": {"redis": []}}"#,
                "unknown service type \"redis\"",
            ),
            (
                r#"{"postgres": [{"version": "17", "image": "x", "default": true}], "services": {"mcp": [{"version": "1.0.0", "image": "m"}]}}"#,
                "mcp: exactly one version must be marked default, found 0",
            ),
        ];
        for (text, want) in cases {
            let err = Manifest::from_json(text).unwrap_err().to_string();
            assert!(
                err.contains(want),
                "{text}: got {err:?}, want it to contain {want:?}"
            );
        }
    }

    #[test]
    fn version_request_syntax() {
        for ok in ["latest", "1", "1.0", "1.0.0", "0.1.0", "12.2.3", "10"] {
            assert_eq!(validate_version_request(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "v1",
            "1.",
            ".1",
            "1..0",
            "1.0.0.0",
            "01",
            "1.01",
            "1.0.0-rc1",
            "Latest",
            "-1",
            "1 ",
        ] {
            assert!(validate_version_request(bad).is_err(), "{bad:?}");
        }
    }
}
