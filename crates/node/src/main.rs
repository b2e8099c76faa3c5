//! `starling`: the node binary. It owns the command line and wires the crates
//! together; business logic lives in the library crates.

use clap::{Parser, Subcommand};
use starling_store::{maildir, Store, StoreOptions};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "starling", version, about = "A multi-master mail store")]
struct Cli {
    /// Data directory (store, node key).
    #[arg(long, global = true, default_value = "starling-data")]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node (embedded defaults when no config is given).
    Serve,
    /// Manage accounts.
    Account {
        #[command(subcommand)]
        action: AccountAction,
    },
    /// Import mail into an account.
    Import {
        #[command(subcommand)]
        format: Format,
    },
    /// Export an account's mail.
    Export {
        #[command(subcommand)]
        format: Format,
    },
    /// Print an account's canonical dump (identical on converged replicas).
    Dump {
        /// The account.
        user: String,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum AccountAction {
    /// Create an account.
    Add {
        /// Its name.
        user: String,
    },
    /// List accounts.
    List,
}

#[derive(Subcommand)]
enum Format {
    /// A Maildir++ tree.
    Maildir {
        /// The account.
        user: String,
        /// The Maildir root.
        dir: PathBuf,
    },
}

/// Reads this node's key from the data directory, creating it on first
/// start, and derives the node's replica id from it. A wiped directory means
/// a new node, as the semantics require. (The QUIC identity of the sync
/// issue replaces this key with a real key pair.)
fn node_id(data_dir: &Path) -> Result<starling_model::ReplicaId, String> {
    std::fs::create_dir_all(data_dir).map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    let path = data_dir.join("node-key");
    let key = match std::fs::read(&path) {
        Ok(k) if k.len() == 32 => k,
        Ok(_) => return Err(format!("{} is not a node key (expected 32 bytes)", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = Vec::new();
            seed.extend(std::process::id().to_be_bytes());
            seed.extend(format!("{:?}", std::time::SystemTime::now()).as_bytes());
            seed.extend(format!("{:?}", std::thread::current().id()).as_bytes());
            seed.extend(data_dir.display().to_string().as_bytes());
            let key = blake3::hash(&seed).as_bytes().to_vec();
            std::fs::write(&path, &key).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            key
        }
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    Ok(starling_model::ReplicaId::from_public_key(&key))
}

fn open_store(data_dir: &Path) -> Result<Store, String> {
    let node = node_id(data_dir)?;
    Store::open(&data_dir.join("store.redb"), node, StoreOptions::default()).map_err(|e| e.to_string())
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Version => println!("starling {}", env!("CARGO_PKG_VERSION")),
        Command::Serve => {
            let store = open_store(&cli.data_dir)?;
            println!("starling {}", env!("CARGO_PKG_VERSION"));
            let dir = std::fs::canonicalize(&cli.data_dir).unwrap_or(cli.data_dir.clone());
            println!("data directory: {}", dir.display());
            println!("node id: {:016x}", store.node().0);
            println!("accounts: {}", store.accounts().len());
            println!("nothing to serve yet: the sync and IMAP crates are not built");
        }
        Command::Account { action: AccountAction::Add { user } } => {
            open_store(&cli.data_dir)?.add_account(&user).map_err(|e| e.to_string())?;
            println!("account {user} created");
        }
        Command::Account { action: AccountAction::List } => {
            for a in open_store(&cli.data_dir)?.accounts() {
                println!("{a}");
            }
        }
        Command::Import { format: Format::Maildir { user, dir } } => {
            let store = open_store(&cli.data_dir)?;
            let summary = maildir::import(&store, &user, &dir).map_err(|e| e.to_string())?;
            println!("imported {summary}");
        }
        Command::Export { format: Format::Maildir { user, dir } } => {
            let store = open_store(&cli.data_dir)?;
            let summary = maildir::export(&store, &user, &dir).map_err(|e| e.to_string())?;
            println!("exported {summary}");
        }
        Command::Dump { user } => print!("{}", open_store(&cli.data_dir)?.dump(&user).map_err(|e| e.to_string())?),
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("starling: {e}");
            ExitCode::FAILURE
        }
    }
}
