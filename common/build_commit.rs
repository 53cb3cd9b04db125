//! The build script of the packages that make binaries (`build = "../common/build_commit.rs"`):
//! sets `IM_COMMIT` to the commit the binary is built from, so that `--version`,
//! the `im_build_info` metric and im-bench's reports name the build, not the
//! checkout they happen to run in. `IM_COMMIT` set in the environment wins
//! (an image built without `.git`); outside a git checkout it is `unknown`.
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=IM_COMMIT");
    let commit = std::env::var("IM_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=IM_COMMIT={commit}");
    // Run again when HEAD moves: a checkout changes HEAD, a commit the branch
    // it names (a loose ref, or packed-refs once git packs it).
    // Only files that exist: cargo runs a script again on every build while
    // one it watches is missing.
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    for name in ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
        if let Some(path) = git(&["rev-parse", "--git-path", name])
            && std::path::Path::new(&path).exists()
        {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
