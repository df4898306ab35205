//! From a snapshot of files to the desired state, keeping what runs safe from
//! mistakes: an invalid file keeps its last good objects, and an object defined
//! twice is frozen rather than guessed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::scan::{read_text, scan_dir, ReadError};
use super::types::{Container, Network, Object, Sourced, Volume};
use super::{parse_file, Diagnostic, SourceFile};

/// What one file contributed, for `GET /v1/manifests`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileReport {
    /// Relative to the manifests root.
    pub file: String,
    /// Keys (`Container/web`) of the objects in effect from this file: the current
    /// version when valid, else the last good one.
    pub objects: Vec<String>,
    /// Every problem: the file's own, and conflicts with other files. Empty when
    /// the file is valid and conflict-free.
    pub errors: Vec<Diagnostic>,
}

/// The desired state assembled from a snapshot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DesiredState {
    /// Containers by name.
    pub containers: BTreeMap<String, Sourced<Container>>,
    /// Networks by name.
    pub networks: BTreeMap<String, Sourced<Network>>,
    /// Volumes by name.
    pub volumes: BTreeMap<String, Sourced<Volume>>,
    /// One report per file of the snapshot, in path order.
    pub reports: Vec<FileReport>,
    /// Keys (`Container/web`) in conflict (defined twice, overlapping subnets): not in
    /// the maps above; whatever runs for them must be left exactly as it is.
    pub frozen: BTreeSet<String>,
    /// `false` when an invalid file has no last good version: objects it may define
    /// are unknown, so the caller must not remove anything.
    pub complete: bool,
}

/// Assembles desired states and remembers each file's last good objects, in memory
/// and (when given a path) on disk, so an agent restarted while a file is broken
/// still knows what that file used to define.
#[derive(Debug, Default)]
pub struct Loader {
    persist_path: Option<PathBuf>,
    last_good: BTreeMap<String, Vec<Sourced<Object>>>,
}

/// The persisted form; `version` lets a later format be told apart and ignored.
#[derive(Serialize, Deserialize)]
struct Persisted {
    version: u32,
    files: BTreeMap<String, Vec<Sourced<Object>>>,
}

const PERSIST_VERSION: u32 = 1;

impl Loader {
    /// A loader; with `persist_path`, it starts from the last good objects saved
    /// there. An unreadable or foreign file is logged and ignored: losing it only
    /// means a file broken right now is treated as having no last good version.
    pub fn new(persist_path: Option<PathBuf>) -> Self {
        let last_good = persist_path
            .as_deref()
            .and_then(|path| match crate::state::read_json::<Persisted>(path) {
                Ok(Some(p)) if p.version == PERSIST_VERSION => Some(p.files),
                Ok(Some(p)) => {
                    tracing::warn!(path = %path.display(), version = p.version, "ignoring last good manifests of an unknown format version");
                    None
                }
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable last good manifests");
                    None
                }
            })
            .unwrap_or_default();
        Loader {
            persist_path,
            last_good,
        }
    }

    /// Builds the desired state from a full snapshot.
    pub fn load(&mut self, files: &[SourceFile]) -> DesiredState {
        let mut state = DesiredState {
            complete: true,
            ..Default::default()
        };
        let mut in_effect: Vec<Sourced<Object>> = Vec::new();
        let mut changed = false;
        for file in files {
            let (objects, errors) = match &file.text {
                Ok(text) => parse_file(&file.path, text),
                Err(e) => (
                    Vec::new(),
                    vec![Diagnostic::file(&file.path, format!("cannot read: {e}"))],
                ),
            };
            let objects = if errors.is_empty() {
                if self.last_good.get(&file.path) != Some(&objects) {
                    self.last_good.insert(file.path.clone(), objects.clone());
                    changed = true;
                }
                objects
            } else if let Some(good) = self.last_good.get(&file.path) {
                good.clone()
            } else {
                state.complete = false;
                Vec::new()
            };
            state.reports.push(FileReport {
                file: file.path.clone(),
                objects: objects.iter().map(|o| o.object.key()).collect(),
                errors,
            });
            in_effect.extend(objects);
        }
        // A removed file drops its objects.
        let present: BTreeSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
        let before = self.last_good.len();
        self.last_good
            .retain(|path, _| present.contains(path.as_str()));
        changed |= self.last_good.len() != before;
        if changed {
            self.persist();
        }

        let (frozen, conflicts) = cross_check(&in_effect);
        for d in conflicts {
            if let Some(r) = state.reports.iter_mut().find(|r| r.file == d.file) {
                r.errors.push(d);
            }
        }
        for r in &mut state.reports {
            r.errors
                .sort_by_key(|d| (d.line.unwrap_or(0), d.column.unwrap_or(0)));
        }
        for sourced in in_effect {
            if frozen.contains(&sourced.object.key()) {
                continue;
            }
            let name = sourced.object.name().to_string();
            match sourced.object.clone() {
                Object::Container(c) => {
                    state.containers.insert(name, sourced.map(|_| c));
                }
                Object::Network(n) => {
                    state.networks.insert(name, sourced.map(|_| n));
                }
                Object::Volume(v) => {
                    state.volumes.insert(name, sourced.map(|_| v));
                }
            }
        }
        state.frozen = frozen;
        state
    }

    fn persist(&self) {
        let Some(path) = &self.persist_path else {
            return;
        };
        let persisted = Persisted {
            version: PERSIST_VERSION,
            files: self.last_good.clone(),
        };
        if let Err(e) = crate::state::write_json(path, &persisted) {
            // Not fatal: the memory copy still protects this run.
            tracing::warn!(path = %path.display(), error = %e, "cannot save last good manifests");
        }
    }
}

/// Checks that need every object: the same `kind/name` twice, and networks whose
/// subnets overlap. Returns the keys to freeze and a diagnostic at each place.
fn cross_check(objects: &[Sourced<Object>]) -> (BTreeSet<String>, Vec<Diagnostic>) {
    let mut frozen = BTreeSet::new();
    let mut diagnostics = Vec::new();
    let place = |o: &Sourced<Object>| format!("{}:{}:{}", o.file, o.line, o.column);

    let mut by_key: BTreeMap<String, Vec<&Sourced<Object>>> = BTreeMap::new();
    for o in objects {
        by_key.entry(o.object.key()).or_default().push(o);
    }
    for (key, places) in by_key.iter().filter(|(_, p)| p.len() > 1) {
        frozen.insert(key.clone());
        for (i, here) in places.iter().enumerate() {
            let others: Vec<String> = places
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, o)| place(o))
                .collect();
            diagnostics.push(Diagnostic::at(
                &here.file,
                here.line,
                here.column,
                format!(
                    "{} \"{}\" is defined more than once (also at {}); whatever runs for it is left as it is until only one remains",
                    here.object.kind(),
                    here.object.name(),
                    others.join(", ")
                ),
            ));
        }
    }

    let networks: Vec<(&Sourced<Object>, &Network)> = objects
        .iter()
        .filter_map(|o| match &o.object {
            Object::Network(n) => Some((o, n)),
            _ => None,
        })
        .collect();
    for (i, (a_src, a)) in networks.iter().enumerate() {
        for (b_src, b) in &networks[i + 1..] {
            if a.metadata.name == b.metadata.name {
                continue; // a duplicate, reported above
            }
            let v4 = match (a.spec.subnet, b.spec.subnet) {
                (Some(x), Some(y)) if x.overlaps(y) => Some((x.to_string(), y.to_string())),
                _ => None,
            };
            let v6 = match (&a.spec.ipv6, &b.spec.ipv6) {
                (Some(x), Some(y)) if x.subnet.overlaps(y.subnet) => {
                    Some((x.subnet.to_string(), y.subnet.to_string()))
                }
                _ => None,
            };
            for (x, y) in v4.into_iter().chain(v6) {
                for (here, mine, other, theirs) in [(a_src, &x, b_src, &y), (b_src, &y, a_src, &x)]
                {
                    frozen.insert(here.object.key());
                    diagnostics.push(Diagnostic::at(
                        &here.file,
                        here.line,
                        here.column,
                        format!(
                            "subnet {mine} of Network \"{}\" overlaps subnet {theirs} of Network \"{}\" ({}); both are left as they are until the overlap is fixed",
                            here.object.name(),
                            other.object.name(),
                            place(other)
                        ),
                    ));
                }
            }
        }
    }
    dependency_checks(objects, &mut frozen, &mut diagnostics);
    (frozen, diagnostics)
}

/// `dependsOn` across files: a cycle is an error at every member (each is left as it
/// runs: none could ever start first), and so is waiting for a container to be
/// `Healthy` when it has no healthcheck (it never would be).
fn dependency_checks(
    objects: &[Sourced<Object>],
    frozen: &mut BTreeSet<String>,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let containers: BTreeMap<&str, &Sourced<Object>> = objects
        .iter()
        .filter(|o| matches!(o.object, Object::Container(_)))
        .map(|o| (o.object.name(), o))
        .collect();
    let deps = |name: &str| -> Vec<&crate::manifest::Dependency> {
        match containers.get(name).map(|o| &o.object) {
            Some(Object::Container(c)) => c.spec.depends_on.iter().collect(),
            _ => Vec::new(),
        }
    };
    for (name, here) in &containers {
        for d in deps(name) {
            let healthcheck = match containers.get(d.name.as_str()).map(|o| &o.object) {
                Some(Object::Container(c)) => Some(c.spec.healthcheck.is_some()),
                _ => None,
            };
            if d.condition == crate::manifest::DependencyCondition::Healthy
                && healthcheck == Some(false)
            {
                frozen.insert(here.object.key());
                diagnostics.push(Diagnostic::at(
                    &here.file,
                    here.line,
                    here.column,
                    format!(
                        "Container \"{name}\" waits for {} to be Healthy, but {} has no healthcheck: add one to it, or wait for Started",
                        d.name, d.name
                    ),
                ));
            }
        }
        // The shortest way back to itself, if any (breadth first over the names).
        let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue: std::collections::VecDeque<&str> = deps(name)
            .iter()
            .map(|d| d.name.as_str())
            .filter(|n| containers.contains_key(n))
            .collect();
        for n in &queue {
            came_from.insert(n, name);
        }
        let mut found = false;
        while let Some(at) = queue.pop_front() {
            if at == *name {
                found = true;
                break;
            }
            for d in deps(at) {
                let next = d.name.as_str();
                if containers.contains_key(next) && !came_from.contains_key(next) {
                    came_from.insert(next, at);
                    queue.push_back(next);
                }
            }
        }
        if !found {
            continue;
        }
        let mut path = vec![*name];
        let mut at = came_from[name];
        while at != *name && path.len() <= containers.len() {
            path.push(at);
            at = came_from[at];
        }
        path.push(name);
        path.reverse();
        frozen.insert(here.object.key());
        diagnostics.push(Diagnostic::at(
            &here.file,
            here.line,
            here.column,
            format!(
                "dependsOn makes a cycle: {}; none of them could start first: remove one of these dependencies (whatever runs for them is left as it is)",
                path.join(" -> ")
            ),
        ));
    }
}

/// Validates files and folders for `wharf validate PATH...`: folders are scanned
/// like the agent does; a file given explicitly is checked whatever its name.
/// File names are shown as the user would find them (the path as given, joined
/// with the path inside a folder). Includes conflicts between all the files, and
/// I/O errors. Empty when everything is valid.
pub fn validate_paths(paths: &[PathBuf]) -> Vec<Diagnostic> {
    let mut files: Vec<(String, Result<String, ReadError>)> = Vec::new();
    let mut diagnostics: Vec<Vec<Diagnostic>> = Vec::new();
    for path in paths {
        let shown = path.display().to_string();
        match fs::metadata(path) {
            Err(e) => files.push((shown, Err(e.into()))),
            Ok(meta) if meta.is_dir() => {
                for f in scan_dir(path) {
                    let name = if f.path == "." {
                        shown.clone()
                    } else {
                        Path::new(path).join(&f.path).display().to_string()
                    };
                    files.push((name, f.text));
                }
            }
            Ok(_) => files.push((shown, read_text(path))),
        }
    }
    let mut objects = Vec::new();
    for (name, text) in &files {
        match text {
            Ok(text) => {
                let (objs, diags) = parse_file(name, text);
                objects.extend(objs);
                diagnostics.push(diags);
            }
            Err(e) => diagnostics.push(vec![Diagnostic::file(name, e.to_string())]),
        }
    }
    let (_, conflicts) = cross_check(&objects);
    for d in conflicts {
        if let Some(i) = files.iter().position(|(name, _)| *name == d.file) {
            diagnostics[i].push(d);
        }
    }
    diagnostics
        .into_iter()
        .flat_map(|mut diags| {
            diags.sort_by_key(|d| (d.line.unwrap_or(0), d.column.unwrap_or(0)));
            diags
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, text: &str) -> SourceFile {
        SourceFile {
            path: path.into(),
            text: Ok(text.into()),
        }
    }

    fn container(name: &str, image: &str) -> String {
        format!("apiVersion: wharf/v1\nkind: Container\nmetadata:\n  name: {name}\nspec:\n  image: {image}\n")
    }

    fn network(name: &str, subnet: &str) -> String {
        format!("apiVersion: wharf/v1\nkind: Network\nmetadata:\n  name: {name}\nspec:\n  subnet: {subnet}\n")
    }

    #[test]
    fn valid_files_become_the_desired_state() {
        let web = container("web", "nginx");
        let both = format!(
            "{}---\n{}",
            network("back", "10.89.1.0/24"),
            container("db", "postgres")
        );
        let state = Loader::new(None).load(&[file("a.yaml", &web), file("sub/b.yaml", &both)]);
        assert!(state.complete);
        assert_eq!(state.containers.keys().collect::<Vec<_>>(), ["db", "web"]);
        assert_eq!(state.containers["db"].file, "sub/b.yaml");
        assert_eq!(state.networks.len(), 1);
        assert_eq!(state.reports[1].objects, ["Network/back", "Container/db"]);
        assert!(state.reports.iter().all(|r| r.errors.is_empty()));
    }

    #[test]
    fn a_dependency_cycle_is_an_error_at_every_member_and_freezes_only_them() {
        let dep = |name: &str, on: &str, cond: &str| {
            format!(
                "{}  dependsOn: [{{name: {on}, condition: {cond}}}]\n",
                container(name, "busybox")
            )
        };
        let state = Loader::new(None).load(&[
            file("a.yaml", &dep("a", "b", "Started")),
            file("b.yaml", &format!("# b\n{}", dep("b", "c", "Started"))),
            file("c.yaml", &dep("c", "a", "Completed")),
            file("d.yaml", &dep("d", "a", "Started")),
            file("e.yaml", &dep("e", "d", "Healthy")),
        ]);
        let errors = |f: &str| -> Vec<String> {
            state
                .reports
                .iter()
                .find(|r| r.file == f)
                .unwrap()
                .errors
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(
            errors("a.yaml"),
            ["a.yaml:4:9: dependsOn makes a cycle: a -> b -> c -> a; none of them could start first: remove one of these dependencies (whatever runs for them is left as it is)"]
        );
        assert!(
            errors("b.yaml")[0]
                .starts_with("b.yaml:5:9: dependsOn makes a cycle: b -> c -> a -> b"),
            "{:?}",
            errors("b.yaml")
        );
        assert!(errors("c.yaml")[0].contains("c -> a -> b -> c"));
        assert!(errors("d.yaml").is_empty(), "outside the cycle");
        assert!(errors("e.yaml")[0].contains("waits for d to be Healthy, but d has no healthcheck"));
        let frozen: Vec<&String> = state.frozen.iter().collect();
        assert_eq!(
            frozen,
            ["Container/a", "Container/b", "Container/c", "Container/e"]
        );
        assert_eq!(state.containers.keys().collect::<Vec<_>>(), ["d"]);
    }

    #[test]
    fn duplicate_name_across_files_is_reported_at_both_places() {
        let state = Loader::new(None).load(&[
            file("a.yaml", &container("web", "nginx")),
            file("b.yaml", &format!("# moved\n{}", container("web", "httpd"))),
            file("c.yaml", &container("other", "nginx")),
        ]);
        assert!(state.frozen.contains("Container/web"));
        assert!(!state.containers.contains_key("web"));
        assert!(
            state.containers.contains_key("other"),
            "unrelated objects still apply"
        );
        let a = state.reports[0].errors[0].to_string();
        let b = state.reports[1].errors[0].to_string();
        assert!(
            a.starts_with(
                "a.yaml:4:9: Container \"web\" is defined more than once (also at b.yaml:5:9)"
            ),
            "{a}"
        );
        assert!(
            b.starts_with(
                "b.yaml:5:9: Container \"web\" is defined more than once (also at a.yaml:4:9)"
            ),
            "{b}"
        );
    }

    #[test]
    fn invalid_file_keeps_its_last_good_objects() {
        let mut loader = Loader::new(None);
        loader.load(&[file("a.yaml", &container("web", "nginx:1"))]);
        let broken = container("web", "nginx:2").replace("image:", "imgae:");
        let state = loader.load(&[file("a.yaml", &broken)]);
        assert!(state.complete);
        assert_eq!(state.containers["web"].object.spec.image, "nginx:1");
        assert_eq!(state.reports[0].objects, ["Container/web"]);
        assert!(state.reports[0].errors[0].message.contains("imgae"));
        // Fixed: the new version replaces the last good one.
        let state = loader.load(&[file("a.yaml", &container("web", "nginx:3"))]);
        assert_eq!(state.containers["web"].object.spec.image, "nginx:3");
        assert!(state.reports[0].errors.is_empty());
    }

    #[test]
    fn unreadable_or_invalid_file_without_last_good_makes_state_incomplete() {
        let state = Loader::new(None).load(&[
            file("a.yaml", "kind: [\n"),
            SourceFile {
                path: "b.yaml".into(),
                text: Err(ReadError::Io("permission denied".into())),
            },
        ]);
        assert!(!state.complete);
        assert_eq!(
            state.reports[1].errors[0].to_string(),
            "b.yaml: cannot read: permission denied"
        );
    }

    #[test]
    fn removed_file_drops_its_objects_and_moved_objects_stay() {
        let mut loader = Loader::new(None);
        let web = container("web", "nginx");
        let first = loader.load(&[file("a.yaml", &web), file("b.yaml", &container("db", "pg"))]);
        let state = loader.load(&[file("c.yaml", &web)]);
        assert!(state.complete);
        assert_eq!(state.containers.keys().collect::<Vec<_>>(), ["web"]);
        assert_eq!(
            state.containers["web"].object.spec_hash(),
            first.containers["web"].object.spec_hash()
        );
        // The removed file's last good version is gone: breaking c.yaml now is incomplete.
        let state = loader.load(&[file("a.yaml", "kind: [\n")]);
        assert!(!state.complete);
    }

    #[test]
    fn last_good_objects_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let persist = dir.path().join("manifests.json");
        Loader::new(Some(persist.clone())).load(&[file("a.yaml", &container("web", "nginx:1"))]);
        let broken = format!("{}  bogus: 1\n", container("web", "nginx:2"));
        let state = Loader::new(Some(persist)).load(&[file("a.yaml", &broken)]);
        assert!(state.complete);
        assert_eq!(state.containers["web"].object.spec.image, "nginx:1");
    }

    #[test]
    fn overlapping_subnets_are_reported_at_both_networks_and_frozen() {
        let state = Loader::new(None).load(&[
            file("a.yaml", &network("one", "10.89.0.0/16")),
            file("b.yaml", &network("two", "10.89.1.0/24")),
            file("c.yaml", &network("three", "10.90.0.0/24")),
        ]);
        assert_eq!(
            state.frozen.iter().collect::<Vec<_>>(),
            ["Network/one", "Network/two"]
        );
        assert_eq!(state.networks.keys().collect::<Vec<_>>(), ["three"]);
        assert!(state.reports[0].errors[0]
            .message
            .contains("overlaps subnet 10.89.1.0/24 of Network \"two\" (b.yaml:4:9)"));
        assert!(state.reports[1].errors[0]
            .message
            .contains("overlaps subnet 10.89.0.0/16"));
    }

    #[test]
    fn validate_paths_shows_paths_as_given_and_checks_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("manifests");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/web.yaml"), container("web", "nginx")).unwrap();
        std::fs::write(root.join("bad.yml"), "apiVersion: wharf/v1\nkind: Pod\n").unwrap();
        let single = dir.path().join("extra.txt");
        std::fs::write(&single, container("web", "httpd")).unwrap();
        let missing = dir.path().join("missing.yaml");
        let diags = validate_paths(&[root.clone(), single.clone(), missing.clone()]);
        let lines: Vec<String> = diags.iter().map(ToString::to_string).collect();
        let bad = root.join("bad.yml").display().to_string();
        let web = root.join("sub/web.yaml").display().to_string();
        assert_eq!(lines.len(), 5, "{lines:#?}");
        assert!(lines[0].starts_with(&format!(
            "{bad}:1:1: every document needs the field \"metadata\""
        )));
        assert!(lines[1].starts_with(&format!("{bad}:2:7: kind must be one of")));
        assert!(lines[2].starts_with(&format!(
            "{web}:4:9: Container \"web\" is defined more than once"
        )));
        assert!(lines[3].starts_with(&format!("{}:4:9: Container \"web\"", single.display())));
        assert!(lines[4].starts_with(&format!("{}: ", missing.display())));
        assert!(validate_paths(&[root.join("sub")]).is_empty());
    }
}
