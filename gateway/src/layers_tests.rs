//! The gateway's module graph, read from its sources: no import cycle between its
//! modules (one node per file; a `#[path]` file belongs to the module that includes
//! it; test code is left out), and none of the arrows that must never exist (a domain
//! module importing axum, or the HTTP layer). Run with `--nocapture` to see the graph:
//! `cargo test -p tenzro-gateway --lib layers -- --nocapture`.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules that are plain Rust: they may not know HTTP (axum, the `http`
/// crate) nor import the HTTP layer ([`HTTP_LAYER`]).
const DOMAIN: &[&str] = &[
    "accounts",
    "audit",
    "clock",
    "cluster",
    "config",
    "metering",
    "metrics",
    "money",
    "pricing",
    "providers",
    "ratelimit",
    "store",
    "tasks",
    "verify",
];

/// Cycles that are known and deliberate, each with its reason. The agents' surfaces
/// (issue 15) call the gateway's own REST API in process: `mcp::api` builds
/// `http::router`, whose table mounts MCP and A2A. Any other cycle fails.
const ALLOWED_CYCLES: &[&[&str]] = &[&["a2a", "http", "mcp::api"]];

/// The modules that turn requests into domain calls.
const HTTP_LAYER: &[&str] = &["http", "proxy", "state"];

struct Source {
    module: String,
    text: String,
}

/// `a/b.rs` and `a/b/mod.rs` -> `a::b`; `lib.rs`/`main.rs` -> none.
fn module_of(rel: &Path) -> Option<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let file = parts.pop()?;
    let stem = file.strip_suffix(".rs")?;
    if parts.is_empty() && (stem == "lib" || stem == "main") {
        return None;
    }
    if stem != "mod" {
        parts.push(stem.to_owned());
    }
    Some(parts.join("::"))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Files named by `#[path = "…"]`, relative to `src`, with whether the `mod` is
/// test-only, mapped to the module that includes them.
fn path_includes(src: &Path, files: &[PathBuf]) -> BTreeMap<PathBuf, (Option<String>, bool)> {
    let mut out = BTreeMap::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap();
        let owner = module_of(f.strip_prefix(src).unwrap());
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let Some(rest) = line.trim().strip_prefix("#[path = \"") else {
                continue;
            };
            let name = rest.trim_end_matches("\"]");
            let test = i > 0 && lines[i - 1].contains("cfg(test)");
            let target = f.parent().unwrap().join(name);
            let rel = target.strip_prefix(src).unwrap().to_path_buf();
            out.insert(rel, (owner.clone(), test));
        }
    }
    out
}

/// The text without comments and without test modules (`#[cfg(test)]` followed by
/// a `mod` item: everything from there to the end of the file).
fn production_text(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    let mut skip_to = 0;
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        if i < skip_to || t.starts_with("//") {
            continue;
        }
        if t.starts_with("#[cfg(test)]") {
            let item = (i + 1..lines.len()).find(|&j| !lines[j].trim_start().starts_with("#["));
            if let Some(j) = item {
                let l = lines[j].trim();
                if l.starts_with("mod ") || l.starts_with("pub mod ") {
                    if l.ends_with(';') {
                        skip_to = j + 1; // a test module in its own file
                        continue;
                    }
                    break; // an inline test module: the rest of the file
                }
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn sources(src: &Path) -> Vec<Source> {
    let mut files = Vec::new();
    walk(src, &mut files);
    files.sort();
    let included = path_includes(src, &files);
    let mut out = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(src).unwrap().to_path_buf();
        let module = match included.get(&rel) {
            Some((_, true)) => continue,
            Some((Some(owner), false)) => owner.clone(),
            Some((None, false)) => continue,
            None => match module_of(&rel) {
                Some(m) => m,
                None => continue,
            },
        };
        let text = production_text(&std::fs::read_to_string(f).unwrap());
        out.push(Source { module, text });
    }
    out
}

/// The paths named after `crate::` in a use tree or an expression, expanded:
/// `crate::a::{b::C, d}` -> `a::b::C`, `a::d`.
fn crate_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `tenzro_crate::…`
        }
        let (paths, _) = tree(rest);
        out.extend(paths);
    }
    out
}

/// Parses one use tree at the start of `s`; returns its expanded paths and the rest.
fn tree(s: &str) -> (Vec<String>, &str) {
    let s = s.trim_start();
    if let Some(inner) = s.strip_prefix('{') {
        let mut paths = Vec::new();
        let mut rest = inner;
        loop {
            rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix('}') {
                return (paths, r);
            }
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
                continue;
            }
            let (p, r) = tree(rest);
            if r.len() == rest.len() {
                return (paths, r); // not a use tree after all
            }
            paths.extend(p);
            rest = r;
        }
    }
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    let (ident, rest) = s.split_at(end);
    if ident.is_empty() {
        return (Vec::new(), s);
    }
    if let Some(after) = rest.strip_prefix("::") {
        let (subs, r) = tree(after);
        if subs.is_empty() {
            return (vec![ident.to_owned()], r);
        }
        return (
            subs.into_iter()
                .map(|p| {
                    if p == "self" {
                        ident.to_owned()
                    } else {
                        format!("{ident}::{p}")
                    }
                })
                .collect(),
            r,
        );
    }
    // Skip `as alias`.
    let r = rest.trim_start();
    if let Some(r) = r.strip_prefix("as ") {
        let r = r.trim_start();
        let end = r
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(r.len());
        return (vec![ident.to_owned()], &r[end..]);
    }
    (vec![ident.to_owned()], rest)
}

/// The longest known module that `path` starts with.
fn resolve<'a>(path: &str, modules: &'a BTreeSet<String>) -> Option<&'a String> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .find_map(|n| modules.get(&parts[..n].join("::")))
}

fn graph(src: &[Source]) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<String> = src.iter().map(|s| s.module.clone()).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in src {
        let out = edges.entry(s.module.clone()).or_default();
        for p in crate_paths(&s.text) {
            if let Some(to) = resolve(&p, &modules)
                && *to != s.module
            {
                out.insert(to.clone());
            }
        }
    }
    edges
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        let edges = t.edges;
        for w in edges.get(v).into_iter().flatten() {
            if !t.index.contains_key(w.as_str()) {
                visit(t, w);
                let lw = t.low[w.as_str()];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w.as_str()) {
                let iw = t.index[w.as_str()];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                scc.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                t.out.push(scc);
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

fn knows_http(text: &str) -> bool {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .any(|w| w.starts_with("axum::") || w == "axum" || w.starts_with("http::"))
}

#[test]
fn layers_have_no_cycles_and_no_forbidden_arrows() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let sources = sources(&src);
    let edges = graph(&sources);
    let mut folders: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (from, to) in &edges {
        for t in to {
            if top(from) != top(t) {
                folders.entry(top(from)).or_default().insert(top(t));
            }
        }
    }
    println!(
        "{} modules, {} imports between them",
        edges.len(),
        edges.values().map(BTreeSet::len).sum::<usize>()
    );
    println!("top-level modules and what they import:");
    for (from, to) in &folders {
        let to: Vec<&str> = to.iter().copied().collect();
        println!("  {from:<12} -> {}", to.join(" "));
    }
    let mut problems = Vec::new();
    for scc in cycles(&edges) {
        let names: Vec<&str> = scc.iter().map(String::as_str).collect();
        if ALLOWED_CYCLES.contains(&names.as_slice()) {
            println!("known cycle (see ALLOWED_CYCLES): {}", names.join(" <-> "));
            continue;
        }
        problems.push(format!("import cycle: {}", scc.join(" <-> ")));
    }
    for s in &sources {
        if !DOMAIN.contains(&top(&s.module)) {
            continue;
        }
        if knows_http(&s.text) {
            problems.push(format!("domain module {} uses axum/http", s.module));
        }
        for to in edges.get(&s.module).into_iter().flatten() {
            if HTTP_LAYER.contains(&top(to)) {
                problems.push(format!("domain module {} imports {to}", s.module));
            }
        }
    }
    if problems.is_empty() {
        println!("no import cycles; no domain module knows HTTP");
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn use_trees_expand() {
    assert_eq!(
        crate_paths("use crate::a::{b::C, d::{self, e}, f as g};\nlet x = crate::h::i(1);"),
        vec!["a::b::C", "a::d", "a::d::e", "a::f", "h::i"]
    );
    assert!(crate_paths("tenzro_crate::x").is_empty());
    let cyc: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_owned(), BTreeSet::from(["b".to_owned()])),
        ("b".to_owned(), BTreeSet::from(["a".to_owned()])),
        ("c".to_owned(), BTreeSet::from(["a".to_owned()])),
    ]
    .into();
    assert_eq!(cycles(&cyc), vec![vec!["a".to_owned(), "b".to_owned()]]);
}
