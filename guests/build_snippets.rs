//! The test snippets: `src/snippets.S` assembled into one object, whose
//! `.snippet.<name>` sections become `pub const NAME: &[u8]` and whose
//! documented labels become `pub const LABEL: u64` offsets, in
//! `$OUT_DIR/snippets.rs` (included by `src/snippets.rs`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

/// Makes the list of `(name, value)` pairs that `src/snippet_constants.rs`
/// declares, for the assembler's `-D` definitions.
macro_rules! constants {
    ($($(#[$meta:meta])* $name:ident: $ty:ty = $value:expr;)*) => {
        /// Every constant the snippets may use, by name.
        const CONSTANTS: &[(&str, u64)] = &[$((stringify!($name), $value as u64)),*];
    };
}

include!("src/snippet_constants.rs");

/// Prefix of the section names that hold snippets.
const SECTION_PREFIX: &str = ".snippet.";

/// What a `///` doc block in `snippets.S` documents.
#[derive(Debug, PartialEq)]
enum Kind {
    /// `snippet <name>`: a whole snippet.
    Snippet,
    /// `<name>:` or `.set <name>, ...`: an offset inside the snippet before it.
    Label,
}

/// One documented item of `snippets.S`.
#[derive(Debug)]
struct Item {
    kind: Kind,
    name: String,
    /// The snippet it belongs to (itself for a snippet).
    snippet: String,
    doc: Vec<String>,
    /// For a snippet: its source lines, without doc comments.
    source: Vec<String>,
    line: usize,
}

/// Assembles `source` into `out_dir/snippets.o` and writes
/// `out_dir/snippets.rs`. Panics with the reason on any error.
pub fn build(cc: &str, source: &Path, out_dir: &Path) {
    let text = std::fs::read_to_string(source)
        .unwrap_or_else(|err| panic!("vmkit-guests: reading {}: {err}", source.display()));
    let items = parse_source(&text);
    let object = out_dir.join("snippets.o");
    assemble(cc, source, &object);
    let bytes = std::fs::read(&object)
        .unwrap_or_else(|err| panic!("vmkit-guests: reading {}: {err}", object.display()));
    let elf = Object::parse(&bytes);
    let rust = generate(&items, &elf);
    let output = out_dir.join("snippets.rs");
    std::fs::write(&output, rust)
        .unwrap_or_else(|err| panic!("vmkit-guests: writing {}: {err}", output.display()));
}

/// Finds the documented snippets and labels in the assembly source.
fn parse_source(text: &str) -> Vec<Item> {
    let mut items: Vec<Item> = Vec::new();
    let mut doc: Vec<String> = Vec::new();
    let mut doc_line = 0;
    let mut current: Option<String> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(rest) = line.strip_prefix("///") {
            if doc.is_empty() {
                doc_line = index + 1;
            }
            doc.push(rest.strip_prefix(' ').unwrap_or(rest).to_owned());
            continue;
        }
        let snippet_name = line
            .strip_prefix("snippet ")
            .map(|name| name.trim().to_owned());
        if let Some(name) = snippet_name {
            assert!(
                is_identifier(&name),
                "vmkit-guests: snippets.S line {}: bad snippet name {name:?}",
                index + 1
            );
            assert!(
                !doc.is_empty(),
                "vmkit-guests: snippets.S line {}: snippet {name} has no `///` documentation",
                index + 1
            );
            current = Some(name.clone());
            items.push(Item {
                kind: Kind::Snippet,
                name: name.clone(),
                snippet: name,
                doc: std::mem::take(&mut doc),
                source: Vec::new(),
                line: index + 1,
            });
            continue;
        }
        if !doc.is_empty() {
            let label = line
                .strip_suffix(':')
                .or_else(|| {
                    line.strip_prefix(".set")
                        .and_then(|rest| rest.split(',').next())
                })
                .map(str::trim)
                .filter(|name| is_identifier(name))
                .unwrap_or_else(|| {
                    panic!(
                        "vmkit-guests: snippets.S line {doc_line}: a `///` comment must come \
                         right before `snippet <name>`, `<label>:` or `.set <label>, <expr>`"
                    )
                });
            let snippet = current.clone().unwrap_or_else(|| {
                panic!("vmkit-guests: snippets.S line {doc_line}: label {label} outside a snippet")
            });
            items.push(Item {
                kind: Kind::Label,
                name: label.to_owned(),
                snippet,
                doc: std::mem::take(&mut doc),
                source: Vec::new(),
                line: index + 1,
            });
        }
        if current.is_some() {
            let snippet = items
                .iter_mut()
                .rev()
                .find(|item| item.kind == Kind::Snippet)
                .expect("a current snippet was pushed");
            snippet.source.push(raw.trim_end().to_owned());
        }
    }
    for item in &mut items {
        while item.source.last().is_some_and(|l| l.is_empty()) {
            item.source.pop();
        }
    }
    items
}

fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Runs the C compiler driver on `source` (preprocessor, then assembler).
fn assemble(cc: &str, source: &Path, object: &Path) {
    let mut cmd = Command::new(cc);
    cmd.args(["-c", "-m64", "-Wa,--noexecstack"]);
    for (name, value) in CONSTANTS {
        cmd.arg(format!("-D{name}={value:#x}"));
    }
    cmd.arg("-o").arg(object).arg(source);
    super::run(cc, cmd, source);
}

/// The parts of an ELF64 relocatable object that the snippets need.
struct Object<'a> {
    bytes: &'a [u8],
    /// (name, type, offset, size, link, info) of each section, by index.
    sections: Vec<(String, u32, usize, usize, u32, u32)>,
}

impl<'a> Object<'a> {
    fn parse(bytes: &'a [u8]) -> Self {
        assert!(
            bytes.len() >= 64 && bytes[..4] == *b"\x7fELF" && bytes[4] == 2 && bytes[5] == 1,
            "vmkit-guests: snippets.o is not a little-endian ELF64 object"
        );
        let shoff = u64_at(bytes, 0x28) as usize;
        let shentsize = usize::from(u16_at(bytes, 0x3a));
        let shnum = usize::from(u16_at(bytes, 0x3c));
        let shstrndx = usize::from(u16_at(bytes, 0x3e));
        let header = |index: usize| {
            let at = shoff + index * shentsize;
            (
                u32_at(bytes, at),
                u32_at(bytes, at + 4),
                u64_at(bytes, at + 24) as usize,
                u64_at(bytes, at + 32) as usize,
                u32_at(bytes, at + 40),
                u32_at(bytes, at + 44),
            )
        };
        let names = header(shstrndx).2;
        let sections = (0..shnum)
            .map(|index| {
                let (name, kind, offset, size, link, info) = header(index);
                (
                    c_string(bytes, names + name as usize),
                    kind,
                    offset,
                    size,
                    link,
                    info,
                )
            })
            .collect();
        Object { bytes, sections }
    }

    /// The contents of section `index` (empty for `SHT_NOBITS`).
    fn contents(&self, index: usize) -> &'a [u8] {
        let (_, kind, offset, size, _, _) = &self.sections[index];
        if *kind == 8 {
            return &[];
        }
        &self.bytes[*offset..*offset + *size]
    }

    /// Named symbols (no section symbols) as name -> (section index, value).
    fn symbols(&self) -> BTreeMap<String, (usize, u64)> {
        let mut symbols = BTreeMap::new();
        for (_, kind, offset, size, link, _) in &self.sections {
            if *kind != 2 {
                continue; // not SHT_SYMTAB
            }
            let strings = self.sections[*link as usize].2;
            for at in (*offset..*offset + *size).step_by(24) {
                let name = c_string(self.bytes, strings + u32_at(self.bytes, at) as usize);
                let symbol_type = self.bytes[at + 4] & 0xf;
                let section = usize::from(u16_at(self.bytes, at + 6));
                if name.is_empty() || symbol_type == 3 {
                    continue;
                }
                symbols.insert(name, (section, u64_at(self.bytes, at + 8)));
            }
        }
        symbols
    }
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes[at..at + 2].try_into().unwrap())
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

fn c_string(bytes: &[u8], at: usize) -> String {
    let end = bytes[at..].iter().position(|&b| b == 0).unwrap() + at;
    String::from_utf8_lossy(&bytes[at..end]).into_owned()
}

/// The Rust source of the snippet constants.
fn generate(items: &[Item], elf: &Object) -> String {
    let mut sections = BTreeMap::new();
    for (index, (name, _, _, _, _, _)) in elf.sections.iter().enumerate() {
        if let Some(snippet) = name.strip_prefix(SECTION_PREFIX) {
            sections.insert(snippet.to_owned(), index);
        }
    }
    // A misspelt constant or a label of another snippet is an undefined symbol to the
    // assembler, which it leaves for a linker to resolve.
    let symbols = elf.symbols();
    let undefined: Vec<&String> = symbols
        .iter()
        .filter(|(_, (section, _))| *section == 0)
        .map(|(name, _)| name)
        .collect();
    assert!(
        undefined.is_empty(),
        "vmkit-guests: snippets.S uses undefined names {undefined:?}: constants missing from \
         src/snippet_constants.rs, or labels outside the snippet?"
    );
    // Relocations would be left unapplied in the flat bytes.
    for (name, kind, _, _, _, info) in &elf.sections {
        if (*kind == 4 || *kind == 9) && elf.sections[*info as usize].0.starts_with(SECTION_PREFIX)
        {
            panic!("vmkit-guests: snippets.S needs relocations ({name}); snippets must not");
        }
    }
    let mut out = String::from("// Generated by build.rs from src/snippets.S; do not edit.\n");
    let mut seen = Vec::new();
    for item in items {
        let rust_name = item.name.to_ascii_uppercase();
        assert!(
            !seen.contains(&rust_name) && !CONSTANTS.iter().any(|(name, _)| *name == rust_name),
            "vmkit-guests: snippets.S line {}: the name {rust_name} is taken",
            item.line
        );
        seen.push(rust_name.clone());
        let section = *sections.get(&item.snippet).unwrap_or_else(|| {
            panic!(
                "vmkit-guests: snippets.S line {}: no section {SECTION_PREFIX}{}",
                item.line, item.snippet
            )
        });
        for doc in &item.doc {
            writeln!(out, "#[doc = {doc:?}]").unwrap();
        }
        match item.kind {
            Kind::Snippet => {
                let code = elf.contents(section);
                assert!(
                    !code.is_empty(),
                    "vmkit-guests: snippet {} is empty",
                    item.name
                );
                writeln!(out, "#[doc = \"\"]").unwrap();
                writeln!(
                    out,
                    "#[doc = \"{} bytes, from `src/snippets.S`:\"]",
                    code.len()
                )
                .unwrap();
                writeln!(out, "#[doc = \"\"]").unwrap();
                writeln!(out, "#[doc = \"```text\"]").unwrap();
                for line in &item.source {
                    writeln!(out, "#[doc = {line:?}]").unwrap();
                }
                writeln!(out, "#[doc = \"```\"]").unwrap();
                let bytes: Vec<String> = code.iter().map(|b| format!("{b:#04x}")).collect();
                writeln!(
                    out,
                    "pub const {rust_name}: &[u8] = &[{}];\n",
                    bytes.join(", ")
                )
                .unwrap();
            }
            Kind::Label => {
                let (symbol_section, value) =
                    symbols.get(&item.name).copied().unwrap_or_else(|| {
                        panic!(
                            "vmkit-guests: snippets.S line {}: no symbol {}",
                            item.line, item.name
                        )
                    });
                assert_eq!(
                    symbol_section, section,
                    "vmkit-guests: snippets.S line {}: {} is not in snippet {}",
                    item.line, item.name, item.snippet
                );
                writeln!(out, "pub const {rust_name}: u64 = {value:#x};\n").unwrap();
            }
        }
    }
    out.push_str("/// Every snippet with its name, in source order (for this crate's tests).\n");
    out.push_str("#[cfg(test)]\npub(crate) const ALL: &[(&str, &[u8])] = &[\n");
    for item in items.iter().filter(|item| item.kind == Kind::Snippet) {
        let rust_name = item.name.to_ascii_uppercase();
        writeln!(out, "    ({rust_name:?}, {rust_name}),").unwrap();
    }
    out.push_str("];\n");
    for snippet in sections.keys() {
        assert!(
            items
                .iter()
                .any(|item| item.kind == Kind::Snippet && item.name == *snippet),
            "vmkit-guests: section {SECTION_PREFIX}{snippet} is not a documented `snippet`"
        );
    }
    out
}
