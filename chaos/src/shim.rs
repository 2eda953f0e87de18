//! The LD_PRELOAD shim (`shim.c`): compiled here with the machine's C compiler, preloaded into
//! `hookrelay`, and steered at run time through a shared control file — wall-clock offset
//! (clock-skew) and fsync delay (slow-disk). See `shim.c` for exactly what it intercepts.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

const SOURCE: &str = include_str!("shim.c");
const SLOT_CLOCK_OFFSET_NS: u64 = 0;
const SLOT_FSYNC_DELAY_US: u64 = 1;
const SLOT_FSYNC_CALLS: u64 = 2;

/// A built shim and its control file.
pub struct Shim {
    library: PathBuf,
    control_path: PathBuf,
    control: File,
}

impl Shim {
    /// Compiles the shim into `dir` with `cc` (or `$CC`). An error says what is missing.
    pub fn build(dir: &Path) -> anyhow::Result<Self> {
        let source = dir.join("chaos_shim.c");
        let library = dir.join("chaos_shim.so");
        std::fs::write(&source, SOURCE)?;
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let out = Command::new(&cc)
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&library)
            .arg(&source)
            .arg("-ldl")
            .output()
            .with_context(|| format!("running {cc} (install a C compiler: apt-get install gcc)"))?;
        if !out.status.success() {
            bail!(
                "{cc} could not build the shim: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let control_path = dir.join("chaos_shim.control");
        let control = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&control_path)?;
        control.set_len(4096)?;
        Ok(Self {
            library,
            control_path,
            control,
        })
    }

    /// The environment that preloads the shim into the server.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("LD_PRELOAD".into(), self.library.display().to_string()),
            (
                "HOOKRELAY_CHAOS_SHIM_CONTROL".into(),
                self.control_path.display().to_string(),
            ),
        ]
    }

    fn set(&self, slot: u64, value: i64) -> anyhow::Result<()> {
        // The server maps the same page MAP_SHARED: the write is visible to it at once.
        self.control.write_all_at(&value.to_le_bytes(), slot * 8)?;
        Ok(())
    }

    fn get(&self, slot: u64) -> i64 {
        let mut b = [0u8; 8];
        match self.control.read_exact_at(&mut b, slot * 8) {
            Ok(()) => i64::from_le_bytes(b),
            Err(_) => 0,
        }
    }

    /// Shifts the server's wall clock by `offset_s` seconds from real time.
    pub fn set_clock_offset_s(&self, offset_s: i64) -> anyhow::Result<()> {
        self.set(SLOT_CLOCK_OFFSET_NS, offset_s * 1_000_000_000)
    }

    /// Delays each of the server's fsync/fdatasync calls by `delay_us`.
    pub fn set_fsync_delay_us(&self, delay_us: i64) -> anyhow::Result<()> {
        self.set(SLOT_FSYNC_DELAY_US, delay_us)
    }

    /// fsync/fdatasync calls the server made through libc so far.
    pub fn fsync_calls(&self) -> i64 {
        self.get(SLOT_FSYNC_CALLS)
    }
}
