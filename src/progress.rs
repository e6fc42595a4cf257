//! Progress reporting: the library never prints; long stages report through this trait and
//! the binary draws bars.

/// Receives progress of long stages. Implementations must be cheap and thread-safe: stages
/// call `advance` from rayon workers.
pub trait Progress: Sync {
    /// A stage with `total` units of work begins.
    fn begin(&self, stage: &str, total: u64);
    /// `n` more units are done.
    fn advance(&self, n: u64);
    /// The current stage ended; `summary` is a one-line result.
    fn end(&self, summary: &str);
}
