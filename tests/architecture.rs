//! ARCHITECTURE.md's layers hold in the code: every `crate::` path in `src/` (comments and
//! `#[cfg(test)]` code aside; the binaries are the edge and may use anything) names a module
//! of the importing module's own layer or of a layer below it. The layer list is read from
//! ARCHITECTURE.md's "Layers" section, so the document and the code cannot drift apart: a new
//! module without a layer, or an import that points up, fails here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Module → layer (1 = bottom) from the numbered list under `## Layers`.
fn layers(markdown: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let mut inside = false;
    for line in markdown.lines() {
        if line.starts_with("## ") {
            inside = line.trim() == "## Layers";
            continue;
        }
        if !inside {
            continue;
        }
        let Some((number, rest)) = line.split_once(". ") else {
            continue;
        };
        let Ok(layer) = number.trim().parse::<usize>() else {
            continue;
        };
        // "`a`, `b`: what they are" — the modules are the backticked names before any colon.
        let names = rest.split(':').next().unwrap_or("");
        for name in names.split(',') {
            let name = name.trim().trim_matches('`');
            if !name.is_empty() {
                out.insert(name.to_string(), layer);
            }
        }
    }
    out
}

/// The top-level module a file of `src/` belongs to (`None`: the crate root and binaries).
fn module_of(relative: &Path) -> Option<String> {
    let mut parts = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy());
    let first = parts.next()?.to_string();
    if first == "bin" || first == "lib.rs" {
        return None;
    }
    Some(first.trim_end_matches(".rs").to_string())
}

/// The top-level modules a source file names through `crate::` outside comments and outside
/// its `#[cfg(test)]` code (which sits at the end of a file).
fn imports(source: &str) -> Vec<String> {
    let code = source.split("#[cfg(test)]").next().unwrap_or("");
    let mut out = Vec::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or("");
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // `crate::{a::x, b}`: every name at the group's top level.
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let name: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        out.push(name);
                    }
                }
                continue;
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
    out
}

/// Every import that points to a higher layer, or names a module without a layer.
fn violations(files: &[(PathBuf, String)], layers: &BTreeMap<String, usize>) -> Vec<String> {
    let mut out = Vec::new();
    for (path, source) in files {
        let Some(module) = module_of(path) else {
            continue;
        };
        let Some(&own) = layers.get(&module) else {
            out.push(format!(
                "{}: module `{module}` has no layer in ARCHITECTURE.md",
                path.display()
            ));
            continue;
        };
        for target in imports(source) {
            if target == module {
                continue;
            }
            match layers.get(&target) {
                None => out.push(format!(
                    "{}: imports `{target}`, which has no layer in ARCHITECTURE.md",
                    path.display()
                )),
                Some(&layer) if layer > own => out.push(format!(
                    "{}: `{module}` (layer {own}) imports `{target}` (layer {layer})",
                    path.display()
                )),
                _ => {}
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn source_files(dir: &Path, root: &Path, out: &mut Vec<(PathBuf, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            source_files(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            out.push((path.strip_prefix(root).unwrap().to_path_buf(), text));
        }
    }
}

fn architecture_layers() -> BTreeMap<String, usize> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("ARCHITECTURE.md")).unwrap();
    let l = layers(&text);
    assert!(
        l.len() >= 20,
        "ARCHITECTURE.md's Layers section lists {} modules",
        l.len()
    );
    l
}

#[test]
fn every_module_imports_only_its_layer_and_below() {
    let layers = architecture_layers();
    let src = Path::new(ROOT).join("src");
    let mut files = Vec::new();
    source_files(&src, &src, &mut files);
    let v = violations(&files, &layers);
    assert!(v.is_empty(), "layer violations:\n{}", v.join("\n"));
    // Every module declared in lib.rs (public or crate-private) has a layer.
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    for line in lib.lines() {
        let line = line.trim();
        let declared = ["pub mod ", "pub(crate) mod ", "mod "]
            .iter()
            .find_map(|prefix| line.strip_prefix(prefix));
        if let Some(name) = declared {
            let name = name.trim_end_matches(';');
            assert!(
                layers.contains_key(name),
                "lib.rs module `{name}` has no layer"
            );
        }
    }
}

/// The check bites: an upward import, a grouped one, and a module without a layer are
/// reported; comments and test code are not.
#[test]
fn a_forbidden_import_is_caught() {
    let layers = architecture_layers();
    let table = PathBuf::from("table.rs");
    let top = layers.values().max().copied().unwrap();
    let top_module = layers.iter().find(|(_, &l)| l == top).unwrap().0.clone();
    let files = vec![
        (
            table.clone(),
            format!("use crate::error::Result;\nuse crate::{top_module}::Thing;\n"),
        ),
        (
            PathBuf::from("io.rs"),
            format!("use crate::{{error::Error, {top_module}}};\n"),
        ),
        (
            PathBuf::from("spec.rs"),
            format!(
                "// see crate::{top_module}\n#[cfg(test)]\nmod tests {{ use crate::{top_module}; }}\n"
            ),
        ),
        (PathBuf::from("newthing.rs"), String::new()),
    ];
    let v = violations(&files, &layers);
    assert!(
        v.iter()
            .any(|m| m.starts_with("table.rs") && m.contains(&top_module)),
        "{v:?}"
    );
    assert!(v.iter().any(|m| m.starts_with("io.rs")), "{v:?}");
    assert!(!v.iter().any(|m| m.starts_with("spec.rs")), "{v:?}");
    assert!(
        v.iter().any(|m| m.contains("`newthing` has no layer")),
        "{v:?}"
    );
}
