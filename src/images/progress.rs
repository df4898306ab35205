//! Pull progress: events per layer from the puller, and a renderer for `wharf pull`.
//!
//! The puller only sends events (never blocks on a slow terminal: the channel is
//! unbounded and events are small); drawing is the receiver's business.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

/// One step of a pull. Layers are named by their compressed blob digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgressEvent {
    /// The reference resolved to `digest`; `layers` layers follow.
    Resolved {
        reference: String,
        digest: String,
        layers: usize,
    },
    /// The layer is already unpacked (or its blob is present): nothing to download.
    LayerPresent { digest: String, size: u64 },
    /// Download of the layer starts (also sent again on a retry, from zero).
    LayerStarted { digest: String, total: u64 },
    /// `current` of `total` bytes of the layer have arrived.
    LayerBytes {
        digest: String,
        current: u64,
        total: u64,
    },
    /// The layer's blob is complete and verified; unpacking follows.
    LayerDownloaded { digest: String },
    /// The layer is unpacked (or was, by a concurrent pull).
    LayerDone { digest: String },
    /// A transient failure; the operation is tried again after `delay`.
    Retrying {
        what: String,
        attempt: u32,
        delay: Duration,
        error: String,
    },
}

/// Where the puller sends events: a cheap handle around an optional channel.
#[derive(Debug, Clone, Default)]
pub(crate) struct Progress(Option<UnboundedSender<ProgressEvent>>);

impl Progress {
    pub(crate) fn new(tx: Option<UnboundedSender<ProgressEvent>>) -> Self {
        Self(tx)
    }

    pub(crate) fn send(&self, event: ProgressEvent) {
        if let Some(tx) = &self.0 {
            // A receiver that went away (Ctrl-C'd renderer) must not fail the pull.
            let _ = tx.send(event);
        }
    }
}

#[derive(Debug)]
struct LayerLine {
    current: u64,
    total: u64,
    state: &'static str,
    started: Option<Instant>,
}

/// A short form of a digest, as Docker shows it (12 hex characters).
fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

/// `1.5 MB`-style sizes (decimal units, as Docker prints them).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn render_line(digest: &str, l: &LayerLine) -> String {
    let mut s = format!("{}: {:<12}", short(digest), l.state);
    if l.state == "downloading" {
        s.push_str(&format!(
            " {} / {}",
            human_bytes(l.current),
            human_bytes(l.total)
        ));
        if let Some(t) = l.started {
            let secs = t.elapsed().as_secs_f64();
            if secs > 0.2 {
                s.push_str(&format!(
                    "  {}/s",
                    human_bytes((l.current as f64 / secs) as u64)
                ));
            }
        }
    }
    s
}

/// Draws pull progress until every sender is gone: on a terminal, one line per layer
/// redrawn in place (bytes and rate), at most ten times a second; otherwise plain lines
/// for state changes only, so logs stay readable.
pub async fn render_terminal(rx: UnboundedReceiver<ProgressEvent>) {
    let tty = std::io::stderr().is_terminal();
    render(rx, tty, &mut std::io::stderr()).await;
}

async fn render<W: Write>(mut rx: UnboundedReceiver<ProgressEvent>, tty: bool, out: &mut W) {
    let mut order: Vec<String> = Vec::new();
    let mut layers: HashMap<String, LayerLine> = HashMap::new();
    let mut drawn = 0usize;
    let mut last_draw = Instant::now() - Duration::from_secs(1);
    while let Some(ev) = rx.recv().await {
        let mut changed_state: Option<String> = None;
        match &ev {
            ProgressEvent::Resolved {
                reference, digest, ..
            } => {
                let _ = writeln!(out, "{reference}: resolved to {digest}");
                drawn = 0;
            }
            ProgressEvent::Retrying {
                what,
                attempt,
                delay,
                error,
            } => {
                let _ = writeln!(
                    out,
                    "{what}: attempt {attempt} failed ({error}); retrying in {:.1}s",
                    delay.as_secs_f64()
                );
                drawn = 0;
            }
            ProgressEvent::LayerPresent { digest, size } => {
                let l = upsert(&mut layers, &mut order, digest);
                l.state = "present";
                l.total = *size;
                changed_state = Some(digest.clone());
            }
            ProgressEvent::LayerStarted { digest, total } => {
                let l = upsert(&mut layers, &mut order, digest);
                l.state = "downloading";
                l.total = *total;
                l.current = 0;
                l.started = Some(Instant::now());
                changed_state = Some(digest.clone());
            }
            ProgressEvent::LayerBytes {
                digest,
                current,
                total,
            } => {
                let l = upsert(&mut layers, &mut order, digest);
                l.current = *current;
                l.total = *total;
            }
            ProgressEvent::LayerDownloaded { digest } => {
                let l = upsert(&mut layers, &mut order, digest);
                l.state = "unpacking";
                changed_state = Some(digest.clone());
            }
            ProgressEvent::LayerDone { digest } => {
                let l = upsert(&mut layers, &mut order, digest);
                l.state = "done";
                changed_state = Some(digest.clone());
            }
        }
        if tty {
            let forced = changed_state.is_some() || rx.is_empty();
            if forced || last_draw.elapsed() >= Duration::from_millis(100) {
                // Move up over the block drawn last time and redraw it.
                if drawn > 0 {
                    let _ = write!(out, "\x1b[{drawn}A");
                }
                for d in &order {
                    let _ = writeln!(out, "\x1b[2K{}", render_line(d, &layers[d]));
                }
                drawn = order.len();
                last_draw = Instant::now();
                let _ = out.flush();
            }
        } else if let Some(d) = changed_state {
            let _ = writeln!(out, "{}", render_line(&d, &layers[&d]));
        }
    }
    let _ = out.flush();
}

fn upsert<'a>(
    layers: &'a mut HashMap<String, LayerLine>,
    order: &mut Vec<String>,
    digest: &str,
) -> &'a mut LayerLine {
    if !layers.contains_key(digest) {
        order.push(digest.to_string());
    }
    layers
        .entry(digest.to_string())
        .or_insert_with(|| LayerLine {
            current: 0,
            total: 0,
            state: "waiting",
            started: None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_human_readable() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1_500_000), "1.5 MB");
    }

    #[tokio::test]
    async fn plain_output_has_one_line_per_state_change() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let d = format!("sha256:{}", "ab".repeat(32));
        for ev in [
            ProgressEvent::LayerStarted {
                digest: d.clone(),
                total: 10,
            },
            ProgressEvent::LayerBytes {
                digest: d.clone(),
                current: 5,
                total: 10,
            },
            ProgressEvent::LayerDownloaded { digest: d.clone() },
            ProgressEvent::LayerDone { digest: d.clone() },
        ] {
            tx.send(ev).unwrap();
        }
        drop(tx);
        let mut out = Vec::new();
        render(rx, false, &mut out).await;
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("abababababab: downloading"), "{text}");
        assert!(lines[2].contains("done"), "{text}");
        assert!(!text.contains('\x1b'));
    }
}
