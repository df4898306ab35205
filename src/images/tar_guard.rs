//! A bound on what the `tar` crate reads into memory.
//!
//! The crate reads GNU long-name (`L`) and long-link (`K`) entries and PAX extension
//! headers (`x`) whole into memory before the entry they describe: a layer of a few MB
//! of gzip could declare one of gigabytes and exhaust the agent. This reader sits under
//! the crate, follows the archive's framing as the crate does (headers, data rounded
//! to 512-byte blocks, a PAX `size` record overriding the next entry's, GNU sparse
//! extension blocks), and fails the read at a header that declares such an entry larger
//! than [`MAX_EXTENSION_BYTES`], before the crate allocates anything for it.
//!
//! It only ever refuses; it never changes a byte. Where it cannot follow (a header whose
//! checksum or magic is not a tar header's, a size it cannot parse), it stops looking,
//! and the crate reports whatever is wrong.

use std::io::{self, Read};

/// The largest long name, long link or PAX header accepted (PATH_MAX is 4096; PAX
/// headers carrying xattrs such as SELinux labels or capabilities stay far below).
pub const MAX_EXTENSION_BYTES: u64 = 1 << 20;

const BLOCK: u64 = 512;

pub struct TarGuard<R> {
    inner: R,
    state: State,
    block: [u8; 512],
    filled: usize,
    /// The data of the PAX header being read, for its `size` record.
    pax: Vec<u8>,
    /// The size a PAX header gave the next entry.
    pending_size: Option<u64>,
    /// Data (rounded up) of a GNU sparse entry whose extension blocks are being read.
    sparse_data: u64,
    /// Stopped following (end of archive, or framing it cannot read).
    done: bool,
}

enum State {
    Header,
    SparseExtension,
    Data { left: u64, capture: bool },
}

impl<R> TarGuard<R> {
    pub fn new(inner: R) -> Self {
        TarGuard {
            inner,
            state: State::Header,
            block: [0; 512],
            filled: 0,
            pax: Vec::new(),
            pending_size: None,
            sparse_data: 0,
            done: false,
        }
    }

    fn inspect(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() && !self.done {
            match &mut self.state {
                State::Data { left, capture } => {
                    let take = (*left).min(bytes.len() as u64) as usize;
                    if *capture {
                        self.pax.extend_from_slice(&bytes[..take]);
                    }
                    *left -= take as u64;
                    bytes = &bytes[take..];
                    if *left == 0 {
                        if *capture {
                            self.pending_size = pax_size(&self.pax);
                        }
                        self.state = State::Header;
                    }
                }
                State::Header | State::SparseExtension => {
                    let take = (512 - self.filled).min(bytes.len());
                    self.block[self.filled..self.filled + take].copy_from_slice(&bytes[..take]);
                    self.filled += take;
                    bytes = &bytes[take..];
                    if self.filled == 512 {
                        self.filled = 0;
                        self.on_block()?;
                    }
                }
            }
        }
        Ok(())
    }

    fn on_block(&mut self) -> io::Result<()> {
        let h = &self.block;
        if matches!(self.state, State::SparseExtension) {
            // `isextended` of a GNU sparse extension block is its byte 504.
            if h[504] == 0 {
                self.state = data(self.sparse_data, false);
            }
            return Ok(());
        }
        if h.iter().all(|b| *b == 0) || !is_tar_header(h) {
            self.done = true;
            return Ok(());
        }
        let Some(mut size) = number(&h[124..136]) else {
            self.done = true;
            return Ok(());
        };
        let kind = h[156];
        let what = match kind {
            b'L' => Some("GNU long name"),
            b'K' => Some("GNU long link"),
            b'x' => Some("PAX header"),
            b'g' => Some("PAX global header"),
            _ => None,
        };
        match what {
            Some(what) if size > MAX_EXTENSION_BYTES => {
                return Err(io::Error::other(format!(
                    "a {what} of {size} bytes, more than the {MAX_EXTENSION_BYTES} wharf reads; the layer is broken or hostile"
                )));
            }
            Some(_) => {}
            // A PAX size describes the next file entry, not extension headers.
            None => size = self.pending_size.take().unwrap_or(size),
        }
        let rounded = size.div_ceil(BLOCK).saturating_mul(BLOCK);
        if kind == b'x' {
            self.pax.clear();
        }
        // Old GNU sparse: extension blocks of the sparse map come before the data.
        if kind == b'S' && h[482] != 0 {
            self.sparse_data = rounded;
            self.state = State::SparseExtension;
            return Ok(());
        }
        self.state = data(rounded, kind == b'x');
        Ok(())
    }
}

fn data(left: u64, capture: bool) -> State {
    if left == 0 {
        State::Header
    } else {
        State::Data { left, capture }
    }
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.inspect(&buf[..n])?;
        Ok(n)
    }
}

/// A ustar or GNU header with a correct checksum, as the crate checks it.
fn is_tar_header(h: &[u8; 512]) -> bool {
    let sum: u64 = h[..148]
        .iter()
        .chain(&h[156..])
        .map(|b| u64::from(*b))
        .sum::<u64>()
        + 8 * 32;
    &h[257..262] == b"ustar" && number(&h[148..156]) == Some(sum)
}

/// A numeric header field: octal text, or base-256 when the top bit is set (as the
/// crate reads it: the last 8 bytes, big-endian).
fn number(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        let tail = &field[field.len().saturating_sub(8)..];
        return Some(tail.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b)));
    }
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c: char| c == ' ' || c == '\0');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// The `size` record of PAX data (`LEN key=value\n` records).
fn pax_size(mut data: &[u8]) -> Option<u64> {
    // The data read is whole blocks: the records, then zero padding.
    let mut found = None;
    while !data.is_empty() && data[0] != 0 {
        let Some(space) = data.iter().position(|b| *b == b' ') else {
            return found;
        };
        let len: Option<usize> = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|l| l.parse().ok());
        let Some(len) = len.filter(|l| *l > space && *l <= data.len()) else {
            return found;
        };
        let record = &data[space + 1..len];
        if let Some(value) = record.strip_prefix(b"size=") {
            let value = value.strip_suffix(b"\n").unwrap_or(value);
            found = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
        }
        data = &data[len..];
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: u8, name: &str, size: u64) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    fn read_all(bytes: &[u8]) -> io::Result<()> {
        // Small reads, to cross every boundary.
        let mut guard = TarGuard::new(bytes);
        let mut buf = [0u8; 37];
        while guard.read(&mut buf)? > 0 {}
        Ok(())
    }

    #[test]
    fn an_oversized_long_name_or_pax_header_is_refused_at_its_header() {
        for kind in [b'L', b'K', b'x', b'g'] {
            let tar = header(kind, "././@LongLink", 8 << 30);
            let err = read_all(&tar).unwrap_err();
            assert!(err.to_string().contains("more than the"), "{err}");
        }
        // With the crate on top: the unpacker fails before allocating.
        let mut tar = header(b'L', "././@LongLink", 8 << 30);
        tar.extend(vec![b'a'; 4096]);
        let dir = tempfile::tempdir().unwrap();
        let err = crate::images::unpack_layer(&tar[..], dir.path()).unwrap_err();
        assert!(err.to_string().contains("GNU long name"), "{err}");
    }

    #[test]
    fn framing_follows_long_names_pax_sizes_and_sparse_extensions() {
        let mut tar = Vec::new();
        // A regular file of 700 bytes (two blocks).
        tar.extend(header(b'0', "a", 700));
        tar.extend(vec![1u8; 1024]);
        // A PAX header giving the next entry 5 bytes though its header says 0.
        let record = b"12 size=600\n";
        tar.extend(header(b'x', "pax", record.len() as u64));
        let mut block = record.to_vec();
        block.resize(512, 0);
        tar.extend(block);
        tar.extend(header(b'0', "b", 0));
        tar.extend(vec![2u8; 1024]);
        // A small long name, then its entry.
        tar.extend(header(b'L', "././@LongLink", 300));
        tar.extend(vec![b'n'; 512]);
        tar.extend(header(b'0', "c", 0));
        // Then an oversized long name: only found if the framing above was followed.
        tar.extend(header(b'L', "././@LongLink", 2 << 20));
        let err = read_all(&tar).unwrap_err();
        assert!(err.to_string().contains("GNU long name"), "{err}");
    }

    #[test]
    fn the_end_of_the_archive_or_garbage_stops_the_guard_not_the_read() {
        let mut tar = header(b'0', "a", 0);
        tar.extend([0u8; 1024]);
        tar.extend(header(b'L', "././@LongLink", 8 << 30));
        read_all(&tar).unwrap();
        read_all(&[0x55u8; 4096]).unwrap();
        assert_eq!(
            pax_size(b"30 mtime=1350244992.023960108\n12 size=600\n"),
            Some(600)
        );
    }
}
