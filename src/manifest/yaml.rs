//! The YAML layer: the only code that knows serde-saphyr.
//!
//! Each document is read into a small tree where every node carries its line and
//! column. Typed decoding then walks that tree by hand, so it can report *every*
//! error (serde's derive stops at the first) and point at the exact key or value.

use std::fmt;
use std::io::Cursor;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Budget, DuplicateKeyPolicy, Options, Spanned};

use super::decode::Ctx;

/// A 1-based position in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

/// A YAML node with its position.
#[derive(Debug)]
pub(crate) struct Node {
    pub value: Value,
    pub pos: Pos,
}

/// A YAML value. Scalars that YAML typed as bool or number keep the text as the
/// user wrote it, so a string field given `1.10` gets `"1.10"`, not `"1.1"`.
#[derive(Debug)]
pub(crate) enum Value {
    Null,
    Bool(bool, String),
    Int(i128, String),
    Float(f64, String),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// The scalar's text as written (`None` for null, lists and mappings).
    pub fn text(&self) -> Option<&str> {
        match &self.value {
            Value::Bool(_, s) | Value::Int(_, s) | Value::Float(_, s) | Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// What the node is, for "expected X, found Y" messages.
    pub fn describe(&self) -> &'static str {
        match self.value {
            Value::Null => "nothing (null)",
            Value::Bool(..) => "a boolean",
            Value::Int(..) => "an integer",
            Value::Float(..) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// What serde-saphyr hands us: the same tree, but positions still in its types.
enum Raw {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Raw>>),
    Map(Vec<(Spanned<Raw>, Spanned<Raw>)>),
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_none<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Raw, E> {
        Ok(Raw::Int(v.into()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Raw, E> {
        Ok(Raw::Int(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Raw::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key()? {
            let value = map.next_value()?;
            entries.push((key, value));
        }
        Ok(Raw::Map(entries))
    }
}

/// Limits against YAML bombs and runaway recursion. Manifests are small and shallow;
/// the depth limit also keeps our recursive decoding far from the stack limit of a
/// tokio worker thread.
fn options() -> Options {
    Options {
        budget: Some(Budget {
            max_reader_input_bytes: Some(MAX_FILE_BYTES),
            max_depth: 64,
            max_aliases: 1_000,
            max_anchors: 1_000,
            max_nodes: 100_000,
            max_total_scalar_bytes: MAX_FILE_BYTES,
            ..Budget::default()
        }),
        // Duplicate keys are detected while decoding, so that they are reported
        // alongside every other error instead of aborting the whole file.
        duplicate_keys: DuplicateKeyPolicy::LastWins,
        // `yes`/`no`/`on`/`off` stay strings (the YAML 1.1 "Norway problem"); a bool
        // field then asks for `true` or `false`.
        strict_booleans: true,
        with_snippet: false,
        ..Options::default()
    }
}

/// The largest manifest file we read; far above any real one.
pub(crate) const MAX_FILE_BYTES: usize = 4 * 1024 * 1024;

/// Parses every document of `text`. Empty documents are skipped. A syntax error
/// ends the stream (YAML cannot resynchronise); it is reported, and the documents
/// before it are still returned so that their own errors are reported too.
pub(crate) fn parse_documents(text: &str, cx: &mut Ctx) -> Vec<Node> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if let Some((pos, c)) = forbidden_character(text) {
        // The YAML parser stopped at a NUL as if the file ended there, silently
        // dropping what followed (a `capabilities: {drop: [ALL]}`, an unknown field).
        cx.error(
            pos,
            format!(
                "character U+{:04X} is not allowed in YAML; remove it (or write it as an escape in a double-quoted string)",
                c as u32
            ),
        );
        return Vec::new();
    }
    let mut reader = Cursor::new(text.as_bytes());
    let mut documents = Vec::new();
    for result in serde_saphyr::read_with_options::<_, Spanned<Raw>>(&mut reader, options()) {
        match result {
            Ok(raw) => documents.push(convert(raw, text)),
            Err(err) => {
                let (pos, message) = describe_error(&err);
                match pos {
                    Some(pos) => cx.error(pos, format!("invalid YAML: {message}")),
                    None => cx.file_error(format!("invalid YAML: {message}")),
                }
                break;
            }
        }
    }
    documents
}

/// The first character YAML 1.2 does not allow in a stream (its `c-printable` set:
/// tab, line feed, carriage return, printable ASCII, NEL and the rest of Unicode but
/// the C0/C1 controls, surrogates and U+FFFE/U+FFFF), with its 1-based position.
fn forbidden_character(text: &str) -> Option<(Pos, char)> {
    let allowed = |c: char| {
        matches!(c, '\t' | '\n' | '\r' | '\u{85}')
            || (' '..='~').contains(&c)
            || ('\u{a0}'..='\u{d7ff}').contains(&c)
            || ('\u{e000}'..='\u{fffd}').contains(&c)
            || c >= '\u{10000}'
    };
    for (i, line) in text.split('\n').enumerate() {
        for (j, c) in line.chars().enumerate() {
            if !allowed(c) {
                let pos = Pos {
                    line: i + 1,
                    column: j + 1,
                };
                return Some((pos, c));
            }
        }
    }
    None
}

fn describe_error(err: &serde_saphyr::Error) -> (Option<Pos>, String) {
    let err = err.without_snippet();
    let pos = err.location().map(|l| Pos {
        line: l.line() as usize,
        column: l.column() as usize,
    });
    let mut message = match err {
        serde_saphyr::Error::Message { msg, .. } => msg.clone(),
        other => other.to_string(),
    };
    // Our diagnostics carry the position already; drop serde-saphyr's copy of it.
    if let Some(i) = message.rfind(" at line ") {
        message.truncate(i);
    }
    (pos, message)
}

fn convert(raw: Spanned<Raw>, text: &str) -> Node {
    let pos = Pos {
        line: raw.referenced.line() as usize,
        column: raw.referenced.column() as usize,
    };
    // The text as written comes from where the value is *defined*, so an alias
    // (`*a`) yields the anchored scalar rather than the alias token.
    let span = raw.defined.span();
    let written = |fallback: String| {
        text.get(span.offset()..span.offset() + span.len())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .unwrap_or(fallback)
    };
    let value = match raw.value {
        Raw::Null => Value::Null,
        Raw::Bool(b) => Value::Bool(b, written(b.to_string())),
        Raw::Int(i) => Value::Int(i, written(i.to_string())),
        Raw::Float(f) => Value::Float(f, written(f.to_string())),
        Raw::Str(s) => Value::Str(s),
        Raw::Seq(items) => Value::Seq(items.into_iter().map(|i| convert(i, text)).collect()),
        Raw::Map(entries) => Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (convert(k, text), convert(v, text)))
                .collect(),
        ),
    };
    Node { value, pos }
}
