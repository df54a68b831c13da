//! The architecture's rules that the compiler does not check, checked on the source tree.
//!
//! docs/ARCHITECTURE.md states which module may import which (the layering of the HA
//! redesign: `role` at the bottom, read by everyone; `ha` the only writer of the role, and
//! nothing below it importing it). A rule written only in prose erodes with the first hurried
//! change, so this test parses every file under `src/` (syn, the parser the compiler's own
//! macros use) and fails on a `crate::…` path that crosses a layer the wrong way.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// A module at the top, which may import every module listed before it.
const ANY_BELOW: &[&str] = &["*"];

/// Each top-level module of `src/` and the modules it may import. Anything not listed here
/// is an error too, so that a new module is placed in the layers on purpose.
const LAYERS: &[(&str, &[&str])] = &[
    // The bottom: what everyone reads.
    ("config", &[]),
    ("metrics", &[]),
    ("certs", &[]),
    ("proto", &[]),
    ("role", &["config"]),
    ("logging", &["config"]),
    // The spool stores a message's DSN request in proto's types (RFC 3461's parameters).
    ("spool", &["config", "proto"]),
    // systemd's notify protocol; its watchdog asks the spool's committer.
    ("service", &["spool"]),
    // The data: the queue runner and the cluster link read the role, never write it.
    ("delivery", &["config", "metrics", "proto", "role", "spool"]),
    ("replication", &["config", "delivery", "metrics", "role", "spool"]),
    // Recipient checks at RCPT: lists, and probes through the delivery client.
    ("recipients", &["config", "delivery", "proto"]),
    (
        "smtp",
        &["config", "delivery", "metrics", "proto", "recipients", "replication", "role", "spool"],
    ),
    // The one writer of the role.
    ("ha", &["config", "delivery", "metrics", "replication", "role", "spool"]),
    // The top: the operator's surfaces; node (the wiring) and cli import anything below.
    (
        "admin",
        &["certs", "config", "delivery", "ha", "metrics", "replication", "role", "smtp", "spool"],
    ),
    ("node", ANY_BELOW),
    ("cli", ANY_BELOW),
];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file below `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The top-level module a file of `src/` belongs to (`src/ha/core.rs` → `ha`), or `None` for
/// the crate roots, which declare the modules and may name them all.
fn module_of(file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src_dir()).unwrap();
    let first = relative.components().next()?.as_os_str().to_str()?.to_string();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
    (name != "lib" && name != "main").then_some(name)
}

/// The first segment after `crate::` of every path and `use` tree in a file.
#[derive(Default)]
struct CrateReferences {
    modules: BTreeSet<String>,
}

impl CrateReferences {
    fn use_tree(&mut self, tree: &syn::UseTree, after_crate: bool) {
        match tree {
            syn::UseTree::Path(path) if after_crate => {
                self.modules.insert(path.ident.to_string());
            }
            syn::UseTree::Path(path) => self.use_tree(&path.tree, path.ident == "crate"),
            syn::UseTree::Name(name) if after_crate => {
                self.modules.insert(name.ident.to_string());
            }
            syn::UseTree::Rename(rename) if after_crate => {
                self.modules.insert(rename.ident.to_string());
            }
            syn::UseTree::Group(group) => {
                for tree in &group.items {
                    self.use_tree(tree, after_crate);
                }
            }
            _ => {}
        }
    }
}

impl<'ast> Visit<'ast> for CrateReferences {
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&item.tree, false);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let mut segments = path.segments.iter();
        if let (Some(first), Some(second)) = (segments.next(), segments.next())
            && first.ident == "crate"
        {
            self.modules.insert(second.ident.to_string());
        }
        syn::visit::visit_path(self, path);
    }

    // Paths inside macro calls (`tracing::info!(…)`, `format!`) are token streams, not parsed
    // paths: look for `crate :: name` in them too.
    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        let tokens: Vec<String> = mac
            .tokens
            .clone()
            .into_iter()
            .flat_map(flatten)
            .map(|token| token.to_string())
            .collect();
        for window in tokens.windows(4) {
            if window[0] == "crate" && window[1] == ":" && window[2] == ":" {
                self.modules.insert(window[3].clone());
            }
        }
        syn::visit::visit_macro(self, mac);
    }
}

fn flatten(token: proc_macro2::TokenTree) -> Vec<proc_macro2::TokenTree> {
    match token {
        proc_macro2::TokenTree::Group(group) => {
            group.stream().into_iter().flat_map(flatten).collect()
        }
        other => vec![other],
    }
}

/// The crate modules a file names, except its own.
fn imports_of(file: &Path, own: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let syntax = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let mut references = CrateReferences::default();
    references.visit_file(&syntax);
    references.modules.remove(own);
    references.modules
}

#[test]
fn modules_import_only_the_layers_below_them() {
    let mut violations = Vec::new();
    for file in rust_files(&src_dir()) {
        let Some(module) = module_of(&file) else { continue };
        let Some(index) = LAYERS.iter().position(|(name, _)| *name == module) else {
            violations
                .push(format!("{}: module `{module}` has no place in LAYERS", file.display()));
            continue;
        };
        for import in imports_of(&file, &module) {
            if !may_import(index, &import) {
                violations
                    .push(format!("{}: `{module}` imports `crate::{import}`", file.display()));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering broken (docs/ARCHITECTURE.md):\n{}",
        violations.join("\n")
    );
}

/// Whether the module at `index` of [`LAYERS`] may import `import`.
fn may_import(index: usize, import: &str) -> bool {
    let (_, allowed) = LAYERS[index];
    if allowed == ANY_BELOW {
        LAYERS[..index].iter().any(|(name, _)| *name == import)
    } else {
        allowed.contains(&import)
    }
}

/// The layers have no cycle: each module may import only modules listed before it.
#[test]
fn the_layers_are_ordered() {
    for (index, (module, allowed)) in LAYERS.iter().enumerate() {
        for import in allowed.iter().filter(|_| *allowed != ANY_BELOW) {
            let position = LAYERS.iter().position(|(name, _)| name == import);
            assert!(
                position.is_some_and(|position| position < index),
                "`{module}` may import `{import}`, which is not below it in LAYERS"
            );
        }
    }
}

/// Only `ha` holds the sending side of the role's watch: it is the one writer of the role
/// (docs/guarantees.md, invariant of the HA core), whatever a lower module would find handy.
#[test]
fn only_ha_writes_the_role() {
    let mut writers = Vec::new();
    for file in rust_files(&src_dir()) {
        let text = std::fs::read_to_string(&file).unwrap();
        if text.contains("Sender<RoleStatus>") && module_of(&file).as_deref() != Some("ha") {
            writers.push(file.display().to_string());
        }
    }
    assert!(writers.is_empty(), "a role writer outside src/ha: {writers:?}");
}

/// The checker itself sees what it must: a path, a grouped `use`, and a path in a macro.
#[test]
fn the_checker_sees_every_form_of_import() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("probe.rs");
    std::fs::write(
        &file,
        "use crate::{spool::Spool, role};\nfn f() { crate::ha::go(); tracing::info!(\"{}\", crate::admin::X); }\n",
    )
    .unwrap();
    let found: Vec<String> = imports_of(&file, "probe").into_iter().collect();
    assert_eq!(found, ["admin", "ha", "role", "spool"]);
}

/// The table's rule itself: down is allowed, up and sideways are not, and the top's "anything
/// below" stops at itself.
#[test]
fn the_table_refuses_imports_upwards() {
    let at = |module: &str| LAYERS.iter().position(|(name, _)| *name == module).unwrap();
    assert!(may_import(at("smtp"), "spool"));
    assert!(!may_import(at("spool"), "smtp"), "upwards");
    assert!(!may_import(at("delivery"), "smtp"), "the old cycle");
    assert!(!may_import(at("replication"), "ha"), "below ha, nothing imports ha");
    assert!(may_import(at("cli"), "node"));
    assert!(!may_import(at("node"), "cli"), "the top's anything-below stops at itself");
}
