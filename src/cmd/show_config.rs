//! `virtgate config`: the effective configuration (secrets redacted), and the keys that are
//! unset, so it doubles as a template.

use crate::config::{self, Loaded};

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of TOML (unset keys as null).
    #[arg(long)]
    json: bool,
}

pub fn run(loaded: &Loaded, args: &Args) -> anyhow::Result<()> {
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&config::to_redacted_json(&loaded.config)?)?
        );
        return Ok(());
    }
    if let Some(file) = &loaded.file {
        println!("# read from {}", file.display());
    }
    print!("{}", config::to_redacted_toml(&loaded.config)?);
    let unset = config::unset_keys(&loaded.config);
    if !unset.is_empty() {
        println!();
        println!("# Unset (no default value; set them to use them):");
        for key in unset {
            println!("#   {key}");
        }
    }
    println!("# `virtgate up` fills unset proxy.*_file keys with its development PKI in <broker.data_dir>/pki and, when proxy.rules is empty, allows its admin bundle (its banner says what it used).");
    Ok(())
}
