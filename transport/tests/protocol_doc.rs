//! `docs/protocol.md` §4.4 against the call table in `transport/src/wire.rs`, its one definition.
//!
//! - The generated table between the `call-table` markers must equal
//!   [`CallSpec::markdown_table`]. `VGPU_BLESS=1 cargo test -p vgpu-transport --test protocol_doc`
//!   rewrites it after a change to the table.
//! - Every row of the hand-written tables (`| id | \`Name\` | S | ...`) must name the call with
//!   that id and mark S exactly when the call is stream-ordered.

use std::path::PathBuf;
use vgpu_transport::wire::{Call, CallSpec};

const BEGIN: &str =
    "<!-- call-table:begin (generated from transport/src/wire.rs; VGPU_BLESS=1 cargo test -p vgpu-transport --test protocol_doc) -->\n";
const END: &str = "<!-- call-table:end -->";

fn doc_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md")
}

#[test]
fn generated_call_table_matches_the_definition() {
    let path = doc_path();
    let doc = std::fs::read_to_string(&path).expect("docs/protocol.md");
    let start = doc.find(BEGIN).expect("the call-table:begin marker in docs/protocol.md") + BEGIN.len();
    let end = start + doc[start..].find(END).expect("the call-table:end marker");
    let want = CallSpec::markdown_table();
    if doc[start..end] != want {
        if std::env::var_os("VGPU_BLESS").is_some() {
            let mut new = doc[..start].to_string();
            new.push_str(&want);
            new.push_str(&doc[end..]);
            std::fs::write(&path, new).expect("write docs/protocol.md");
            return;
        }
        panic!(
            "docs/protocol.md's generated call table differs from transport/src/wire.rs; run \
             VGPU_BLESS=1 cargo test -p vgpu-transport --test protocol_doc\n--- doc\n{}\n--- table\n{want}",
            &doc[start..end]
        );
    }
}

#[test]
fn hand_written_rows_agree_with_the_definition() {
    let doc = std::fs::read_to_string(doc_path()).expect("docs/protocol.md");
    let sec = &doc[doc.find("### 4.4 Calls").expect("§4.4")..];
    let sec = &sec[..sec.find("\n## 5").unwrap_or(sec.len())];
    let mut seen = vec![0u32; Call::ALL.len()];
    // Inside a hand-written call table: from its header row to the next blank line.
    let mut in_table = false;
    for line in sec.lines() {
        if line.starts_with("| id | name | S |") {
            in_table = true;
        } else if line.trim().is_empty() {
            in_table = false;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "| 3 | `MemcpyHtoD` | S | ..." splits into ["", "3", "`MemcpyHtoD`", "S", ...].
        if !in_table || cells.len() < 5 || !cells[2].starts_with('`') {
            continue;
        }
        let Ok(id) = cells[1].parse::<u16>() else { continue };
        let call = Call::from_u16(id).unwrap_or_else(|| panic!("§4.4 lists call {id}, which the table lacks"));
        assert_eq!(cells[2].trim_matches('`'), call.name(), "the name of call {id}");
        assert_eq!(cells[3] == "S", call.stream_ordered(), "the S column of {}", call.name());
        seen[id as usize] += 1;
    }
    for c in Call::ALL {
        assert_eq!(seen[*c as usize], 1, "{} is described in exactly one hand-written row of §4.4", c.name());
    }
}
