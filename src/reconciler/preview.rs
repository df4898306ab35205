//! `wharf plan`: what the agent would do for a folder of manifests, computed offline
//! from the agent's records on disk, with the same planner.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use super::inputs::{explain, inputs};
use super::plan::{plan, Step};
use crate::manifest::{scan_dir, Diagnostic, Loader, SourceFile};
use crate::runtime::{Runtime, RuntimeError};

/// The outcome of a preview.
#[derive(Debug)]
pub enum Preview {
    /// The manifests have errors: nothing can be planned from them.
    Invalid(Vec<Diagnostic>),
    /// The steps, in the order the agent would take them, and the unchanged names.
    Steps {
        steps: Vec<Step>,
        unchanged: Vec<String>,
    },
}

/// Reads the manifests at `path` (a folder, searched recursively, or one file).
pub fn read_manifests(path: &Path) -> Vec<SourceFile> {
    if path.is_dir() {
        return scan_dir(path);
    }
    // Bounded and never blocking, as a scanned file (a FIFO or a huge file is refused).
    vec![SourceFile {
        path: path.display().to_string(),
        text: crate::manifest::read_text(path),
    }]
}

/// Plans `files` against the containers `runtime` knows.
pub async fn preview<R: Runtime>(
    files: &[SourceFile],
    runtime: &R,
) -> Result<Preview, RuntimeError> {
    let desired = Loader::new(None).load(files);
    let errors: Vec<Diagnostic> = desired
        .reports
        .iter()
        .flat_map(|r| r.errors.iter().cloned())
        .collect();
    if !errors.is_empty() {
        return Ok(Preview::Invalid(errors));
    }
    let (observed, others) = crate::runtime::instance::by_container(runtime.list().await?);
    // (Offline, health is unknown: an update waiting for it stays waiting.)
    let mut planned = inputs(&desired, &observed);
    super::inputs::add_others(&mut planned, &others, |_| None);
    let mut steps = plan(&planned, Instant::now()).steps;
    for step in &mut steps {
        explain(step, &desired, &observed);
    }
    let unchanged = desired
        .containers
        .keys()
        .filter(|n| !steps.iter().any(|s| s.name() == n.as_str()))
        .cloned()
        .collect();
    Ok(Preview::Steps { steps, unchanged })
}

/// One line per step: `create web`, `replace api (spec.image)`, `remove old`.
pub fn render(steps: &[Step], unchanged: &[String]) -> String {
    let mut out = String::new();
    if steps.is_empty() {
        out.push_str("nothing to do\n");
    }
    for step in steps {
        let _ = match step {
            Step::Create { name } => writeln!(out, "create   {name}"),
            Step::Replace { name, changed } if !changed.is_empty() => {
                writeln!(out, "replace  {name} ({} changed)", changed.join(", "))
            }
            Step::Replace { name, .. } => writeln!(out, "replace  {name}"),
            Step::Restart { name } => writeln!(out, "restart  {name}"),
            Step::StartNext { name, changed } if !changed.is_empty() => writeln!(
                out,
                "update   {name} ({} changed; StartFirst: the new version starts beside the old)",
                changed.join(", ")
            ),
            Step::StartNext { name, .. } => {
                writeln!(
                    out,
                    "update   {name} (StartFirst: the new version starts beside the old)"
                )
            }
            Step::Promote { name } => writeln!(out, "promote  {name} (its new version is ready)"),
            Step::Rollback { name, .. } => writeln!(out, "rollback {name}"),
            Step::Remove { name } => writeln!(out, "remove   {name}"),
            Step::EnsureNetwork { name } => writeln!(out, "make     network {name}"),
            Step::RemoveNetwork { name } => writeln!(out, "remove   network {name}"),
            Step::Volume { name, action } => match action {
                crate::volumes::Action::Create { .. } => writeln!(out, "make     volume {name}"),
                crate::volumes::Action::Update { .. } => writeln!(out, "update   volume {name}"),
                crate::volumes::Action::Delete { .. } => writeln!(out, "delete   volume {name}"),
            },
        };
    }
    if !unchanged.is_empty() {
        let _ = writeln!(out, "unchanged: {}", unchanged.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_names_each_step_and_the_changed_fields() {
        let steps = vec![
            Step::Remove { name: "old".into() },
            Step::Create { name: "web".into() },
            Step::Replace {
                name: "api".into(),
                changed: vec!["spec.image".into(), "spec.args".into()],
            },
        ];
        assert_eq!(
            render(&steps, &["db".into()]),
            "remove   old\ncreate   web\nreplace  api (spec.image, spec.args changed)\nunchanged: db\n"
        );
        assert_eq!(render(&[], &[]), "nothing to do\n");
    }
}
