//! One layer of a pull: its blob streamed from the registry into the content store and,
//! at the same time, into the unpacker, so a layer's download and unpack overlap
//! instead of following each other (Docker's puller does the same).
//!
//! The download side (async) forwards the body's chunks over a bounded channel to a
//! blocking thread, which writes each chunk to the blob's temp file while hashing it
//! (`BlockingBlobWriter`) and feeds the same bytes to `unpack_layer` into a temp
//! directory (`TempLayer`). Nothing gets a final name until everything is checked:
//!
//! 1. the body ended normally (a cut body or a digest error from the client ends the
//!    try; the thread then sees the channel close without `End`, and removes both
//!    temp files);
//! 2. the blob's size and sha256 match the descriptor, checked before the unpacker's
//!    own result, so that a corrupted download is reported as such rather than as
//!    whatever the unpacker tripped over;
//! 3. the unpacked stream's sha256 is the config's diff id;
//! 4. one `syncfs` (shared with concurrent layers, see `durable`) makes the blob's temp
//!    file and the layer's files durable together: the blob needs no fsync of its own;
//! 5. the blob is renamed into `blobs/`, the layer into `layers/`, each directory
//!    fsynced. A crash before 5 leaves only temp names; after a rename, the content
//!    under the name was already on disk.
//!
//! Unpacking bytes before their digest is checked is safe because the unpacker never
//! writes outside its (private, temp) directory whatever the bytes say, and nothing it
//! wrote is used unless steps 2 and 3 pass. A retry starts over with a fresh temp file
//! and directory.

use std::io::{self, Read};
use std::sync::Arc;

use futures_util::StreamExt as _;
use oci_client::client::BlobResponse;
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use tokio::sync::{mpsc, Semaphore};

use super::{download_blob, Ctx, Op, TryError, PROGRESS_STEP};
use crate::images::config::Descriptor;
use crate::images::content::{digest_hex, BlockingBlobWriter};
use crate::images::progress::ProgressEvent;
use crate::images::store::{check_diff_id, ImageStore};
use crate::images::unpack::unpack_layer_with;
use crate::images::ImageError;

/// Chunks of the body in flight between download and unpacker (each is what the HTTP
/// client read at once, typically 8–16 KiB): enough to keep both sides busy, bounded
/// so a slow disk slows the download instead of filling memory.
const CHANNEL_CHUNKS: usize = 256;

/// While a blocking unpacker of a pull runs, it holds one of these; the pull waits for
/// all of them to be dropped before it returns an error, so that tasks it aborted leave
/// no temp files behind (`tokio` cannot abort a blocking thread).
pub(super) type Running = mpsc::Sender<()>;

/// What a layer task did: the bytes it downloaded (`None`: the blob was present or
/// not needed), and whether it unpacked the layer.
pub(super) type LayerOutcome = (Option<u64>, bool);

/// The per-pull limits, shared by its layer tasks.
#[derive(Clone)]
pub(super) struct Slots {
    pub(super) downloads: Arc<Semaphore>,
    pub(super) unpacks: Arc<Semaphore>,
}

/// Makes the layer `chain_id` present: nothing if it is unpacked already (perhaps by a
/// concurrent pull we waited for); else its blob is downloaded unless present, streamed
/// into an unpacker at the same time if an unpack slot is free, or unpacked from the
/// stored blob once one is. The second way keeps downloads going while both CPUs
/// unpack, and a late layer from unpacking alone on one CPU at the end of the pull.
///
/// One task per layer and per blob across tasks and processes (`ContentStore::lock`,
/// taken in that order: layer, then blob). No task waits for a slot while it holds a
/// lock, so pulls sharing layers cannot wait on each other in a cycle.
pub(super) async fn pull_layer(
    ctx: &Ctx,
    store: &ImageStore,
    desc: &Descriptor,
    diff_id: &str,
    chain_id: &str,
    slots: &Slots,
    running: Running,
) -> Result<LayerOutcome, ImageError> {
    let content = store.content();
    let done = || {
        ctx.progress.send(ProgressEvent::LayerDone {
            digest: desc.digest.clone(),
        })
    };
    let layer_key = format!("layer-{}", digest_hex(chain_id));
    let mut fetched = None;
    {
        let _download = slots.downloads.acquire().await;
        let _layer = content.lock(&layer_key).await?;
        if store.layer_path(chain_id).is_dir() {
            done();
            return Ok((None, false));
        }
        let _blob = content
            .lock(&format!("blob-{}", digest_hex(&desc.digest)))
            .await?;
        if !content.has(&desc.digest, Some(desc.size)) {
            if let Ok(_unpack) = slots.unpacks.try_acquire() {
                tracing::debug!(reference = %ctx.normalised, digest = %desc.digest, size = desc.size, "streaming layer");
                let what = format!("blob {}", desc.digest);
                let (n, unpacked) = ctx
                    .retrying(&what, Op::Blob(&desc.digest), || {
                        stream_once(ctx, store, desc, diff_id, chain_id, running.clone())
                    })
                    .await?;
                done();
                return Ok((Some(n), unpacked));
            }
            fetched = Some(download_blob(ctx, store, desc, true).await?);
        }
        ctx.progress.send(ProgressEvent::LayerDownloaded {
            digest: desc.digest.clone(),
        });
    }
    let _unpack = slots.unpacks.acquire().await;
    let _layer = content.lock(&layer_key).await?;
    let (s, digest, diff, chain) = (
        store.clone(),
        desc.digest.clone(),
        diff_id.to_string(),
        chain_id.to_string(),
    );
    // `ensure_layer` checks again: a concurrent pull may have unpacked it meanwhile.
    let unpacked = tokio::task::spawn_blocking(move || {
        let _running = running;
        s.ensure_layer(&digest, &diff, &chain)
    })
    .await
    .map_err(|e| task_error(ctx, e))??;
    done();
    Ok((fetched, unpacked))
}

fn task_error(ctx: &Ctx, e: tokio::task::JoinError) -> ImageError {
    ImageError::Task {
        reference: ctx.normalised.clone(),
        reason: e.to_string(),
    }
}

/// One try: the body into a fresh blob temp file and a fresh layer temp directory.
/// Returns the bytes received and whether the layer was unpacked (`false`: another
/// unpacker renamed the same layer first). A failed try leaves nothing behind.
async fn stream_once(
    ctx: &Ctx,
    store: &ImageStore,
    desc: &Descriptor,
    diff_id: &str,
    chain_id: &str,
    running: Running,
) -> Result<(u64, bool), TryError> {
    let oci_desc = OciDescriptor {
        media_type: desc.media_type.clone(),
        digest: desc.digest.clone(),
        size: i64::try_from(desc.size).unwrap_or(i64::MAX),
        ..Default::default()
    };
    // Auth for this endpoint was negotiated and stored by the manifest fetch. The blob
    // is asked for as the range "from byte 0": a registry that serves ranges answers
    // 206, which `oci-client` passes on without hashing it a second time (the blob
    // writer hashes every byte, and only that hash decides); one that does not answers
    // 200 with the whole blob, verified by both. An empty blob has no byte 0.
    let reference = &ctx.endpoint.reference;
    let mut stream = if desc.size > 0 {
        match ctx
            .client
            .pull_blob_stream_partial(reference, &oci_desc, 0, None)
            .await?
        {
            BlobResponse::Full(s) | BlobResponse::Partial(s) => s,
        }
    } else {
        ctx.client.pull_blob_stream(reference, &oci_desc).await?
    };
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let (s, digest, size, diff, chain, reference) = (
        store.clone(),
        desc.digest.clone(),
        desc.size,
        diff_id.to_string(),
        chain_id.to_string(),
        ctx.normalised.clone(),
    );
    let unpacker = tokio::task::spawn_blocking(move || {
        let _running = running;
        unpack_streamed(&s, rx, &digest, size, &diff, &chain, &reference)
    });
    ctx.progress.send(ProgressEvent::LayerStarted {
        digest: desc.digest.clone(),
        total: desc.size,
    });
    let (mut received, mut reported) = (0u64, 0u64);
    let mut failed = None;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                failed = Some(e);
                break;
            }
        };
        received += chunk.len() as u64;
        if tx.send(Chunk::Data(chunk)).await.is_err() {
            // The unpacker stopped early: its result says why.
            break;
        }
        if received - reported >= PROGRESS_STEP || received == desc.size {
            reported = received;
            ctx.progress.send(ProgressEvent::LayerBytes {
                digest: desc.digest.clone(),
                current: received,
                total: desc.size,
            });
        }
    }
    if failed.is_none() {
        let _ = tx.send(Chunk::End).await;
        ctx.progress.send(ProgressEvent::LayerDownloaded {
            digest: desc.digest.clone(),
        });
    }
    // Without `End`, the unpacker sees a closed channel, stops and removes its files.
    drop(tx);
    let unpacked = unpacker.await.map_err(|e| task_error(ctx, e))?;
    if let Some(e) = failed {
        // The network's failure (or the client's digest check) explains whatever the
        // unpacker made of the truncated stream; `retry` classifies it.
        return Err(TryError::Registry(OciDistributionError::IoError(e)));
    }
    Ok((received, unpacked?))
}

/// What the download side sends the unpacker. The channel closing without `End` means
/// the download failed or was abandoned: the layer must not be used.
enum Chunk<B> {
    Data(B),
    End,
}

/// The blocking half of [`stream_once`]: steps 1 to 5 of the module docs.
fn unpack_streamed<B: AsRef<[u8]>>(
    store: &ImageStore,
    rx: mpsc::Receiver<Chunk<B>>,
    digest: &str,
    size: u64,
    diff_id: &str,
    chain_id: &str,
    reference: &str,
) -> Result<bool, ImageError> {
    let blob = store.content().blocking_writer(digest, Some(size))?;
    let layer = store.temp_layer(chain_id)?;
    let mut tee = Tee {
        rx,
        blob,
        current: None,
        pos: 0,
        ended: false,
        failure: None,
        reference,
    };
    let unpacked = unpack_layer_with(&mut tee, layer.path(), store.max_layer_bytes());
    // Whatever the unpacker left unread (normally nothing; everything after an unpack
    // error) still belongs to the blob and its digest.
    let _ = io::copy(&mut tee, &mut io::sink());
    let Tee { blob, failure, .. } = tee;
    if let Some(e) = failure {
        return Err(e);
    }
    let blob = blob.finish()?;
    let stats = unpacked?;
    check_diff_id(digest, diff_id, &stats)?;
    store.sync_layers(layer.path())?;
    blob.commit_synced()?;
    layer.commit()
}

/// The unpacker's input: the chunks from the channel, each written to the blob's temp
/// file (and hashed) as it arrives.
struct Tee<'a, B> {
    rx: mpsc::Receiver<Chunk<B>>,
    blob: BlockingBlobWriter,
    current: Option<B>,
    pos: usize,
    ended: bool,
    /// Why reading stopped when it was not the stream's content: the blob could not be
    /// written (or grew past its size), or the download stopped. Takes precedence over
    /// the unpacker's error, which is only a consequence.
    failure: Option<ImageError>,
    reference: &'a str,
}

impl<B: AsRef<[u8]>> Read for Tee<'_, B> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.failure.is_some() {
                return Err(io::Error::other("layer download failed"));
            }
            if let Some(chunk) = &self.current {
                let rest = &chunk.as_ref()[self.pos..];
                if !rest.is_empty() {
                    let n = rest.len().min(buf.len());
                    buf[..n].copy_from_slice(&rest[..n]);
                    self.pos += n;
                    return Ok(n);
                }
                self.current = None;
            }
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Chunk::Data(chunk)) => {
                    if let Err(e) = self.blob.write(chunk.as_ref()) {
                        self.failure = Some(e);
                        continue;
                    }
                    self.current = Some(chunk);
                    self.pos = 0;
                }
                Some(Chunk::End) => self.ended = true,
                None => {
                    self.failure = Some(ImageError::Task {
                        reference: self.reference.to_string(),
                        reason: format!(
                            "download of {} stopped after {} bytes",
                            self.blob.digest(),
                            self.blob.written()
                        ),
                    });
                }
            }
        }
    }
}
