//! Decoding: partial result sets -> rows -> typed [`ChangeRecord`]s.
//!
//! Place in the flow: between the streaming query and the partition reader. Spanner may split
//! one value across two `PartialResultSet`s (`chunked_value`); [`RowAssembler`] merges chunks
//! so that only whole rows are decoded. A GoogleSQL row is one `ChangeRecord` column
//! (`ARRAY<STRUCT<data_change_record ARRAY<..>, heartbeat_record ARRAY<..>,
//! child_partitions_record ARRAY<..>>>`), decoded field by field into the typed records; a
//! PostgreSQL row is one JSONB document, deserialized into the same types. Either way the
//! `mods` objects keep Spanner's JSON text ([`JsonObject`]): nothing parses them on the way.

use gcloud_googleapis::spanner::v1::struct_type::Field;
use gcloud_googleapis::spanner::v1::{PartialResultSet, StructType, Type};
use prost_types::value::Kind;

use crate::partition::PartitionToken;
use crate::record::{
    ChangeRecord, ChildPartition, ChildPartitionsRecord, ColumnType, DataChangeRecord,
    HeartbeatRecord, JsonObject, Mod, ModType, ValueCaptureType,
};
use crate::timestamp::Timestamp;

/// Which SQL dialect the database speaks; it decides the query and the row shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// GoogleSQL.
    GoogleSql,
    /// PostgreSQL.
    PostgreSql,
}

/// A row that does not have the shape of a change stream record.
#[derive(Debug, thiserror::Error)]
#[error("undecodable change stream row: {0}")]
pub struct DecodeError(String);

impl DecodeError {
    fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

/// Merges the values of consecutive partial result sets into whole rows. gcloud-spanner
/// does the same inside its row iterator (`reader::ResultSet::merge`), but privately, and
/// the queries here bypass that iterator (see the [source](super) docs); the merge rules
/// are gcloud's, and its test vectors are ported below.
#[derive(Default)]
pub struct RowAssembler {
    columns: Option<StructType>,
    pending: Vec<prost_types::Value>,
    /// The last pending value continues in the next partial result set.
    chunked: bool,
}

impl RowAssembler {
    /// Adds one partial result set; returns the rows it completed, each a value per column.
    pub fn push(
        &mut self,
        prs: PartialResultSet,
    ) -> Result<Vec<Vec<prost_types::Value>>, DecodeError> {
        if let Some(row_type) = prs.metadata.and_then(|m| m.row_type) {
            self.columns = Some(row_type);
        }
        let width = self
            .columns
            .as_ref()
            .map(|c| c.fields.len())
            .filter(|w| *w > 0)
            .ok_or_else(|| DecodeError::new("result set without row type"))?;

        let mut values = prs.values.into_iter();
        if self.chunked
            && let Some(first) = values.next()
        {
            let last = self
                .pending
                .pop()
                .ok_or_else(|| DecodeError::new("chunk continuation without a start"))?;
            self.pending.push(merge_chunk(last, first)?);
        }
        self.pending.extend(values);
        self.chunked = prs.chunked_value;

        // Only rows that are complete and not still being chunked can leave.
        let complete = if self.chunked {
            self.pending.len().saturating_sub(1)
        } else {
            self.pending.len()
        };
        let rows_ready = complete / width;
        let mut rest = self.pending.split_off(rows_ready * width);
        std::mem::swap(&mut rest, &mut self.pending);
        let mut rows = Vec::with_capacity(rows_ready);
        let mut it = rest.into_iter();
        for _ in 0..rows_ready {
            rows.push(it.by_ref().take(width).collect());
        }
        Ok(rows)
    }

    /// The declared type of the columns, once known.
    pub fn columns(&self) -> Option<&StructType> {
        self.columns.as_ref()
    }
}

/// Spanner's chunk merge rules: strings concatenate; lists concatenate, merging the boundary
/// elements when they are themselves chunkable.
fn merge_chunk(
    a: prost_types::Value,
    b: prost_types::Value,
) -> Result<prost_types::Value, DecodeError> {
    match (a.kind, b.kind) {
        (Some(Kind::StringValue(mut x)), Some(Kind::StringValue(y))) => {
            x.push_str(&y);
            Ok(prost_types::Value {
                kind: Some(Kind::StringValue(x)),
            })
        }
        (Some(Kind::ListValue(mut x)), Some(Kind::ListValue(y))) => {
            let mut ys = y.values.into_iter();
            if let Some(first) = ys.next() {
                match x.values.pop() {
                    Some(last) if mergeable(&last) && same_kind(&last, &first) => {
                        x.values.push(merge_chunk(last, first)?);
                    }
                    Some(last) => {
                        x.values.push(last);
                        x.values.push(first);
                    }
                    None => x.values.push(first),
                }
            }
            x.values.extend(ys);
            Ok(prost_types::Value {
                kind: Some(Kind::ListValue(x)),
            })
        }
        (a, b) => Err(DecodeError::new(format!(
            "cannot merge chunks {a:?} and {b:?}"
        ))),
    }
}

fn mergeable(v: &prost_types::Value) -> bool {
    matches!(
        v.kind,
        Some(Kind::StringValue(_)) | Some(Kind::ListValue(_))
    )
}

fn same_kind(a: &prost_types::Value, b: &prost_types::Value) -> bool {
    std::mem::discriminant(&a.kind) == std::mem::discriminant(&b.kind)
}

/// Decodes one whole row of a change stream query into its records.
pub fn decode_row(
    dialect: Dialect,
    columns: &StructType,
    row: Vec<prost_types::Value>,
    partition: &PartitionToken,
) -> Result<Vec<ChangeRecord>, DecodeError> {
    let (value, field) = row
        .into_iter()
        .zip(&columns.fields)
        .next()
        .ok_or_else(|| DecodeError::new("row without columns"))?;
    let ty = field
        .r#type
        .as_ref()
        .ok_or_else(|| DecodeError::new("column without type"))?;
    let mut out = Vec::new();
    match dialect {
        // ARRAY<STRUCT<data_change_record ARRAY<..>, heartbeat_record ARRAY<..>, ..>>
        Dialect::GoogleSql => {
            let element = element_type(ty)?;
            for item in list(value)? {
                let mut kinds = Struct::new(item, element)?;
                for (name, value, ty) in kinds.drain() {
                    let record_type = element_type(ty)?;
                    for record in list(value)? {
                        out.push(match name {
                            "data_change_record" => {
                                ChangeRecord::Data(data_change(record, record_type, partition)?)
                            }
                            "heartbeat_record" => {
                                ChangeRecord::Heartbeat(heartbeat(record, record_type)?)
                            }
                            "child_partitions_record" => ChangeRecord::ChildPartitions(
                                child_partitions(record, record_type)?,
                            ),
                            other => {
                                return Err(DecodeError::new(format!(
                                    "unknown record kind {other:?}"
                                )));
                            }
                        });
                    }
                }
            }
        }
        // One JSONB document whose single key names the record kind.
        Dialect::PostgreSql => {
            #[derive(serde::Deserialize)]
            struct PgRow {
                data_change_record: Option<DataChangeRecord>,
                heartbeat_record: Option<HeartbeatRecord>,
                child_partitions_record: Option<ChildPartitionsRecord>,
            }
            let text = string(value)?;
            let row: PgRow = serde_json::from_str(&text)
                .map_err(|e| DecodeError::new(format!("read_json row: {e}")))?;
            if let Some(mut r) = row.data_change_record {
                r.partition_token = partition.clone();
                out.push(ChangeRecord::Data(r));
            }
            out.extend(row.heartbeat_record.map(ChangeRecord::Heartbeat));
            out.extend(
                row.child_partitions_record
                    .map(ChangeRecord::ChildPartitions),
            );
        }
    }
    Ok(out)
}

fn data_change(
    value: prost_types::Value,
    ty: &Type,
    partition: &PartitionToken,
) -> Result<DataChangeRecord, DecodeError> {
    let mut s = Struct::new(value, ty)?;
    let mod_type = string(s.take("mod_type")?.0)?;
    Ok(DataChangeRecord {
        partition_token: partition.clone(),
        commit_timestamp: timestamp(s.take("commit_timestamp")?.0)?,
        record_sequence: string(s.take("record_sequence")?.0)?,
        server_transaction_id: string(s.take("server_transaction_id")?.0)?,
        is_last_record_in_transaction_in_partition: boolean(
            s.take("is_last_record_in_transaction_in_partition")?.0,
        )?,
        table_name: string(s.take("table_name")?.0)?,
        column_types: s.list("column_types", column_type)?.into(),
        mods: s.list("mods", modification)?,
        mod_type: match mod_type.as_str() {
            "INSERT" => ModType::Insert,
            "UPDATE" => ModType::Update,
            "DELETE" => ModType::Delete,
            other => return Err(DecodeError::new(format!("unknown mod_type {other:?}"))),
        },
        value_capture_type: ValueCaptureType::from(
            string(s.take("value_capture_type")?.0)?.as_str(),
        ),
        number_of_records_in_transaction: int64(s.take("number_of_records_in_transaction")?.0)?,
        number_of_partitions_in_transaction: int64(
            s.take("number_of_partitions_in_transaction")?.0,
        )?,
        // Newer fields: absent from older servers.
        transaction_tag: s
            .take_optional("transaction_tag")
            .map(string)
            .transpose()?
            .unwrap_or_default(),
        is_system_transaction: s
            .take_optional("is_system_transaction")
            .map(boolean)
            .transpose()?
            .unwrap_or_default(),
        snapshot: false,
    })
}

fn column_type(value: prost_types::Value, ty: &Type) -> Result<ColumnType, DecodeError> {
    let mut s = Struct::new(value, ty)?;
    let type_json = string(s.take("type")?.0)?;
    Ok(ColumnType {
        name: string(s.take("name")?.0)?,
        column_type: serde_json::from_str(&type_json)
            .map_err(|e| DecodeError::new(format!("column type {type_json}: {e}")))?,
        is_primary_key: boolean(s.take("is_primary_key")?.0)?,
        ordinal_position: int64(s.take("ordinal_position")?.0)?,
    })
}

fn modification(value: prost_types::Value, ty: &Type) -> Result<Mod, DecodeError> {
    let mut s = Struct::new(value, ty)?;
    let mut object = |name| -> Result<JsonObject, DecodeError> {
        match s.take_optional(name) {
            None => Ok(JsonObject::default()),
            Some(v) => match v.kind {
                None | Some(Kind::NullValue(_)) => Ok(JsonObject::default()),
                _ => JsonObject::from_text(string(v)?)
                    .map_err(|e| DecodeError::new(format!("mods.{name}: {e}"))),
            },
        }
    };
    Ok(Mod {
        keys: object("keys")?,
        new_values: object("new_values")?,
        old_values: object("old_values")?,
    })
}

fn heartbeat(value: prost_types::Value, ty: &Type) -> Result<HeartbeatRecord, DecodeError> {
    let mut s = Struct::new(value, ty)?;
    Ok(HeartbeatRecord {
        timestamp: timestamp(s.take("timestamp")?.0)?,
    })
}

fn child_partitions(
    value: prost_types::Value,
    ty: &Type,
) -> Result<ChildPartitionsRecord, DecodeError> {
    let mut s = Struct::new(value, ty)?;
    Ok(ChildPartitionsRecord {
        start_timestamp: timestamp(s.take("start_timestamp")?.0)?,
        record_sequence: string(s.take("record_sequence")?.0)?,
        child_partitions: s.list("child_partitions", |v, t| {
            let mut c = Struct::new(v, t)?;
            Ok(ChildPartition {
                token: string(c.take("token")?.0)?.into(),
                parent_partition_tokens: list(c.take("parent_partition_tokens")?.0)?
                    .into_iter()
                    .map(|t| string(t).map(PartitionToken::from))
                    .collect::<Result<_, _>>()?,
            })
        })?,
    })
}

/// The values of one STRUCT, taken out by field name.
struct Struct<'t> {
    fields: &'t [Field],
    values: Vec<Option<prost_types::Value>>,
}

impl<'t> Struct<'t> {
    fn new(value: prost_types::Value, ty: &'t Type) -> Result<Self, DecodeError> {
        let fields = &ty
            .struct_type
            .as_ref()
            .ok_or_else(|| DecodeError::new("STRUCT without fields"))?
            .fields;
        let values = list(value)?.into_iter().map(Some).collect();
        Ok(Self { fields, values })
    }

    fn take_optional(&mut self, name: &str) -> Option<prost_types::Value> {
        let i = self.fields.iter().position(|f| f.name == name)?;
        self.values.get_mut(i)?.take()
    }

    fn take(&mut self, name: &str) -> Result<(prost_types::Value, &'t Type), DecodeError> {
        let i = self
            .fields
            .iter()
            .position(|f| f.name == name)
            .ok_or_else(|| DecodeError::new(format!("no field {name}")))?;
        let ty = self.fields[i]
            .r#type
            .as_ref()
            .ok_or_else(|| DecodeError::new(format!("field {name} without type")))?;
        let value = self
            .values
            .get_mut(i)
            .and_then(Option::take)
            .ok_or_else(|| DecodeError::new(format!("no value for {name}")))?;
        Ok((value, ty))
    }

    /// An ARRAY<STRUCT<..>> field, each element decoded by `f`.
    fn list<T>(
        &mut self,
        name: &str,
        f: impl Fn(prost_types::Value, &Type) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        let (value, ty) = self.take(name)?;
        let element = element_type(ty)?;
        list(value)?.into_iter().map(|v| f(v, element)).collect()
    }

    /// Every field with a value, by name.
    fn drain(&mut self) -> impl Iterator<Item = (&'t str, prost_types::Value, &'t Type)> + '_ {
        let fields = self.fields;
        self.values
            .iter_mut()
            .zip(fields)
            .filter_map(|(v, f)| Some((f.name.as_str(), v.take()?, f.r#type.as_ref()?)))
    }
}

fn element_type(ty: &Type) -> Result<&Type, DecodeError> {
    ty.array_element_type
        .as_deref()
        .ok_or_else(|| DecodeError::new("ARRAY without element type"))
}

fn list(value: prost_types::Value) -> Result<Vec<prost_types::Value>, DecodeError> {
    match value.kind {
        Some(Kind::ListValue(l)) => Ok(l.values),
        None | Some(Kind::NullValue(_)) => Ok(Vec::new()),
        other => Err(DecodeError::new(format!(
            "expected a list, found {other:?}"
        ))),
    }
}

fn string(value: prost_types::Value) -> Result<String, DecodeError> {
    match value.kind {
        Some(Kind::StringValue(s)) => Ok(s),
        other => Err(DecodeError::new(format!(
            "expected a string, found {other:?}"
        ))),
    }
}

fn int64(value: prost_types::Value) -> Result<i64, DecodeError> {
    match value.kind {
        // INT64 travels as a decimal string.
        Some(Kind::StringValue(s)) => s
            .parse()
            .map_err(|_| DecodeError::new(format!("INT64 value {s:?}"))),
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 => Ok(n as i64),
        other => Err(DecodeError::new(format!("expected INT64, found {other:?}"))),
    }
}

fn boolean(value: prost_types::Value) -> Result<bool, DecodeError> {
    match value.kind {
        Some(Kind::BoolValue(b)) => Ok(b),
        other => Err(DecodeError::new(format!("expected BOOL, found {other:?}"))),
    }
}

fn timestamp(value: prost_types::Value) -> Result<Timestamp, DecodeError> {
    let s = string(value)?;
    s.parse()
        .map_err(|e: crate::timestamp::TimestampParseError| DecodeError::new(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gcloud_googleapis::spanner::v1::{ResultSetMetadata, TypeCode};

    fn s(x: &str) -> prost_types::Value {
        prost_types::Value {
            kind: Some(Kind::StringValue(x.into())),
        }
    }

    fn list(xs: Vec<prost_types::Value>) -> prost_types::Value {
        prost_types::Value {
            kind: Some(Kind::ListValue(prost_types::ListValue { values: xs })),
        }
    }

    fn prs(values: Vec<prost_types::Value>, chunked: bool, cols: usize) -> PartialResultSet {
        let fields = (0..cols)
            .map(|i| Field {
                name: format!("c{i}"),
                r#type: Some(Type {
                    code: TypeCode::String as i32,
                    ..Default::default()
                }),
            })
            .collect();
        PartialResultSet {
            metadata: Some(ResultSetMetadata {
                row_type: Some(StructType { fields }),
                ..Default::default()
            }),
            values,
            chunked_value: chunked,
            ..Default::default()
        }
    }

    fn null() -> prost_types::Value {
        prost_types::Value {
            kind: Some(Kind::NullValue(0)),
        }
    }

    fn boolean(b: bool) -> prost_types::Value {
        prost_types::Value {
            kind: Some(Kind::BoolValue(b)),
        }
    }

    // gcloud-spanner's `test_rs_merge_*` vectors (reader.rs), against `merge_chunk`.
    #[test]
    fn merges_follow_gcloud_spanner_vectors() {
        assert_eq!(merge_chunk(s("val"), s("ue1")).unwrap(), s("value1"));
        // Lists: the boundary strings join, the rest concatenates.
        let merged = merge_chunk(
            list(vec![s("value1-1"), s("value1-2"), s("val")]),
            list(vec![s("ue1-3"), s("value2-1"), s("valu")]),
        );
        let want = list(vec![
            s("value1-1"),
            s("value1-2"),
            s("value1-3"),
            s("value2-1"),
            s("valu"),
        ]);
        assert_eq!(merged.unwrap(), want);
        // A boundary between whole elements of unchunkable kinds concatenates.
        let merged = merge_chunk(
            list(vec![s("a"), null()]),
            list(vec![s("b"), boolean(true)]),
        );
        assert_eq!(
            merged.unwrap(),
            list(vec![s("a"), null(), s("b"), boolean(true)])
        );
        // Empty sides.
        let one = || list(vec![s("only")]);
        assert_eq!(merge_chunk(list(vec![]), one()).unwrap(), one());
        assert_eq!(merge_chunk(one(), list(vec![])).unwrap(), one());
        // Kinds that cannot be chunked are refused.
        assert!(merge_chunk(boolean(true), boolean(false)).is_err());
        assert!(merge_chunk(s("a"), list(vec![])).is_err());
    }

    #[test]
    fn chunked_strings_and_lists_are_merged_into_whole_rows() {
        let mut a = RowAssembler::default();
        assert!(
            a.push(prs(vec![s("a"), list(vec![s("x"), s("he")])], true, 2))
                .unwrap()
                .is_empty()
        );
        let rows = a
            .push(prs(vec![list(vec![s("llo"), s("y")]), s("b")], true, 2))
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0][1], list(vec![s("x"), s("hello"), s("y")]));
        let rows = a.push(prs(vec![s("c"), s("d")], false, 2)).unwrap();
        assert_eq!(rows, vec![vec![s("bc"), s("d")]]);
    }

    #[test]
    fn googlesql_rows_decode_with_typed_fields() {
        let ty = |code: TypeCode| Type {
            code: code as i32,
            ..Default::default()
        };
        let field = |name: &str, t: Type| Field {
            name: name.into(),
            r#type: Some(t),
        };
        let strukt = |fields: Vec<Field>| Type {
            code: TypeCode::Struct as i32,
            struct_type: Some(StructType { fields }),
            ..Default::default()
        };
        let array = |elem: Type| Type {
            code: TypeCode::Array as i32,
            array_element_type: Some(Box::new(elem)),
            ..Default::default()
        };
        let heartbeat = strukt(vec![field("timestamp", ty(TypeCode::Timestamp))]);
        let record = strukt(vec![field("heartbeat_record", array(heartbeat))]);
        let columns = StructType {
            fields: vec![field("ChangeRecord", array(record))],
        };
        let row = vec![list(vec![list(vec![list(vec![list(vec![s(
            "2026-11-27T20:00:00Z",
        )])])])])];
        let records = decode_row(
            Dialect::GoogleSql,
            &columns,
            row,
            &PartitionToken::from("t"),
        )
        .unwrap();
        assert_eq!(
            records,
            vec![ChangeRecord::Heartbeat(HeartbeatRecord {
                timestamp: "2026-11-27T20:00:00Z".parse().unwrap()
            })]
        );
    }
}
