//! `virtgate man`: man pages from the command-line definition (clap_mangen), so they never
//! disagree with `--help`.

use std::path::Path;

use anyhow::Context;

/// Writes `virtgate.1` and one page per command (`virtgate-hosts.1`, …) into `out`, or prints
/// `virtgate.1` on stdout.
pub fn write(command: clap::Command, out: Option<&Path>) -> anyhow::Result<()> {
    let Some(dir) = out else {
        clap_mangen::Man::new(command)
            .render(&mut std::io::stdout())
            .context("cannot print the man page")?;
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(command, dir)
        .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
    println!(
        "wrote man pages into {} (virtgate.1 and one per command); `man virtgate` reads them when that directory is on MANPATH",
        dir.display()
    );
    Ok(())
}
