//! Procedure names for metrics labels, from the libvirt 9.0 REMOTE protocol table
//! (`data/remote-procs.tsv`, generated from remote_protocol.x).

use std::sync::OnceLock;

use crate::frame::{PROGRAM_KEEPALIVE, PROGRAM_LXC, PROGRAM_QEMU, PROGRAM_REMOTE};

const TABLE: &str = include_str!("../data/remote-procs.tsv");

fn remote_names() -> &'static Vec<Option<&'static str>> {
    static NAMES: OnceLock<Vec<Option<&'static str>>> = OnceLock::new();
    NAMES.get_or_init(|| {
        let mut names = Vec::new();
        for line in TABLE.lines().skip(1) {
            let mut cols = line.split('\t');
            let (Some(num), Some(name)) = (cols.next(), cols.next()) else {
                continue;
            };
            let Ok(num) = num.parse::<usize>() else {
                continue;
            };
            if names.len() <= num {
                names.resize(num + 1, None);
            }
            names[num] = Some(name);
        }
        names
    })
}

pub fn program_name(program: u32) -> &'static str {
    match program {
        PROGRAM_REMOTE => "remote",
        PROGRAM_QEMU => "qemu",
        PROGRAM_LXC => "lxc",
        PROGRAM_KEEPALIVE => "keepalive",
        _ => "unknown",
    }
}

/// `CONNECT_OPEN` for REMOTE procedure 1; the number as text when unknown.
pub fn procedure_name(program: u32, procedure: u32) -> String {
    if program == PROGRAM_REMOTE {
        if let Some(Some(name)) = remote_names().get(procedure as usize) {
            return (*name).to_string();
        }
    }
    procedure.to_string()
}

/// The number of REMOTE procedures known, for sizing per-connection caches.
pub fn remote_count() -> usize {
    remote_names().len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_procedures_have_their_protocol_names() {
        assert_eq!(procedure_name(PROGRAM_REMOTE, 1), "CONNECT_OPEN");
        assert_eq!(
            procedure_name(PROGRAM_REMOTE, 157),
            "CONNECT_GET_LIB_VERSION"
        );
        assert_eq!(procedure_name(PROGRAM_REMOTE, 211), "DOMAIN_SCREENSHOT");
        assert_eq!(procedure_name(PROGRAM_REMOTE, 99_999), "99999");
        assert_eq!(procedure_name(PROGRAM_QEMU, 1), "1");
        assert!(remote_count() > 400);
    }
}
