//! Where a sink partition resumes, from the files in storage. Input: the landed files of a table
//! (from [`super::storage::Storage::list`]) and the two marks each file's footer carries; output:
//! per topic partition the first offset to read and the files that may hold records at or after
//! it, so that a record already in a file is not written again.
//!
//! A partition has one open file per Hive folder and writer schema, so files of a partition
//! overlap in offsets: `orders+0+0+999.parquet` in `status=NEW` and `orders+0+1+998.parquet` in
//! `status=PAID`. The highest end offset is therefore not where to resume; each file records
//! instead, when it lands, the offset below which every record of its partition was in place (the
//! smallest start among the files still open then, or the offset after the last record read):
//! [`RESUME_KEY`]. Those marks only grow from one file to the next, so the highest of them is
//! where the partition resumes. Records after it that are already in a file are found by
//! offset range, folder and writer schema ([`FINGERPRINT_KEY`]): a file holds every record of
//! its folder and schema between its start and end offsets.

use std::collections::HashMap;

use super::storage::Listed;

/// The key-value metadata entry of a file's Parquet footer: the offset below which every
/// record of its topic partition was in a file in place when it landed (decimal).
pub const RESUME_KEY: &str = "lakewire.resume_offset";
/// The key-value metadata entry of a file's Parquet footer: the fingerprint of the writer
/// schema of its records (decimal).
pub const FINGERPRINT_KEY: &str = "lakewire.writer_fingerprint";

/// Which records of its offset range a landed file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holds {
    /// Those of its folder written with this writer schema (a fingerprint).
    Schema(u64),
    /// All of them: written by a version that kept one open file per partition (no marks).
    Any,
    /// Unknown: its footer could not be read. It covers nothing, so its records are written
    /// again rather than risk losing one.
    Unknown,
}

/// A file in place, as far as resuming needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Landed {
    /// Its Hive folder below the table (`status=NEW`, may be empty).
    pub dir: String,
    pub holds: Holds,
    pub start: i64,
    pub end: i64,
}

impl Landed {
    /// Whether the record at `offset`, of folder `dir` and writer schema `fingerprint`, is in
    /// this file.
    pub fn covers(&self, dir: &str, fingerprint: u64, offset: i64) -> bool {
        if offset < self.start || offset > self.end {
            return false;
        }
        match self.holds {
            Holds::Schema(fp) => fp == fingerprint && self.dir == dir,
            Holds::Any => true,
            Holds::Unknown => false,
        }
    }
}

/// A file's marks, read from its footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marks {
    /// Every record of the partition below this was in place when the file landed.
    pub resume: Option<i64>,
    pub holds: Holds,
}

impl Marks {
    /// The marks in a footer's key-value metadata (`None`: it could not be read) of a file
    /// ending at `end`. A file without them was written one open file per partition, so
    /// everything up to its end was in place.
    pub fn from_footer(kv: Option<&HashMap<String, String>>, end: i64) -> Self {
        let Some(kv) = kv else {
            return Self {
                resume: None,
                holds: Holds::Unknown,
            };
        };
        let resume = kv.get(RESUME_KEY).and_then(|v| v.parse::<i64>().ok());
        let fp = kv.get(FINGERPRINT_KEY).and_then(|v| v.parse::<u64>().ok());
        match (resume, fp) {
            (Some(r), Some(fp)) => Self {
                resume: Some(r),
                holds: Holds::Schema(fp),
            },
            _ => Self {
                resume: Some(end + 1),
                holds: Holds::Any,
            },
        }
    }

    /// The footer entries of a file landing with `resume` as its mark, for records of writer
    /// schema `fingerprint`.
    pub fn key_values(resume: i64, fingerprint: u64) -> Vec<(String, String)> {
        vec![
            (RESUME_KEY.to_string(), resume.to_string()),
            (FINGERPRINT_KEY.to_string(), fingerprint.to_string()),
        ]
    }
}

/// Where one topic partition resumes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resume {
    /// The first offset to read (every record below it is in place); `None` when no file says
    /// (none, or none readable): the committed offset is used.
    pub next: Option<i64>,
    /// The files that may hold records at or after `next`.
    pub landed: Vec<Landed>,
}

/// How a resume point compares with its partition's watermarks in Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Against {
    /// Between the low and the high watermark: read from it.
    Inside,
    /// Below the low watermark: this many records expired (retention, or deleted) before
    /// they landed. Read from the low watermark.
    Expired { lost: i64 },
    /// Above the high watermark: the topic was recreated, or the broker lost records the
    /// files hold. Reading would skip the new records as written and overwrite files of the
    /// same names; the partition is paused instead.
    Ahead { by: i64 },
}

impl Against {
    /// Where `next` stands against `low..=high`.
    pub fn watermarks(next: i64, low: i64, high: i64) -> Self {
        if next < low {
            Self::Expired { lost: low - next }
        } else if next > high {
            Self::Ahead { by: next - high }
        } else {
            Self::Inside
        }
    }
}

/// Per topic partition of `files`, where it resumes. `marks` reads a file's footer; it is
/// called for the newest files (by end offset) only, down to the first that ends below the
/// resume point found so far: older files hold nothing at or after it. A mark read from fewer
/// files than all is never above the true one, so nothing is lost; records between the two that
/// are in place are found by [`Landed::covers`].
pub fn resume_points(
    files: &[Listed],
    mut marks: impl FnMut(&Listed) -> Marks,
) -> HashMap<(String, i32), Resume> {
    let mut by_partition: HashMap<(String, i32), Vec<&Listed>> = HashMap::new();
    for f in files {
        by_partition
            .entry((f.name.topic.clone(), f.name.partition))
            .or_default()
            .push(f);
    }
    let mut out = HashMap::new();
    for (key, mut fs) in by_partition {
        fs.sort_by_key(|f| std::cmp::Reverse(f.name.end));
        let mut next: Option<i64> = None;
        let mut landed = Vec::new();
        for f in fs {
            if next.is_some_and(|n| f.name.end < n) {
                break;
            }
            let m = marks(f);
            if let Some(r) = m.resume {
                next = Some(next.map_or(r, |n| n.max(r)));
            }
            landed.push(Landed {
                dir: f.dir.clone(),
                holds: m.holds,
                start: f.name.start,
                end: f.name.end,
            });
        }
        if let Some(n) = next {
            landed.retain(|l| l.end >= n);
        }
        out.insert(key, Resume { next, landed });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::hive_paths::FileName;

    fn listed(dir: &str, start: i64, end: i64) -> Listed {
        let name = FileName {
            topic: "t".into(),
            partition: 0,
            start,
            end,
        };
        Listed {
            path: object_store::path::Path::from(format!("tb/{dir}/{}", name.render())),
            dir: dir.into(),
            name,
        }
    }

    fn kv(resume: i64, fp: u64) -> HashMap<String, String> {
        Marks::key_values(resume, fp).into_iter().collect()
    }

    #[test]
    fn interleaved_folders_resume_at_the_highest_mark_not_the_highest_end() {
        // a=0,2,4,... and b=1,3,5,...: `a` landed [0,8] while `b` was open from 1 (mark 1),
        // then `b` landed [1,9] with nothing else open (mark 10); `a` reopened at 10 and was
        // lost in a crash.
        let files = [listed("k=a", 0, 8), listed("k=b", 1, 9)];
        let marks = |f: &Listed| {
            let m = if f.dir == "k=a" { kv(1, 7) } else { kv(10, 7) };
            Marks::from_footer(Some(&m), f.name.end)
        };
        let r = &resume_points(&files, marks)[&("t".to_string(), 0)];
        assert_eq!(r.next, Some(10));
        assert!(r.landed.is_empty(), "{:?}", r.landed);

        // Had only `a` landed, the partition resumes at 1 and the records of `a` after it are
        // found in place.
        let files = [listed("k=a", 0, 8)];
        let r = &resume_points(&files, |f| Marks::from_footer(Some(&kv(1, 7)), f.name.end))
            [&("t".to_string(), 0)];
        assert_eq!(r.next, Some(1));
        let a = &r.landed[0];
        assert!(a.covers("k=a", 7, 2) && a.covers("k=a", 7, 8));
        assert!(!a.covers("k=b", 7, 3), "another folder");
        assert!(!a.covers("k=a", 8, 2), "another writer schema");
        assert!(!a.covers("k=a", 7, 9), "past its end");
    }

    #[test]
    fn files_without_marks_resume_after_their_end_and_hold_their_whole_range() {
        let files = [listed("", 0, 9), listed("", 10, 14)];
        let r = &resume_points(&files, |f| {
            Marks::from_footer(Some(&HashMap::new()), f.name.end)
        })[&("t".to_string(), 0)];
        assert_eq!(r.next, Some(15));
        let m = Marks::from_footer(Some(&HashMap::new()), 9);
        assert_eq!(m.holds, Holds::Any);
    }

    #[test]
    fn unreadable_footers_cover_nothing_and_do_not_move_the_resume_point() {
        let files = [listed("k=a", 0, 8), listed("k=b", 1, 9)];
        let r = &resume_points(&files, |f| {
            if f.dir == "k=b" {
                Marks::from_footer(None, f.name.end)
            } else {
                Marks::from_footer(Some(&kv(1, 7)), f.name.end)
            }
        })[&("t".to_string(), 0)];
        assert_eq!(r.next, Some(1));
        let b = r.landed.iter().find(|l| l.dir == "k=b");
        assert!(b.is_some_and(|b| !b.covers("k=b", 7, 3)));
        // None readable: no resume point (the committed offset is used).
        let r =
            &resume_points(&files, |f| Marks::from_footer(None, f.name.end))[&("t".to_string(), 0)];
        assert_eq!(r.next, None);
    }

    #[test]
    fn only_the_newest_footers_are_read() {
        // 100 files of one folder, each landing alone: the newest one's mark says it all.
        let files: Vec<Listed> = (0..100).map(|i| listed("", i * 10, i * 10 + 9)).collect();
        let mut read = 0;
        let r = &resume_points(&files, |f| {
            read += 1;
            Marks::from_footer(Some(&kv(f.name.end + 1, 1)), f.name.end)
        })[&("t".to_string(), 0)];
        assert_eq!(r.next, Some(1000));
        assert_eq!(read, 1);
    }

    #[test]
    fn resume_points_outside_the_watermarks_are_told_apart() {
        assert_eq!(Against::watermarks(10, 0, 20), Against::Inside);
        assert_eq!(Against::watermarks(20, 0, 20), Against::Inside);
        assert_eq!(Against::watermarks(0, 0, 0), Against::Inside);
        assert_eq!(
            Against::watermarks(5, 15, 20),
            Against::Expired { lost: 10 }
        );
        assert_eq!(Against::watermarks(100, 0, 10), Against::Ahead { by: 90 });
    }

    #[test]
    fn partitions_resume_separately() {
        let mut other = listed("", 0, 4);
        other.name.partition = 1;
        let files = [listed("", 0, 9), other];
        let all = resume_points(&files, |f| {
            Marks::from_footer(Some(&kv(f.name.end + 1, 1)), f.name.end)
        });
        assert_eq!(all[&("t".to_string(), 0)].next, Some(10));
        assert_eq!(all[&("t".to_string(), 1)].next, Some(5));
    }
}
