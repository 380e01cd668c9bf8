//! Write-backs that create (`writeback.create = true`): golden records a source has no record
//! of are created in it.
//!
//! The hub chooses each new record's id (`writeback.create_id`, an expression over the golden
//! record) and links it into the ID map in the cycle that finds the golden record without a
//! record there, before anything is sent:
//!
//! ```text
//!  cycle commits:  contrib-<source> gains (id, golden id), linked_by "created (write-back)",
//!                  never read (__bf_read_seq NULL): the log has the link
//!  write-back:     <entity>-to-<source>-create (create-only, by id) sends the linked records
//!                  not read yet; its own state marks each one sent
//!  next read:      the source has the record: the ID map attaches it to its golden record
//!                  (no match rule, no new golden record) and it is read from then on
//! ```
//!
//! A crash anywhere leaves one of three states, none of which creates a record twice: the cycle
//! did not commit (the next one links the same ids again), the link committed and the create
//! was not sent or not recorded as sent (the create-only sync sends it again; a record that is
//! there already is left alone by key), or everything committed.
//!
//! A linked record the source has not reported yet is neither taken as deleted (a source read
//! in full does not have it until the create is sent) nor counted by authority (it has no
//! values), and the update write-back leaves it until the source reports it.

use datafusion::logical_expr::try_cast;
use datafusion::prelude::{Expr, col, ident};

use super::HubError;
use super::context::{Cycle, golden_old};
use super::sql::{lit, q};
use super::state;

/// How a record the hub linked for its source to create is linked (`__bf_linked_by`).
pub const CREATED: &str = "created (write-back)";

/// The golden records a creating source has no record of (registered per source).
fn wanted(source: &str) -> String {
    format!("bf_hub_want_{source}")
}

/// A contribution linked for its source to create that the source has not reported yet.
pub fn pending() -> Expr {
    ident(state::READ_SEQ).is_null()
}

/// The sources of the entity whose write-back creates records.
pub fn sources(cycle: &Cycle<'_>) -> Vec<String> {
    cycle
        .entity
        .sources
        .iter()
        .filter(|(_, s)| s.writeback.as_ref().is_some_and(|w| w.create))
        .map(|(n, _)| n.clone())
        .collect()
}

/// Register the live golden records of `golden` (a registered table in the golden schema)
/// that pass `source`'s write-back filter, with the id a record created for them in `source`
/// gets (`__bf_sid`, of the source's id type; NULL when the expression gives none, or one that
/// is not of that type).
async fn register_wanted(
    cycle: &Cycle<'_>,
    source: &str,
    golden: &str,
    id_type: &arrow::datatypes::DataType,
) -> Result<(), HubError> {
    let config = &cycle.entity.sources[source];
    let Some(wb) = &config.writeback else {
        return Ok(());
    };
    let engine = cycle.engine("state");
    let mut df = cycle
        .ctx
        .table(golden)
        .await
        .and_then(|g| {
            g.filter(
                ident(state::MERGED_INTO)
                    .is_null()
                    .and(ident(state::RETIRED_AT).is_null()),
            )
        })
        .map_err(&engine)?;
    if let Some(filter) = &wb.filter {
        let expr = df.parse_sql_expr(filter).map_err(|e| {
            problem(cycle.name, source, format!(
                "writeback.filter `{filter}` is not a valid SQL condition over the entity's fields: {e}"
            ))
        })?;
        df = df.filter(expr).map_err(&engine)?;
    }
    let id = id_expr(cycle.name, source, config, id_type, &df)?;
    let df = df
        .select(vec![
            col(state::GOLDEN_ID),
            try_cast(id, id_type.clone()).alias(state::SID),
        ])
        .map_err(&engine)?;
    cycle.register("state", &wanted(source), df)
}

fn problem(entity: &str, source: &str, message: String) -> HubError {
    HubError::Source {
        entity: entity.to_string(),
        source_name: source.to_string(),
        message,
    }
}

/// The id a record created in `source` gets, as an expression over `golden` (golden
/// records), checked against the source's id type: without `create_id`, the default id is
/// text, so a source with ids of another type must say how its ids are made.
pub fn id_expr(
    entity: &str,
    source: &str,
    config: &crate::config::entity::EntitySourceConfig,
    id_type: &arrow::datatypes::DataType,
    golden: &datafusion::prelude::DataFrame,
) -> Result<Expr, HubError> {
    let Some(wb) = &config.writeback else {
        return Err(problem(entity, source, "it has no writeback".into()));
    };
    let is_text = matches!(
        id_type,
        arrow::datatypes::DataType::Utf8
            | arrow::datatypes::DataType::LargeUtf8
            | arrow::datatypes::DataType::Utf8View
    );
    if wb.create_id.is_none() && !is_text {
        return Err(problem(
            entity,
            source,
            format!(
                "writeback.create = true needs create_id here: the source's id \"{}\" is of type \
                 {id_type}, and the default id of a created record ('hub-' || golden_id) is text. \
                 Set writeback.create_id to an expression over the entity's fields and golden_id \
                 that gives an id no record of the source has (for example golden_id + 1000000000)",
                config.id
            ),
        ));
    }
    let sql = wb.create_id();
    let expr = parse_create_id(entity, source, sql, golden)?;
    // An id is kept exactly: text takes any value, an integer id takes integers only (a
    // fraction would be cut, a date or a text read as something else).
    use datafusion::logical_expr::ExprSchemable;
    let t = expr
        .get_type(golden.schema())
        .map_err(|e| problem(entity, source, format!("writeback.create_id `{sql}`: {e}")))?;
    let fits = is_text
        || t == *id_type
        || *id_type == arrow::datatypes::DataType::Null
        || (t.is_integer() && id_type.is_integer());
    if !fits {
        return Err(problem(
            entity,
            source,
            format!(
                "writeback.create_id `{sql}` gives values of type {t}, and the source's id \"{}\" \
                 is of type {id_type}: make it give ids of that type (for example with CAST)",
                config.id
            ),
        ));
    }
    Ok(expr)
}

/// The id type of a source that creates records and has none yet (an empty table or file
/// tells no type: its id column reads as NULL), so that the ids it is given can be kept: the
/// type of `create_id`. None for any other source.
pub async fn empty_id_type(
    cycle: &Cycle<'_>,
    source: &str,
    relation: &datafusion::prelude::DataFrame,
) -> Result<Option<arrow::datatypes::DataType>, HubError> {
    use datafusion::logical_expr::ExprSchemable;
    let config = &cycle.entity.sources[source];
    let Some(wb) = config.writeback.as_ref().filter(|w| w.create) else {
        return Ok(None);
    };
    let empty = relation
        .schema()
        .field_with_unqualified_name(&config.id)
        .is_ok_and(|f| f.data_type() == &arrow::datatypes::DataType::Null);
    if !empty {
        return Ok(None);
    }
    let golden = cycle
        .ctx
        .table(golden_old())
        .await
        .map_err(cycle.engine("read"))?;
    let expr = parse_create_id(cycle.name, source, wb.create_id(), &golden)?;
    let t = expr
        .get_type(golden.schema())
        .map_err(cycle.engine("read"))?;
    Ok(Some(t))
}

/// `create_id` (`sql`) as an expression over `golden` (golden records).
fn parse_create_id(
    entity: &str,
    source: &str,
    sql: &str,
    golden: &datafusion::prelude::DataFrame,
) -> Result<Expr, HubError> {
    golden.parse_sql_expr(sql).map_err(|e| {
        problem(
            entity,
            source,
            format!(
                "writeback.create_id `{sql}` is not a valid SQL expression over the entity's fields and golden_id: {e}"
            ),
        )
    })
}

/// How many golden records of the committed state are waiting to be linked for a source to
/// create (a cycle that read nothing new still links them), with a warning for those that
/// cannot be. `id_types`: each creating source's id type.
pub async fn waiting(
    cycle: &Cycle<'_>,
    id_types: &[(String, arrow::datatypes::DataType)],
) -> Result<u64, HubError> {
    let mut n = 0;
    for (source, id_type) in id_types {
        let old = format!("SELECT * FROM {}", super::context::contrib_old(source));
        let counted = async {
            let links = links_sql(cycle, source, golden_old(), &old, id_type, true).await?;
            cycle
                .count("state", &format!("SELECT COUNT(*) FROM ({links})"))
                .await
        }
        .await;
        match counted {
            Ok(c) => n += c,
            Err(HubError::Engine { source: e, .. }) => held_up(cycle, source, &e),
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// An expression that fails on some golden record's values (a CAST of a text that is not a
/// number, say) holds up the source's creates in this cycle, not the cycle.
fn held_up(cycle: &Cycle<'_>, source: &str, e: &datafusion::error::DataFusionError) {
    tracing::warn!(
        entity = cycle.name,
        source,
        "no record is created in the source in this cycle: writeback.create_id or \
         writeback.filter fails on the values of some golden record ({e}); fix the expression \
         (TRY_CAST gives NULL where CAST fails: such a golden record is then left out)"
    );
    if let Ok(mut s) = cycle.no_creates.lock() {
        s.insert(source.to_string());
    }
}

/// The next contributions of a source that creates records (`contributions`: their SQL): a
/// record linked for it to create that it has not reported yet is dropped when the source has
/// reported another record of that golden record (one a person made meanwhile, say), and the
/// golden records of `golden` it has no record of are linked.
pub async fn with_links(
    cycle: &Cycle<'_>,
    source: &str,
    golden: &str,
    contributions: &str,
    id_type: &arrow::datatypes::DataType,
) -> Result<String, HubError> {
    let (link, read) = (state::LINK, state::READ_SEQ);
    let kept = format!(
        "SELECT c.* FROM ({contributions}) c WHERE c.{read} IS NOT NULL OR c.{link} IS NULL \
         OR c.{link} NOT IN (SELECT {link} FROM ({contributions}) \
                             WHERE {read} IS NOT NULL AND {link} IS NOT NULL)"
    );
    let held = cycle
        .no_creates
        .lock()
        .map(|s| s.contains(source))
        .unwrap_or(true);
    if held {
        return Ok(kept);
    }
    register_wanted(cycle, source, golden, id_type).await?;
    let evaluated = cycle
        .count(
            "state",
            &format!("SELECT COUNT({}) FROM {}", state::SID, wanted(source)),
        )
        .await;
    if let Err(HubError::Engine { source: e, .. }) = &evaluated {
        held_up(cycle, source, e);
        return Ok(kept);
    }
    evaluated?;
    let links = links_sql(cycle, source, golden, &kept, id_type, false).await?;
    Ok(format!("{kept}\nUNION ALL\n{links}"))
}

/// The SQL of the records to link for `source` to create, in its contributions schema:
/// the live golden records of `golden` (this cycle's next golden table) that no contribution
/// in `contributions` (SQL of the next contributions) is linked to, with their chosen ids. An
/// id some record of the source has already, or that two golden records would get, is left
/// out (with a warning when `warn`): two records of the source would share it.
async fn links_sql(
    cycle: &Cycle<'_>,
    source: &str,
    golden: &str,
    contributions: &str,
    id_type: &arrow::datatypes::DataType,
    warn: bool,
) -> Result<String, HubError> {
    register_wanted(cycle, source, golden, id_type).await?;
    let v = cycle.version;
    let (sid, link) = (state::SID, state::LINK);
    let candidates = format!(
        "SELECT w.* FROM {want} w LEFT ANTI JOIN (SELECT {link} FROM ({contributions})) c \
           ON c.{link} = w.{gid}",
        want = wanted(source),
        gid = state::GOLDEN_ID,
    );
    // (NULL ids kept out of the lists: `NOT IN` a list with a NULL is never true.)
    let taken = format!("SELECT {sid} FROM ({contributions}) WHERE {sid} IS NOT NULL");
    let shared = format!(
        "SELECT {sid} FROM ({candidates}) WHERE {sid} IS NOT NULL GROUP BY {sid} HAVING COUNT(*) > 1"
    );
    if warn {
        let left_out = cycle
            .count(
                "state",
                &format!(
                    "SELECT COUNT(*) FROM ({candidates}) w \
                     WHERE w.{sid} IS NULL OR w.{sid} IN ({taken}) OR w.{sid} IN ({shared})"
                ),
            )
            .await?;
        if left_out > 0 {
            tracing::warn!(
                entity = cycle.name,
                source,
                records = left_out,
                "golden records are not created in the source: writeback.create_id gives them no id of the source's id type, an id a record of the source has already, or one another golden record gets too; make create_id give each golden record an id of its own"
            );
        }
    }
    let mapped = state::mapped_fields(cycle.entity, source);
    let types: std::collections::HashMap<String, arrow::datatypes::DataType> = cycle
        .entity
        .field_types()
        .into_iter()
        .map(|(n, t)| (n, t.unwrap_or(arrow::datatypes::DataType::Utf8)))
        .collect();
    let mut cols = vec![
        format!("w.{sid}"),
        format!("w.{} AS {link}", state::GOLDEN_ID),
    ];
    cols.extend(
        mapped
            .iter()
            .map(|f| format!("{} AS {}", super::sql::null_of(&types[f]), q(f))),
    );
    cols.extend(mapped.iter().map(|f| {
        format!(
            "{} AS {}",
            super::sql::null_of(&arrow::datatypes::DataType::Int64),
            q(&state::at_col(f))
        )
    }));
    cols.push(format!(
        "{} AS {}",
        super::sql::null_of(&arrow::datatypes::DataType::Int64),
        state::READ_SEQ
    ));
    cols.push(format!("CAST({v} AS BIGINT) AS {}", state::LINK_SEQ));
    cols.push(format!("CAST({v} AS BIGINT) AS {}", state::FIRST_SEQ));
    cols.push(format!("{} AS {}", lit(CREATED), state::LINKED_BY));
    Ok(format!(
        "SELECT {cols} FROM ({candidates}) w \
         WHERE w.{sid} IS NOT NULL AND w.{sid} NOT IN ({taken}) AND w.{sid} NOT IN ({shared})",
        cols = cols.join(", "),
    ))
}
