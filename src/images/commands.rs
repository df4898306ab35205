//! The image commands as the CLI runs them (`wharf pull`, `push`, `images`, `image …`):
//! open the store under `--state`, do the work, write what a user reads. They work with
//! or without a running agent: the store lock (lock.rs) keeps them safe beside it.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use super::progress::{human_bytes, render_terminal};
use super::{ImageError, ImageStore, RegistryConfig};
use crate::cli::StoreArgs;

/// The store of `args.state`, with the registry settings of the flags.
pub fn open(args: &StoreArgs) -> Result<ImageStore, ImageError> {
    ImageStore::open_with(
        &args.state.join("images"),
        RegistryConfig {
            insecure: args.insecure_registries.clone(),
            mirrors: args.registry_mirrors.clone(),
            max_layer_bytes: Some(args.max_layer_size),
            ..Default::default()
        },
    )
}

fn write_err(e: std::io::Error) -> ImageError {
    ImageError::Task {
        reference: "output".into(),
        reason: e.to_string(),
    }
}

/// `wharf pull REF`: progress on stderr (per-layer bytes and rate on a terminal), the
/// digest on stdout.
pub async fn pull(
    args: &StoreArgs,
    reference: &str,
    out: &mut impl Write,
) -> Result<(), ImageError> {
    let store = open(args)?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let render = tokio::spawn(render_terminal(rx));
    let result = store.pull_with_progress(reference, Some(tx)).await;
    let _ = render.await;
    let (image, _) = result?;
    writeln!(out, "{}", image.digest).map_err(write_err)
}

/// `wharf push REF`: prints the pushed manifest's digest.
pub async fn push(
    args: &StoreArgs,
    reference: &str,
    out: &mut impl Write,
) -> Result<(), ImageError> {
    let digest = open(args)?.push(reference).await?;
    writeln!(out, "{digest}").map_err(write_err)
}

/// `wharf images [--json]`: one row per reference (`<none>` for an image without one).
pub fn list(args: &StoreArgs, json: bool, out: &mut impl Write) -> Result<(), ImageError> {
    let images = open(args)?.list()?;
    if json {
        let text = serde_json::to_string_pretty(&images).map_err(|e| ImageError::Task {
            reference: "images".into(),
            reason: e.to_string(),
        })?;
        return writeln!(out, "{text}").map_err(write_err);
    }
    let mut rows = vec![[
        "REFERENCE".to_string(),
        "DIGEST".into(),
        "SIZE".into(),
        "LAYERS".into(),
        "LAST USED".into(),
    ]];
    for image in &images {
        let short = image
            .digest
            .trim_start_matches("sha256:")
            .chars()
            .take(12)
            .collect::<String>();
        let used = image
            .last_used
            .map(crate::runtime::records::rfc3339)
            .unwrap_or_else(|| "never".into());
        let refs = if image.references.is_empty() {
            vec!["<none>".to_string()]
        } else {
            image.references.clone()
        };
        for r in refs {
            rows.push([
                r,
                short.clone(),
                human_bytes(image.size),
                image.layers.to_string(),
                used.clone(),
            ]);
        }
    }
    let rows: Vec<Vec<String>> = rows.into_iter().map(Vec::from).collect();
    write!(out, "{}", crate::table::aligned(&rows, 2)).map_err(write_err)
}

/// `wharf image tag SRC DEST`.
pub fn tag(args: &StoreArgs, source: &str, target: &str) -> Result<(), ImageError> {
    open(args)?.tag(source, target)
}

/// `wharf image rm REF…`: removes each reference; an image a container of this state
/// root uses is refused. Returns how many failed (each reported on `err`).
pub fn rm(
    args: &StoreArgs,
    references: &[String],
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<usize, ImageError> {
    let store = open(args)?;
    let in_use: std::collections::HashMap<String, Vec<String>> =
        crate::runtime::image_users(&args.state)
            .map_err(ImageError::UsersUnknown)?
            .into_iter()
            .collect();
    let mut failed = 0;
    for r in references {
        match store.remove(r, &in_use) {
            Ok(()) => writeln!(out, "removed {r}").map_err(write_err)?,
            Err(e) => {
                failed += 1;
                writeln!(err, "wharf: {e}").map_err(write_err)?;
            }
        }
    }
    Ok(failed)
}

/// `wharf image prune`: images without references that no container uses, then all
/// content nothing names.
pub fn prune(args: &StoreArgs, out: &mut impl Write) -> Result<(), ImageError> {
    let keep: HashSet<String> = crate::runtime::image_users(&args.state)
        .map_err(ImageError::UsersUnknown)?
        .into_keys()
        .collect();
    let report = open(args)?.prune(&keep, None)?;
    writeln!(
        out,
        "removed {} images, {} blobs, {} layers; freed {}",
        report.images.len(),
        report.blobs,
        report.layers,
        human_bytes(report.bytes)
    )
    .map_err(write_err)
}

/// `wharf image import FILE` or `wharf image import --rootfs DIR NAME`.
pub fn import(
    args: &StoreArgs,
    rootfs: Option<&Path>,
    target: &str,
    out: &mut impl Write,
) -> Result<(), ImageError> {
    let store = open(args)?;
    let images = match rootfs {
        Some(dir) => vec![store.import_rootfs(dir, target)?],
        None => store.import_archive(Path::new(target))?,
    };
    for image in images {
        writeln!(out, "{} {}", image.reference, image.digest).map_err(write_err)?;
    }
    Ok(())
}

/// `wharf image export REF FILE`.
pub fn export(args: &StoreArgs, reference: &str, file: &Path) -> Result<(), ImageError> {
    open(args)?.export(reference, file)
}
