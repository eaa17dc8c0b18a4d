//! The module graph, read from the sources: the core depends on nothing outside
//! it, the access rules on nothing but the core, the engine on no edge, and no
//! modules depend on each other in a circle (a module and its submodules count as
//! one). The edges are handed narrow handles (`ingest::Devices`,
//! `fanout::Dashboards`); only the HTTP edge, which reports on everything, takes
//! the whole `app`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path of a source file: `src/fanout/ws.rs` → `["fanout", "ws"]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

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

/// The code of a file without its unit tests (tests may reach anywhere).
fn without_tests(code: &str) -> &str {
    [
        "#[cfg(test)]\nmod tests",
        "#[cfg(test)]\npub(crate) mod tests",
    ]
    .iter()
    .filter_map(|m| code.find(m))
    .min()
    .map_or(code, |i| &code[..i])
}

/// The identifier after `prefix` at each place it occurs.
fn paths_after<'a>(code: &'a str, prefix: &str) -> Vec<Vec<&'a str>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let path: Vec<&str> = rest
            .split("::")
            .map(|seg| {
                let end = seg
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or(seg.len());
                &seg[..end]
            })
            .take_while(|seg| !seg.is_empty())
            .take(2)
            .collect();
        if !path.is_empty() {
            out.push(path);
        }
    }
    out
}

/// Edges between modules, each named by its first `depth` path segments.
fn graph(depth: usize) -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let module = module_of(&src, &file);
        if module.last().is_some_and(|m| m.ends_with("tests")) || module.is_empty() {
            continue;
        }
        let code = std::fs::read_to_string(&file).unwrap();
        let code = without_tests(&code);
        let name = |path: &[String]| path[..path.len().min(depth)].join("::");
        let me = name(&module);
        // `super::x` from a `mod.rs` names a sibling of the directory's module.
        let parent: Vec<String> = module[..module.len() - 1].to_vec();
        let mut targets: Vec<Vec<String>> = paths_after(code, "crate::")
            .into_iter()
            .map(|p| p.iter().map(|s| s.to_string()).collect())
            .collect();
        let is_mod_rs = file.file_name().is_some_and(|f| f == "mod.rs");
        for p in paths_after(code, "super::") {
            if p[0] == "super" {
                continue; // `super::super::`: rare, and only in tests here
            }
            let base = if is_mod_rs {
                module[..module.len().saturating_sub(1)].to_vec()
            } else {
                parent.clone()
            };
            let mut t = base;
            t.extend(p.iter().take(1).map(|s| s.to_string()));
            targets.push(t);
        }
        for t in targets {
            if t.is_empty() {
                continue;
            }
            let to = name(&t);
            let inside = to == me
                || me.starts_with(&format!("{to}::"))
                || to.starts_with(&format!("{me}::"));
            if !inside {
                edges.entry(me.clone()).or_default().insert(to);
            }
        }
    }
    edges
}

/// Every cycle's members (strongly connected components of more than one module).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    let nodes: BTreeSet<&String> = edges.keys().chain(edges.values().flatten()).collect();
    let reach = |from: &String| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(n) = todo.pop() {
            for m in edges.get(&n).into_iter().flatten() {
                if seen.insert(m.clone()) {
                    todo.push(m.clone());
                }
            }
        }
        seen
    };
    let mut out: Vec<BTreeSet<String>> = Vec::new();
    for n in &nodes {
        if out.iter().any(|c| c.contains(*n)) {
            continue;
        }
        let from_n = reach(n);
        let comp: BTreeSet<String> = from_n
            .iter()
            .filter(|m| reach(m).contains(*n))
            .cloned()
            .collect();
        if comp.len() > 1 {
            out.push(comp);
        }
    }
    out
}

#[test]
fn the_core_depends_on_nothing_outside_it() {
    let edges = graph(1);
    assert_eq!(
        edges.get("core"),
        None,
        "core reaches out: {:?}",
        edges.get("core")
    );
    let access: Vec<&String> = edges
        .get("access")
        .into_iter()
        .flatten()
        .filter(|t| *t != "core")
        .collect();
    assert!(access.is_empty(), "access reaches {access:?}");
}

/// The engine owns alarm state and knows nothing of sockets, brokers, NATS or HTTP: the
/// edges send it commands and implement its `Outlet`.
#[test]
fn the_engine_reaches_no_edge() {
    let edges = graph(1);
    let reached: Vec<&String> = edges
        .get("engine")
        .into_iter()
        .flatten()
        .filter(|t| {
            [
                "app", "cluster", "fanout", "http", "ingest", "sim", "service",
            ]
            .contains(&t.as_str())
        })
        .collect();
    assert!(reached.is_empty(), "engine reaches {reached:?}");
    assert!(
        edges.get("engine").is_some_and(|t| t.contains("core")),
        "the check reads the engine's sources"
    );
}

#[test]
fn no_modules_depend_on_each_other_in_a_circle() {
    for depth in [1, 2] {
        let edges = graph(depth);
        assert_eq!(
            cycles(&edges),
            Vec::<BTreeSet<String>>::new(),
            "depth {depth}"
        );
    }
}

/// The check itself finds a circle where there is one.
#[test]
fn a_circle_is_found() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    edges.entry("a".into()).or_default().insert("b".into());
    edges.entry("b".into()).or_default().insert("c".into());
    edges.entry("c".into()).or_default().insert("a".into());
    edges.entry("c".into()).or_default().insert("d".into());
    let found = cycles(&edges);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].len(), 3);
    assert_eq!(
        paths_after("use crate::fanout::ws;", "crate::"),
        vec![vec!["fanout", "ws"]]
    );
    assert_eq!(paths_after("xcrate::y", "crate::"), Vec::<Vec<&str>>::new());
}
