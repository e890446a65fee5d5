//! Client identities for a run: the manifest `fixtures` writes (name, source address,
//! certificate and key per host) and its loading, with paths relative to the manifest.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// `identities.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// The CA that signed the server and client certificates.
    pub ca: PathBuf,
    /// The name in the relay's certificate (what `blast` verifies).
    pub server_name: String,
    pub identities: Vec<Identity>,
}

/// One client host: EHLO name = certificate name = PTR of `source`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    pub name: String,
    pub source: IpAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Manifest {
    /// Reads a manifest and makes its paths absolute (relative to the manifest's directory).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading identities manifest {}", path.display()))?;
        let mut manifest: Manifest = serde_json::from_str(&text)
            .with_context(|| format!("parsing identities manifest {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        manifest.ca = base.join(&manifest.ca);
        for id in &mut manifest.identities {
            id.cert = base.join(&id.cert);
            id.key = base.join(&id.key);
        }
        anyhow::ensure!(
            !manifest.identities.is_empty(),
            "{} lists no identities",
            path.display()
        );
        Ok(manifest)
    }
}
