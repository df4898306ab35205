//! Unpacks layer blobs with wharf's unpacker, as the image store does on pull: used by
//! `benches/pull.py` to time unpacking alone against GNU tar, and handy to try a layer
//! by hand.
//!
//! ```text
//! unpack_layer BLOB TARGET [BLOB TARGET]...
//! ```
//!
//! Each BLOB (gzip, zstd or plain tar) is unpacked into TARGET, which is created and must
//! not exist or be empty. Prints one line per layer: diff id, entries, milliseconds.

use std::fs::{self, File};
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.len() % 2 != 0 {
        eprintln!("usage: unpack_layer BLOB TARGET [BLOB TARGET]...");
        return ExitCode::from(2);
    }
    for pair in args.chunks(2) {
        let (blob, target) = (Path::new(&pair[0]), Path::new(&pair[1]));
        if let Err(e) = unpack(blob, target) {
            eprintln!("unpack_layer: {}: {e}", blob.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn unpack(blob: &Path, target: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let file = File::open(blob)?;
    fs::create_dir_all(target)?;
    let stats = wharf::images::unpack_layer(file, target)?;
    println!(
        "{} {} entries {:.1} ms",
        stats.diff_id,
        stats.entries,
        start.elapsed().as_secs_f64() * 1000.0
    );
    Ok(())
}
