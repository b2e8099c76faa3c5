//! `starling`: the node binary. It owns the command line and wires the crates
//! together; business logic lives in the library crates.
//!
//! Until the store, sync and IMAP crates land, `serve` prepares the data
//! directory, creates this node's replica id and prints what it would serve.

use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "starling", version, about = "A multi-master mail store")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node (embedded defaults when no config is given).
    Serve {
        /// Data directory.
        #[arg(long, default_value = "starling-data")]
        data_dir: PathBuf,
    },
    /// Print the version.
    Version,
}

/// Reads this node's replica id from the data directory, creating it on first
/// start. The id derives from a random key made once; a wiped directory means
/// a new node, as the semantics require.
fn node_id(data_dir: &Path) -> std::io::Result<starling_model::ReplicaId> {
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join("node-key");
    let key = match std::fs::read(&path) {
        Ok(k) if k.len() == 32 => k,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is not a node key", path.display()),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = Vec::new();
            seed.extend(std::process::id().to_be_bytes());
            seed.extend(format!("{:?}", std::time::SystemTime::now()).as_bytes());
            seed.extend(format!("{:?}", std::thread::current().id()).as_bytes());
            let key = blake3::hash(&seed).as_bytes().to_vec();
            std::fs::write(&path, &key)?;
            key
        }
        Err(e) => return Err(e),
    };
    Ok(starling_model::ReplicaId::from_public_key(&key))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("starling {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Serve { data_dir } => match node_id(&data_dir) {
            Ok(id) => {
                println!("starling {}", env!("CARGO_PKG_VERSION"));
                println!(
                    "data directory: {}",
                    std::fs::canonicalize(&data_dir)
                        .unwrap_or(data_dir)
                        .display()
                );
                println!("node id: {:016x}", id.0);
                println!("nothing to serve yet: the store, sync and IMAP crates are not built");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!(
                    "starling: cannot prepare data directory {}: {e}",
                    data_dir.display()
                );
                ExitCode::FAILURE
            }
        },
    }
}
