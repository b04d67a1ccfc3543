//! Records the git commit the binary is built from, for `GET /v1/version`: `BERTH_REVISION`
//! and `BERTH_REVISION_TIME` (RFC 3339). Set in the environment, they win (a build from a
//! source archive); outside a git checkout they read `unknown` and empty.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=BERTH_REVISION");
    println!("cargo:rerun-if-env-changed=BERTH_REVISION_TIME");
    // Rebuild when HEAD moves: HEAD itself (a checkout), the branch it points to (a commit),
    // and packed-refs (a branch packed by gc). Only files that exist: cargo reruns a build
    // script on every build while a path it watches is missing.
    if let Some(git_dir) = git(&["rev-parse", "--git-dir"]).map(PathBuf::from) {
        let common = git(&["rev-parse", "--git-common-dir"]).map_or(git_dir.clone(), PathBuf::from);
        let mut watched = vec![git_dir.join("HEAD"), common.join("packed-refs")];
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watched.push(common.join(branch));
        }
        for path in watched.into_iter().filter(|p| p.exists()) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    let revision = std::env::var("BERTH_REVISION")
        .ok()
        .or_else(|| git(&["rev-parse", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    let time = std::env::var("BERTH_REVISION_TIME")
        .ok()
        .or_else(|| git(&["show", "-s", "--format=%cI", "HEAD"]))
        .unwrap_or_default();
    println!("cargo:rustc-env=BERTH_REVISION={revision}");
    println!("cargo:rustc-env=BERTH_REVISION_TIME={time}");
}
