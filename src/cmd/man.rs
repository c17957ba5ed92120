//! `virtgate man`: man pages from the command-line definition (clap_mangen), so they never
//! disagree with `--help`.

use std::path::Path;

use anyhow::Context;

/// Writes `virtgate.1` and one page per command (`virtgate-hosts.1`, …) into `out`, or prints
/// `virtgate.1` on stdout.
pub fn write(command: clap::Command, out: Option<&Path>) -> anyhow::Result<()> {
    let Some(dir) = out else {
        let mut page = Vec::new();
        clap_mangen::Man::new(command)
            .render(&mut page)
            .context("cannot render the man page")?;
        return print(&page).context("cannot print the man page");
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

/// Writes `text` to stdout. A reader that stopped early (`virtgate man | head`) is not an error:
/// it got what it wanted, as with any Unix filter.
pub fn print(text: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
