//! The content store: blobs named by their sha256 under `blobs/sha256/<hex>`.
//!
//! Writes follow containerd's local content writer (`Commit`): stream into a temp file
//! while hashing, check size and digest, fsync, rename into place, fsync the directory.
//! A blob is therefore either complete and verified under its final name, or absent.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::ImageError;

/// Distinguishes temp names made by concurrent tasks of one process; the pid in the
/// name distinguishes processes (agent and `wharf pull` share the store).
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique name for a temp file or directory under `tmp/`.
pub(crate) fn temp_name(kind: &str, hex: &str) -> String {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{kind}-{hex}-{}-{n}", std::process::id())
}

/// `sha256:<hex>` of `bytes`.
pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The hex part of a `sha256:` digest; the caller has validated the digest.
pub(crate) fn digest_hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// Blobs on disk. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ContentStore {
    root: PathBuf,
}

impl ContentStore {
    /// A content store under `root` (the image store root); directories are created
    /// on first write.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    /// Where the blob with `digest` lives (whether or not it exists).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(digest_hex(digest))
    }

    /// The directory for in-flight writes; on the same filesystem as the final names,
    /// so `rename` is atomic.
    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Whether a verified blob with `digest` is present. Only verified content is ever
    /// renamed to a blob name, so existence is enough; a size mismatch (corruption by
    /// something else) counts as absent so the blob is fetched again.
    pub fn has(&self, digest: &str, size: Option<u64>) -> bool {
        match std::fs::symlink_metadata(self.blob_path(digest)) {
            Ok(m) => m.is_file() && size.is_none_or(|s| s == m.len()),
            Err(_) => false,
        }
    }

    /// Takes the lock named `key` (e.g. `blob-<hex>`, `layer-<hex>`) for this store,
    /// waiting for whoever holds it: first among the tasks of this process (a map of
    /// async mutexes, so waiters sleep instead of polling), then among processes (an
    /// exclusive `flock` on `locks/<key>`), so an agent and a `wharf pull` sharing the
    /// store never download or unpack the same content twice at once. The caller
    /// checks again for the content once it holds the lock: the holder before it has
    /// usually just made it.
    pub(crate) async fn lock(&self, key: &str) -> Result<ContentLock, ImageError> {
        let path = self.root.join("locks").join(key);
        let local = {
            let mut map = INFLIGHT.lock().unwrap_or_else(|e| e.into_inner());
            if map.len() > 256 {
                map.retain(|_, w| w.strong_count() > 0);
            }
            match map.get(&path).and_then(Weak::upgrade) {
                Some(m) => m,
                None => {
                    let m = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(path.clone(), Arc::downgrade(&m));
                    m
                }
            }
        };
        let guard = local.lock_owned().await;
        let flock = lock_file(&path)
            .await
            .map_err(|source| ImageError::LockContent {
                path: path.clone(),
                source,
            })?;
        Ok(ContentLock {
            path,
            _flock: Some(flock),
            _guard: guard,
        })
    }

    /// Reads a whole blob (manifests and configs: small).
    pub fn read(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let path = self.blob_path(digest);
        std::fs::read(&path).map_err(|source| ImageError::ReadBlob { path, source })
    }

    /// Starts writing the blob `digest`; `size` is checked at commit (and bounds the
    /// write, so a misbehaving registry cannot fill the disk).
    pub async fn writer(&self, digest: &str, size: Option<u64>) -> Result<BlobWriter, ImageError> {
        let tmp_dir = self.tmp_dir();
        let tmp = tmp_dir.join(temp_name("blob", digest_hex(digest)));
        let final_path = self.blob_path(digest);
        let io_err = |source| ImageError::WriteBlob {
            digest: digest.to_string(),
            path: tmp.clone(),
            source,
        };
        tokio::fs::create_dir_all(&tmp_dir).await.map_err(io_err)?;
        if let Some(parent) = final_path.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(io_err)?;
        }
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .await
            .map_err(io_err)?;
        Ok(BlobWriter {
            file,
            hasher: Sha256::new(),
            written: 0,
            expected_size: size,
            digest: digest.to_string(),
            tmp,
            final_path,
            committed: false,
        })
    }

    /// [`ContentStore::writer`] for blocking code; see [`BlockingBlobWriter`].
    pub(crate) fn blocking_writer(
        &self,
        digest: &str,
        size: Option<u64>,
    ) -> Result<BlockingBlobWriter, ImageError> {
        let tmp = self.tmp_dir().join(temp_name("blob", digest_hex(digest)));
        let final_path = self.blob_path(digest);
        let io_err = |source| ImageError::WriteBlob {
            digest: digest.to_string(),
            path: tmp.clone(),
            source,
        };
        std::fs::create_dir_all(self.tmp_dir()).map_err(io_err)?;
        if let Some(parent) = final_path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err)?;
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_err)?;
        Ok(BlockingBlobWriter {
            file,
            hasher: Sha256::new(),
            written: 0,
            expected_size: size,
            digest: digest.to_string(),
            tmp: Some(tmp),
            final_path,
        })
    }

    /// Writes an in-memory blob (a manifest we already verified) through the same path.
    pub async fn write_bytes(&self, digest: &str, bytes: &[u8]) -> Result<(), ImageError> {
        if self.has(digest, Some(bytes.len() as u64)) {
            return Ok(());
        }
        let mut w = self.writer(digest, Some(bytes.len() as u64)).await?;
        w.write_all(bytes)
            .await
            .map_err(|source| ImageError::WriteBlob {
                digest: digest.to_string(),
                path: w.tmp.clone(),
                source,
            })?;
        w.commit().await
    }
}

/// One async mutex per lock file path, shared by every store object of this process.
/// Weak, so finished keys cost nothing but a map entry (pruned as the map grows).
static INFLIGHT: LazyLock<Mutex<HashMap<PathBuf, Weak<tokio::sync::Mutex<()>>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Held while downloading or unpacking one piece of content; see [`ContentStore::lock`].
pub(crate) struct ContentLock {
    path: PathBuf,
    _flock: Option<Flock<std::fs::File>>,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for ContentLock {
    fn drop(&mut self) {
        // Unlink while still holding the flock, so the `locks/` directory does not fill
        // up with one file per blob ever pulled. A process that opened the old file
        // notices (inode check in `lock_file`) and starts over on a fresh one.
        let _ = std::fs::remove_file(&self.path);
        self._flock.take();
    }
}

/// An exclusive `flock` on `path`, created if needed. Polls with a non-blocking flock
/// rather than blocking a thread, so a cancelled pull stops waiting at once.
async fn lock_file(path: &Path) -> io::Result<Flock<std::fs::File>> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let mut wait = Duration::from_millis(10);
    loop {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                // The holder before us may have unlinked the file after we opened it:
                // then our lock is on an orphan inode and means nothing.
                let ours = lock.metadata()?.ino();
                match std::fs::metadata(path) {
                    Ok(m) if m.ino() == ours => return Ok(lock),
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_millis(200));
            }
            Err((_, errno)) => return Err(errno.into()),
        }
    }
}

/// An in-flight blob: an `AsyncWrite` that hashes what it writes. Dropping it without
/// `commit` removes the temp file.
pub struct BlobWriter {
    file: tokio::fs::File,
    hasher: Sha256,
    written: u64,
    expected_size: Option<u64>,
    digest: String,
    tmp: PathBuf,
    final_path: PathBuf,
    committed: bool,
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Flushes and fsyncs, checks size and digest, and renames the blob into place.
    /// On any failure the temp file is removed and nothing appears under the blob name.
    pub async fn commit(mut self) -> Result<(), ImageError> {
        let io_err = |path: &Path, source| ImageError::WriteBlob {
            digest: self.digest.clone(),
            path: path.to_path_buf(),
            source,
        };
        self.file.flush().await.map_err(|e| io_err(&self.tmp, e))?;
        self.file
            .sync_all()
            .await
            .map_err(|e| io_err(&self.tmp, e))?;
        check_blob(
            &self.digest,
            self.expected_size,
            std::mem::take(&mut self.hasher),
            self.written,
        )?;
        // Same content under the same name: if another writer won the race, the rename
        // replaces identical bytes, which is harmless.
        tokio::fs::rename(&self.tmp, &self.final_path)
            .await
            .map_err(|e| io_err(&self.final_path, e))?;
        self.committed = true;
        if let Some(dir) = self.final_path.parent() {
            // The rename is durable only once the directory entry is on disk.
            let d = tokio::fs::File::open(dir)
                .await
                .map_err(|e| io_err(dir, e))?;
            d.sync_all().await.map_err(|e| io_err(dir, e))?;
        }
        Ok(())
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Size and digest of a finished write against what the descriptor promised.
fn check_blob(
    digest: &str,
    expected_size: Option<u64>,
    hasher: Sha256,
    written: u64,
) -> Result<(), ImageError> {
    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    if actual != digest || expected_size.is_some_and(|s| s != written) {
        return Err(ImageError::CommitBlob {
            digest: digest.to_string(),
            expected_size: expected_size.unwrap_or(written),
            actual,
            actual_size: written,
        });
    }
    Ok(())
}

/// Refuses a write past the descriptor's size, so a misbehaving registry cannot fill
/// the disk.
fn check_limit(digest: &str, limit: Option<u64>, written: u64, more: usize) -> io::Result<()> {
    match limit {
        Some(limit) if written + more as u64 > limit => Err(io::Error::other(format!(
            "blob {digest} is larger than its descriptor's {limit} bytes"
        ))),
        _ => Ok(()),
    }
}

/// [`BlobWriter`] for blocking code (a layer streamed into its unpacker, see
/// `pull::layer`), and without its own fsync: [`BlockingBlobWriter::finish`] checks size
/// and digest, and the caller makes the temp file durable (one `syncfs` for the blob and
/// its unpacked layer) before [`VerifiedBlob::commit_synced`] gives it its name.
pub(crate) struct BlockingBlobWriter {
    file: std::fs::File,
    hasher: Sha256,
    written: u64,
    expected_size: Option<u64>,
    digest: String,
    /// Removed on drop unless handed on to a [`VerifiedBlob`].
    tmp: Option<PathBuf>,
    final_path: PathBuf,
}

impl BlockingBlobWriter {
    pub(crate) fn write(&mut self, buf: &[u8]) -> Result<(), ImageError> {
        let tmp = self.tmp.clone().unwrap_or_default();
        let io_err = |source| ImageError::WriteBlob {
            digest: self.digest.clone(),
            path: tmp,
            source,
        };
        check_limit(&self.digest, self.expected_size, self.written, buf.len())
            .and_then(|()| io::Write::write_all(&mut self.file, buf))
            .map_err(io_err)?;
        self.hasher.update(buf);
        self.written += buf.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// The digest the blob must have.
    pub(crate) fn digest(&self) -> &str {
        &self.digest
    }

    /// Checks size and digest. The temp file is not synced yet.
    pub(crate) fn finish(mut self) -> Result<VerifiedBlob, ImageError> {
        check_blob(
            &self.digest,
            self.expected_size,
            std::mem::take(&mut self.hasher),
            self.written,
        )?;
        Ok(VerifiedBlob {
            tmp: self.tmp.take(),
            final_path: self.final_path.clone(),
            digest: self.digest.clone(),
        })
    }
}

impl Drop for BlockingBlobWriter {
    fn drop(&mut self) {
        if let Some(tmp) = &self.tmp {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// A complete temp blob whose size and digest match; removed on drop unless committed.
pub(crate) struct VerifiedBlob {
    tmp: Option<PathBuf>,
    final_path: PathBuf,
    digest: String,
}

impl VerifiedBlob {
    /// Renames the blob into place and syncs the directory. The caller has made the
    /// temp file's content durable (`syncfs` after its last write): a name under
    /// `blobs/` must never point at content a crash could lose.
    pub(crate) fn commit_synced(mut self) -> Result<(), ImageError> {
        let Some(tmp) = self.tmp.take() else {
            return Ok(());
        };
        let io_err = |path: &Path, source| ImageError::WriteBlob {
            digest: self.digest.clone(),
            path: path.to_path_buf(),
            source,
        };
        // As in `BlobWriter::commit`: a concurrent writer's identical bytes may be
        // replaced, harmlessly.
        if let Err(e) = std::fs::rename(&tmp, &self.final_path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_err(&self.final_path, e));
        }
        if let Some(dir) = self.final_path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_err(dir, e))?;
        }
        Ok(())
    }
}

impl Drop for VerifiedBlob {
    fn drop(&mut self) {
        if let Some(tmp) = &self.tmp {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

impl AsyncWrite for BlobWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = check_limit(&this.digest, this.expected_size, this.written, buf.len()) {
            return Poll::Ready(Err(e));
        }
        match Pin::new(&mut this.file).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.hasher.update(&buf[..n]);
                this.written += n as u64;
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().file).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().file).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<PathBuf> {
        match std::fs::read_dir(dir) {
            Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        }
    }

    #[tokio::test]
    async fn committed_blob_is_stored_under_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::new(dir.path());
        let data = b"hello blob";
        let digest = sha256_digest(data);
        let mut w = cs.writer(&digest, Some(data.len() as u64)).await.unwrap();
        w.write_all(data).await.unwrap();
        w.commit().await.unwrap();
        assert!(cs.has(&digest, Some(data.len() as u64)));
        assert_eq!(cs.read(&digest).unwrap(), data);
        assert!(entries(&cs.tmp_dir()).is_empty());
    }

    #[tokio::test]
    async fn digest_mismatch_leaves_no_blob_and_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::new(dir.path());
        let digest = sha256_digest(b"expected content");
        let mut w = cs.writer(&digest, Some(16)).await.unwrap();
        w.write_all(b"tampered content").await.unwrap();
        let err = w.commit().await.unwrap_err();
        assert!(matches!(err, ImageError::CommitBlob { .. }), "{err}");
        assert!(!cs.has(&digest, None));
        assert!(entries(&dir.path().join("blobs/sha256")).is_empty());
        assert!(entries(&cs.tmp_dir()).is_empty());
    }

    #[tokio::test]
    async fn truncated_blob_leaves_no_blob() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::new(dir.path());
        let data = b"the whole blob";
        let digest = sha256_digest(data);
        let mut w = cs.writer(&digest, Some(data.len() as u64)).await.unwrap();
        w.write_all(&data[..5]).await.unwrap();
        assert!(w.commit().await.is_err());
        assert!(!cs.has(&digest, None));
        assert!(entries(&cs.tmp_dir()).is_empty());
    }

    #[tokio::test]
    async fn lock_serialises_tasks_and_leaves_no_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::new(dir.path());
        let inside = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            // A second store object on the same root shares the lock.
            let cs = ContentStore::new(dir.path());
            let inside = inside.clone();
            tasks.push(tokio::spawn(async move {
                let _l = cs.lock("blob-abc").await.unwrap();
                assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                tokio::time::sleep(Duration::from_millis(20)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        drop(cs.lock("blob-abc").await.unwrap());
        assert!(entries(&dir.path().join("locks")).is_empty());
    }

    #[tokio::test]
    async fn lock_excludes_another_open_file_description() {
        // What another process holding the flock looks like from here.
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::new(dir.path());
        let path = dir.path().join("locks/blob-x");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let f = std::fs::File::create(&path).unwrap();
        let held = Flock::lock(f, FlockArg::LockExclusive).unwrap();
        let waiter = tokio::spawn(async move { cs.lock("blob-x").await.map(drop) });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished());
        drop(held);
        waiter.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn oversized_blob_is_refused_while_writing() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::new(dir.path());
        let digest = sha256_digest(b"abc");
        let mut w = cs.writer(&digest, Some(3)).await.unwrap();
        assert!(w.write_all(b"abcdef").await.is_err());
        drop(w);
        assert!(!cs.has(&digest, None));
        assert!(entries(&cs.tmp_dir()).is_empty());
    }
}
