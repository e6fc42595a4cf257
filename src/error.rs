//! The crate's error type: every variant names the file (or configuration field) and, where
//! there is one, the row and the offending value, so a user can go straight to the bad input.

use std::path::PathBuf;

/// Errors of every stage. Binaries wrap them in `anyhow`; the library never panics on input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A JSON file is truncated or malformed (serde's message carries line and column).
    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// A row of a table (CSV line, JSON list entry, parquet row) holds a bad value.
    #[error("{}, row {row}: {what}", path.display())]
    Row {
        path: PathBuf,
        row: usize,
        what: String,
    },
    /// A file is well-formed but its content is unusable (missing field, empty series, …).
    #[error("{}: {what}", path.display())]
    Content { path: PathBuf, what: String },
    /// A parquet file could not be read or written: the parquet or arrow error (or, for a
    /// table of the wrong shape, what is wrong with it) as the source. Boxed so this bottom
    /// module names no arrow or parquet type (`table` is the only one that knows them).
    #[error("{}: parquet: {source}", path.display())]
    Parquet {
        path: PathBuf,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A configuration value (model spec, pipeline field, fit option) is invalid.
    #[error("invalid {field}: {what}")]
    Config { field: String, what: String },
    /// A run selection matched nothing.
    #[error("no runs match {query}")]
    NoMatch { query: String },
    /// A fit or a trace could not be built from the data it was given.
    #[error("{what}")]
    Data { what: String },
    /// The Hugging Face Hub could not serve a file.
    #[error(transparent)]
    Hub(#[from] HubError),
}

/// Failures of the Hub source, each with what the user should do next.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// 401/403/404 on a gated dataset: the user lacks a token or access.
    #[error(
        "the Hugging Face dataset {repo_id} refused {file} (HTTP {status}). It is gated:\n  \
         1. request access at https://huggingface.co/datasets/{repo_id}\n  \
         2. create a read token at https://huggingface.co/settings/tokens\n  \
         3. export HF_TOKEN=<token> (or run `huggingface-cli login`) and retry{token_note}"
    )]
    Gated {
        repo_id: String,
        file: String,
        status: u16,
        token_note: String,
    },
    /// The Hub could not be reached (offline machine, proxy, DNS).
    #[error("cannot reach the Hugging Face Hub for {repo_id}/{file}: {what}. Work offline with a local mirror (source kind = \"mirror\") or set HF_HUB_OFFLINE=1 to use the cache only")]
    Unreachable {
        repo_id: String,
        file: String,
        what: String,
    },
    /// Offline mode was requested and the file is not in the cache.
    #[error("HF_HUB_OFFLINE is set and {repo_id}/{file} is not in the hub cache at {}", cache.display())]
    NotCached {
        repo_id: String,
        file: String,
        cache: PathBuf,
    },
    /// Any other Hub client failure.
    #[error("Hugging Face Hub error for {repo_id}/{file}: {what}")]
    Other {
        repo_id: String,
        file: String,
        what: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn row(path: impl Into<PathBuf>, row: usize, what: impl Into<String>) -> Self {
        Error::Row {
            path: path.into(),
            row,
            what: what.into(),
        }
    }
    pub(crate) fn content(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        Error::Content {
            path: path.into(),
            what: what.into(),
        }
    }
    pub(crate) fn parquet(
        path: impl Into<PathBuf>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Parquet {
            path: path.into(),
            source: source.into(),
        }
    }
    pub(crate) fn config(field: impl Into<String>, what: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            what: what.into(),
        }
    }
    pub(crate) fn data(what: impl Into<String>) -> Self {
        Error::Data { what: what.into() }
    }
}
