//! Write-backs: a source with `[writeback]` gets a sync, `<entity>-to-<source>`, that keeps
//! its records equal to their golden records.
//!
//! - **From**: the live golden records joined with the source's ID map (one row per source
//!   record, keyed by the source's id), narrowed by the write-back's `filter`, mapped by its
//!   `fields` (expressions over the entity's fields and `golden_id`).
//! - **Behavior**: update-only — a source record is only ever updated, never created or
//!   deleted.
//! - **Watermark**: the hub version of the row's last change (of the golden record, or of the
//!   source record's link or report), so each run reads only what changed since it last ran:
//!   each write-back has its own destination watermark.
//! - **on_delete**: a source's `writeback.on_delete` (`"delete"`, or `{ update = { … } }`) is a
//!   second sync, `<entity>-to-<source>-retired` (delete, or update-only), over the source's
//!   records of *retired* golden records, with the same watermark.
//! - **create**: a source with `writeback.create = true` gets a third sync,
//!   `<entity>-to-<source>-create` (create-only), over the records the hub linked to it for
//!   live golden records it had none of (see `create.rs`), until the source reports them.
//! - **No echo**: what the sync compares with (its snapshot) is overlaid with what the source
//!   itself reported since the hub version the sync last ran against, hashed the same way. A
//!   value that came from the source is then "unchanged" for it and not sent back; one the hub
//!   decided otherwise (another source has authority) is sent.

use arrow::datatypes::DataType;
use async_trait::async_trait;
use datafusion::common::{JoinType, ScalarValue};
use datafusion::logical_expr::{cast, lit};
use datafusion::prelude::{DataFrame, Expr, SessionContext, col, ident};

use super::HubError;
use super::state::{self, HubManifest, contributions_schema, mapped_fields};
use crate::config::entity::{HUB_SEQ, HubLink, LinkKind, SOURCE_ID, view_name};
use crate::project::Project;
use crate::sync::{Upstream, UpstreamError, UpstreamRead};

/// The write-back of one entity to one of its sources, as the read stage's hook: the sync
/// reads the relation [`register`] makes, and compares with what the source reported.
#[derive(Debug)]
pub struct Writeback {
    link: HubLink,
}

impl Writeback {
    pub fn new(link: HubLink) -> Self {
        Writeback { link }
    }
}

#[async_trait]
impl Upstream for Writeback {
    async fn register(
        &self,
        project: &Project,
        ctx: &SessionContext,
    ) -> Result<Box<dyn UpstreamRead>, UpstreamError> {
        let registered = register(project, ctx, &self.link).await?;
        Ok(Box::new(WritebackRead {
            link: self.link.clone(),
            registered,
        }))
    }

    /// The ids an API gives the records a create write-back makes, kept for the hub's next
    /// cycle as each answer arrives (see `assigned.rs`).
    fn assigned_ids(&self, project: &Project) -> Option<crate::destinations::AssignedIds> {
        if self.link.kind != LinkKind::Create {
            return None;
        }
        let (state, link) = (project.state.clone(), self.link.clone());
        Some(std::sync::Arc::new(move |ids| {
            let (state, link) = (state.clone(), link.clone());
            Box::pin(async move {
                super::assigned::record(&state, &link.entity, &link.source, ids)
                    .await
                    .map_err(|e| e.to_string())
            })
        }))
    }
}

struct WritebackRead {
    link: HubLink,
    registered: Registered,
}

#[async_trait]
impl UpstreamRead for WritebackRead {
    fn version(&self) -> u64 {
        self.registered.version()
    }

    async fn reported(
        &self,
        project: &Project,
        ctx: &SessionContext,
        since: Option<u64>,
    ) -> Result<Option<DataFrame>, UpstreamError> {
        if !self.registered.observable {
            return Ok(None);
        }
        Ok(Some(
            reported(project, ctx, &self.link, &self.registered, since).await?,
        ))
    }
}

/// The registered write-back relation of one sync run: the hub state it reads, and whether
/// what its source reports can stand for what the source has (see [`observable`]).
pub struct Registered {
    pub manifest: Option<HubManifest>,
    pub observable: bool,
}

impl Registered {
    /// The hub version the relation was read from (0 before the first cycle).
    pub fn version(&self) -> u64 {
        self.manifest.as_ref().map_or(0, |m| m.version)
    }
}

/// Register the write-back relation of `link` from the entity's newest state.
async fn register(
    project: &Project,
    ctx: &SessionContext,
    link: &HubLink,
) -> Result<Registered, HubError> {
    let engine = |source| HubError::Engine {
        entity: link.entity.clone(),
        stage: "writeback",
        source,
    };
    let entity = &project.config.entities[&link.entity];
    let source = &entity.sources[&link.source];
    let manifest = super::latest(project, &link.entity).await?;
    let contributions = contributions(project, ctx, link, manifest.as_ref()).await?;
    let golden = super::golden_table(project, ctx, &link.entity, manifest.as_ref())
        .await
        .map_err(engine)?;
    let mut exposed = vec![col(state::GOLDEN_ID)];
    exposed.extend(entity.fields.keys().map(ident));
    exposed.push(col(state::SEQ).alias("__bf_golden_seq"));
    // A write-back sends live golden records; its on_delete, the retired ones.
    let retired = if link.kind == LinkKind::Retired {
        ident(state::RETIRED_AT).is_not_null()
    } else {
        ident(state::RETIRED_AT).is_null()
    };
    let mut golden = golden
        .filter(ident(state::MERGED_INTO).is_null().and(retired))
        .and_then(|g| g.select(exposed))
        .map_err(engine)?;
    // (What an on_delete sends is not what the source reports: it compares with what it sent.)
    let observable =
        link.kind == LinkKind::Update && observable(project, ctx, link, &golden).await?;
    if let Some(filter) = source.writeback.as_ref().and_then(|w| w.filter.as_ref()) {
        let expr = golden
            .parse_sql_expr(filter)
            .and_then(|e| golden.clone().filter(e))
            .map_err(|e| HubError::Source {
                entity: link.entity.clone(),
                source_name: link.source.clone(),
                message: format!(
                    "writeback.filter `{filter}` is not a valid SQL condition over the entity's fields: {e}"
                ),
            })?;
        golden = expr;
    }
    let mut out: Vec<Expr> = vec![ident(state::SID).alias(SOURCE_ID)];
    out.extend(entity.fields.keys().map(ident));
    out.push(col(state::GOLDEN_ID));
    out.push(
        datafusion::functions::expr_fn::greatest(vec![
            ident("__bf_golden_seq"),
            ident(state::READ_SEQ),
            ident(state::LINK_SEQ),
        ])
        .alias(HUB_SEQ),
    );
    // Records linked for the source to create are created, and updated only once the source
    // has reported them (a record it has not got yet cannot be updated).
    let pending = super::create::pending();
    let contributions = match link.kind {
        // (Records an API gave its own id are created: they wait for the source's report.)
        LinkKind::Create => {
            let waiting = contributions
                .filter(pending.and(ident(state::LINKED_BY).eq(lit(super::create::CREATED))))
                .map_err(engine)?;
            super::assigned::not_created(project, ctx, &link.entity, &link.source, waiting).await?
        }
        LinkKind::Update | LinkKind::Retired => contributions.filter(!pending).map_err(engine)?,
    };
    let links = contributions
        .select(vec![
            ident(state::SID),
            ident(state::LINK),
            ident(state::READ_SEQ),
            ident(state::LINK_SEQ),
        ])
        .map_err(engine)?;
    let view = golden
        .join(
            links,
            JoinType::Inner,
            &[state::GOLDEN_ID],
            &[state::LINK],
            None,
        )
        .and_then(|j| j.select(out))
        .map_err(engine)?;
    let name = view_name(link);
    let _ = ctx.deregister_table(name.as_str());
    ctx.register_table(name.as_str(), view.into_view())
        .map_err(engine)?;
    Ok(Registered {
        manifest,
        observable,
    })
}

/// Whether the source's own reports tell what it has in every field the write-back sends:
/// each field is an entity field that the source reads from that very column (`company_name
/// = "name"` back where `name = "company_name"`, or `domain_of(website)` read and `website =
/// "domain"` sent). Then a value the source reported is not sent back to it. Otherwise
/// (`golden_id`, a constant, another column, an expression) the write-back compares with what
/// it last sent, and a change a source made itself is sent back to it once.
async fn observable(
    project: &Project,
    ctx: &SessionContext,
    link: &HubLink,
    golden: &DataFrame,
) -> Result<bool, HubError> {
    let problem = |message: String| HubError::Source {
        entity: link.entity.clone(),
        source_name: link.source.clone(),
        message,
    };
    let entity = &project.config.entities[&link.entity];
    let source = &entity.sources[&link.source];
    let relation = ctx
        .table(source.from.as_str())
        .await
        .map_err(|e| problem(format!("cannot read \"{}\": {e}", source.from)))?;
    let mut observable = true;
    for (column, sql) in source.writeback_fields() {
        let expr = golden.parse_sql_expr(&sql).map_err(|e| {
            problem(format!(
                "writeback field \"{column}\" = `{sql}` is not a valid SQL expression over the entity's fields: {e}"
            ))
        })?;
        let read_back = match &expr {
            Expr::Column(c) => source
                .fields
                .get(c.name.as_str())
                .and_then(|inbound| relation.parse_sql_expr(inbound).ok())
                .is_some_and(|inbound| {
                    let refs = inbound.column_refs();
                    refs.len() == 1 && refs.iter().all(|r| r.name == column)
                }),
            _ => false,
        };
        observable &= read_back;
    }
    if !observable {
        tracing::info!(
            entity = link.entity,
            source = link.source,
            "not every write-back field goes back to the column it is read from: a change the source made itself is written back to it once"
        );
    }
    Ok(observable)
}

/// The source's contributions in `manifest`.
async fn contributions(
    project: &Project,
    ctx: &SessionContext,
    link: &HubLink,
    manifest: Option<&HubManifest>,
) -> Result<DataFrame, HubError> {
    let entity = &project.config.entities[&link.entity];
    let engine = |source| HubError::Engine {
        entity: link.entity.clone(),
        stage: "writeback",
        source,
    };
    let stored = manifest.and_then(|m| m.sources.get(&link.source));
    let id_type: DataType = match stored.and_then(|s| s.id_type.parse().ok()) {
        Some(t) => t,
        // No state yet: the type the source's id column has now.
        None => {
            let from = &entity.sources[&link.source].from;
            let id = &entity.sources[&link.source].id;
            ctx.table(from.as_str())
                .await
                .ok()
                .and_then(|t| {
                    t.schema()
                        .field_with_unqualified_name(id)
                        .ok()
                        .map(|f| f.data_type().clone())
                })
                .unwrap_or(DataType::Utf8)
        }
    };
    let schema = contributions_schema(entity, &link.source, &id_type);
    let files: Vec<&state::StateFile> = stored.map(|s| vec![&s.contributions]).unwrap_or_default();
    state::read_aligned(&project.state, ctx, &files, &schema)
        .await
        .map_err(engine)
}

/// What the source itself reported after hub version `since` (from the start when `None`) in
/// the hub state `registered` read, shaped like the write-back relation, so the sync can hash
/// it with its own mapping: the source's values for the fields it maps, NULL for the others.
async fn reported(
    project: &Project,
    ctx: &SessionContext,
    link: &HubLink,
    registered: &Registered,
    since: Option<u64>,
) -> Result<DataFrame, HubError> {
    let engine = |source| HubError::Engine {
        entity: link.entity.clone(),
        stage: "writeback",
        source,
    };
    let entity = &project.config.entities[&link.entity];
    let manifest = registered.manifest.as_ref();
    let until = registered.version();
    let contributions = contributions(project, ctx, link, manifest).await?;
    let mapped = mapped_fields(entity, &link.source);
    let mut out: Vec<Expr> = vec![ident(state::SID).alias(SOURCE_ID)];
    for (f, t) in entity.field_types() {
        let t = t.unwrap_or(DataType::Utf8);
        out.push(if mapped.contains(&f) {
            ident(&f)
        } else {
            cast(lit(ScalarValue::Null), t).alias(&f)
        });
    }
    out.push(ident(state::LINK).alias(state::GOLDEN_ID));
    out.push(lit(0i64).alias(HUB_SEQ));
    let mut filter = ident(state::LINK)
        .is_not_null()
        .and(ident(state::READ_SEQ).lt_eq(lit(until as i64)));
    if let Some(v) = since {
        filter = filter.and(ident(state::READ_SEQ).gt(lit(v as i64)));
    }
    contributions
        .filter(filter)
        .and_then(|c| c.select(out))
        .map_err(engine)
}
