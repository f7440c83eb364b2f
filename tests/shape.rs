//! The shape of `src/`, enforced: no `crate::` import cycle between modules,
//! no oversized file, and protocol crates only at the edge.
//!
//! Modules are the files of `src/` (the library; `main.rs` is the binary).
//! Every `crate::`/`super::`/`self::` path in a file (in `use` items and in
//! code) is an edge from the file's module to the deepest module the path
//! names. An edge between a module and its own ancestor or descendant is the
//! ordinary parent/child relation; every other edge is lifted to the two
//! sibling modules under the pair's lowest common ancestor, and each set of
//! siblings must form an acyclic graph. Test-only modules (`#[cfg(test)]`)
//! are left out: tests may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// Lines a file in `src/` may have.
const MAX_LINES: usize = 600;

/// The crates of the wire protocols: only the edges name them — `listener/`
/// (clients in) and `provider/transport.rs` (the upstream client out);
/// between them everything is `http` types and `exchange`.
const EDGE_CRATES: &[&str] = &[
    "quinn",
    "quinn_proto",
    "h3",
    "h3_quinn",
    "hyper",
    "hyper_util",
    "tokio_rustls",
];

type ModPath = Vec<String>;

struct Module {
    file: PathBuf,
    /// Declared `#[cfg(test)]` by its parent.
    test_only: bool,
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The library's modules, from `lib.rs` down through `mod x;` declarations.
fn modules() -> BTreeMap<ModPath, Module> {
    let mut found = BTreeMap::new();
    let mut todo = vec![(Vec::new(), src().join("lib.rs"), false)];
    while let Some((path, file, test_only)) = todo.pop() {
        let ast = parse(&file);
        // Children of `a/b.rs` live in `a/b/`; of `lib.rs` and `a/mod.rs` beside them.
        let dir = if file.ends_with("lib.rs") || file.ends_with("mod.rs") {
            file.parent().unwrap().to_path_buf()
        } else {
            file.with_extension("")
        };
        for item in &ast.items {
            let syn::Item::Mod(m) = item else { continue };
            if m.content.is_some() {
                continue; // inline: part of this file
            }
            let name = m.ident.to_string();
            let child = [
                dir.join(format!("{name}.rs")),
                dir.join(&name).join("mod.rs"),
            ]
            .into_iter()
            .find(|f| f.exists())
            .unwrap_or_else(|| panic!("no file for module {name} in {}", dir.display()));
            let mut p = path.clone();
            p.push(name);
            todo.push((p, child, test_only || is_cfg_test(&m.attrs)));
        }
        found.insert(path, Module { file, test_only });
    }
    found
}

fn parse(file: &Path) -> syn::File {
    let text = std::fs::read_to_string(file).unwrap();
    syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| m.path().is_ident("test"))
    })
}

/// Collects the module paths a file refers to, resolved to absolute paths
/// (not yet trimmed to modules).
struct Refs {
    /// The module the code being visited is in (inline modules included).
    here: ModPath,
    found: Vec<ModPath>,
    /// Protocol crates named (see [`EDGE_CRATES`]).
    edge: BTreeSet<String>,
}

impl Refs {
    /// Resolves `segments` (a path as written) to an absolute path, if it
    /// starts with `crate`, `super` or `self`.
    fn resolve(&mut self, segments: &[String]) -> Option<ModPath> {
        let mut out: ModPath;
        let mut rest = segments;
        match segments.first().map(String::as_str) {
            Some("crate") => {
                out = Vec::new();
                rest = &rest[1..];
            }
            Some("self") => {
                out = self.here.clone();
                rest = &rest[1..];
            }
            Some("super") => {
                out = self.here.clone();
                while rest.first().is_some_and(|s| s == "super") {
                    out.pop();
                    rest = &rest[1..];
                }
            }
            Some(first) => {
                if EDGE_CRATES.contains(&first) {
                    self.edge.insert(first.to_string());
                }
                return None;
            }
            None => return None,
        }
        out.extend(rest.iter().cloned());
        Some(out)
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => self.leaf(prefix, Some(n.ident.to_string())),
            syn::UseTree::Rename(r) => self.leaf(prefix, Some(r.ident.to_string())),
            syn::UseTree::Glob(_) => self.leaf(prefix, None),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }

    fn leaf(&mut self, prefix: &[String], last: Option<String>) {
        let mut segments = prefix.to_vec();
        // `use crate::x::{self}` names `x` itself.
        segments.extend(last.filter(|l| l != "self"));
        if let Some(p) = self.resolve(&segments) {
            self.found.push(p);
        }
    }
}

impl<'ast> Visit<'ast> for Refs {
    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segments: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        if let Some(resolved) = self.resolve(&segments) {
            self.found.push(resolved);
        }
        syn::visit::visit_path(self, p);
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if is_cfg_test(&m.attrs) {
            return;
        }
        self.here.push(m.ident.to_string());
        syn::visit::visit_item_mod(self, m);
        self.here.pop();
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        if !is_cfg_test(&f.attrs) {
            syn::visit::visit_item_fn(self, f);
        }
    }
}

fn refs(here: &ModPath, file: &Path) -> Refs {
    let mut refs = Refs {
        here: here.clone(),
        found: Vec::new(),
        edge: BTreeSet::new(),
    };
    refs.visit_file(&parse(file));
    refs
}

/// The deepest module `path` names (the rest are items inside it).
fn owning_module(mods: &BTreeMap<ModPath, Module>, path: &[String]) -> ModPath {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| mods.contains_key(p))
        .unwrap_or_default()
}

fn is_prefix(a: &[String], b: &[String]) -> bool {
    b.len() >= a.len() && b[..a.len()] == *a
}

fn show(p: &[String]) -> String {
    if p.is_empty() {
        "crate".into()
    } else {
        p.join("::")
    }
}

/// Sibling graphs: for each parent, edges between its children, each with
/// one example (file, path) that makes it.
type Graphs = BTreeMap<ModPath, BTreeMap<(String, String), String>>;

fn sibling_graphs() -> Graphs {
    let mods = modules();
    let mut graphs = Graphs::new();
    for (here, m) in mods.iter().filter(|(_, m)| !m.test_only) {
        let refs = refs(here, &m.file);
        for target in refs.found {
            let to = owning_module(&mods, &target);
            if is_prefix(&to, here) || is_prefix(here, &to) {
                continue;
            }
            let common = here.iter().zip(&to).take_while(|(a, b)| a == b).count();
            let (a, b) = (here[common].clone(), to[common].clone());
            let example = format!("{} uses {}", m.file.display(), show(&target));
            graphs
                .entry(here[..common].to_vec())
                .or_default()
                .entry((a, b))
                .or_insert(example);
        }
    }
    graphs
}

/// One cycle per strongly connected component with more than one member.
fn cycles(edges: &BTreeMap<(String, String), String>) -> Vec<Vec<String>> {
    let nodes: BTreeSet<&String> = edges.keys().flat_map(|(a, b)| [a, b]).collect();
    let reaches = |from: &String| {
        let mut seen = BTreeSet::from([from.clone()]);
        let mut todo = vec![from.clone()];
        while let Some(n) = todo.pop() {
            for (a, b) in edges.keys() {
                if *a == n && seen.insert(b.clone()) {
                    todo.push(b.clone());
                }
            }
        }
        seen
    };
    let reach: BTreeMap<&String, BTreeSet<String>> =
        nodes.iter().map(|n| (*n, reaches(n))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for n in &nodes {
        if done.contains(*n) {
            continue;
        }
        let component: Vec<String> = nodes
            .iter()
            .filter(|m| reach[n].contains(**m) && reach[*m].contains(*n))
            .map(|m| (*m).clone())
            .collect();
        done.extend(component.iter().cloned());
        if component.len() > 1 {
            out.push(component);
        }
    }
    out
}

#[test]
fn no_import_cycle_between_modules() {
    let mut report = Vec::new();
    for (parent, edges) in sibling_graphs() {
        for component in cycles(&edges) {
            report.push(format!(
                "cycle under {}: {}",
                show(&parent),
                component.join(", ")
            ));
            for ((a, b), example) in &edges {
                if component.contains(a) && component.contains(b) {
                    report.push(format!("  {a} -> {b}: {example}"));
                }
            }
        }
    }
    assert!(
        report.is_empty(),
        "import cycles in src/:\n{}",
        report.join("\n")
    );
}

#[test]
fn protocol_crates_only_at_the_edge() {
    let leaks: Vec<String> = modules()
        .iter()
        .filter(|(path, m)| !m.test_only && path.first().is_none_or(|p| p != "listener"))
        .filter(|(path, _)| path.as_slice() != ["provider", "transport"])
        .filter_map(|(path, m)| {
            let edge = refs(path, &m.file).edge;
            (!edge.is_empty()).then(|| format!("{} names {edge:?}", m.file.display()))
        })
        .collect();
    assert!(
        leaks.is_empty(),
        "protocol crates outside src/listener/ and src/provider/transport.rs (move the code to the edge):\n{}",
        leaks.join("\n")
    );
}

#[test]
fn no_oversized_file() {
    let mut big = Vec::new();
    let mut todo = vec![src()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let lines = std::fs::read_to_string(&path).unwrap().lines().count();
                if lines > MAX_LINES {
                    big.push(format!("{}: {lines} lines", path.display()));
                }
            }
        }
    }
    assert!(
        big.is_empty(),
        "files over {MAX_LINES} lines (split them):\n{}",
        big.join("\n")
    );
}

/// The self-test: the cycle finder sees a planted cycle and nothing else.
#[test]
fn cycle_finder_finds_a_cycle() {
    let e = |a: &str, b: &str| ((a.to_string(), b.to_string()), String::new());
    let edges = BTreeMap::from([e("a", "b"), e("b", "c"), e("c", "a"), e("c", "d")]);
    assert_eq!(
        cycles(&edges),
        vec![vec!["a".to_string(), "b".into(), "c".into()]]
    );
    let acyclic = BTreeMap::from([e("a", "b"), e("b", "c"), e("a", "c")]);
    assert!(cycles(&acyclic).is_empty());
}
