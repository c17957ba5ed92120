//! The conventions operators expect from a command-line tool, checked with the real tools that
//! rely on them: bash's completion, man, a terminal (`script`), a pipe whose reader is gone.
//! Nothing here speaks mDNS or starts a server.

use std::path::Path;
use std::process::{Command, Output};

const VIRTGATE: &str = env!("CARGO_BIN_EXE_virtgate");

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// What bash's completion offers after `line` (ending in the word being completed).
fn bash_completes(line: &str) -> Vec<String> {
    let words: Vec<&str> = line.split(' ').collect();
    let script = format!(
        "source <({VIRTGATE} completion bash) || exit 3\n\
         COMP_LINE='{line}'; COMP_POINT={point}; COMP_WORDS=({words}); COMP_CWORD={cword}\n\
         _virtgate virtgate '{current}' '{previous}'\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        point = line.len(),
        words = words.join(" "),
        cword = words.len() - 1,
        current = words[words.len() - 1],
        previous = words[words.len() - 2],
    );
    let out = Command::new("bash")
        .args(["--norc", "-c", &script])
        .output()
        .expect("bash runs");
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completion_offers_the_commands_and_their_flags() {
    assert_eq!(bash_completes("virtgate hos"), ["hosts"]);
    let approve = bash_completes("virtgate hosts approve --");
    for flag in ["--pin", "--json", "--config"] {
        assert!(approve.iter().any(|f| f == flag), "{flag} in {approve:?}");
    }
    assert!(
        bash_completes("virtgate up --").contains(&"--gateway-listen".to_string()),
        "the gateway's listener has its own flag"
    );
}

#[test]
fn man_pages_exist_for_every_command_and_man_renders_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(VIRTGATE)
        .args(["man", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    for page in ["virtgate.1", "virtgate-up.1", "virtgate-hosts-approve.1"] {
        assert!(dir.path().join(page).is_file(), "{page}");
    }
    let rendered = Command::new("man")
        .arg("-l")
        .arg(dir.path().join("virtgate-hosts-approve.1"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&rendered.stdout);
    assert!(rendered.status.success(), "{}", text(&rendered));
    assert!(
        page.contains("virtgate hosts approve") && page.contains("sha256:HEX"),
        "{page}"
    );
}

/// Runs `virtgate args…` with its stdout on a pipe whose reading end is already closed, as
/// `virtgate … | head -1` ends up once head has read its line (python3 makes the pipe: the shell
/// offers no way to close the reader before the writer starts).
fn into_a_closed_pipe(args: &[&str]) -> Output {
    let script = "import os, subprocess, sys\n\
                  r, w = os.pipe()\n\
                  os.close(r)\n\
                  done = subprocess.run(sys.argv[1:], stdout=w, stderr=subprocess.PIPE)\n\
                  sys.stderr.buffer.write(done.stderr)\n\
                  sys.exit(done.returncode)\n";
    Command::new("python3")
        .args(["-c", script, VIRTGATE])
        .args(args)
        .output()
        .expect("python3 runs")
}

#[test]
fn output_into_a_reader_that_stopped_early_is_not_an_error() {
    for args in [&["completion", "bash"][..], &["man"], &["config"]] {
        let out = into_a_closed_pipe(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
        assert!(out.stderr.is_empty(), "{args:?}: {}", text(&out));
    }
}

/// Runs `virtgate args…` on a terminal (util-linux `script`), with `NO_COLOR` as given; what the
/// terminal showed. `discover` on an interface that does not exist logs at debug level and stops
/// before it opens any socket.
fn on_a_terminal(no_color: Option<&str>, dir: &Path) -> String {
    let command =
        format!("{VIRTGATE} --log-filter debug discover --timeout 1s --interface virtgate-none0");
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &command])
        .arg(dir.join("typescript"))
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG");
    if let Some(value) = no_color {
        cmd.env("NO_COLOR", value);
    }
    let out = cmd.output().expect("script (util-linux) runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn logs_on_a_terminal_are_coloured_unless_no_color_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let coloured = on_a_terminal(None, dir.path());
    assert!(
        coloured.contains("DEBUG") && coloured.contains('\u{1b}'),
        "{coloured:?}"
    );
    let plain = on_a_terminal(Some("1"), dir.path());
    assert!(
        plain.contains("DEBUG") && !plain.contains('\u{1b}'),
        "{plain:?}"
    );
    // The error names the empty selection, not mDNS or a firewall.
    assert!(
        plain.contains("no usable network interface: none matches the selection"),
        "{plain}"
    );
}
