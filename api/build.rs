//! Stamps the binary with the commit it was built from: `hookrelay --version` prints
//! `hookrelay 0.1.0 (commit 1a2b3c4)`, with `-dirty` when the server's sources differ from that
//! commit, and `unknown` outside a git checkout. The bench suite reads it, so a figure in
//! BENCHMARKS.md names the code that produced it rather than whatever HEAD was at the time.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The sources that make up the `hookrelay` binary, relative to the workspace root.
const SERVER_SOURCES: [&str; 5] = ["api", "engine", "log", "Cargo.toml", "Cargo.lock"];

fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        // `status` must not refresh the index: its new mtime would rerun this script.
        .arg("--no-optional-locks")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest.parent().unwrap_or(&manifest).to_path_buf();
    let commit = match git(&root, &["rev-parse", "--short=7", "HEAD"]) {
        None => "unknown".to_string(),
        Some(hash) => {
            let mut status = vec!["status", "--porcelain", "--untracked-files=no", "--"];
            status.extend(SERVER_SOURCES);
            match git(&root, &status) {
                Some(changes) if changes.is_empty() => hash,
                _ => format!("{hash}-dirty"),
            }
        }
    };
    println!("cargo:rustc-env=HOOKRELAY_BUILD_COMMIT={commit}");

    // Again after a commit, a checkout or an edit of the paths the dirty check reads
    // (directories are scanned recursively; `api` holds this script).
    if let Some(git_dir) = git(&root, &["rev-parse", "--absolute-git-dir"]) {
        let git_dir = PathBuf::from(git_dir);
        for name in ["HEAD", "index", "refs", "packed-refs"] {
            println!("cargo:rerun-if-changed={}", git_dir.join(name).display());
        }
    }
    for source in SERVER_SOURCES {
        println!("cargo:rerun-if-changed={}", root.join(source).display());
    }
}
