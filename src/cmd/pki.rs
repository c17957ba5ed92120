//! `virtgate pki`: placeholder, filled in by the PKI work.

#[derive(clap::Args)]
pub struct Args {}

pub async fn run(_config: &crate::config::Config, _args: Args) -> anyhow::Result<()> {
    anyhow::bail!("virtgate pki is not built yet")
}
