//! Columnar tables: the one place that knows arrow and parquet. Stages hand over plain
//! columns; this module writes them atomically (temporary file + rename) as snappy parquet and
//! reads columns back by name, accepting the integer, float and string widths other writers
//! (pandas, pyarrow, polars) use.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::types::UInt32Type;
use arrow_array::{
    Array, ArrayRef, BooleanArray, DictionaryArray, Float32Array, Float64Array, Int16Array,
    Int32Array, Int64Array, Int8Array, LargeStringArray, RecordBatch, StringArray, StringViewArray,
    UInt32Array, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use crate::error::{Error, Result};

/// One named column of a table to write.
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    Str(Vec<String>),
    /// Strings from a small set (names repeated on every row): codes into `values`, written as
    /// a dictionary-encoded string column (read back as strings by every engine).
    Cat(Vec<u32>, Arc<[String]>),
    I64(Vec<i64>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
}

impl Column {
    fn len(&self) -> usize {
        match self {
            Column::Str(v) => v.len(),
            Column::Cat(v, _) => v.len(),
            Column::I64(v) => v.len(),
            Column::F64(v) => v.len(),
            Column::Bool(v) => v.len(),
        }
    }
    /// The column's field: its type; floats nullable (a NaN is written as a null).
    fn field(&self, name: &str) -> Field {
        let dt = match self {
            Column::Str(_) => DataType::Utf8,
            Column::Cat(..) => {
                DataType::Dictionary(Box::new(DataType::UInt32), Box::new(DataType::Utf8))
            }
            Column::I64(_) => DataType::Int64,
            Column::F64(_) => DataType::Float64,
            Column::Bool(_) => DataType::Boolean,
        };
        let nullable = dt == DataType::Float64;
        Field::new(name, dt, nullable)
    }

    fn to_array(&self) -> ArrayRef {
        match self {
            Column::Str(v) => Arc::new(StringArray::from(v.clone())),
            Column::Cat(codes, values) => Arc::new(DictionaryArray::<UInt32Type>::new(
                UInt32Array::from(codes.clone()),
                Arc::new(StringArray::from_iter_values(values.iter())),
            )),
            Column::I64(v) => Arc::new(Int64Array::from(v.clone())),
            // NaN means "no value" in the toolkit; in a table it is a null (SQL and dataframe
            // engines treat it so), built only when a column has one.
            Column::F64(v) if v.iter().any(|x| x.is_nan()) => Arc::new(Float64Array::from_iter(
                v.iter().map(|x| (!x.is_nan()).then_some(*x)),
            )),
            Column::F64(v) => Arc::new(Float64Array::from(v.clone())),
            Column::Bool(v) => Arc::new(BooleanArray::from(v.clone())),
        }
    }
}

/// A table to write: named columns of equal length.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    pub columns: Vec<(String, Column)>,
}

impl Table {
    pub fn new() -> Self {
        Table::default()
    }
    pub fn with(mut self, name: &str, column: Column) -> Self {
        self.columns.push((name.to_string(), column));
        self
    }
    pub fn num_rows(&self) -> usize {
        self.columns.first().map_or(0, |(_, c)| c.len())
    }
}

/// Writes `table` to `path` as parquet; the file appears whole or not at all.
pub fn write_parquet(path: &Path, table: &Table) -> Result<()> {
    let rows = table.num_rows();
    if let Some((name, c)) = table.columns.iter().find(|(_, c)| c.len() != rows) {
        return Err(Error::parquet(
            path,
            format!("column {name} has {} rows, expected {rows}", c.len()),
        ));
    }
    let (fields, arrays): (Vec<Field>, Vec<ArrayRef>) = table
        .columns
        .iter()
        .map(|(name, c)| (c.field(name), c.to_array()))
        .unzip();
    let schema = Arc::new(Schema::new(fields));
    let pq_err = |e: ParquetError| Error::parquet(path, e);
    let batch =
        RecordBatch::try_new(schema.clone(), arrays).map_err(|e| Error::parquet(path, e))?;
    crate::io::write_atomic(path, |file| {
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(pq_err)?;
        writer.write(&batch).map_err(pq_err)?;
        writer.close().map_err(pq_err)?;
        Ok(())
    })
}

/// A parquet file written in row groups as a run goes (bounded memory), made visible under
/// its name only by [`ParquetStream::finish`]: until then it is a temporary file beside it,
/// removed if the stream is dropped (a crashed or failed run leaves nothing).
pub(crate) struct ParquetStream {
    path: std::path::PathBuf,
    tmp: tempfile::NamedTempFile,
    writer: ArrowWriter<File>,
    schema: Arc<Schema>,
    /// Removed by the signal handler if the process is interrupted mid-stream.
    _in_progress: crate::io::InProgress,
}

impl ParquetStream {
    /// Creates the stream; `columns` are (name, kind) with kind one of the [`Column`] variants
    /// (an empty column of that variant).
    pub(crate) fn create(path: &Path, columns: &[(String, Column)]) -> Result<Self> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let _gate = crate::io::write_gate()?;
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .suffix(".tmp")
            .tempfile_in(&dir)
            .map_err(|e| Error::io(&dir, e))?;
        let fields: Vec<Field> = columns.iter().map(|(name, c)| c.field(name)).collect();
        let schema = Arc::new(Schema::new(fields));
        // Per-step float series: dictionaries never pay off and cost most of the encoding time;
        // names repeated on every row (`Column::Cat`) keep theirs.
        let mut props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_dictionary_enabled(false);
        for (name, c) in columns {
            if matches!(c, Column::Cat(..)) {
                props = props.set_column_dictionary_enabled(ColumnPath::from(name.as_str()), true);
            }
        }
        let props = props.build();
        let file = tmp.reopen().map_err(|e| Error::io(path, e))?;
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props))
            .map_err(|e| Error::parquet(path, e))?;
        Ok(ParquetStream {
            path: path.to_path_buf(),
            _in_progress: crate::io::in_progress(tmp.path()),
            tmp,
            writer,
            schema,
        })
    }

    /// Appends rows: `table` must have the stream's columns, in order.
    pub(crate) fn write(&mut self, table: &Table) -> Result<()> {
        if table.columns.len() != self.schema.fields().len() {
            return Err(Error::parquet(
                &self.path,
                format!(
                    "{} columns written to a stream of {}",
                    table.columns.len(),
                    self.schema.fields().len()
                ),
            ));
        }
        let arrays: Vec<ArrayRef> = table.columns.iter().map(|(_, c)| c.to_array()).collect();
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)
            .map_err(|e| Error::parquet(&self.path, e))?;
        self.writer
            .write(&batch)
            .map_err(|e| Error::parquet(&self.path, e))
    }

    /// Closes the file and renames it into place.
    pub(crate) fn finish(self) -> Result<()> {
        let path = self.path;
        self.writer.close().map_err(|e| Error::parquet(&path, e))?;
        self.tmp
            .as_file()
            .sync_all()
            .map_err(|e| Error::io(&path, e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(self.tmp.path(), std::fs::Permissions::from_mode(0o644))
                .map_err(|e| Error::io(&path, e))?;
        }
        let _gate = crate::io::write_gate()?;
        self.tmp
            .persist(&path)
            .map_err(|e| Error::io(&path, e.error))?;
        Ok(())
    }
}

/// A parquet file read into memory, with typed column access by name.
pub struct ParquetTable {
    path: std::path::PathBuf,
    batches: Vec<RecordBatch>,
    schema: Arc<Schema>,
}

impl ParquetTable {
    pub fn read(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let pq_err = |e: ParquetError| Error::parquet(path, e);
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(pq_err)?;
        let schema = builder.schema().clone();
        let reader = builder.build().map_err(pq_err)?;
        let batches = reader
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::parquet(path, e))?;
        Ok(ParquetTable {
            path: path.to_path_buf(),
            batches,
            schema,
        })
    }

    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }

    pub(crate) fn has_column(&self, name: &str) -> bool {
        self.schema.index_of(name).is_ok()
    }

    fn arrays(&self, name: &str) -> Result<Vec<ArrayRef>> {
        let idx = self.schema.index_of(name).map_err(|_| {
            let found: Vec<&str> = self
                .schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect();
            Error::content(
                &self.path,
                format!("missing column {name:?} (columns: {})", found.join(", ")),
            )
        })?;
        Ok(self.batches.iter().map(|b| b.column(idx).clone()).collect())
    }

    fn type_error(&self, name: &str, want: &str, got: &DataType) -> Error {
        Error::content(
            &self.path,
            format!("column {name:?} has type {got}, expected {want}"),
        )
    }

    /// A string column; nulls become `None`.
    pub fn strings(&self, name: &str) -> Result<Vec<Option<String>>> {
        let mut out = Vec::with_capacity(self.num_rows());
        for a in self.arrays(name)? {
            let any = a.as_any();
            if let Some(s) = any.downcast_ref::<StringArray>() {
                out.extend(s.iter().map(|v| v.map(str::to_string)));
            } else if let Some(s) = any.downcast_ref::<LargeStringArray>() {
                out.extend(s.iter().map(|v| v.map(str::to_string)));
            } else if let Some(s) = any.downcast_ref::<StringViewArray>() {
                out.extend(s.iter().map(|v| v.map(str::to_string)));
            } else if let Some(d) = any.downcast_ref::<DictionaryArray<UInt32Type>>() {
                let values = d.values().as_any().downcast_ref::<StringArray>();
                let Some(values) = values else {
                    return Err(self.type_error(name, "string", a.data_type()));
                };
                out.extend(
                    d.keys()
                        .iter()
                        .map(|k| k.map(|k| values.value(k as usize).to_string())),
                );
            } else {
                return Err(self.type_error(name, "string", a.data_type()));
            }
        }
        Ok(out)
    }

    /// A numeric column as f64; nulls become NaN.
    pub fn floats(&self, name: &str) -> Result<Vec<f64>> {
        let mut out = Vec::with_capacity(self.num_rows());
        for a in self.arrays(name)? {
            let any = a.as_any();
            macro_rules! take {
                ($($t:ty),*) => {
                    $(if let Some(x) = any.downcast_ref::<$t>() {
                        out.extend(x.iter().map(|v| v.map_or(f64::NAN, |v| v as f64)));
                        continue;
                    })*
                };
            }
            take!(
                Float64Array,
                Float32Array,
                Int64Array,
                Int32Array,
                Int16Array,
                Int8Array,
                UInt64Array,
                UInt32Array
            );
            return Err(self.type_error(name, "number", a.data_type()));
        }
        Ok(out)
    }

    /// An integer column (integers, or floats with no fractional part); nulls are errors.
    pub fn integers(&self, name: &str) -> Result<Vec<i64>> {
        self.floats(name)?
            .into_iter()
            .enumerate()
            .map(|(row, v)| {
                if v.is_finite() && v.fract() == 0.0 {
                    Ok(v as i64)
                } else {
                    Err(Error::row(
                        &self.path,
                        row,
                        format!("column {name:?}: {v} is not an integer"),
                    ))
                }
            })
            .collect()
    }

    /// The whole table as writable [`Column`]s (strings, 64-bit integers, floats with nulls as
    /// NaN, booleans), in file order: what a merge reads, combines and writes back.
    pub fn to_table(&self) -> Result<Table> {
        let mut t = Table::new();
        for f in self.schema.fields() {
            let name = f.name();
            let col = match f.data_type() {
                DataType::Dictionary(..) => {
                    let mut values: Vec<String> = Vec::new();
                    let mut index = std::collections::HashMap::new();
                    let codes = self
                        .strings(name)?
                        .into_iter()
                        .map(|v| {
                            let v = v.unwrap_or_default();
                            *index.entry(v.clone()).or_insert_with(|| {
                                values.push(v);
                                values.len() as u32 - 1
                            })
                        })
                        .collect();
                    Column::Cat(codes, values.into())
                }
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Column::Str(
                    self.strings(name)?
                        .into_iter()
                        .map(Option::unwrap_or_default)
                        .collect(),
                ),
                DataType::Int64 | DataType::Int32 | DataType::UInt32 => {
                    Column::I64(self.integers(name)?)
                }
                DataType::Float64 | DataType::Float32 => Column::F64(self.floats(name)?),
                DataType::Boolean => Column::Bool(self.bools(name, false)?),
                other => {
                    return Err(self.type_error(name, "string, integer, float or boolean", other))
                }
            };
            t = t.with(name, col);
        }
        Ok(t)
    }

    /// A boolean column; nulls become `default`.
    pub(crate) fn bools(&self, name: &str, default: bool) -> Result<Vec<bool>> {
        let mut out = Vec::with_capacity(self.num_rows());
        for a in self.arrays(name)? {
            match a.as_any().downcast_ref::<BooleanArray>() {
                Some(b) => out.extend(b.iter().map(|v| v.unwrap_or(default))),
                None => return Err(self.type_error(name, "boolean", a.data_type())),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let t = Table::new()
            .with("name", Column::Str(vec!["a".into(), "b".into()]))
            .with("n", Column::I64(vec![1, 2]))
            .with("x", Column::F64(vec![0.5, f64::NAN]))
            .with("ok", Column::Bool(vec![true, false]));
        write_parquet(&path, &t).unwrap();
        let r = ParquetTable::read(&path).unwrap();
        assert_eq!(r.num_rows(), 2);
        assert_eq!(r.strings("name").unwrap()[1].as_deref(), Some("b"));
        assert_eq!(r.integers("n").unwrap(), vec![1, 2]);
        assert!(r.floats("x").unwrap()[1].is_nan());
        // Stored as a null (what SQL and dataframe engines read as "no value").
        let file = std::fs::File::open(&path).unwrap();
        let batch = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(batch.column_by_name("x").unwrap().null_count(), 1);
        assert_eq!(r.bools("ok", false).unwrap(), vec![true, false]);
        let e = r.floats("missing").unwrap_err().to_string();
        assert!(
            e.contains("missing column \"missing\"") && e.contains("name, n, x, ok"),
            "{e}"
        );
        let e = r.integers("x").unwrap_err().to_string();
        assert!(
            e.contains("row 0") && e.contains("0.5 is not an integer"),
            "{e}"
        );
        let bad = Table::new()
            .with("a", Column::I64(vec![1]))
            .with("b", Column::I64(vec![]));
        let p2 = dir.path().join("bad.parquet");
        assert!(write_parquet(&p2, &bad).is_err());
        assert!(!p2.exists());
    }

    #[test]
    fn a_parquet_error_names_the_file_and_keeps_its_cause() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-parquet.parquet");
        std::fs::write(&path, "plain text, not parquet").unwrap();
        let e = ParquetTable::read(&path).err().unwrap();
        let message = e.to_string();
        assert!(
            message.contains("not-parquet.parquet: parquet: "),
            "{message}"
        );
        let source = std::error::Error::source(&e).expect("the parquet error as the source");
        assert!(
            source.downcast_ref::<ParquetError>().is_some(),
            "{source:?}"
        );
        assert!(message.ends_with(&source.to_string()), "{message}");
    }
}
