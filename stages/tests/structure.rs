//! The shape of the crate: its top-level modules (one folder per stage, the two roles, what they share) depend
//! on each other without a circle, no stage imports another stage, and only the roles assemble stages. Read from
//! the source, so a change that breaks the shape fails here with the path that closes the circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The stage folders; each may use the shared modules and the flush job (`claim::job`), never another stage.
const STAGES: [&str; 8] = ["source", "decode", "resolve", "enqueue", "claim", "arrow_batch", "iceberg_commit", "checkpoint"];
/// The roles: the only modules that put stages together. `maintenance` (compaction and snapshot expiry, run by
/// `philotes compact` and beside the flusher role) assembles the commit module of `iceberg_commit` with the
/// lease and the table names of `claim`, as a role does. `retry` (`philotes dead-letters retry`) assembles
/// SchemaResolve's conversion with the buffer's queue, as a role does. `load` (a snapshot chunk written straight
/// into Iceberg, in the capture role) assembles SchemaResolve's conversion, ArrowBatch's builder and
/// IcebergCommit's writer, as a role does; the capture's reader and SchemaResolve see it only through
/// `snapshot::ChunkLoad`.
const ROLES: [&str; 5] = ["capture", "flush", "maintenance", "retry", "load"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Top-level module → the top-level modules its non-test code names through `crate::…`.
fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src");
        let first = relative.components().next().expect("a path").as_os_str().to_string_lossy().into_owned();
        let module = first.trim_end_matches(".rs").to_string();
        let name = relative.to_string_lossy();
        if module == "lib" || name.contains("test") {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read file");
        // Test modules sit at the end of a file.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let used = graph.entry(module.clone()).or_default();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (at, _) in line.match_indices("crate::") {
                let rest = &line[at + "crate::".len()..];
                let target: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !target.is_empty() && target != module {
                    used.insert(target);
                }
            }
        }
    }
    graph
}

#[test]
fn the_modules_of_the_crate_depend_on_each_other_without_a_circle() {
    let graph = dependencies();
    assert!(graph.contains_key("arrow_batch") && graph.contains_key("claim"), "modules found: {:?}", graph.keys());
    fn visit(graph: &BTreeMap<String, BTreeSet<String>>, path: &mut Vec<String>, done: &mut BTreeSet<String>) {
        let Some(current) = path.last().cloned() else { return };
        for next in graph.get(&current).into_iter().flatten() {
            if let Some(start) = path.iter().position(|m| m == next) {
                panic!("a circle: {} → {next}", path[start..].join(" → "));
            }
            if done.insert(next.clone()) {
                path.push(next.clone());
                visit(graph, path, done);
                path.pop();
            }
        }
    }
    for module in graph.keys() {
        visit(&graph, &mut vec![module.clone()], &mut BTreeSet::new());
    }
}

/// The only places a stage uses another stage: the type it takes as input (or hands back to the source), with
/// why. Anything else between stages goes through the role that assembles them.
const STAGE_EDGES: [(&str, &str, &str); 10] = [
    ("decode", "source", "takes the replication stream's frames"),
    ("resolve", "decode", "takes Decode's events"),
    ("resolve", "source", "places relations among the followed tables"),
    ("enqueue", "resolve", "takes SchemaResolve's output"),
    ("enqueue", "source", "confirms durable positions back to the stream"),
    ("arrow_batch", "claim", "takes the flush job's slices"),
    ("iceberg_commit", "claim", "takes the flush job's built slices"),
    ("checkpoint", "claim", "takes the flush job's outcome"),
    ("snapshot", "decode", "reads chunks into pgoutput's relation and tuple form, for SchemaResolve"),
    ("snapshot", "source", "quotes identifiers as the source setup does"),
];

#[test]
fn a_stage_uses_another_only_for_the_items_it_takes_and_only_the_roles_assemble_stages() {
    for (module, used) in dependencies() {
        for stage in STAGES.iter().filter(|s| used.contains(**s)) {
            let allowed = ROLES.contains(&module.as_str())
                || STAGE_EDGES.iter().any(|(from, to, _)| *from == module && to == stage);
            assert!(allowed, "module `{module}` uses stage `{stage}`: only its input's types, through the role");
        }
    }
}
