//! The node's durable role and epoch: `<data_dir>/replication/state.json`, replaced atomically
//! (temp file, fsync, rename, fsync dir) on every promotion and fencing, so a restart never
//! forgets that the node was promoted or fenced.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A node's replication role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Takes ingest, delivers, streams its logs to the peer.
    Primary,
    /// Stores the primary's logs; neither ingests nor delivers.
    Replica,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DurableState {
    pub role: Role,
    pub epoch: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("replication state {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("replication state {path} is not valid: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("replication TLS: {0}")]
    Tls(String),
}

pub(crate) struct StateFile {
    dir: PathBuf,
}

impl StateFile {
    pub fn new(dir: PathBuf) -> StateFile {
        StateFile { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    pub fn load(&self) -> Result<Option<DurableState>, StateError> {
        let path = self.path();
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StateError::Corrupt {
                        path,
                        reason: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    pub fn save(&self, st: &DurableState) -> Result<(), StateError> {
        let io = |path: &PathBuf| {
            let path = path.clone();
            move |source| StateError::Io { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let tmp = self.dir.join("state.json.tmp");
        let json = serde_json::to_vec(st).expect("replication state serialises");
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&json).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        let path = self.path();
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path().join("replication"));
        assert_eq!(f.load().unwrap(), None);
        let st = DurableState {
            role: Role::Replica,
            epoch: 7,
        };
        f.save(&st).unwrap();
        assert_eq!(f.load().unwrap(), Some(st));
        std::fs::write(dir.path().join("replication/state.json"), b"{").unwrap();
        assert!(matches!(f.load(), Err(StateError::Corrupt { .. })));
    }
}
