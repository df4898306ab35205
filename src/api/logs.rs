//! Reading a container's log file for `/v1/containers/{name}/logs`: the start offset of
//! the last N lines, and a byte stream from there that can keep following the file.
//!
//! The shim owns the file and only appends to it; we never hold it open between polls
//! in a way that could matter to it (a read-only fd), and we notice truncation or
//! replacement (a new inode at the same path) by comparing with `stat` on every poll,
//! like `tail -F`.

use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;

use crate::reconciler::status::StatusSnapshot;

/// How often a follower looks for new bytes. Polling keeps this independent of inotify
/// limits and works on any filesystem the state root may live on.
pub(crate) const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// The largest piece sent as one body chunk.
const CHUNK: usize = 64 * 1024;

/// Block size for scanning backwards from the end of the file.
const TAIL_BLOCK: usize = 8 * 1024;

/// The offset where the last `lines` lines of the bytes `range` of the file begin
/// (`range.start` if it has fewer), reading backwards `block` bytes at a time.
///
/// A final line without a newline counts as a line; the newline that ends the last
/// line does not start another one, so "a\nb\n" has two lines, as for `tail -n`.
fn tail_start_with_block(
    file: &mut std::fs::File,
    lines: usize,
    range: std::ops::Range<u64>,
    block: usize,
) -> io::Result<u64> {
    let (floor, len) = (range.start, range.end);
    if lines == 0 || len <= floor {
        return Ok(len);
    }
    let mut buf = vec![0u8; block];
    let mut pos = len;
    let mut seen = 0usize;
    while pos > floor {
        let n = block.min(usize::try_from(pos - floor).unwrap_or(block));
        pos -= n as u64;
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut buf[..n])?;
        for (i, byte) in buf[..n].iter().enumerate().rev() {
            let at = pos + i as u64;
            if *byte != b'\n' || at == len - 1 {
                continue;
            }
            seen += 1;
            if seen == lines {
                return Ok(at + 1);
            }
        }
    }
    Ok(floor)
}

/// What a log stream needs to know besides the file.
pub(crate) struct FollowCtx {
    /// The container whose disappearance from the snapshot ends the stream.
    pub name: String,
    pub status: watch::Receiver<Arc<StatusSnapshot>>,
    /// Turns true when the server shuts down, so open followers do not hold the
    /// graceful shutdown forever.
    pub stopping: watch::Receiver<bool>,
    pub poll: Duration,
}

impl FollowCtx {
    /// Where the container's log is now (a StartFirst update moves it to the new
    /// version's folder).
    fn log_path(&self) -> Option<PathBuf> {
        self.status.borrow().container(&self.name)?.log_path.clone()
    }

    /// Whether a follower should stop: server stopping, agent gone, or container removed.
    fn should_end(&self) -> bool {
        if *self.stopping.borrow() || self.status.has_changed().is_err() {
            return true;
        }
        self.status.borrow().container(&self.name).is_none()
    }
}

/// An opened log: the file, its inode, where to start, where to stop.
type Opened = (std::fs::File, u64, u64, Option<u64>);

/// A read position in one log file.
pub(crate) struct LogCursor {
    path: PathBuf,
    file: Option<tokio::fs::File>,
    inode: u64,
    offset: u64,
    /// Where to stop (a previous run's range); `None`: the end of the file, growing.
    end: Option<u64>,
    /// The path names another file now (a replace): the open one is read to its end
    /// first, so the old container's last lines are not lost, then the new one.
    replaced: bool,
}

impl LogCursor {
    /// Opens `path` positioned at the start of its last `tail` lines (all if `None`).
    /// A missing file is not an error: a pending container has no log yet.
    pub(crate) async fn open(path: PathBuf, tail: Option<usize>) -> io::Result<Self> {
        Self::open_range(path, tail, None).await
    }

    /// As [`LogCursor::open`], within the bytes `range` of the file (a previous run's
    /// output), or the whole file.
    pub(crate) async fn open_range(
        path: PathBuf,
        tail: Option<usize>,
        range: Option<std::ops::Range<u64>>,
    ) -> io::Result<Self> {
        let opened = tokio::task::spawn_blocking({
            let path = path.clone();
            move || -> io::Result<Option<Opened>> {
                let mut file = match std::fs::File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e),
                };
                let meta = file.metadata()?;
                // A range past a file that shrank (truncated by hand) reads what is
                // left of it, and never what was written after.
                let end = range.as_ref().map(|r| r.end.min(meta.len()));
                let range = range.unwrap_or(0..meta.len());
                let range = range.start.min(meta.len())..range.end.min(meta.len());
                let offset = match tail {
                    Some(n) => tail_start_with_block(&mut file, n, range, TAIL_BLOCK)?,
                    None => range.start,
                };
                Ok(Some((file, meta.ino(), offset, end)))
            }
        })
        .await
        .map_err(io::Error::other)??;
        Ok(match opened {
            Some((file, inode, offset, end)) => Self {
                path,
                file: Some(tokio::fs::File::from_std(file)),
                inode,
                offset,
                end,
                replaced: false,
            },
            None => Self {
                path,
                file: None,
                inode: 0,
                offset: 0,
                end: None,
                replaced: false,
            },
        })
    }

    /// The next bytes after the cursor, or `None` at the current end of the file.
    async fn read_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        let Some(file) = self.file.as_mut() else {
            return Ok(None);
        };
        let want = match self.end {
            Some(end) => {
                CHUNK.min(usize::try_from(end.saturating_sub(self.offset)).unwrap_or(CHUNK))
            }
            None => CHUNK,
        };
        if want == 0 {
            return Ok(None);
        }
        file.seek(SeekFrom::Start(self.offset)).await?;
        let mut buf = vec![0u8; want];
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        self.offset += n as u64;
        Ok(Some(buf))
    }

    /// Follows the container's log to `path` (a StartFirst update's new version
    /// serves), once the file followed so far is gone (the old version removed, so all
    /// its output is in the open file): true when there may be bytes to read now. The
    /// open file is read to its end once more first.
    async fn move_to(&mut self, path: PathBuf) -> io::Result<bool> {
        if path == self.path || tokio::fs::try_exists(&self.path).await? {
            return Ok(false);
        }
        if self.file.is_some() && !self.replaced {
            self.replaced = true;
            return Ok(true);
        }
        *self = LogCursor::open(path, None).await?;
        Ok(true)
    }

    /// Starts over from the beginning when the file was truncated or replaced, or
    /// opens it once it appears; true when there may be bytes to read now.
    ///
    /// A replaced file (a replace moved the old container's log aside, after its shim
    /// ended) is read to its end once more before the switch: bytes written after the
    /// last read and before the move are still there, through the open descriptor.
    async fn reopen_if_replaced(&mut self) -> io::Result<bool> {
        let meta = match tokio::fs::metadata(&self.path).await {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        if self.file.is_some() && meta.ino() == self.inode && meta.len() >= self.offset {
            return Ok(false);
        }
        if self.file.is_some() && meta.ino() != self.inode && !self.replaced {
            // One more read of the old file before switching.
            self.replaced = true;
            return Ok(true);
        }
        self.replaced = false;
        let file = tokio::fs::File::open(&self.path).await?;
        // The inode of what was opened, not of what the path named a moment before.
        self.inode = file.metadata().await?.ino();
        self.file = Some(file);
        self.offset = 0;
        Ok(true)
    }
}

/// The body of a logs response: the cursor's bytes up to the end of the file, then,
/// with `follow`, new bytes as they are appended until the follower should end. The
/// client going away drops the stream, which ends the polling.
pub(crate) fn stream(
    cursor: LogCursor,
    follow: Option<FollowCtx>,
) -> impl futures_util::Stream<Item = io::Result<Vec<u8>>> + Send + 'static {
    // The state is `None` after an error, so the stream ends right after reporting it.
    futures_util::stream::unfold(Some((cursor, follow)), |state| async move {
        let (mut cursor, follow) = state?;
        loop {
            match cursor.read_chunk().await {
                Ok(Some(bytes)) => return Some((Ok(bytes), Some((cursor, follow)))),
                Ok(None) => {}
                Err(e) => return Some((Err(e), None)),
            }
            let ctx = follow.as_ref()?;
            match cursor.reopen_if_replaced().await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => return Some((Err(e), None)),
            }
            if let Some(path) = ctx.log_path() {
                match cursor.move_to(path).await {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) => return Some((Err(e), None)),
                }
            }
            if ctx.should_end() {
                return None;
            }
            tokio::time::sleep(ctx.poll).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tail_of(content: &[u8], lines: usize, block: usize) -> Vec<u8> {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(content).unwrap();
        let len = content.len() as u64;
        let start = tail_start_with_block(&mut file, lines, 0..len, block).unwrap() as usize;
        content[start..].to_vec()
    }

    #[test]
    fn tail_counts_lines_like_tail_n() {
        for block in [1, 2, 3, 8192] {
            assert_eq!(tail_of(b"a\nb\nc\n", 2, block), b"b\nc\n", "block {block}");
            assert_eq!(tail_of(b"a\nb\nc", 2, block), b"b\nc", "block {block}");
            assert_eq!(
                tail_of(b"a\nb\nc\n", 3, block),
                b"a\nb\nc\n",
                "block {block}"
            );
            assert_eq!(
                tail_of(b"a\nb\nc\n", 10, block),
                b"a\nb\nc\n",
                "block {block}"
            );
            assert_eq!(tail_of(b"a\nb\nc\n", 1, block), b"c\n", "block {block}");
            assert_eq!(tail_of(b"a\n\n\n", 2, block), b"\n\n", "block {block}");
        }
    }

    #[test]
    fn tail_within_a_range_counts_only_its_lines() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"a\nb\nc\nd\ne\n").unwrap();
        // The range "b\nc\nd\n" (a previous run between two others).
        for block in [1, 3, 8192] {
            let mut at = |n| tail_start_with_block(&mut file, n, 2..8, block).unwrap();
            let got = [at(1), at(2), at(3), at(9)];
            assert_eq!(got, [6, 4, 2, 2], "block {block}");
        }
    }

    #[test]
    fn tail_zero_and_empty_file_give_nothing() {
        assert_eq!(tail_of(b"a\nb\n", 0, 8192), b"");
        assert_eq!(tail_of(b"", 3, 8192), b"");
    }

    #[test]
    fn tail_of_long_lines_spans_blocks() {
        let long = "x".repeat(20_000);
        let content = format!("first\n{long}\nlast\n");
        assert_eq!(
            tail_of(content.as_bytes(), 2, 8192),
            format!("{long}\nlast\n").as_bytes()
        );
    }
}
