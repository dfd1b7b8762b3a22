//! Where a configuration value came from, so `config` can show it and errors can point at it.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Source {
    Flag {
        flag: String,
    },
    Env {
        var: String,
    },
    Package {
        manifest: PathBuf,
    },
    Workspace {
        manifest: PathBuf,
    },
    /// A built-in preset the table named with `preset`.
    Preset {
        name: String,
    },
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag { flag } => write!(f, "flag {flag}"),
            Source::Env { var } => write!(f, "env {var}"),
            Source::Package { manifest } => write!(f, "package table ({})", manifest.display()),
            Source::Workspace { manifest } => write!(f, "workspace table ({})", manifest.display()),
            Source::Preset { name } => write!(f, "preset {name}"),
            Source::Default => f.write_str("default"),
        }
    }
}

/// A value with its provenance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sourced<T> {
    pub value: T,
    pub source: Source,
}

impl<T> Sourced<T> {
    pub fn new(value: T, source: Source) -> Self {
        Self { value, source }
    }
}
