//! A small tmpfs the suite mounts itself (root only) and always unmounts.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::bail;

/// Whether the suite runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A mounted tmpfs; unmounted on drop (lazily if still busy).
pub struct Tmpfs {
    path: PathBuf,
    size_mib: u64,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_mib` MiB at `path` (created if missing).
    pub fn mount(path: &Path, size_mib: u64) -> anyhow::Result<Self> {
        std::fs::create_dir_all(path)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size_mib}m,mode=0700"))
            .arg("hookrelay-chaos")
            .arg(path)
            .output()?;
        if !out.status.success() {
            bail!(
                "mount -t tmpfs at {} failed: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            size_mib,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn size_mib(&self) -> u64 {
        self.size_mib
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Still busy (a process we could not reap yet): detach it now, freed when unused.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}
