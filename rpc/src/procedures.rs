//! The REMOTE program's procedure table, from libvirt 9.0 (`data/remote-procs.tsv`, generated
//! from `remote_protocol.x` and the public API sources): names, read-only classification, and
//! bounded metric labels.

use std::sync::OnceLock;

use crate::packet::{Program, KEEPALIVE_PING, KEEPALIVE_PONG};

const TABLE: &str = include_str!("../data/remote-procs.tsv");

/// The label [`procedure_label`] gives every procedure it does not name.
pub const OTHER_LABEL: &str = "other";

/// Whether a procedure works on a read-only connection (`read_only_connection` in the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReadOnly {
    /// The public API never checks for read-only.
    Allowed,
    /// The public API refuses read-only connections (`virCheckReadOnlyGoto`).
    Denied,
    /// Refused on read-only connections for some flags or paths only.
    Conditional,
    /// A known procedure with no public API: authentication and event messages.
    NotApplicable,
    /// Not a procedure of the table.
    Unknown,
}

struct Entry {
    name: &'static str,
    public_api: Option<&'static str>,
    read_only: ReadOnly,
}

fn table() -> &'static [Option<Entry>] {
    static ENTRIES: OnceLock<Vec<Option<Entry>>> = OnceLock::new();
    ENTRIES.get_or_init(|| {
        let mut entries: Vec<Option<Entry>> = Vec::new();
        for line in TABLE.lines().skip(1) {
            let cols: Vec<&str> = line.split('\t').collect();
            let (Some(num), Some(&name), Some(&api), Some(&ro)) =
                (cols.first(), cols.get(1), cols.get(4), cols.get(5))
            else {
                continue;
            };
            let public_api = (api != "-" && !api.is_empty()).then_some(api);
            let Ok(num) = num.parse::<usize>() else {
                continue;
            };
            let read_only = match ro {
                "allowed" => ReadOnly::Allowed,
                "denied" => ReadOnly::Denied,
                "conditional" => ReadOnly::Conditional,
                _ => ReadOnly::NotApplicable,
            };
            if entries.len() <= num {
                entries.resize_with(num + 1, || None);
            }
            entries[num] = Some(Entry {
                name,
                public_api,
                read_only,
            });
        }
        entries
    })
}

/// A procedure number of the REMOTE program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Procedure(pub u32);

impl Procedure {
    fn entry(self) -> Option<&'static Entry> {
        table().get(self.0 as usize)?.as_ref()
    }

    /// The protocol name without `REMOTE_PROC_` (`CONNECT_OPEN` for 1), if the table has it.
    pub fn name(self) -> Option<&'static str> {
        self.entry().map(|e| e.name)
    }

    /// The public API function of the same name (`virDomainSuspend` for DOMAIN_SUSPEND), as
    /// libvirt names it in its own errors.
    pub fn public_api(self) -> Option<&'static str> {
        self.entry().and_then(|e| e.public_api)
    }

    /// How the procedure fares on a read-only connection.
    pub fn read_only(self) -> ReadOnly {
        self.entry().map_or(ReadOnly::Unknown, |e| e.read_only)
    }
}

impl From<u32> for Procedure {
    fn from(n: u32) -> Self {
        Self(n)
    }
}

/// One more than the highest REMOTE procedure number known, for sizing caches indexed by
/// procedure number.
pub fn remote_count() -> usize {
    table().len()
}

/// A program's name for metric labels: `remote`, `qemu`, `lxc`, `keepalive`, or `unknown`.
pub fn program_name(program: Program) -> &'static str {
    match program {
        Program::Remote => "remote",
        Program::Qemu => "qemu",
        Program::Lxc => "lxc",
        Program::Keepalive => "keepalive",
        Program::Other(_) => "unknown",
    }
}

/// A procedure's metric label: its name for a known REMOTE procedure, `PING` / `PONG` for the
/// KEEPALIVE ones, [`OTHER_LABEL`] for any other procedure or program.
///
/// The label set is fixed by the table, so a client cannot create label values (and time series)
/// by sending made-up numbers.
pub fn procedure_label(program: Program, procedure: u32) -> &'static str {
    match program {
        Program::Remote => Procedure(procedure).name().unwrap_or(OTHER_LABEL),
        Program::Keepalive => match procedure {
            KEEPALIVE_PING => "PING",
            KEEPALIVE_PONG => "PONG",
            _ => OTHER_LABEL,
        },
        _ => OTHER_LABEL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_procedures_have_their_protocol_names() {
        assert_eq!(Procedure(1).name(), Some("CONNECT_OPEN"));
        assert_eq!(Procedure(157).name(), Some("CONNECT_GET_LIB_VERSION"));
        assert_eq!(Procedure(211).name(), Some("DOMAIN_SCREENSHOT"));
        assert_eq!(Procedure(0).name(), None);
        assert_eq!(Procedure(99_999).name(), None);
        assert_eq!(remote_count(), 444);
        assert_eq!(Procedure(34).public_api(), Some("virDomainSuspend"));
        assert_eq!(Procedure(1).public_api(), Some("virConnectOpen"));
        assert_eq!(
            Procedure(66).public_api(),
            None,
            "AUTH_LIST has no public API"
        );
    }

    #[test]
    fn read_only_classification_follows_the_table() {
        assert_eq!(Procedure(34).name(), Some("DOMAIN_SUSPEND"));
        assert_eq!(Procedure(34).read_only(), ReadOnly::Denied);
        assert_eq!(Procedure(59).name(), Some("CONNECT_GET_HOSTNAME"));
        assert_eq!(Procedure(59).read_only(), ReadOnly::Allowed);
        assert_eq!(Procedure(14).name(), Some("DOMAIN_GET_XML_DESC"));
        assert_eq!(Procedure(14).read_only(), ReadOnly::Conditional);
        assert_eq!(Procedure(68).read_only(), ReadOnly::NotApplicable);
        assert_eq!(Procedure(99_999).read_only(), ReadOnly::Unknown);
    }

    #[test]
    fn every_row_of_the_table_is_classified_as_the_note_counts() {
        let mut counts = [0usize; 4];
        for n in 0..remote_count() as u32 {
            match Procedure(n).read_only() {
                ReadOnly::Allowed => counts[0] += 1,
                ReadOnly::Denied => counts[1] += 1,
                ReadOnly::Conditional => counts[2] += 1,
                ReadOnly::NotApplicable => counts[3] += 1,
                ReadOnly::Unknown => assert_eq!(n, 0, "procedure {n} missing from the table"),
            }
        }
        assert_eq!(counts, [182, 197, 6, 58]);
    }

    #[test]
    fn unknown_procedures_and_programs_are_labelled_other() {
        assert_eq!(procedure_label(Program::Remote, 1), "CONNECT_OPEN");
        assert_eq!(procedure_label(Program::Remote, 0), "other");
        assert_eq!(procedure_label(Program::Remote, 99_999), "other");
        assert_eq!(procedure_label(Program::Remote, u32::MAX), "other");
        assert_eq!(procedure_label(Program::Qemu, 1), "other");
        assert_eq!(procedure_label(Program::Keepalive, 1), "PING");
        assert_eq!(procedure_label(Program::Keepalive, 3), "other");
        assert_eq!(procedure_label(Program::Other(7), 1), "other");
        assert_eq!(program_name(Program::Other(7)), "unknown");
        assert_eq!(program_name(Program::Remote), "remote");
    }

    #[test]
    fn the_label_set_is_bounded_by_the_table() {
        let mut labels = std::collections::HashSet::new();
        for program in [0x2000_8086, 0x2000_8087, 0x0006_8000, 0x6b65_6570, 1, 2] {
            for procedure in (0..2000).chain([u32::MAX, 1 << 31]) {
                labels.insert(procedure_label(Program::from(program), procedure));
            }
        }
        // 443 REMOTE names, PING, PONG, and "other".
        assert_eq!(labels.len(), 443 + 2 + 1);
    }
}
