//! Checks what the sink landed under a table's folder (`wsload sink`): file names, offsets
//! covered exactly once, and rows by the Parquet footers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// What landed under a table's folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Landed {
    pub files: usize,
    pub bytes: u64,
    pub rows: u64,
}

/// Checks the table folder `dir` after the sink reported N records: only
/// `<topic>+<partition>+<start>+<end>.parquet` files (no temporary or other file), each
/// partition `p`'s offsets `0..counts[p]` covered exactly once by their names, and each file
/// holding `end - start + 1` rows by its Parquet footer. Errors say what is wrong.
pub fn check_landed(dir: &Path, topic: &str, counts: &[u64]) -> anyhow::Result<Landed> {
    let (files, landed) = sink_files(dir, topic)?;
    let mut ranges: BTreeMap<i32, Vec<(u64, u64)>> = BTreeMap::new();
    for f in &files {
        if f.rows != f.end - f.start + 1 {
            bail!(
                "{}: {} rows, but its name covers {} offsets",
                f.path.display(),
                f.rows,
                f.end - f.start + 1
            );
        }
        ranges
            .entry(f.partition)
            .or_default()
            .push((f.start, f.end));
    }
    for (p, want) in counts.iter().enumerate() {
        let mut rs = ranges.remove(&(p as i32)).unwrap_or_default();
        rs.sort_unstable();
        let mut next = 0u64;
        for (start, end) in rs {
            if start != next {
                bail!(
                    "partition {p}: a file starts at offset {start}, expected {next} (gap or overlap)"
                );
            }
            next = end + 1;
        }
        if next != *want {
            bail!("partition {p}: files cover offsets 0..{next}, expected 0..{want}");
        }
    }
    if let Some(p) = ranges.keys().next() {
        bail!("files of partition {p}, which the topic does not have");
    }
    Ok(landed)
}

/// Like [`check_landed`] for records that interleave over `folders` Hive partitions: files of
/// one partition in different folders overlap in offsets, so it checks that each folder's files
/// of a partition do not overlap, that no file holds more rows than its name's offsets, and that
/// each partition's rows add up to its count.
pub fn check_landed_interleaved(
    dir: &Path,
    topic: &str,
    counts: &[u64],
    folders: u32,
) -> anyhow::Result<Landed> {
    let (files, landed) = sink_files(dir, topic)?;
    let mut rows_of: BTreeMap<i32, u64> = BTreeMap::new();
    let mut ranges: BTreeMap<(PathBuf, i32), Vec<(u64, u64)>> = BTreeMap::new();
    for f in &files {
        if f.rows == 0 || f.rows > f.end - f.start + 1 {
            bail!(
                "{}: {} rows, its name covers {} offsets",
                f.path.display(),
                f.rows,
                f.end - f.start + 1
            );
        }
        let folder = f.path.parent().map(Path::to_path_buf).unwrap_or_default();
        ranges
            .entry((folder, f.partition))
            .or_default()
            .push((f.start, f.end));
        *rows_of.entry(f.partition).or_default() += f.rows;
    }
    for ((folder, p), mut rs) in ranges.clone() {
        rs.sort_unstable();
        for w in rs.windows(2) {
            if w[1].0 <= w[0].1 {
                bail!(
                    "{}: files of partition {p} overlap: {w:?}",
                    folder.display()
                );
            }
        }
    }
    let seen: std::collections::BTreeSet<&PathBuf> = ranges.keys().map(|(f, _)| f).collect();
    if seen.len() != folders as usize {
        bail!("{} Hive folders, expected {folders}", seen.len());
    }
    for (p, want) in counts.iter().enumerate() {
        let got = rows_of.remove(&(p as i32)).unwrap_or(0);
        if got != *want {
            bail!("partition {p}: {got} rows in its files, expected {want}");
        }
    }
    if let Some(p) = rows_of.keys().next() {
        bail!("files of partition {p}, which the topic does not have");
    }
    Ok(landed)
}

/// A landed file found under a table's folder.
struct SinkFile {
    path: PathBuf,
    partition: i32,
    start: u64,
    end: u64,
    /// By its Parquet footer.
    rows: u64,
}

/// Every file under `dir`, each of which must be a landed file of `topic`, and their totals.
fn sink_files(dir: &Path, topic: &str) -> anyhow::Result<(Vec<SinkFile>, Landed)> {
    let mut paths = Vec::new();
    walk(dir, &mut paths)?;
    let mut landed = Landed {
        files: 0,
        bytes: 0,
        rows: 0,
    };
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("odd file name {}", path.display()))?;
        let (partition, start, end) = parse_name(name, topic)
            .with_context(|| format!("{}: not a landed file of the sink", path.display()))?;
        let rows = parquet_rows(&path)?;
        landed.files += 1;
        landed.bytes += std::fs::metadata(&path)?.len();
        landed.rows += rows;
        files.push(SinkFile {
            path,
            partition,
            start,
            end,
            rows,
        });
    }
    Ok((files, landed))
}

/// `<topic>+<partition>+<start>+<end>.parquet` → (partition, start, end).
pub(crate) fn parse_name(name: &str, topic: &str) -> Option<(i32, u64, u64)> {
    let rest = name.strip_prefix(topic)?.strip_prefix('+')?;
    let rest = rest.strip_suffix(".parquet")?;
    let mut it = rest.split('+');
    let p = it.next()?.parse().ok()?;
    let start = it.next()?.parse().ok()?;
    let end: u64 = it.next()?.parse().ok()?;
    (it.next().is_none() && end >= start).then_some((p, start, end))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e?;
        if e.file_type()?.is_dir() {
            walk(&e.path(), out)?;
        } else {
            out.push(e.path());
        }
    }
    Ok(())
}

/// Rows of a Parquet file, from its footer.
fn parquet_rows(path: &Path) -> anyhow::Result<u64> {
    use parquet::file::reader::FileReader as _;
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let r = parquet::file::reader::SerializedFileReader::new(f)
        .with_context(|| format!("{}: not a Parquet file", path.display()))?;
    Ok(r.metadata().file_metadata().num_rows().max(0) as u64)
}
