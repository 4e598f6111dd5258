//! The plain-Parquet baseline of the flush benchmark: what the `parquet` crate's `ArrowWriter` alone costs for the
//! rows a flusher just wrote.
//!
//! `arrow-writer-baseline INPUT_DIR OUTPUT_FILE` reads every `*.parquet` file under `INPUT_DIR` (the data files of
//! the Iceberg table, so the rows and their Arrow schema are exactly the flusher's) into memory, untimed, then
//! times one `ArrowWriter` writing all of them to `OUTPUT_FILE` with zstd level 1 and otherwise default writer
//! properties, including `close()` (footer written, file flushed to the OS; no fsync, like the flusher).
//! It prints one line, `rows=N seconds=S bytes=B input_files=F batches=K`, for the bench runner to parse.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use arrow::array::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

/// Rows per RecordBatch read back: large, like the flusher's own batches (one per flush), so the writer is not
/// measured on tiny batches.
const READ_BATCH_ROWS: usize = 65_536;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: arrow-writer-baseline INPUT_DIR OUTPUT_FILE");
        return ExitCode::from(2);
    }
    match run(Path::new(&args[1]), Path::new(&args[2])) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("arrow-writer-baseline: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(input: &Path, output: &Path) -> Result<String, Box<dyn std::error::Error>> {
    let mut files = Vec::new();
    collect_parquet(input, &mut files)?;
    files.sort();
    if files.is_empty() {
        return Err(format!("no .parquet files under {}", input.display()).into());
    }
    let mut batches: Vec<RecordBatch> = Vec::new();
    for path in &files {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path)?)?.with_batch_size(READ_BATCH_ROWS).build()?;
        for batch in reader {
            batches.push(batch?);
        }
    }
    let schema = batches.first().ok_or("the input files hold no rows")?.schema();
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let properties = WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?)).build();

    let started = Instant::now();
    let mut writer = ArrowWriter::try_new(File::create(output)?, schema, Some(properties))?;
    for batch in &batches {
        writer.write(batch)?;
    }
    writer.close()?;
    let seconds = started.elapsed().as_secs_f64();

    let bytes = std::fs::metadata(output)?.len();
    std::fs::remove_file(output)?;
    Ok(format!("rows={rows} seconds={seconds:.6} bytes={bytes} input_files={} batches={}", files.len(), batches.len()))
}

fn collect_parquet(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_parquet(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "parquet") {
            out.push(path);
        }
    }
    Ok(())
}
