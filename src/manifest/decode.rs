//! From the positioned YAML tree to typed objects, collecting every error.
//!
//! Each helper reports what is wrong at the node's position and returns `None`;
//! callers carry on with a default so later fields are still checked. A document is
//! accepted only if decoding it added no diagnostic.

use std::collections::BTreeMap;
use std::time::Duration;

use super::check;
use super::types::{Container, Network, Object, ObjectMeta, Volume};
use super::yaml::{Node, Pos, Value};
use super::Diagnostic;

/// Collects the diagnostics of one file.
pub(crate) struct Ctx {
    file: String,
    diagnostics: Vec<Diagnostic>,
}

impl Ctx {
    pub fn new(file: &str) -> Self {
        Ctx {
            file: file.to_string(),
            diagnostics: Vec::new(),
        }
    }

    pub fn error(&mut self, pos: Pos, message: impl Into<String>) {
        let message = bounded(message.into());
        self.diagnostics
            .push(Diagnostic::at(&self.file, pos.line, pos.column, message));
    }

    pub fn file_error(&mut self, message: impl Into<String>) {
        let message = bounded(message.into());
        self.diagnostics.push(Diagnostic::file(&self.file, message));
    }

    pub fn error_count(&self) -> usize {
        self.diagnostics.len()
    }

    /// The diagnostics in file order (a stable sort keeps same-position ones in the
    /// order they were found).
    pub fn into_diagnostics(mut self) -> Vec<Diagnostic> {
        self.diagnostics
            .sort_by_key(|d| (d.line.unwrap_or(0), d.column.unwrap_or(0)));
        self.diagnostics
    }
}

/// The longest message a diagnostic carries.
const MAX_MESSAGE_CHARS: usize = 300;

/// The longest piece of a file quoted in a message.
const MAX_QUOTED_CHARS: usize = 40;

/// A message as the endpoint may show it: one line, no control characters, at most
/// [`MAX_MESSAGE_CHARS`]. Diagnostics are served without authentication, and the file
/// may be anything (a link to `/etc/shadow` had every line quoted back).
fn bounded(message: String) -> String {
    let mut out = String::with_capacity(message.len().min(MAX_MESSAGE_CHARS + 3));
    for (i, c) in message.chars().enumerate() {
        if i == MAX_MESSAGE_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.push_str(&c.escape_default().to_string());
        } else {
            out.push(c);
        }
    }
    out
}

/// A piece of the user's file for a message: quoted and escaped as a string literal,
/// cut after [`MAX_QUOTED_CHARS`] characters.
pub(crate) fn quoted(s: &str) -> String {
    let mut chars = s.chars();
    let head: String = chars.by_ref().take(MAX_QUOTED_CHARS).collect();
    match chars.next() {
        None => format!("{head:?}"),
        Some(_) => format!("{head:?}…"),
    }
}

/// The entries of a mapping, checked against the fields it may have.
pub(crate) struct Fields<'n> {
    /// Where the mapping is, for "missing field" errors.
    pub pos: Pos,
    entries: Vec<(&'n str, &'n Node, &'n Node)>,
}

impl<'n> Fields<'n> {
    /// The value of `name`; `None` when absent or null (`key:` with no value), which
    /// is how YAML users write "unset".
    pub fn get(&self, name: &str) -> Option<&'n Node> {
        self.entry(name)
            .map(|(_, value)| value)
            .filter(|v| !v.is_null())
    }

    /// The key and value of `name`, null values included.
    pub fn entry(&self, name: &str) -> Option<(&'n Node, &'n Node)> {
        self.entries
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, k, v)| (*k, *v))
    }

    /// Where the key `name` is, else where the mapping is.
    pub fn key_pos(&self, name: &str) -> Pos {
        self.entry(name).map_or(self.pos, |(k, _)| k.pos)
    }

    /// The value of a required field; reports it missing (or empty) otherwise.
    pub fn required(&self, cx: &mut Ctx, name: &str, what: &str) -> Option<&'n Node> {
        match self.entry(name) {
            Some((_, value)) if !value.is_null() => Some(value),
            Some((key, _)) => {
                cx.error(key.pos, format!("{name} has no value; {what} needs it"));
                None
            }
            None => {
                cx.error(self.pos, format!("{what} needs the field \"{name}\""));
                None
            }
        }
    }
}

/// Checks that `node` is a mapping whose keys are all in `known`, without
/// duplicates. `what` names it in messages (`Container spec`).
pub(crate) fn fields<'n>(
    cx: &mut Ctx,
    node: &'n Node,
    what: &str,
    known: &[&str],
) -> Option<Fields<'n>> {
    let Value::Map(entries) = &node.value else {
        cx.error(
            node.pos,
            format!("{what} must be a mapping, found {}", node.describe()),
        );
        return None;
    };
    let mut out = Fields {
        pos: node.pos,
        entries: Vec::new(),
    };
    for (key, value) in entries {
        let Some(name) = key.text().filter(|_| matches!(key.value, Value::Str(_))) else {
            cx.error(
                key.pos,
                format!(
                    "{what} has a key that is not a field name ({})",
                    key.describe()
                ),
            );
            continue;
        };
        if let Some((first, _)) = out.entry(name) {
            cx.error(
                key.pos,
                format!(
                    "duplicate field {} in {what} (first set at line {})",
                    quoted(name),
                    first.pos.line
                ),
            );
            continue;
        }
        if !known.contains(&name) {
            let hint = match suggest(name, known) {
                Some(s) => format!("; did you mean \"{s}\"?"),
                None => format!("; known fields: {}", known.join(", ")),
            };
            cx.error(
                key.pos,
                format!("unknown field {} in {what}{hint}", quoted(name)),
            );
            continue;
        }
        out.entries.push((name, key, value));
    }
    Some(out)
}

/// The closest known name, if it is close enough to be a typo (or differs only by
/// case, a common slip with camelCase fields).
pub(crate) fn suggest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    let lower = name.to_ascii_lowercase();
    if let Some(k) = known.iter().find(|k| k.to_ascii_lowercase() == lower) {
        return Some(k);
    }
    known
        .iter()
        .map(|k| (edit_distance(&lower, &k.to_ascii_lowercase()), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4) && *d < k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Optimal string alignment distance: Levenshtein plus adjacent swaps, so
/// `imgae` is one edit from `image`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

/// A string. Plain scalars that YAML reads as numbers or booleans are taken as
/// written (`1.10` stays `"1.10"`): the text is lossless, so nothing is guessed.
pub(crate) fn string(cx: &mut Ctx, node: &Node, name: &str) -> Option<String> {
    match node.text() {
        Some(text) => Some(text.to_string()),
        None => {
            cx.error(
                node.pos,
                format!("{name} must be a string, found {}", node.describe()),
            );
            None
        }
    }
}

/// A string that must not be empty.
pub(crate) fn nonempty(cx: &mut Ctx, node: &Node, name: &str) -> Option<String> {
    let s = string(cx, node, name)?;
    if s.trim().is_empty() {
        cx.error(node.pos, format!("{name} must not be empty"));
        return None;
    }
    Some(s)
}

pub(crate) fn boolean(cx: &mut Ctx, node: &Node, name: &str) -> Option<bool> {
    match &node.value {
        Value::Bool(b, _) => Some(*b),
        _ => {
            cx.error(
                node.pos,
                format!("{name} must be true or false, found {}", shown(node)),
            );
            None
        }
    }
}

/// An integer in `min..=max`.
pub(crate) fn integer(cx: &mut Ctx, node: &Node, name: &str, min: i128, max: i128) -> Option<i128> {
    match &node.value {
        Value::Int(i, _) if (min..=max).contains(i) => Some(*i),
        Value::Int(..) => {
            cx.error(
                node.pos,
                format!(
                    "{name} must be between {min} and {max}, found {}",
                    shown(node)
                ),
            );
            None
        }
        _ => {
            cx.error(
                node.pos,
                format!("{name} must be an integer, found {}", shown(node)),
            );
            None
        }
    }
}

/// A port number, 1 to 65535.
pub(crate) fn port(cx: &mut Ctx, node: &Node, name: &str) -> Option<u16> {
    integer(cx, node, name, 1, 65535).map(|p| p as u16)
}

/// One of a fixed set of case-sensitive words.
pub(crate) fn one_of<T: Copy>(
    cx: &mut Ctx,
    node: &Node,
    name: &str,
    choices: &[(&str, T)],
) -> Option<T> {
    let text = node.text().filter(|_| matches!(node.value, Value::Str(_)));
    if let Some(found) = text.and_then(|t| choices.iter().find(|(c, _)| *c == t)) {
        return Some(found.1);
    }
    let names: Vec<&str> = choices.iter().map(|(c, _)| *c).collect();
    let hint = text
        .and_then(|t| suggest(t, &names))
        .map(|s| format!("; did you mean \"{s}\"?"))
        .unwrap_or_default();
    cx.error(
        node.pos,
        format!(
            "{name} must be one of {}, found {}{hint}",
            names.join(", "),
            shown(node)
        ),
    );
    None
}

/// A duration such as `500ms`, `10s`, `1m30s`, kept at millisecond precision (what
/// users write, and what persists losslessly).
pub(crate) fn duration(cx: &mut Ctx, node: &Node, name: &str) -> Option<Duration> {
    let text = string(cx, node, name)?;
    match crate::units::parse_duration(&text) {
        Ok(d) => Some(Duration::from_millis(d.as_millis() as u64)),
        Err(e) => {
            cx.error(node.pos, format!("{name}: {e}"));
            None
        }
    }
}

/// A size: a byte count or `64Mi`, `1Gi`, `512M`.
pub(crate) fn size(cx: &mut Ctx, node: &Node, name: &str) -> Option<u64> {
    if let Value::Int(i, _) = node.value {
        if let Ok(n) = u64::try_from(i) {
            return Some(n);
        }
    }
    let text = string(cx, node, name)?;
    match crate::units::parse_size(&text) {
        Ok(n) => Some(n),
        Err(e) => {
            cx.error(node.pos, format!("{name}: {e}"));
            None
        }
    }
}

/// The items of a list, or an error naming what was expected.
pub(crate) fn list<'n>(
    cx: &mut Ctx,
    node: &'n Node,
    name: &str,
    example: &str,
) -> Option<&'n [Node]> {
    match &node.value {
        Value::Seq(items) => Some(items),
        _ => {
            cx.error(
                node.pos,
                format!(
                    "{name} must be a list, e.g. {example}, found {}",
                    node.describe()
                ),
            );
            None
        }
    }
}

/// A list of strings.
pub(crate) fn string_list(
    cx: &mut Ctx,
    node: &Node,
    name: &str,
    example: &str,
) -> Option<Vec<String>> {
    let items = list(cx, node, name, example)?;
    let before = cx.error_count();
    let out: Vec<String> = items
        .iter()
        .filter_map(|item| string(cx, item, &format!("each entry of {name}")))
        .collect();
    (cx.error_count() == before).then_some(out)
}

/// A mapping of string to string (labels, annotations, env).
pub(crate) fn string_map(
    cx: &mut Ctx,
    node: &Node,
    name: &str,
    check_key: impl Fn(&str) -> Result<(), String>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Value::Map(entries) = &node.value else {
        cx.error(
            node.pos,
            format!(
                "{name} must be a mapping of names to strings, found {}",
                node.describe()
            ),
        );
        return out;
    };
    let mut first_line: BTreeMap<&str, usize> = BTreeMap::new();
    for (key, value) in entries {
        let Some(k) = key.text() else {
            cx.error(key.pos, format!("{name} keys must be strings"));
            continue;
        };
        if let Some(line) = first_line.get(k) {
            cx.error(
                key.pos,
                format!("duplicate key \"{k}\" in {name} (first set at line {line})"),
            );
            continue;
        }
        first_line.insert(k, key.pos.line);
        if let Err(e) = check_key(k) {
            cx.error(key.pos, format!("{name}: {e}"));
        }
        if value.is_null() {
            cx.error(
                value.pos,
                format!("{name}.{k} has no value; write \"\" for an empty string"),
            );
            continue;
        }
        if let Some(v) = string(cx, value, &format!("{name}.{k}")) {
            out.insert(k.to_string(), v);
        }
    }
    out
}

/// A value for a message: strings quoted, others as written.
pub(crate) fn shown(node: &Node) -> String {
    match &node.value {
        Value::Str(s) => quoted(s),
        Value::Bool(_, s) | Value::Int(_, s) | Value::Float(_, s) => {
            s.chars().take(MAX_QUOTED_CHARS).collect()
        }
        _ => node.describe().to_string(),
    }
}

/// Decodes one document; `None` if it has any error. The position returned is the
/// one of `metadata.name`'s value.
pub(crate) fn decode_document(cx: &mut Ctx, doc: &Node) -> Option<(Object, Pos)> {
    let before = cx.error_count();
    let f = fields(
        cx,
        doc,
        "the document",
        &["apiVersion", "kind", "metadata", "spec"],
    )?;

    if let Some(v) = f.required(cx, "apiVersion", "every document") {
        if v.text() != Some("wharf/v1") {
            cx.error(
                v.pos,
                format!("apiVersion must be \"wharf/v1\", found {}", shown(v)),
            );
        }
    }
    #[derive(Clone, Copy)]
    enum Kind {
        Container,
        Network,
        Volume,
    }
    let kind = f.required(cx, "kind", "every document").and_then(|v| {
        one_of(
            cx,
            v,
            "kind",
            &[
                ("Container", Kind::Container),
                ("Network", Kind::Network),
                ("Volume", Kind::Volume),
            ],
        )
    });
    let meta = f
        .required(cx, "metadata", "every document")
        .and_then(|m| decode_meta(cx, m));

    let spec = f.get("spec");
    let object = match kind {
        Some(Kind::Container) => {
            let name = meta.as_ref().map_or("", |(m, _)| m.name.as_str());
            let spec = f
                .required(cx, "spec", "a Container")
                .and_then(|s| super::container::decode_container_spec(cx, s, name));
            spec.zip(meta).map(|(spec, (metadata, pos))| {
                (Object::Container(Container { metadata, spec }), pos)
            })
        }
        Some(Kind::Network) => {
            if let Some((m, pos)) = &meta {
                if let Err(e) = check::network_name(&m.name) {
                    cx.error(*pos, e);
                }
            }
            let spec = match spec {
                Some(s) => super::network::decode_network_spec(cx, s),
                None => Some(Default::default()),
            };
            spec.zip(meta)
                .map(|(spec, (metadata, pos))| (Object::Network(Network { metadata, spec }), pos))
        }
        Some(Kind::Volume) => {
            let spec = match spec {
                Some(s) => super::network::decode_volume_spec(cx, s),
                None => Some(Default::default()),
            };
            spec.zip(meta)
                .map(|(spec, (metadata, pos))| (Object::Volume(Volume { metadata, spec }), pos))
        }
        None => None,
    };
    object.filter(|_| cx.error_count() == before)
}

/// Decodes `metadata`; the position is the one of the name's value.
fn decode_meta(cx: &mut Ctx, node: &Node) -> Option<(ObjectMeta, Pos)> {
    let f = fields(cx, node, "metadata", &["name", "labels", "annotations"])?;
    let name_node = f.required(cx, "name", "metadata")?;
    let name = string(cx, name_node, "metadata.name")?;
    if let Err(e) = check::dns_label(&name) {
        cx.error(name_node.pos, format!("metadata.name: {e}"));
    }
    let labels = f
        .get("labels")
        .map(|n| string_map(cx, n, "metadata.labels", check::label_key))
        .unwrap_or_default();
    let annotations = f
        .get("annotations")
        .map(|n| string_map(cx, n, "metadata.annotations", check::label_key))
        .unwrap_or_default();
    Some((
        ObjectMeta {
            name,
            labels,
            annotations,
        },
        name_node.pos,
    ))
}
