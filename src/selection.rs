//! Which syncs and entities a command acts on: names, `--select NAME|tag:TAG` and
//! `--exclude NAME|tag:TAG`, as dbt users expect. A name or tag that matches nothing is an
//! error naming what exists, never an empty run that looks like success.

use std::collections::BTreeSet;

use crate::project::{Project, RunTarget};

/// What the user asked for on the command line.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Names given as arguments.
    pub names: Vec<String>,
    /// `--select`: names, or `tag:TAG` for every sync and entity with that tag.
    pub select: Vec<String>,
    /// `--exclude`: names, or `tag:TAG`, left out of what the rest selects.
    pub exclude: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SelectionError {
    #[error(
        "no sync or entity has tag \"{tag}\"{}",
        if known.is_empty() { " (none has a tag)".to_string() } else { format!("; the tags in use are: {known}") }
    )]
    UnknownTag { tag: String, known: String },
    #[error(transparent)]
    Project(#[from] crate::project::ProjectError),
}

impl Selection {
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.select.is_empty() && self.exclude.is_empty()
    }

    /// The names `selectors` stand for, in the project's order (tags) or as given (names).
    fn expand(project: &Project, selectors: &[String]) -> Result<Vec<String>, SelectionError> {
        let mut out = Vec::new();
        for s in selectors {
            match s.strip_prefix("tag:") {
                Some(tag) => {
                    let tagged: Vec<String> = project
                        .config
                        .entities
                        .iter()
                        .filter(|(_, e)| e.tags.iter().any(|t| t == tag))
                        .map(|(n, _)| n.clone())
                        .chain(
                            project
                                .config
                                .syncs
                                .iter()
                                .filter(|(_, c)| c.tags.iter().any(|t| t == tag))
                                .map(|(n, _)| n.clone()),
                        )
                        .collect();
                    if tagged.is_empty() {
                        return Err(SelectionError::UnknownTag {
                            tag: tag.to_string(),
                            known: known_tags(project).join(", "),
                        });
                    }
                    out.extend(tagged);
                }
                None => out.push(s.clone()),
            }
        }
        Ok(out)
    }

    /// The names selected before exclusions (empty: everything).
    fn requested(&self, project: &Project) -> Result<Vec<String>, SelectionError> {
        let mut names = self.names.clone();
        for n in Self::expand(project, &self.select)? {
            if !names.contains(&n) {
                names.push(n);
            }
        }
        Ok(names)
    }

    fn excluded(&self, project: &Project) -> Result<BTreeSet<String>, SelectionError> {
        let names = Self::expand(project, &self.exclude)?;
        // An excluded name must exist: a typo would otherwise run what it meant to leave out.
        project.select_targets(&names)?;
        Ok(names.into_iter().collect())
    }

    /// What `run` acts on, in run order (see [`Project::select_targets`]), minus exclusions.
    pub fn targets(&self, project: &Project) -> Result<Vec<RunTarget>, SelectionError> {
        let excluded = self.excluded(project)?;
        let mut targets = project.select_targets(&self.requested(project)?)?;
        targets.retain(|t| match t {
            RunTarget::Entity(n) | RunTarget::Sync(n) => !excluded.contains(n),
        });
        Ok(targets)
    }

    /// The syncs `plan` and `check` act on, minus exclusions (entities selected by a tag are
    /// left out: they have no plan).
    pub fn syncs(&self, project: &Project) -> Result<Vec<String>, SelectionError> {
        let excluded = self.excluded(project)?;
        let mut requested = self.requested(project)?;
        let tagged_entities: BTreeSet<String> = Self::expand(project, &self.select)?
            .into_iter()
            .filter(|n| project.config.entities.contains_key(n))
            .collect();
        requested.retain(|n| !tagged_entities.contains(n) || self.names.contains(n));
        if requested.is_empty() && !self.select.is_empty() {
            return Ok(Vec::new());
        }
        let mut syncs = project.select_syncs(&requested)?;
        syncs.retain(|n| !excluded.contains(n));
        Ok(syncs)
    }
}

fn known_tags(project: &Project) -> Vec<String> {
    let tags: BTreeSet<&String> = project
        .config
        .syncs
        .values()
        .flat_map(|s| s.tags.iter())
        .chain(project.config.entities.values().flat_map(|e| e.tags.iter()))
        .collect();
    tags.into_iter().cloned().collect()
}
