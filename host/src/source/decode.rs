//! Decoding: partial result sets -> rows -> typed [`ChangeRecord`]s.
//!
//! Place in the flow: between the streaming query and the partition reader. Spanner may split
//! one value across two `PartialResultSet`s (`chunked_value`); [`RowAssembler`] merges chunks
//! so that only whole rows are decoded. A GoogleSQL row is one `ChangeRecord` column
//! (`ARRAY<STRUCT<data_change_record ARRAY<..>, heartbeat_record ARRAY<..>,
//! child_partitions_record ARRAY<..>>>`); it is turned into JSON guided by its declared types
//! (INT64 fields become numbers, JSON fields are parsed) so that it deserializes into the same
//! serde types as a PostgreSQL row, which is one JSONB document.

use gcloud_googleapis::spanner::v1::{PartialResultSet, StructType, Type, TypeCode};
use prost_types::value::Kind;
use serde_json::{Map, Number, Value};

use crate::partition::PartitionToken;
use crate::record::{ChangeRecord, ChildPartitionsRecord, DataChangeRecord, HeartbeatRecord};

/// Which SQL dialect the database speaks; it decides the query and the row shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    GoogleSql,
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

/// Merges the values of consecutive partial result sets into whole rows.
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
    let json = to_json(value, ty)?;
    let mut out = Vec::new();
    match dialect {
        // ARRAY<STRUCT<data_change_record ARRAY<..>, heartbeat_record ARRAY<..>, ..>>
        Dialect::GoogleSql => {
            let Value::Array(items) = json else {
                return Err(DecodeError::new("ChangeRecord is not an array"));
            };
            for item in items {
                let Value::Object(fields) = item else {
                    return Err(DecodeError::new("ChangeRecord element is not a struct"));
                };
                for (name, records) in fields {
                    if let Value::Array(records) = records {
                        for record in records {
                            out.push(typed(&name, record, partition)?);
                        }
                    }
                }
            }
        }
        // One JSONB object whose single key names the record kind.
        Dialect::PostgreSql => {
            let Value::Object(fields) = json else {
                return Err(DecodeError::new("read_json row is not an object"));
            };
            for (name, record) in fields {
                if !record.is_null() {
                    out.push(typed(&name, record, partition)?);
                }
            }
        }
    }
    Ok(out)
}

fn typed(
    kind: &str,
    record: Value,
    partition: &PartitionToken,
) -> Result<ChangeRecord, DecodeError> {
    let err = |e: serde_json::Error| DecodeError::new(format!("{kind}: {e}"));
    Ok(match kind {
        "data_change_record" => {
            let mut r: DataChangeRecord = serde_json::from_value(record).map_err(err)?;
            r.partition_token = partition.clone();
            ChangeRecord::Data(r)
        }
        "heartbeat_record" => {
            ChangeRecord::Heartbeat(serde_json::from_value::<HeartbeatRecord>(record).map_err(err)?)
        }
        "child_partitions_record" => ChangeRecord::ChildPartitions(
            serde_json::from_value::<ChildPartitionsRecord>(record).map_err(err)?,
        ),
        other => return Err(DecodeError::new(format!("unknown record kind {other:?}"))),
    })
}

/// Converts a protobuf value to JSON as its declared Spanner type says.
fn to_json(value: prost_types::Value, ty: &Type) -> Result<Value, DecodeError> {
    let code = TypeCode::try_from(ty.code).unwrap_or(TypeCode::Unspecified);
    Ok(match value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::NumberValue(n)) => Number::from_f64(n).map_or(Value::Null, Value::Number),
        Some(Kind::StringValue(s)) => match code {
            TypeCode::Int64 => Value::Number(
                s.parse::<i64>()
                    .map_err(|_| DecodeError::new(format!("INT64 value {s:?}")))?
                    .into(),
            ),
            TypeCode::Json => serde_json::from_str(&s)
                .map_err(|e| DecodeError::new(format!("JSON value: {e}")))?,
            _ => Value::String(s),
        },
        Some(Kind::ListValue(list)) => match code {
            TypeCode::Array => {
                let elem = ty
                    .array_element_type
                    .as_deref()
                    .ok_or_else(|| DecodeError::new("ARRAY without element type"))?;
                Value::Array(
                    list.values
                        .into_iter()
                        .map(|v| to_json(v, elem))
                        .collect::<Result<_, _>>()?,
                )
            }
            TypeCode::Struct => {
                let fields = &ty
                    .struct_type
                    .as_ref()
                    .ok_or_else(|| DecodeError::new("STRUCT without fields"))?
                    .fields;
                let mut obj = Map::with_capacity(fields.len());
                for (v, f) in list.values.into_iter().zip(fields) {
                    let fty = f
                        .r#type
                        .as_ref()
                        .ok_or_else(|| DecodeError::new("struct field without type"))?;
                    obj.insert(f.name.clone(), to_json(v, fty)?);
                }
                Value::Object(obj)
            }
            _ => return Err(DecodeError::new(format!("list value for type {code:?}"))),
        },
        Some(Kind::StructValue(_)) => {
            return Err(DecodeError::new("unexpected protobuf struct value"));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gcloud_googleapis::spanner::v1::{ResultSetMetadata, struct_type::Field};

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
