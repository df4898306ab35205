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

/// The offset where the last `lines` lines of the file begin (0 if it has fewer).
///
/// A final line without a newline counts as a line; the newline that ends the last
/// line does not start another one, so "a\nb\n" has two lines, as for `tail -n`.
pub(crate) fn tail_start(file: &mut std::fs::File, lines: usize) -> io::Result<u64> {
    tail_start_with_block(file, lines, TAIL_BLOCK)
}

fn tail_start_with_block(file: &mut std::fs::File, lines: usize, block: usize) -> io::Result<u64> {
    let len = file.metadata()?.len();
    if lines == 0 || len == 0 {
        return Ok(len);
    }
    let mut buf = vec![0u8; block];
    let mut pos = len;
    let mut seen = 0usize;
    while pos > 0 {
        let n = block.min(usize::try_from(pos).unwrap_or(block));
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
    Ok(0)
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
    /// Whether a follower should stop: server stopping, agent gone, or container removed.
    fn should_end(&self) -> bool {
        if *self.stopping.borrow() || self.status.has_changed().is_err() {
            return true;
        }
        self.status.borrow().container(&self.name).is_none()
    }
}

/// A read position in one log file.
pub(crate) struct LogCursor {
    path: PathBuf,
    file: Option<tokio::fs::File>,
    inode: u64,
    offset: u64,
}

impl LogCursor {
    /// Opens `path` positioned at the start of its last `tail` lines (all if `None`).
    /// A missing file is not an error: a pending container has no log yet.
    pub(crate) async fn open(path: PathBuf, tail: Option<usize>) -> io::Result<Self> {
        let opened = tokio::task::spawn_blocking({
            let path = path.clone();
            move || -> io::Result<Option<(std::fs::File, u64, u64)>> {
                let mut file = match std::fs::File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e),
                };
                let inode = file.metadata()?.ino();
                let offset = match tail {
                    Some(n) => tail_start(&mut file, n)?,
                    None => 0,
                };
                Ok(Some((file, inode, offset)))
            }
        })
        .await
        .map_err(io::Error::other)??;
        Ok(match opened {
            Some((file, inode, offset)) => Self {
                path,
                file: Some(tokio::fs::File::from_std(file)),
                inode,
                offset,
            },
            None => Self {
                path,
                file: None,
                inode: 0,
                offset: 0,
            },
        })
    }

    /// The next bytes after the cursor, or `None` at the current end of the file.
    async fn read_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        let Some(file) = self.file.as_mut() else {
            return Ok(None);
        };
        file.seek(SeekFrom::Start(self.offset)).await?;
        let mut buf = vec![0u8; CHUNK];
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        self.offset += n as u64;
        Ok(Some(buf))
    }

    /// Starts over from the beginning when the file was truncated or replaced, or
    /// opens it once it appears.
    async fn reopen_if_replaced(&mut self) -> io::Result<()> {
        let meta = match tokio::fs::metadata(&self.path).await {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if self.file.is_some() && meta.ino() == self.inode && meta.len() >= self.offset {
            return Ok(());
        }
        self.file = Some(tokio::fs::File::open(&self.path).await?);
        self.inode = meta.ino();
        self.offset = 0;
        Ok(())
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
            if ctx.should_end() {
                return None;
            }
            tokio::time::sleep(ctx.poll).await;
            if let Err(e) = cursor.reopen_if_replaced().await {
                return Some((Err(e), None));
            }
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
        let start = tail_start_with_block(&mut file, lines, block).unwrap() as usize;
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
