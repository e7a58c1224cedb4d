//! The floor plan of `src/` holds: every module imports only modules on its own floor or below, and the module
//! graph has no cycle. The floors are the table "Floors" in docs/architecture.md — this test reads that table, so
//! the document and the code cannot drift apart: a new module must be given a floor there, and an import that
//! climbs (config reaching up to rules, the router to the pipeline) fails here with the file and line.
//!
//! What counts as an import: any `crate::<module>` path in code (a `use` or an inline path, braces expanded);
//! comments and test code (`tests.rs` and `*_tests.rs` files, `#[cfg(test)] mod tests` blocks) are not counted — tests may
//! reach anywhere. The unit is the top-level module (`src/<module>.rs` or `src/<module>/`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `module → floor`, from the "Floors" table of docs/architecture.md (rows `| <floor> | <name> | `a`, `b` | … |`).
fn floors() -> BTreeMap<String, u32> {
    let doc = std::fs::read_to_string(root().join("docs/architecture.md")).expect("docs/architecture.md");
    let section = doc.split("\n## Floors").nth(1).expect("docs/architecture.md has a \"## Floors\" section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut floors = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Some(floor) = cells.get(1).and_then(|c| c.parse::<u32>().ok()) else { continue };
        let modules = cells.get(3).expect("a floor row names its modules in the third column");
        for module in modules.split('`').skip(1).step_by(2) {
            assert!(floors.insert(module.to_string(), floor).is_none(), "{module} is on two floors");
        }
    }
    assert!(floors.len() > 10, "the Floors table was not read: {floors:?}");
    floors
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments and without its test module.
fn product_code(text: &str) -> Vec<String> {
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|line| match line.find("//") {
            // A `//` inside a string literal (a URL) cuts the line too: harmless, no import hides behind one here.
            Some(i) => line[..i].to_string(),
            None => line.to_string(),
        })
        .collect()
}

/// The top-level modules `code` refers to through `crate::`, with the line (1-based) of each reference.
fn references(code: &[String]) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let joined = code.join("\n");
    let mut rest = joined.as_str();
    let mut offset = 0;
    while let Some(i) = rest.find("crate::") {
        let at = offset + i;
        let line = joined[..at].matches('\n').count() + 1;
        let after = &rest[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // `use crate::{a, b::{c, d}, e}`: the first segment of every top-level item.
            let mut depth = 0;
            let mut item_start = true;
            let mut word = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        if !word.is_empty() {
                            out.push((std::mem::take(&mut word), line));
                        }
                        item_start = true;
                    }
                    c if item_start && (c.is_alphanumeric() || c == '_') => word.push(c),
                    _ if item_start && !word.is_empty() => {
                        out.push((std::mem::take(&mut word), line));
                        item_start = false;
                    }
                    _ => {}
                }
            }
            if !word.is_empty() {
                out.push((word, line));
            }
        } else {
            let name: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                out.push((name, line));
            }
        }
        offset = at + "crate::".len();
        rest = &joined[offset..];
    }
    out
}

/// `(from, to) → first place` for every import between different top-level modules.
fn import_graph() -> (BTreeMap<(String, String), String>, BTreeSet<String>) {
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges = BTreeMap::new();
    let mut modules = BTreeSet::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
        if rel == "lib.rs" || rel == "main.rs" || rel.ends_with("tests.rs") {
            continue;
        }
        let module = rel.split('/').next().unwrap().trim_end_matches(".rs").to_string();
        modules.insert(module.clone());
        let code = product_code(&std::fs::read_to_string(&file).unwrap());
        for (target, line) in references(&code) {
            if target != module && target != "self" {
                edges.entry((module.clone(), target)).or_insert(format!("src/{rel}:{line}"));
            }
        }
    }
    (edges, modules)
}

#[test]
fn every_module_imports_only_its_own_floor_or_below() {
    let floors = floors();
    let (edges, modules) = import_graph();
    let unplaced: Vec<&String> = modules.iter().filter(|m| !floors.contains_key(*m)).collect();
    assert!(
        unplaced.is_empty(),
        "modules without a floor in docs/architecture.md (add them to \"## Floors\"): {unplaced:?}"
    );
    let gone: Vec<&String> = floors.keys().filter(|m| !modules.contains(*m)).collect();
    assert!(gone.is_empty(), "docs/architecture.md places modules that do not exist: {gone:?}");
    let upward: Vec<String> = edges
        .iter()
        .filter(|((from, to), _)| floors.get(to).is_none_or(|t| *t > floors[from]))
        .map(|((from, to), at)| {
            format!("{from} (floor {}) imports {to} (floor {:?}) at {at}", floors[from], floors.get(to))
        })
        .collect();
    assert!(upward.is_empty(), "imports that climb a floor:\n{}", upward.join("\n"));
}

#[test]
fn the_module_graph_has_no_cycle() {
    let (edges, modules) = import_graph();
    let next =
        |m: &str| -> Vec<String> { edges.keys().filter(|(from, _)| from == m).map(|(_, to)| to.clone()).collect() };
    // Depth-first search; a module met again on the current path closes a cycle.
    fn visit(
        m: &str,
        next: &dyn Fn(&str) -> Vec<String>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut cycle = path[i..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle);
        }
        if !done.insert(m.to_string()) {
            return None;
        }
        path.push(m.to_string());
        for n in next(m) {
            if let Some(c) = visit(&n, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for m in &modules {
        if let Some(cycle) = visit(m, &next, &mut Vec::new(), &mut done) {
            let places: Vec<String> = cycle
                .windows(2)
                .map(|w| format!("{} → {} at {}", w[0], w[1], edges[&(w[0].clone(), w[1].clone())]))
                .collect();
            panic!("import cycle {}:\n{}", cycle.join(" → "), places.join("\n"));
        }
    }
}

/// The checker itself: braces, inline paths, comments and test modules are read as documented.
#[test]
fn the_reference_reader_sees_groups_and_paths_but_not_comments_or_tests() {
    let code = product_code(
        "use crate::{a, b::{c, d}, e::f};\nfn x() { crate::g::h(); } // crate::comment\n/// crate::doc\n\
         #[cfg(test)]\nmod tests;\nfn y() { crate::k::l(); }\n#[cfg(test)]\nmod tests { use crate::t; }",
    );
    let names: Vec<String> = references(&code).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["a", "b", "e", "g", "k"]);
}
