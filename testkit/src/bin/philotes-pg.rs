//! `philotes-pg`: starts or stops a local PostgreSQL for the quick start and the benchmarks, with the same
//! code the tests use (so it works as root too, by running the server as an unprivileged user).
//!
//! ```text
//! philotes-pg start DIR PORT   # initdb when new, start, print the URL of database `postgres`
//! philotes-pg stop DIR         # fast shutdown; the data stays
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use philotes_testkit::{Cluster, ClusterOptions};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["start", dir, port] => match port.parse::<u16>() {
            Ok(port) => Cluster::start(&ClusterOptions {
                base: PathBuf::from(dir),
                port: Some(port),
                owner_pid: None,
                extra_settings: Vec::new(),
            })
            .map(|c| println!("{}", c.url("postgres"))),
            Err(_) => {
                eprintln!("philotes-pg: PORT must be a number, got {port:?}");
                return ExitCode::from(2);
            }
        },
        ["stop", dir] => {
            let dir = PathBuf::from(dir);
            let port = philotes_testkit::read_port(&dir.join("data")).unwrap_or(5432);
            Cluster::attach(&dir, port).and_then(|c| c.stop())
        }
        _ => {
            eprintln!("usage: philotes-pg start DIR PORT | philotes-pg stop DIR");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("philotes-pg: {e}");
            ExitCode::FAILURE
        }
    }
}
