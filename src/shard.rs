//! One share of a run split over several processes (`simulate --shard I/N`,
//! `build-dataset --shard I/N`): which contiguous part of a list of units (servers, racks,
//! model groups) shard I of N owns, and where its tables go (`name/shard=I/part-0.parquet`).
//! Plain data and arithmetic: no I/O.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{Error, Result};

/// Shard `index` of `count` (0 ≤ index < count). `Shard::WHOLE` (0 of 1) is an unsplit run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shard {
    pub(crate) index: u32,
    pub(crate) count: u32,
}

impl Default for Shard {
    fn default() -> Self {
        Shard::WHOLE
    }
}

impl Shard {
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// Shard `index` of `count`; errors unless 0 ≤ index < count.
    pub fn new(index: u32, count: u32) -> Result<Self> {
        if count == 0 || index >= count {
            return Err(Error::config(
                "shard",
                format!("{index}/{count}: need 0 ≤ I < N (shards are numbered 0 … N − 1)"),
            ));
        }
        Ok(Shard { index, count })
    }

    /// True for an unsplit run.
    pub fn is_whole(&self) -> bool {
        self.count == 1
    }

    /// The units this shard owns out of `units`: the contiguous range
    /// [⌊I·units/N⌋, ⌊(I+1)·units/N⌋). The ranges of shards 0 … N − 1 tile 0 … units exactly;
    /// a shard may own none when N > units.
    pub(crate) fn range(&self, units: usize) -> Range<usize> {
        let at = |i: u32| (i as u128 * units as u128 / self.count as u128) as usize;
        at(self.index)..at(self.index + 1)
    }

    /// The hive partition folder name, `shard=I`.
    pub(crate) fn partition(&self) -> String {
        format!("shard={}", self.index)
    }

    /// Where table `name` goes under `dir`: one folder per table, so that every folder holds
    /// one schema: `dir/name/part-0.parquet`, or in this shard's hive partition
    /// `dir/name/shard=I/part-0.parquet`.
    pub(crate) fn table_path(&self, dir: &Path, name: &str) -> PathBuf {
        let mut p = dir.join(name);
        if !self.is_whole() {
            p = p.join(self.partition());
        }
        p.join("part-0.parquet")
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = Error;
    /// Parses `I/N` (e.g. `0/4`). With Slurm or a Kubernetes Indexed Job, I is the array or
    /// completion index.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::config(
                "shard",
                format!("{s:?}: expected I/N with whole numbers, e.g. 0/4"),
            )
        };
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let i = i.trim().parse::<u32>().map_err(|_| bad())?;
        let n = n.trim().parse::<u32>().map_err(|_| bad())?;
        Shard::new(i, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_tile_the_units_in_order() {
        for units in [0usize, 1, 7, 125, 1000] {
            for count in [1u32, 2, 3, 4, 7, 200] {
                let mut next = 0;
                for index in 0..count {
                    let r = Shard::new(index, count).unwrap().range(units);
                    assert_eq!(r.start, next, "units {units}, {index}/{count}");
                    next = r.end;
                }
                assert_eq!(next, units);
            }
        }
        assert_eq!(Shard::new(1, 4).unwrap().range(10), 2..5);
    }

    #[test]
    fn parses_and_refuses() {
        assert_eq!(
            "2/4".parse::<Shard>().unwrap(),
            Shard { index: 2, count: 4 }
        );
        assert_eq!(Shard::WHOLE.partition(), "shard=0");
        for bad in ["4/4", "1/0", "a/2", "3", "-1/2", ""] {
            let e = bad.parse::<Shard>().unwrap_err().to_string();
            assert!(e.contains("shard"), "{bad}: {e}");
        }
    }
}
